#!/usr/bin/python3
"""The PyTorch eager reference of bench/compare: a LLaMA written as Hugging Face transformers' modeling_llama.py
(eager attention), run the way its users run it, on a qforge model directory (config.json + safetensors).

Subcommands (each prints ONE JSON line on stdout; under 2 ranks rank 0 prints it):
  ppl       --model DIR --tokens FILE --seq-len L --threads T [--repeats R] [--batch-size 4] [--quant W-A-KV]
  generate  --model DIR --samples N --length L --threads T [--repeats R] [--seed S] [--greedy 3] [--top-k 50]
  qat-step  --model DIR --quant W-A-KV --batch B --seq-len L --threads T --steps S [--seed S]
  tokenize  --model DIR --text FILE --out FILE.bin   (llama2.c tokenizer.bin: one BOS, then the whole file)

Model: RMSNorm in fp32, rotate-half rotary with cached cos/sin tables gathered by position_ids, repeat_kv for
grouped-query attention, the full [T, T] score matrix with HF's additive mask (finfo.min, clamped), softmax in fp32,
SiLU-gated MLP, logits .float(); lm_head tied to the embedding when config.json says so.

ppl: qforge eval ppl's recipe (framework/eval/perplexity.cpp): non-overlapping windows of L tokens (the tail
dropped), windows dealt round-robin to ranks, batches of --batch-size of a rank's windows, logits of tokens
0..L-2 scored against tokens 1..L-1, NLL summed in fp64, mean over every scored token.

generate: LLM-QAT's generate_data.py: one sequence at a time from a random start token; model.generate greedy to
--greedy tokens (the start token counted), then model.generate with do_sample (HF's default top_k=50,
temperature 1) to --length tokens, each call a fresh past_key_values grown with torch.cat, the attention mask
grown with torch.cat and position_ids from its cumsum. Every sample has exactly --length tokens unless
--stop-at-eos.

qat-step: LLM-QAT's training step with qforge's quantizer semantics (quant/quantizer.h, quant/qat.h): the
teacher in full precision without gradients; the student a copy whose every decoder linear fake-quantizes its
weight (per output channel, symmetric) and its input (per token, symmetric), and whose attention fake-quantizes
the key and value projections' outputs before RoPE (per token over all KV heads, symmetric); min-max ranges
recomputed on every call in fp32, round-half-to-even, x_hat = round(x / scale) * scale, straight-through gradient
zeroed where |x| > 2 (no gradient to the scale). Loss: -sum_c softmax(teacher)_c log_softmax(student)_c, mean
over the positions 0..L-2. Backward, clip_grad_norm_(1.0), AdamW(lr 2e-5, betas (0.9, 0.999), eps 1e-8,
weight_decay 0) with HF's cosine schedule. Under 2 ranks the student is DistributedDataParallel (gloo) and the
global batch B is split over ranks.

Ranks: env RANK, WORLD_SIZE (> 1), MASTER_ADDR, MASTER_PORT -> torch.distributed gloo. A rank's times are
all-reduced with MAX (the slowest rank counts); peak_rss_mb is the largest over ranks; minflt is rank 0's.
"""
import argparse
import copy
import json
import math
import os
import resource
import struct
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from llama_model import parse_quant, load_model, Llama2cTokenizer

# ---- ranks, measurements --------------------------------------------------------------------------------------

def init_ranks():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=world)
        return dist.get_rank(), world
    return 0, 1


def all_reduce(values, op):
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def peak_rss_mb():
    """The largest peak RSS over ranks, MB (1e6 bytes, as qforge logs it)."""
    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    return all_reduce([mine], dist.ReduceOp.MAX)[0]


def emit(rank, record):
    if rank == 0:
        print(json.dumps(record), flush=True)


def common_record(task, args, world):
    return {"task": task, "impl": "pytorch", "model": args.model, "threads": args.threads, "ranks": world,
            "torch": torch.__version__}


# ---- tasks ----------------------------------------------------------------------------------------------------

def run_ppl(args, rank, world):
    model = load_model(args.model)
    if args.quant:
        model.set_quantizers(*parse_quant(args.quant))
    with open(args.tokens, "rb") as f:
        raw = f.read()
    tokens = torch.tensor(struct.unpack(f"<{len(raw) // 4}i", raw[: len(raw) // 4 * 4]), dtype=torch.long)
    L = args.seq_len
    if L < 2 or L > model.config.max_position_embeddings:
        raise SystemExit(f"--seq-len {L} must be in [2, {model.config.max_position_embeddings}]")
    windows = tokens.numel() // L
    if windows == 0:
        raise SystemExit(f"{args.tokens}: {tokens.numel()} tokens, fewer than one window of {L}")
    mine = list(range(rank, windows, world))

    def one_pass():
        nll_sum = torch.zeros(1, dtype=torch.float64)
        with torch.no_grad():
            for first in range(0, len(mine), args.batch_size):
                batch = torch.stack([tokens[w * L:(w + 1) * L] for w in mine[first:first + args.batch_size]])
                logits, _ = model(batch[:, :-1])
                nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1),
                                      reduction="none")
                nll_sum += nll.to(torch.float64).sum()
        if dist.is_initialized():
            dist.all_reduce(nll_sum)
        return nll_sum.item()

    if mine:  # warm-up: one batch, untimed
        with torch.no_grad():
            model(torch.stack([tokens[w * L:(w + 1) * L] for w in mine[:args.batch_size]])[:, :-1])
    seconds = []
    nll_sum = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        nll_sum = one_pass()
        seconds.append(time.perf_counter() - start)
    seconds = all_reduce(seconds, dist.ReduceOp.MAX)
    scored = windows * (L - 1)
    record = common_record("ppl", args, world)
    record.update({"nll": nll_sum / scored, "tokens": scored, "windows": windows, "seq_len": L,
                   "batch_size": args.batch_size, "seconds": seconds, "peak_rss_mb": peak_rss_mb()})
    emit(rank, record)


def hf_generate(model, input_ids, max_length, do_sample, top_k, generator, eos_token_id):
    """transformers' GenerationMixin.greedy_search / sample for one sequence, with past_key_values."""
    attention_mask = torch.ones_like(input_ids)
    past = None
    while input_ids.shape[-1] < max_length:
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(attention_mask == 0, 1)
        model_input = input_ids
        if past is not None:
            model_input = input_ids[:, -1:]
            position_ids = position_ids[:, -1].unsqueeze(-1)
        logits, past = model(model_input, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past, use_cache=True)
        scores = logits[:, -1, :]
        if do_sample:
            if top_k > 0:
                kth = torch.topk(scores, min(top_k, scores.size(-1)))[0][..., -1, None]
                scores = scores.masked_fill(scores < kth, -float("inf"))
            probs = F.softmax(scores, dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)
        if eos_token_id is not None and next_tokens.item() == eos_token_id:
            break
    return input_ids


def run_generate(args, rank, world):
    model = load_model(args.model)
    config = model.config
    if args.length > config.max_position_embeddings or args.length < 2:
        raise SystemExit(f"--length {args.length} must be in [2, {config.max_position_embeddings}]")
    starts = torch.randint(0, config.vocab_size, (args.samples,), generator=torch.Generator().manual_seed(args.seed))
    mine = list(range(rank, args.samples, world))
    eos = config.eos_token_id if args.stop_at_eos else None
    greedy = max(1, min(args.greedy, args.length))

    def one_sample(i):
        generator = torch.Generator().manual_seed(args.seed * 1000003 + i + 1)
        input_ids = torch.tensor([[int(starts[i])]])
        prefix = hf_generate(model, input_ids, greedy, False, 0, None, eos)
        if eos is not None and prefix[0, -1].item() == eos and prefix.shape[-1] > 1:
            return prefix
        return hf_generate(model, prefix, args.length, True, args.top_k, generator, eos)

    with torch.no_grad():
        if mine:  # warm-up: one short sample, untimed
            one_sample(mine[0])
        seconds, generated = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            generated = 0
            for i in mine:
                generated += one_sample(i).shape[-1] - 1
            seconds.append(time.perf_counter() - start)
    seconds = all_reduce(seconds, dist.ReduceOp.MAX)
    generated = int(all_reduce([generated], dist.ReduceOp.SUM)[0])
    record = common_record("generate", args, world)
    record.update({"samples": args.samples, "length": args.length, "greedy": greedy, "top_k": args.top_k,
                   "stop_at_eos": bool(args.stop_at_eos), "tokens": generated, "seconds": seconds,
                   "peak_rss_mb": peak_rss_mb()})
    emit(rank, record)


def cosine_schedule(total_steps):
    """transformers' get_cosine_schedule_with_warmup without warmup (LLM-QAT's lr_scheduler_type cosine)."""
    def factor(step):
        progress = step / max(1, total_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return factor


def run_qat_step(args, rank, world):
    if args.batch % world != 0:
        raise SystemExit(f"--batch {args.batch} is not a multiple of the {world} ranks")
    torch.manual_seed(args.seed)
    teacher = load_model(args.model)
    teacher.requires_grad_(False)
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    student.set_quantizers(*parse_quant(args.quant))
    student.train()
    config = teacher.config
    if args.seq_len < 2 or args.seq_len > config.max_position_embeddings:
        raise SystemExit(f"--seq-len {args.seq_len} must be in [2, {config.max_position_embeddings}]")
    model = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(args.steps + 1))
    data = torch.Generator().manual_seed(args.seed)
    local = args.batch // world

    def step():
        batch = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=data)
        input_ids = batch[rank::world]
        assert input_ids.shape[0] == local
        with torch.no_grad():
            teacher_logits, _ = teacher(input_ids)
        student_logits, _ = model(input_ids)
        s = student_logits[:, :-1, :]
        t = teacher_logits[:, :-1, :]
        loss = -(F.softmax(t, dim=-1) * F.log_softmax(s, dim=-1)).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step()]  # warm-up, untimed
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        seconds.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    seconds = all_reduce(seconds, dist.ReduceOp.MAX)
    losses = [x / world for x in all_reduce(losses, dist.ReduceOp.SUM)]  # the mean over ranks: the global batch's
    record = common_record("qat-step", args, world)
    record.update({"quant": args.quant, "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
                   "tokens_per_step": args.batch * (args.seq_len - 1), "seconds": seconds, "losses": losses,
                   "minflt_per_step": faults / args.steps, "peak_rss_mb": peak_rss_mb()})
    emit(rank, record)


def run_tokenize(args, rank, world):
    path = os.path.join(args.model, "tokenizer.bin")
    if not os.path.exists(path):
        raise SystemExit(f"{args.model}: no tokenizer.bin (only llama2.c tokenizers are supported here)")
    with open(args.text, "rb") as f:
        text = f.read()
    ids = Llama2cTokenizer(path).encode(text, bos=True)
    if rank == 0:
        with open(args.out, "wb") as f:
            f.write(struct.pack(f"<{len(ids)}i", *ids))
    emit(rank, {"task": "tokenize", "impl": "pytorch", "tokens": len(ids), "out": args.out})


def run_gemm(args, rank, world):
    """fp32 matmul GFLOP/s, best of 3 at each square size (every rank multiplying at once)."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        for _ in range(3):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2.0 * n ** 3 / (time.perf_counter() - start) / 1e9)
    emit(rank, {"task": "gemm", "impl": "pytorch", "gflops": best})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)

    def add(name, **kwargs):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--threads", type=int, default=1)
        return p

    p = add("ppl")
    p.add_argument("--tokens", required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--quant", default="")
    p = add("generate")
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", type=int, default=3)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--stop-at-eos", action="store_true")
    p = add("qat-step")
    p.add_argument("--quant", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-5)
    p = sub.add_parser("gemm")  # the fastest fp32 matmul rate here: bench/compare's GEMM floor
    p.add_argument("--threads", type=int, default=1)
    p = add("tokenize")
    p.add_argument("--text", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    rank, world = init_ranks()
    try:
        {"ppl": run_ppl, "generate": run_generate, "qat-step": run_qat_step, "tokenize": run_tokenize,
         "gemm": run_gemm}[args.task](args, rank, world)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
