#!/usr/bin/python3
"""An independent reader and float64 forward for llama2.c legacy checkpoints, and its BPE tokenizer.

Written from the public definitions (karpathy/llama2.c: the legacy export of export.py, model.py's forward and
run.c's encode/decode); it shares no code with the C++ side. Used by score_tasks.py.

    Llama2C(path)        the model: .config (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
                         shared_classifier) and .logits(tokens) -> float64 tensor [len(tokens), vocab]
    Tokenizer(path)      tok512.bin-style vocab: .encode(text, bos) and .decode_piece(prev, token)
"""
import math
import struct

import numpy as np
import torch

BOS = 1
EOS = 2
RMS_EPS = 1e-5
ROPE_THETA = 10000.0


class Llama2C:
    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("<7i", data, 0)
        shared = vocab > 0
        vocab = abs(vocab)
        head_size = dim // n_heads
        kv_dim = n_kv_heads * head_size
        self.config = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                           vocab_size=vocab, seq_len=seq_len, shared_classifier=shared)
        floats = np.frombuffer(data, dtype="<f4", offset=7 * 4)
        pos = 0

        def take(*shape):
            nonlocal pos
            n = int(np.prod(shape))
            if pos + n > floats.size:
                raise ValueError("%s: truncated checkpoint" % path)
            t = torch.from_numpy(floats[pos:pos + n].astype(np.float64).reshape(shape))
            pos += n
            return t

        L = n_layers
        self.tok_emb = take(vocab, dim)
        self.rms_att = take(L, dim)
        self.wq = take(L, dim, dim)
        self.wk = take(L, kv_dim, dim)
        self.wv = take(L, kv_dim, dim)
        self.wo = take(L, dim, dim)
        self.rms_ffn = take(L, dim)
        self.w1 = take(L, hidden, dim)
        self.w2 = take(L, dim, hidden)
        self.w3 = take(L, hidden, dim)
        self.rms_final = take(dim)
        take(seq_len, head_size // 2)  # freq_cis_real, unused: the rotation is computed below in float64
        take(seq_len, head_size // 2)  # freq_cis_imag
        self.wcls = self.tok_emb if shared else take(vocab, dim)
        if pos != floats.size:
            raise ValueError("%s: %d trailing floats" % (path, floats.size - pos))
        self.head_size = head_size

    def _rope(self, x, n):
        # x [T, heads, head_size]; rotate the adjacent pairs (x[2i], x[2i+1]) by angle t * theta^(-2i/head_size)
        hs = self.head_size
        inv = 1.0 / (ROPE_THETA ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
        ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)  # [T, hs/2]
        cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        xr, xi = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = xr * cos - xi * sin
        out[..., 1::2] = xr * sin + xi * cos
        return out

    @staticmethod
    def _rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * w

    def logits(self, tokens):
        c = self.config
        T = len(tokens)
        if T == 0 or T > c["seq_len"]:
            raise ValueError("sequence of %d tokens (seq_len %d)" % (T, c["seq_len"]))
        H, KV, hs = c["n_heads"], c["n_kv_heads"], self.head_size
        rep = H // KV
        x = self.tok_emb[torch.tensor(tokens, dtype=torch.long)]
        mask = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
        for l in range(c["n_layers"]):
            h = self._rmsnorm(x, self.rms_att[l])
            q = (h @ self.wq[l].T).view(T, H, hs)
            k = (h @ self.wk[l].T).view(T, KV, hs)
            v = (h @ self.wv[l].T).view(T, KV, hs)
            q, k = self._rope(q, T), self._rope(k, T)
            k = k.repeat_interleave(rep, dim=1)  # query head h reads kv head h // rep
            v = v.repeat_interleave(rep, dim=1)
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, T, hs]
            att = (q @ k.transpose(1, 2)) / math.sqrt(hs) + mask
            att = torch.softmax(att, dim=-1)
            o = (att @ v).transpose(0, 1).reshape(T, H * hs)
            x = x + o @ self.wo[l].T
            h = self._rmsnorm(x, self.rms_ffn[l])
            x = x + (torch.nn.functional.silu(h @ self.w1[l].T) * (h @ self.w3[l].T)) @ self.w2[l].T
        x = self._rmsnorm(x, self.rms_final)
        return x @ self.wcls.T


class Tokenizer:
    """run.c's tokenizer: pieces as bytes, greedy highest-score pair merging, byte fallback at id byte + 3."""

    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        off = 4
        self.pieces, self.scores = [], []
        while off < len(data):
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off:off + n])
            self.scores.append(score)
            off += n
        self.ids = {}
        for i, p in enumerate(self.pieces):
            self.ids.setdefault(p, i)

    def encode(self, text, bos=False):
        raw = text.encode("utf-8")
        tokens = [BOS] if bos else []
        if raw:
            tokens.append(self.ids[b" "])  # the dummy prefix
        # split into UTF-8 characters as run.c does: a lead byte plus its continuation bytes (at most 4 in all)
        i = 0
        while i < len(raw):
            j = i + 1
            while j < len(raw) and (raw[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            ch = raw[i:j]
            if ch in self.ids:
                tokens.append(self.ids[ch])
            else:
                tokens.extend(b + 3 for b in ch)
            i = j
        while True:
            best, best_id, best_i = -1e10, -1, -1
            for k in range(len(tokens) - 1):  # BOS included, as in run.c (its piece merges with nothing)
                pid = self.ids.get(self.pieces[tokens[k]] + self.pieces[tokens[k + 1]], -1)
                if pid != -1 and self.scores[pid] > best:
                    best, best_id, best_i = self.scores[pid], pid, k
            if best_i == -1:
                break
            tokens[best_i:best_i + 2] = [best_id]
        return tokens

    def decode_piece(self, prev, token):
        p = self.pieces[token]
        if prev == BOS and p[:1] == b" ":
            p = p[1:]
        if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            try:
                return bytes([int(p[3:5], 16)])
            except ValueError:
                pass
        return p
