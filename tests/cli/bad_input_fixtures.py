"""Damaged copies of good inputs for tests/cli/test_bad_input.sh, written once per run.

usage: bad_input_fixtures.py FIXTURES
FIXTURES holds tiny/ (qforge init-model), st/ (stories260K converted), gptq/ (a GPTQ-format export of tiny) and
tok512.bin; every damaged input goes to FIXTURES/bad/NAME (a model directory or a file). Unchanged files are
symlinked. numpy only, so that it starts fast.
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

F = sys.argv[1]
BAD = os.path.join(F, "bad")
DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    tensors = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        tensors[name] = np.frombuffer(blob[8 + n + b:8 + n + end], dtype=DTYPES[e["dtype"]]).reshape(e["shape"]).copy()
    return tensors, meta


def write_safetensors(path, tensors, meta=None, header_edit=None):
    header, offset, chunks = {}, 0, []
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        dtype = [k for k, v in DTYPES.items() if v == t.dtype][0]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
        chunks.append(t.tobytes())
    if meta:
        header["__metadata__"] = meta
    if header_edit:
        header_edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def model_dir(name, source="tiny", config_edit=None, tensors_edit=None, header_edit=None, raw=None, skip=()):
    """FIXTURES/bad/NAME: a copy of FIXTURES/SOURCE with config.json, model.safetensors or raw bytes changed."""
    src, out = os.path.join(F, source), os.path.join(BAD, name)
    os.makedirs(out)
    for file in os.listdir(src):
        if file in skip:
            continue
        if file == "config.json" and config_edit:
            config = json.load(open(os.path.join(src, file)))
            replaced = config_edit(config)
            with open(os.path.join(out, file), "w") as f:
                f.write(replaced if isinstance(replaced, str) else json.dumps(config, indent=2))
        elif file == "model.safetensors" and (tensors_edit or header_edit):
            tensors, meta = read_safetensors(os.path.join(src, file))
            if tensors_edit:
                tensors_edit(tensors)
            write_safetensors(os.path.join(out, file), tensors, meta, header_edit)
        elif file == "model.safetensors" and raw is not None:
            with open(os.path.join(src, file), "rb") as f:
                blob = f.read()
            with open(os.path.join(out, file), "wb") as f:
                f.write(raw(blob))
        else:
            os.symlink(os.path.join(src, file), os.path.join(out, file))
    return out


def setter(**values):
    def edit(config):
        config.update(values)
    return edit


def file(name, data):
    with open(os.path.join(BAD, name), "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(BAD, ignore_errors=True)
    os.makedirs(BAD)
    q = "model.layers.0.self_attn.q_proj.weight"
    # config.json
    model_dir("cfg_hidden_1e12", config_edit=setter(hidden_size=10**12))
    model_dir("cfg_hidden_2p30", config_edit=setter(hidden_size=2**30))
    model_dir("cfg_layers_huge", config_edit=setter(num_hidden_layers=10**6))
    model_dir("cfg_vocab_zero", config_edit=setter(vocab_size=0))
    model_dir("cfg_vocab_other", config_edit=setter(vocab_size=300))
    model_dir("cfg_hidden_64", config_edit=setter(hidden_size=64))
    model_dir("cfg_intermediate", config_edit=setter(intermediate_size=128))
    model_dir("cfg_fewer_layers", source="st", config_edit=setter(num_hidden_layers=3))
    model_dir("cfg_more_layers", config_edit=setter(num_hidden_layers=4))
    model_dir("cfg_not_json", config_edit=lambda c: "{ not json")
    model_dir("cfg_type_gpt2", config_edit=setter(model_type="gpt2"))
    model_dir("cfg_heads_3", config_edit=setter(num_attention_heads=3))
    model_dir("cfg_no_vocab", config_edit=lambda c: c.pop("vocab_size") and None)
    model_dir("cfg_missing", skip=("config.json",))
    os.makedirs(os.path.join(model_dir("cfg_directory", skip=("config.json",)), "config.json"))
    # model.safetensors
    model_dir("st_truncated", raw=lambda b: b[:len(b) // 2])
    model_dir("st_empty", raw=lambda b: b"")
    model_dir("st_header_huge", raw=lambda b: struct.pack("<Q", 1 << 40) + b[8:])
    model_dir("st_header_garbage", raw=lambda b: b[:8] + b"\x00\xff" * 8 + b[24:])
    model_dir("st_missing", skip=("model.safetensors",))
    os.makedirs(os.path.join(model_dir("st_directory", skip=("model.safetensors",)), "model.safetensors"))

    def nan(t):
        t[q][0, 3] = np.nan

    def inf(t):
        t["model.norm.weight"][1] = np.inf
    model_dir("w_nan", tensors_edit=nan)
    model_dir("w_inf", tensors_edit=inf)
    model_dir("w_i32", tensors_edit=lambda t: t.update({q: t[q].astype(np.int32)}))
    model_dir("w_transposed", tensors_edit=lambda t: t.update({q: np.ascontiguousarray(t[q].T[:, :16])}))
    model_dir("w_missing", tensors_edit=lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))

    model_dir("h_dtype_f8", header_edit=lambda h: h[q].update(dtype="F8"))
    model_dir("h_shape_negative", header_edit=lambda h: h[q].update(shape=[-1, 32]))
    model_dir("h_shape_span", header_edit=lambda h: h[q].update(shape=[33, 32]))
    model_dir("h_shape_overflow", header_edit=lambda h: h[q].update(shape=[2**62, 2**4]))

    def overlap(h):
        other = "model.layers.0.self_attn.k_proj.weight"
        size = h[other]["data_offsets"][1] - h[other]["data_offsets"][0]
        h[other]["data_offsets"] = [h[q]["data_offsets"][0], h[q]["data_offsets"][0] + size]
    model_dir("h_overlap", header_edit=overlap)
    # a sharded checkpoint whose index is damaged
    out = model_dir("idx_missing_shard", skip=("model.safetensors",))
    index = json.dumps({"weight_map": {q: "model-00001-of-00002.safetensors"}})
    file(os.path.join(out, "model.safetensors.index.json"), index.encode())
    out = model_dir("idx_not_json", skip=("model.safetensors",))
    file(os.path.join(out, "model.safetensors.index.json"), b"{ nope")
    # tokenizers
    file("tok_empty.bin", b"")
    with open(os.path.join(F, "tiny", "tokenizer.bin"), "rb") as f:
        tok = f.read()
    file("tok_truncated.bin", tok[:len(tok) // 2 + 3])
    file("tok_garbage.bin", bytes(range(256)) * 4)
    file("tok_garbage.json", b"{\"model\": 3}")
    os.makedirs(os.path.join(BAD, "tok_vocab_only"))
    file("tok_vocab_only/vocab.json", b"{\"a\": 0}")
    model_dir("no_tokenizer", skip=("tokenizer.bin",))
    # llama2.c checkpoints
    with open(os.path.join(F, "stories260K.bin"), "rb") as f:
        llama2c = f.read()
    file("l2c_truncated.bin", llama2c[:len(llama2c) - 1000])
    file("l2c_negative.bin", struct.pack("<i", -64) + llama2c[4:])
    file("l2c_dim_2p30.bin", struct.pack("<i", 2**30) + llama2c[4:])
    # GPTQ-format exports
    gptq_config = lambda **q: (lambda c: c["quantization_config"].update(q))
    model_dir("gptq_bits_5", source="gptq", config_edit=gptq_config(bits=5))
    model_dir("gptq_method_awq", source="gptq", config_edit=gptq_config(quant_method="awq"))
    scales = "model.layers.0.self_attn.q_proj.scales"
    model_dir("gptq_no_scales", source="gptq", tensors_edit=lambda t: t.pop(scales))
    model_dir("gptq_qweight_f32", source="gptq", tensors_edit=lambda t: t.update(
        {"model.layers.0.self_attn.q_proj.qweight": t["model.layers.0.self_attn.q_proj.qweight"].astype(np.float32)}))
    # text, corpus and YAML files
    file("empty.txt", b"  \n")
    file("corpus_text.h5", b"not an HDF5 file\n")
    with open(os.path.join(F, "corpus.h5"), "rb") as f:
        corpus = f.read()
    file("corpus_truncated.h5", corpus[:len(corpus) // 3])


main()
