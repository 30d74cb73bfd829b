#!/usr/bin/python3
"""Independent GPTQ checkpoint packer and unpacker (numpy only), the reference for tests/test_gptq_format.cpp.

Written from the format as AutoGPTQ's QuantLinear.pack writes it and transformers / vLLM read it, not from qforge:

    gptq_pack.py pack IN.safetensors OUT.safetensors --bits B --format v1|v2 [--name M]
        IN holds codes [out, in] (integers in [0, 2^B - 1]), scales [out, groups], zeros [out, groups] and
        g_idx [in]; OUT holds M.qweight I32 [in * B / 32, out], M.qzeros I32 [groups, out * B / 32],
        M.scales F16 [groups, out] and M.g_idx I32 [in] (M: "layer" unless given).
    gptq_pack.py unpack IN.safetensors OUT.safetensors --bits B --format v1|v2 [--name M]
        the inverse: OUT holds codes I32 [out, in], zeros I32 [groups, out] (the zero points: v1 adds back the 1
        the file subtracts), scales F32 [groups, out] and g_idx I32 [in].

Packing follows AutoGPTQ's loop (word by word, 3 bits with its straddling values 10 and 21 of each 32);
unpacking reads each column of words as one little-endian bit stream (np.unpackbits), another route to the same
layout. Exits 1 with a message for what the format cannot hold.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import read_safetensors  # noqa: E402

NUMPY_TO_SAFETENSORS = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i4"): "I32"}


def write_safetensors(path, tensors):
    """tensors: name -> numpy array (f4, f2 or i4), written in name order."""
    header, blobs, offset = {"__metadata__": {"format": "pt", "source": "gptq_pack.py"}}, [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"))
        raw = array.tobytes()
        header[name] = {"dtype": NUMPY_TO_SAFETENSORS[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def pack_columns(values, bits):
    """values uint32 [N, M] -> uint32 [N * bits / 32, M], packed along dim 0 as AutoGPTQ's pack loop does."""
    values = values.astype(np.uint32)
    packed = np.zeros((values.shape[0] // 32 * bits, values.shape[1]), dtype=np.uint32)
    i, row = 0, 0
    while row < packed.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                packed[row] |= values[j] << np.uint32(bits * (j - i))
            i += 32 // bits
            row += 1
        elif bits == 3:
            for j in range(i, i + 10):
                packed[row] |= values[j] << np.uint32(3 * (j - i))
            i += 10
            packed[row] |= values[i] << np.uint32(30)
            row += 1
            packed[row] |= (values[i] >> np.uint32(2)) & np.uint32(1)
            i += 1
            for j in range(i, i + 10):
                packed[row] |= values[j] << np.uint32(3 * (j - i) + 1)
            i += 10
            packed[row] |= values[i] << np.uint32(31)
            row += 1
            packed[row] |= (values[i] >> np.uint32(1)) & np.uint32(3)
            i += 1
            for j in range(i, i + 10):
                packed[row] |= values[j] << np.uint32(3 * (j - i) + 2)
            i += 10
            row += 1
        else:
            sys.exit(f"bits {bits} cannot be packed (2, 3, 4 or 8)")
    return packed


def unpack_columns(words, bits, count):
    """words uint32 [W, M] -> int64 [count, M]: each column of words one LSB-first bit stream."""
    as_bytes = np.ascontiguousarray(words, dtype="<u4").view(np.uint8).reshape(words.shape[0], words.shape[1], 4)
    as_bytes = as_bytes.transpose(1, 0, 2).reshape(words.shape[1], -1)             # [M, W * 4] per column
    stream = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :count * bits]  # [M, count * bits]
    weights = (1 << np.arange(bits)).astype(np.int64)
    return (stream.reshape(words.shape[1], count, bits).astype(np.int64) * weights).sum(axis=2).T


def pack_arrays(codes, scales, zeros, g_idx, bits, fmt):
    """codes [out, in], scales [out, groups], zeros [out, groups], g_idx [in] -> the four tensors of the file."""
    codes, zeros, g_idx = codes.astype(np.int64), zeros.astype(np.int64), g_idx.astype(np.int64)
    scales = scales.astype(np.float32)
    out, inp = codes.shape
    maxq = (1 << bits) - 1
    if inp % 32 or (out * bits) % 32:
        sys.exit(f"shape [{out}, {inp}] cannot be packed at {bits} bits")
    if codes.min() < 0 or codes.max() > maxq or zeros.min() < 0 or zeros.max() > maxq:
        sys.exit("codes or zeros out of range")
    if fmt == "v1":
        if zeros.min() == 0:
            sys.exit("a zero point of 0 cannot be stored in v1")
        zeros = zeros - 1
    # The zeros of the 32 * k outputs (pack along the output, AutoGPTQ's qzeros): pad to whole runs of 32 values,
    # then keep the words of the real outputs (at 2, 4, 8 bits a run of 32 / bits values fills a word).
    padded = np.zeros((-(-out // 32) * 32, zeros.shape[1]), dtype=np.int64)
    padded[:out] = zeros
    qzeros = pack_columns(padded, bits)[:out * bits // 32].T
    return {"qweight": pack_columns(codes.T, bits).view(np.int32),
            "qzeros": np.ascontiguousarray(qzeros).view(np.int32),
            "scales": scales.T.astype(np.float16),
            "g_idx": g_idx.astype(np.int32)}


def unpack_arrays(qweight, qzeros, scales, g_idx, bits, fmt):
    """The file's four tensors -> codes [out, in], zeros [groups, out] (v1: plus the 1), scales [groups, out], g_idx."""
    qweight = qweight.astype(np.int64).astype(np.uint32)
    qzeros = qzeros.astype(np.int64).astype(np.uint32)
    scales = scales.astype(np.float32)
    g_idx = g_idx.astype(np.int64)
    groups, out = scales.shape
    inp = g_idx.shape[0]
    if qweight.shape != (inp * bits // 32, out) or qzeros.shape != (groups, out * bits // 32):
        sys.exit(f"qweight {qweight.shape} or qzeros {qzeros.shape} disagree with in {inp}, out {out}")
    codes = unpack_columns(qweight, bits, inp).T                # [out, in]
    zeros = unpack_columns(qzeros.T, bits, out).T               # [groups, out]
    if fmt == "v1":
        zeros = zeros + 1
    return codes, zeros, scales, g_idx


def pack(args):
    tensors = {name: values for name, (_, _, values) in read_safetensors.read(args.input).items()}
    packed = pack_arrays(tensors["codes"], tensors["scales"], tensors["zeros"], tensors["g_idx"], args.bits,
                         args.format)
    write_safetensors(args.output, {f"{args.name}.{suffix}": array for suffix, array in packed.items()})


def unpack(args):
    tensors = {name: values for name, (_, _, values) in read_safetensors.read(args.input).items()}
    codes, zeros, scales, g_idx = unpack_arrays(
        tensors[f"{args.name}.qweight"], tensors[f"{args.name}.qzeros"], tensors[f"{args.name}.scales"],
        tensors[f"{args.name}.g_idx"], args.bits, args.format)
    write_safetensors(args.output, {"codes": codes.astype(np.int32), "zeros": zeros.astype(np.int32),
                                    "scales": scales, "g_idx": g_idx.astype(np.int32)})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["pack", "unpack"])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--bits", type=int, required=True, choices=[2, 3, 4, 8])
    parser.add_argument("--format", required=True, choices=["v1", "v2"])
    parser.add_argument("--name", default="layer")
    args = parser.parse_args()
    (pack if args.command == "pack" else unpack)(args)


if __name__ == "__main__":
    main()
