#!/usr/bin/python3
"""Independent GPTQ checkpoints of whole models (numpy only), the reference for tests/test_gptq_checkpoint.cpp.

    gptq_checkpoint.py write MODEL_DIR OUT_DIR EXPECTED.safetensors --bits B --format v1|v2 --group G
                       [--act-order] [--seed S]
        quantizes every decoder linear of the fp32 checkpoint in MODEL_DIR (model.safetensors + config.json) by
        round-to-nearest on a min-max grid of its own (v1: symmetric, zero 2^(B-1); v2: asymmetric, zeros may be 0;
        --act-order: groups of G inputs in a random order, a non-trivial g_idx), and writes OUT_DIR as AutoGPTQ
        lays a model out: <m>.qweight / qzeros / scales / g_idx per linear, every other tensor fp16, config.json with
        quantization_config, quantize_config.json. EXPECTED holds each linear's dequantized weight, F32 [out, in]:
        float32(scale16[g_idx[i], o]) * float32(q[i, o] - zero[g_idx[i], o]).
    gptq_checkpoint.py read GPTQ_DIR OUT.safetensors
        unpacks every linear of a GPTQ checkpoint (single file or sharded with an index): OUT holds <m>.codes
        I32 [out, in] and <m>.weight F32 [out, in] as above (desc_act false: group i // group_size, as the
        loaders assume). Prints one line: "format=<checkpoint_format> bits=<B> linears=<N> desc_act=<bool>".

Exits 1 with a message for what it cannot read.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptq_pack  # noqa: E402
import read_safetensors  # noqa: E402

LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "out_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight", "fc1.weight", "fc2.weight")


def is_decoder_linear(name):
    return ".layers." in name and name.endswith(LINEAR_SUFFIXES)


def read_checkpoint(directory):
    """name -> numpy values (float64), from model.safetensors or the index and its shards."""
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        files = [single]
    else:
        with open(os.path.join(directory, "model.safetensors.index.json")) as f:
            files = [os.path.join(directory, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
    tensors = {}
    for path in files:
        tensors.update({name: values for name, (_, _, values) in read_safetensors.read(path).items()})
    return tensors


def quantize(weight, bits, group, symmetric, g_idx):
    """min-max grid per (row, group): scales [out, groups] fp16-rounded, zeros [out, groups], codes [out, in]."""
    out, inp = weight.shape
    groups = int(g_idx.max()) + 1
    maxq = (1 << bits) - 1
    scales = np.zeros((out, groups), dtype=np.float32)
    zeros = np.zeros((out, groups), dtype=np.int64)
    for g in range(groups):
        columns = weight[:, g_idx == g]
        low, high = np.minimum(columns.min(axis=1), 0), np.maximum(columns.max(axis=1), 0)
        if symmetric:
            scale = np.maximum(np.maximum(-low, high) * 2 / maxq, 1e-8)
            zeros[:, g] = (maxq + 1) // 2
        else:
            scale = np.maximum((high - low) / maxq, 1e-8)
            zeros[:, g] = np.clip(np.round(-low / scale), 0, maxq)
        scales[:, g] = scale.astype(np.float16).astype(np.float32)
    s, z = scales[:, g_idx], zeros[:, g_idx]
    codes = np.clip(np.round(weight / s) + z, 0, maxq).astype(np.int64)
    return codes, scales, zeros


def dequantize(codes, scales, zeros, g_idx):
    """[out, in] float32: scales[o, g] * (q - zero[o, g]), one float32 product per element."""
    s = scales[:, g_idx].astype(np.float32)
    return (s * (codes - zeros[:, g_idx]).astype(np.float32)).astype(np.float32)


def write(args):
    rng = np.random.default_rng(args.seed)
    tensors = read_checkpoint(args.model_dir)
    with open(os.path.join(args.model_dir, "config.json")) as f:
        config = json.load(f)
    symmetric = args.format == "v1"
    out_tensors, expected = {}, {}
    for name in sorted(tensors):
        values = tensors[name]
        if not is_decoder_linear(name):
            out_tensors[name] = values.astype(np.float16)
            continue
        weight = values.astype(np.float32)
        out, inp = weight.shape
        order = rng.permutation(inp) if args.act_order else np.arange(inp)
        g_idx = np.zeros(inp, dtype=np.int64)
        if args.group > 0:
            g_idx[order] = np.arange(inp) // args.group
        codes, scales, zeros = quantize(weight, args.bits, args.group, symmetric, g_idx)
        if args.format == "v1" and zeros.min() == 0:
            sys.exit(f"{name}: a zero of 0 in v1")
        module = name[:-len(".weight")]
        packed = gptq_pack.pack_arrays(codes, scales, zeros, g_idx, args.bits, args.format)
        for suffix, array in packed.items():
            out_tensors[f"{module}.{suffix}"] = array
        expected[name] = dequantize(codes, scales, zeros, g_idx)
    quantization = {"quant_method": "gptq", "bits": args.bits, "group_size": args.group,
                    "desc_act": bool(args.act_order), "sym": symmetric, "static_groups": False,
                    "checkpoint_format": "gptq" if args.format == "v1" else "gptq_v2",
                    "damp_percent": 0.01, "true_sequential": True}
    config["quantization_config"] = quantization
    config["torch_dtype"] = "float16"
    os.makedirs(args.out_dir, exist_ok=True)
    gptq_pack.write_safetensors(os.path.join(args.out_dir, "model.safetensors"), out_tensors)
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(args.out_dir, "quantize_config.json"), "w") as f:
        json.dump(quantization, f, indent=2)
    gptq_pack.write_safetensors(args.expected, expected)


def read(args):
    with open(os.path.join(args.gptq_dir, "config.json")) as f:
        quantization = json.load(f)["quantization_config"]
    if quantization.get("quant_method") != "gptq":
        sys.exit(f"{args.gptq_dir}: quant_method {quantization.get('quant_method')!r} is not gptq")
    bits, group = quantization["bits"], quantization["group_size"]
    checkpoint_format = quantization.get("checkpoint_format", "gptq")
    tensors = read_checkpoint(args.gptq_dir)
    result = {}
    for name in sorted(tensors):
        if not name.endswith(".qweight"):
            continue
        module = name[:-len(".qweight")]
        codes, zeros, scales, g_idx = gptq_pack.unpack_arrays(
            tensors[name], tensors[module + ".qzeros"], tensors[module + ".scales"], tensors[module + ".g_idx"],
            bits, "v1" if checkpoint_format == "gptq" else "v2")
        if not quantization["desc_act"]:
            g_idx = np.arange(g_idx.shape[0]) // group if group > 0 else np.zeros(g_idx.shape[0], dtype=np.int64)
        result[module + ".codes"] = codes.astype(np.int32)
        result[module + ".weight"] = dequantize(codes, scales.T.astype(np.float32), zeros.T, g_idx)
    gptq_pack.write_safetensors(args.output, result)
    print(f"format={checkpoint_format} bits={bits} linears={len(result) // 2} desc_act={quantization['desc_act']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write")
    w.add_argument("model_dir")
    w.add_argument("out_dir")
    w.add_argument("expected")
    w.add_argument("--bits", type=int, required=True, choices=[2, 3, 4, 8])
    w.add_argument("--format", required=True, choices=["v1", "v2"])
    w.add_argument("--group", type=int, required=True, help="inputs per group; -1: one group per row")
    w.add_argument("--act-order", action="store_true")
    w.add_argument("--seed", type=int, default=0)
    r = commands.add_parser("read")
    r.add_argument("gptq_dir")
    r.add_argument("output")
    args = parser.parse_args()
    (write if args.command == "write" else read)(args)


if __name__ == "__main__":
    main()
