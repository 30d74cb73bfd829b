#!/usr/bin/python3
"""Compares two RPTQ files (rptq.safetensors, read with read_safetensors.py's independent reader).

    compare_rptq.py A B                      exits 1 unless every reorder index (*_index) is equal and every static
                                             activation parameter (*.act_scale, *.act_zero) equal to REL_TOL
    compare_rptq.py --swap-first-index A B   writes B: A with the first output index's first entry duplicated
                                             (no longer a permutation), for the damaged-file check
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read_safetensors import read  # noqa: E402

REL_TOL = 1e-5  # min/max of activations that TP's reduction order changes in the last bits (8e-7 measured)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--swap-first-index":
        shutil.copyfile(sys.argv[2], sys.argv[3])
        with open(sys.argv[3], "r+b") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n).decode("utf-8"))
            name = sorted(k for k in header if k.endswith("output_index"))[0]
            begin = header[name]["data_offsets"][0]
            f.seek(8 + n + begin)
            first = f.read(8)
            f.write(first)  # entry 1 := entry 0 (I64): no longer a permutation
        return
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = read(sys.argv[1]), read(sys.argv[2])
    if sorted(a) != sorted(b):
        sys.exit("the files hold different tensors")
    indexes = [n for n in a if n.endswith("_index")]
    params = [n for n in a if n.endswith((".act_scale", ".act_zero"))]
    for name in indexes:
        if not np.array_equal(a[name][2], b[name][2]):
            sys.exit(f"{name} differs")
    worst = 0.0
    for name in params:
        x, y = a[name][2], b[name][2]
        scale = np.maximum(np.abs(x), np.abs(y)).max()
        worst = max(worst, float(np.abs(x - y).max() / max(scale, 1e-30)))
    print(f"{len(indexes)} reorder indexes equal, {len(params)} activation parameters within {worst:.2g} relative")
    sys.exit(0 if worst <= REL_TOL else 1)


if __name__ == "__main__":
    main()
