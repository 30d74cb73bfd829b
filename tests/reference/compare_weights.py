#!/usr/bin/python3
"""Compares the quantized linears of two checkpoints (safetensors, via read_safetensors.py's independent reader).

    compare_weights.py A.safetensors B.safetensors [MIN_EQUAL]

Prints, over every tensor whose name ends in "_proj.weight" or "fc1.weight"/"fc2.weight", the fraction of elements
whose quantized code agrees and the smallest fraction of any one tensor; exits 1 when that smallest fraction is
below MIN_EQUAL (default 0.999) or the names differ. The checkpoints hold dequantized values, scale * (q - zero):
two runs whose Hessians differ in the last bits give scales a few ulps apart, so the same code shows as values
equal to SAME_CODE_REL_TOL relative, while another code moves the value by a whole step (at least 1/2^bits of it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read_safetensors import read  # noqa: E402

SAME_CODE_REL_TOL = 1e-5


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
        x, y = a[name][2], b[name][2]
        same = abs(x - y) <= SAME_CODE_REL_TOL * abs(x).clip(min=abs(y))
        equal += int(same.sum())
        total += same.size
        if same.mean() < worst:
            worst, worst_name = float(same.mean()), name
    print(f"{len(linears)} linears: {equal} of {total} codes equal ({equal / total:.6f}); "
          f"smallest fraction {worst:.6f}{' (' + worst_name + ')' if worst_name else ''}")
    sys.exit(0 if worst >= minimum else 1)


if __name__ == "__main__":
    main()
