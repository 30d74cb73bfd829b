#!/usr/bin/python3
"""Independent safetensors reader and writer (json + numpy only), the reference for tests/test_safetensors.cpp.

    read_safetensors.py FILE        one line per tensor, in name order: NAME<TAB>DTYPE<TAB>D0,D1,...<TAB>SUM
                                    (SUM: the float64 sum of the elements, repr; the shape is empty for a scalar)
    read_safetensors.py --write PATH   writes a file with the known tensors of known_tensors()

Exits 1 with a message on stderr when the file breaks the format.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("u1"),
}


def bf16_to_float32(bits):
    """bfloat16 is the upper half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(values):
    """Exact for values that are representable in bfloat16 (the writer only uses such values)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    assert np.all(bits & 0xFFFF == 0), "value not exactly representable in bfloat16"
    return (bits >> 16).astype("<u2")


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        sys.exit(f"{path}: {len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        sys.exit(f"{path}: header length {n} past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        begin, end = entry["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * dtype.itemsize or end > len(data):
            sys.exit(f"{path}: tensor {name}: data_offsets {begin},{end} disagree with {entry['dtype']} {shape}")
        values = np.frombuffer(data, dtype=dtype, count=count, offset=begin)
        if entry["dtype"] == "BF16":
            values = bf16_to_float32(values)
        tensors[name] = (entry["dtype"], shape, values.astype(np.float64).reshape(shape))
    return tensors


def known_tensors():
    """name -> (dtype, shape, little-endian bytes). Values are exact in their dtype; the C++ test knows them."""
    a = (np.arange(6, dtype=np.float32) * 0.5 - 1.0).reshape(2, 3)          # -1, -0.5, 0, 0.5, 1, 1.5
    b = np.array([1.0, -2.0, 0.5, 65504.0], dtype="<f2")
    c = float32_to_bf16_bits(np.array([[1.0, -3.0], [0.15625, 256.0]], dtype=np.float32))
    d = np.array([-5, 0, 1 << 40], dtype="<i8")
    e = np.array([True, False, True], dtype=np.bool_).astype("u1")
    f = np.array(2.5, dtype="<f8")                                          # a scalar: shape []
    return {
        "a": ("F32", [2, 3], a.astype("<f4").tobytes()),
        "b": ("F16", [4], b.tobytes()),
        "c": ("BF16", [2, 2], c.tobytes()),
        "d": ("I64", [3], d.tobytes()),
        "e": ("BOOL", [3], e.tobytes()),
        "f": ("F64", [], f.tobytes()),
    }


def write(path):
    """Data in an order other than the header's, and a header padded to 3 mod 8 bytes so that the F32, F64 and
    I64 data sit at addresses unaligned for their type: the format allows both, so the reader relies on neither."""
    tensors = known_tensors()
    order = ["e", "c", "a", "f", "d", "b"]
    header, offset = {"__metadata__": {"source": "read_safetensors.py"}}, 0
    for name in order:
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header).encode("utf-8")
    text += b" " * ((3 - len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(tensors[name][2] for name in order))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write(sys.argv[2])
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for name, (dtype, shape, values) in sorted(read(sys.argv[1]).items()):
        print(f"{name}\t{dtype}\t{','.join(str(d) for d in shape)}\t{float(values.sum(dtype=np.float64))!r}")


if __name__ == "__main__":
    main()
