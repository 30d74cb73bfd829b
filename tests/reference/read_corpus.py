#!/usr/bin/python3
"""Independent reader of qforge's synthetic-corpus HDF5 file (h5py + numpy), the reference for tests/test_corpus.cpp.

    read_corpus.py FILE     prints one JSON object:
      {"attributes": {NAME: int or the attribute's string},
       "datasets": {NAME: {"dtype": "uint16", "shape": [...], "chunks": [...] or null, "compression": "gzip" or null}},
       "samples": [{"index": i, "length": L, "complete": 0/1, "checksum": C, "padding_nonzero": P}, ...]}
    C: zlib.crc32 of the sample's first L token ids as little-endian uint32; P: nonzero ids past L.
    When the file has "topk_ids" and "topk_logprobs" [N, seq_len, K], both appear under "datasets" and each sample
    also has "topk_checksum": zlib.crc32 of ids[:L-1] as little-endian uint32 followed by logprobs[:L-1] as
    little-endian float32 (position-major), "topk_padding_bad": positions L-1.. whose id is not 0 or log-prob not
    -inf, and "topk_unsorted": positions < L-1 whose log-probs are not in descending order.

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
        names = ["tokens", "lengths", "complete"]
        has_topk = "topk_ids" in f and "topk_logprobs" in f
        if has_topk:
            names += ["topk_ids", "topk_logprobs"]
            topk_ids, topk_logprobs = f["topk_ids"][()], f["topk_logprobs"][()]
        samples = []
        for i, length in enumerate(lengths.tolist()):
            row = tokens[i]
            sample = {"index": i, "length": length, "complete": int(complete[i]),
                      "checksum": zlib.crc32(row[:length].astype("<u4").tobytes()),
                      "padding_nonzero": int(np.count_nonzero(row[length:]))}
            if has_topk:
                ids, logprobs = topk_ids[i], topk_logprobs[i]
                valid = length - 1
                crc = zlib.crc32(ids[:valid].astype("<u4").tobytes())
                sample["topk_checksum"] = zlib.crc32(logprobs[:valid].astype("<f4").tobytes(), crc)
                bad = (ids[valid:] != 0).any(axis=1) | ~np.isneginf(logprobs[valid:]).all(axis=1)
                sample["topk_padding_bad"] = int(np.count_nonzero(bad))
                sample["topk_unsorted"] = int(np.count_nonzero((np.diff(logprobs[:valid], axis=1) > 0).any(axis=1)))
            samples.append(sample)
        print(json.dumps({"attributes": {k: attribute_value(v) for k, v in f.attrs.items()},
                          "datasets": {name: describe(f[name]) for name in names},
                          "samples": samples}))


if __name__ == "__main__":
    main()
