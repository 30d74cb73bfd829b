#!/usr/bin/python3
"""Writes the fuzz targets' seed corpora (seeds/<target>/): small valid files of each format, built here from the
formats' definitions (llama2.c's and SentencePiece's tokenizers by Google's trainer), plus the regression inputs
committed beside them (named regression-*, which this script leaves alone). Run: /usr/bin/python3 make_seeds.py"""
import io
import json
import os
import struct
import zlib

import numpy as np
import sentencepiece
import torch

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def put(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def config_seeds():
    put("config", "sections.yaml", """parallel:
  tp: 2
runtime:
  threads: 0
log:
  level: warn
  all_ranks: true
  file: "log-{rank}.txt"
  progress_interval_s: 2.5
output:
  dir: out
  max_shard_gb: 0.5
model:
  path: models/stories260K
  tokenizer: tok512.bin
  dtype: bfloat16
  device: cpu
eval:
  text: wiki.txt
  seq_len: 256
  tasks: piqa,boolq
  shots: -1
  log_samples: false
generate_text:
  prompt: 'Once upon a time'
  temperature: 0.8
  top_p: 0.9
lists:
  integers: [1, -2, 0x10]
  numbers: [0.5, 1e-3, .inf]
  strings: [a, "b c", '']
  flags: [true, false, yes]
""")
    put("config", "flow.yaml", "{parallel: {tp: 4}, log: {level: debug}, lists: {strings: [x, y]}}\n")
    put("config", "anchors.yaml", "base: &b {tp: 2}\nparallel: *b\nmodel:\n  path: |\n    multi\n    line\n")


def model_config_seeds():
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 64,
             "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4,
             "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    put("model_config", "llama.json", json.dumps(llama, indent=2))
    opt = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": 50272, "hidden_size": 512,
           "ffn_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8, "max_position_embeddings": 2048,
           "word_embed_proj_dim": 256, "do_layer_norm_before": False, "pad_token_id": 1, "bos_token_id": 2,
           "eos_token_id": 2, "enable_bias": True, "layer_norm_elementwise_affine": True}
    put("model_config", "opt.json", json.dumps(opt))
    put("model_config", "llama-quantized.json", json.dumps(dict(llama, quantization_config={
        "quant_method": "gptq", "bits": 4, "group_size": 128})))


def gptq_config_seeds():
    config = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
              "checkpoint_format": "gptq", "static_groups": False, "damp_percent": 0.01, "true_sequential": True}
    put("gptq_config", "quantize_config.json", json.dumps(config, indent=2))
    put("gptq_config", "v2-act-order.json", json.dumps(dict(config, bits=3, group_size=-1, desc_act=True,
                                                             checkpoint_format="gptq_v2", sym=False)))
    put("gptq_config", "config.json", json.dumps({"model_type": "llama", "quantization_config": dict(
        config, bits=8, lm_head=False, model_name_or_path=None)}))


def safetensors_file(tensors, metadata=None):
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
             torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64",
             torch.int16: "I16"}
    header, data = {}, b""
    for name, tensor in tensors.items():
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    g = torch.Generator().manual_seed(0)
    put("safetensors", "mixed.safetensors", safetensors_file({
        "model.embed_tokens.weight": torch.randn(6, 4, generator=g),
        "model.norm.weight": torch.randn(4, generator=g).half(),
        "lm_head.weight": torch.randn(3, 4, generator=g).bfloat16(),
        "positions": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "codes": torch.arange(-4, 4, dtype=torch.int8).reshape(2, 4),
    }, {"format": "pt"}))
    put("safetensors", "gptq-linear.safetensors", safetensors_file({
        "q_proj.qweight": torch.arange(32, dtype=torch.int32).reshape(4, 8),
        "q_proj.qzeros": torch.full((1, 1), 0x77777777, dtype=torch.int32),
        "q_proj.scales": torch.full((1, 8), 0.01).half(),
        "q_proj.g_idx": torch.zeros(32, dtype=torch.int32),
    }, {"format": "pt", "quantizer": "qforge"}))
    put("safetensors", "edge-shapes.safetensors", safetensors_file({
        "scalar": torch.tensor(1.5, dtype=torch.float64), "empty": torch.zeros(0, 3), "u8": torch.arange(7).byte(),
        "i16": torch.tensor([[-1, 2]], dtype=torch.int16)}))
    put("safetensors", "no-tensors.safetensors", safetensors_file({}, {}))


def llama2c_file(pieces):
    out = struct.pack("<i", max(len(p) for p, _ in pieces))
    for piece, score in pieces:
        out += struct.pack("<fi", score, len(piece)) + piece
    return out


def llama2c_seeds():
    pieces = [(b"<unk>", 0.0), (b"\n<s>\n", 0.0), (b"\n</s>\n", 0.0)]
    pieces += [(("<0x%02X>" % b).encode(), 0.0) for b in range(256)]
    merges = [b" t", b"he", b" the", b"in", b" a", b"on", b"ce", b" u", b" up", b"Once", b" time", b"at", b" c", b" cat"]
    words = [bytes([c]) for c in range(32, 127)]
    pieces += [(w, -1.0 - i) for i, w in enumerate(words)]
    pieces += [(m, -0.5 * i) for i, m in enumerate(merges)]
    put("llama2c_tokenizer", "bytes-and-merges.bin", llama2c_file(pieces))
    put("llama2c_tokenizer", "bytes-only.bin", llama2c_file(pieces[:259]))


def sentencepiece_seeds():
    text = ["Once upon a time, there was a little cat.", "The cat sat on the mat and said hi.",
            "A tiny dog ran up the hill.", "They were happy, and the sun was warm."] * 20
    for name, options in {"bpe-byte-fallback.model": dict(model_type="bpe", vocab_size=300, byte_fallback=True),
                          "unigram.model": dict(model_type="unigram", vocab_size=60, split_digits=True)}.items():
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model,
                                                 normalization_rule_name="identity", minloglevel=2,
                                                 hard_vocab_limit=False, **options)
        put("sentencepiece", name, model.getvalue())


def journal(topk, samples, torn_tail=b""):
    identity = json.dumps({"num_samples": 6, "seq_len": 8, "vocab_size": 300, "topk": topk,
                           "attributes": {"teacher": "fuzz"}}).encode()
    head = b"QFCJ" + struct.pack("<II", 2, len(identity)) + identity
    out = head + struct.pack("<I", zlib.crc32(head))
    rng = np.random.default_rng(topk)
    for index, length in samples:
        record = struct.pack("<qi", index, length) + rng.integers(0, 300, length, dtype="<i4").tobytes()
        if topk:
            m = (length - 1) * topk
            record += rng.integers(0, 300, m, dtype="<i4").tobytes()
            record += np.sort(-rng.random(m, dtype=np.float32) * 5).astype("<f4").tobytes()
        out += record + struct.pack("<I", zlib.crc32(record))
    return out + torn_tail


def corpus_journal_seeds():
    # First byte: bit 0 lets the harness recompute the CRC-32s, bit 1 reads with top-K 2 (fuzz_corpus_journal.cpp).
    put("corpus_journal", "tokens.qfcj", b"\x00" + journal(0, [(0, 8), (3, 1), (5, 4)]))
    put("corpus_journal", "tokens-torn.qfcj", b"\x01" + journal(0, [(1, 8), (2, 8)], torn_tail=b"\x04\0\0\0\0\0\0\0\x08"))
    put("corpus_journal", "topk.qfcj", b"\x02" + journal(2, [(0, 8), (4, 1), (5, 3)]))
    put("corpus_journal", "topk-fix-crcs.qfcj", b"\x03" + journal(2, [(1, 5), (1, 5)]))


if __name__ == "__main__":
    config_seeds()
    model_config_seeds()
    gptq_config_seeds()
    safetensors_seeds()
    llama2c_seeds()
    sentencepiece_seeds()
    corpus_journal_seeds()
