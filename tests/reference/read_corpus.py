#!/usr/bin/python3
"""Independent reader of qforge's synthetic-corpus HDF5 file (h5py + numpy), the reference for tests/test_corpus.cpp.

    read_corpus.py FILE     prints one JSON object:
      {"attributes": {NAME: int or the attribute's string},
       "datasets": {NAME: {"dtype": "uint16", "shape": [...], "chunks": [...] or null, "compression": "gzip" or null}},
       "samples": [{"index": i, "length": L, "complete": 0/1, "checksum": C, "padding_nonzero": P}, ...]}
    C: zlib.crc32 of the sample's first L token ids as little-endian uint32; P: nonzero ids past L.

Exits 1 with a message on stderr when the file lacks a dataset.
"""
import json
import sys
import zlib

import h5py
import numpy as np


def attribute_value(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(dataset):
    return {"dtype": str(dataset.dtype), "shape": list(dataset.shape),
            "chunks": list(dataset.chunks) if dataset.chunks else None, "compression": dataset.compression}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with h5py.File(sys.argv[1], "r") as f:
        for name in ("tokens", "lengths", "complete"):
            if name not in f:
                sys.exit(f"{sys.argv[1]}: no dataset '{name}'")
        tokens, lengths, complete = f["tokens"][()], f["lengths"][()], f["complete"][()]
        samples = []
        for i, length in enumerate(lengths.tolist()):
            row = tokens[i]
            samples.append({"index": i, "length": length, "complete": int(complete[i]),
                            "checksum": zlib.crc32(row[:length].astype("<u4").tobytes()),
                            "padding_nonzero": int(np.count_nonzero(row[length:]))})
        print(json.dumps({"attributes": {k: attribute_value(v) for k, v in f.attrs.items()},
                          "datasets": {name: describe(f[name]) for name in ("tokens", "lengths", "complete")},
                          "samples": samples}))


if __name__ == "__main__":
    main()
