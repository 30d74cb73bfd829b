#!/usr/bin/python3
"""Compares the quantized linears of two checkpoints (safetensors, via read_safetensors.py's independent reader).

    compare_weights.py A.safetensors B.safetensors [MIN_EQUAL]

Prints, over every tensor whose name ends in "_proj.weight" or "fc1.weight"/"fc2.weight", the fraction of elements
that are exactly equal (the quantized codes agree where the dequantized values do) and the smallest fraction of
any one tensor; exits 1 when that smallest fraction is below MIN_EQUAL (default 0.999) or the names differ.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read_safetensors import read  # noqa: E402


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    a, b = read(sys.argv[1]), read(sys.argv[2])
    minimum = float(sys.argv[3]) if len(sys.argv) == 4 else 0.999
    if sorted(a) != sorted(b):
        sys.exit("the checkpoints hold different tensors")
    linears = [n for n in sorted(a) if n.endswith(("_proj.weight", "fc1.weight", "fc2.weight"))]
    if not linears:
        sys.exit("no quantized linear found")
    equal = total = 0
    worst, worst_name = 1.0, ""
    for name in linears:
        same = (a[name][2] == b[name][2])
        equal += int(same.sum())
        total += same.size
        if same.mean() < worst:
            worst, worst_name = float(same.mean()), name
    print(f"{len(linears)} linears: {equal} of {total} weights equal ({equal / total:.6f}); "
          f"smallest fraction {worst:.6f}{' (' + worst_name + ')' if worst_name else ''}")
    sys.exit(0 if worst >= minimum else 1)


if __name__ == "__main__":
    main()
