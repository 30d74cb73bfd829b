#!/usr/bin/python3
"""IST-DASLab/gptq's fasterquant (gptq.py) and Quantizer (quant.py), transcribed plainly, for bench_gptq.

Reads W [rows, cols] and H [cols, cols] as raw little-endian float32 from --dir (W.f32, H.f32), runs GPTQ --rounds
times on --threads threads, writes the integer codes of the last round (original column order) as raw int32 to
codes.i32 and prints `seconds BEST` (the fastest round, fasterquant only). The codes are the reference's own
`clamp(round(x / scale) + zero, 0, maxq)`, kept beside the dequantized value it returns.
"""
import argparse
import os
import time

import numpy as np
import torch


class Quantizer:
    def __init__(self, bits, sym):
        self.maxq = torch.tensor(2 ** bits - 1)
        self.sym = sym

    def find_params(self, x):  # perchannel, weight=True
        tmp = torch.zeros(x.shape[0])
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1
        self.scale = (xmax - xmin) / self.maxq
        if self.sym:
            self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = torch.round(-xmin / self.scale)
        self.scale = self.scale.unsqueeze(1)
        self.zero = self.zero.unsqueeze(1)


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero), q


def fasterquant(W, H, bits, sym, blocksize, percdamp, groupsize, actorder, static_groups):
    columns = W.shape[1]
    quantizer = Quantizer(bits, sym)
    W = W.clone().float()
    H = H.clone()
    if groupsize == -1:
        quantizer.find_params(W)

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    if static_groups:
        import copy
        groups = []
        for i in range(0, columns, groupsize):
            g = copy.deepcopy(quantizer)
            g.find_params(W[:, i:(i + groupsize)])
            groups.append(g)

    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)

    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)

    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H

    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1

        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]

            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)])
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    quantizer = groups[idx // groupsize]

            q, code = quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq)
            q = q.flatten()
            Q1[:, i] = q
            codes[:, i1 + i] = code.flatten()
            Losses1[:, i] = (w - q) ** 2 / d ** 2

            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1

        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2

        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    if actorder:
        Q = Q[:, invperm]
        codes = codes[:, invperm]
    return Q, codes, torch.sum(Losses).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--cols", type=int, required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--groupsize", type=int, default=-1)
    parser.add_argument("--asym", action="store_true")
    parser.add_argument("--act-order", action="store_true")
    parser.add_argument("--static-groups", action="store_true")
    parser.add_argument("--blocksize", type=int, default=128)
    parser.add_argument("--percdamp", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    W = torch.from_numpy(np.fromfile(os.path.join(args.dir, "W.f32"), dtype="<f4").reshape(args.rows, args.cols))
    H = torch.from_numpy(np.fromfile(os.path.join(args.dir, "H.f32"), dtype="<f4").reshape(args.cols, args.cols))
    best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        _, codes, _ = fasterquant(W, H, args.bits, not args.asym, args.blocksize, args.percdamp, args.groupsize,
                                  args.act_order, args.static_groups)
        best = min(best, time.perf_counter() - start)
    codes.numpy().astype("<i4").tofile(os.path.join(args.dir, "codes.i32"))
    print(f"seconds {best:.6f}")


if __name__ == "__main__":
    main()
