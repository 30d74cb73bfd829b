"""The GEMM floor of a bench/compare cell: the matrix-product FLOPs that the task cannot avoid (from the model's
config.json) over the fastest fp32 matmul rate either side measured on this machine in the same run.

Both sides run the same sgemm. No fp32 implementation of the same computation can finish in less time than the
floor, so PyTorch's time over the floor is the largest speed-up that any implementation could show: the cell's
ceiling. A target above the ceiling cannot be met on this machine without changing the arithmetic (fewer FLOPs or
lower precision), which the NLL check forbids.
"""
import json
import os


def llama_shape(model_dir):
    """The sizes the FLOP count needs, or None for a model that is not LLaMA-shaped."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    if c.get("model_type") != "llama":
        return None
    heads = c["num_attention_heads"]
    return {"hidden": c["hidden_size"], "inter": c["intermediate_size"], "layers": c["num_hidden_layers"],
            "heads": heads, "kv_heads": c.get("num_key_value_heads", heads), "vocab": c["vocab_size"],
            "head_dim": c["hidden_size"] // heads}


def forward_flops(s, batch, seq_len):
    """Matrix-product FLOPs of one forward pass over `batch` sequences of `seq_len` tokens: every linear layer and
    the head at every position, and causal attention (q k^T and probs v over the keys each query sees)."""
    h, d = s["hidden"], s["head_dim"]
    linear_macs = s["layers"] * (2 * h * h + 2 * h * s["kv_heads"] * d + 3 * h * s["inter"]) + h * s["vocab"]
    keys_seen = seq_len * (seq_len + 1) // 2
    attention_macs = s["layers"] * s["heads"] * d * 2 * keys_seen
    return 2 * batch * (seq_len * linear_macs + attention_macs)


def unit_flops(task, model_dir, spec):
    """FLOPs per timed unit: a perplexity window (one forward), or a QAT step (the teacher's forward, the
    student's forward, and its backward at twice a forward: the input and the weight gradients); None for other
    tasks (decoding is bound by memory, not matrix products) and other model families."""
    s = llama_shape(model_dir)
    if s is None:
        return None
    if task == "ppl":
        return forward_flops(s, 1, spec["seq_len"])
    if task == "qat-step":
        return 4 * forward_flops(s, spec["batch"], spec["seq_len"])
    return None


def floor_ms(flops, ranks, gflops_per_rank):
    """The unit's time at the measured rate, every rank multiplying its share at once."""
    if flops is None or not gflops_per_rank:
        return None
    return 1e3 * flops / (ranks * gflops_per_rank * 1e9)
