#!/usr/bin/python3
"""An independent Python scorer of multiple-choice tasks on a llama2.c model (float64 torch, one thread).

    score_tasks.py --model stories260K.bin --tokenizer tok512.bin --tasks-dir /work/shared/tasks \
        --tasks piqa,arc_easy,winogrande --limit 50 --out DIR
    score_tasks.py --model stories260K.bin --tokenizer tok512.bin --selftest

Writes DIR/samples_<task>.jsonl, one line per item:
    {"doc_id", "arguments": [[context, continuation], ...], "resps": [[loglikelihood, is_greedy], ...],
     "target", "prediction", "acc", "acc_norm" (piqa, arc_easy only), "choices", "greedy_margins"}
(greedy_margins: per request, the smallest logp[token] - max other logp over the continuation; is_greedy is
whether it is >= 0, and compare_samples.py lets is_greedy differ only where it is within tolerance of 0.)
and prints acc (and acc_norm) per task. Requests are built as lm-evaluation-harness v0.4 builds them, written here
from its public task definitions; the model and tokenizer are llama2c_model.py's. Nothing is shared with the C++.

    piqa        context "Question: {goal}\\nAnswer:", continuations " " + sol_i; gold from valid-labels.lst
    arc_easy    context "Question: {question}\\nAnswer:", continuations " " + answer_i; gold "answerK" -> K-1
    winogrande  contexts sentence[:idx] + option_i (idx of "_"), continuation " " + sentence[idx+1:].strip()
    loglikelihood: the harness's _encode_pair (trailing spaces of the context move to the continuation),
        [BOS] + encode(context) / [BOS] + encode(context + continuation), input (ctx + cont)[-(seq_len+1):][:-1]
    acc: argmax of the lls (first on ties); acc_norm: argmax of ll / len(choice) (characters)

--selftest greedy-decodes from BOS + encode("Once upon a time") and exits 1 unless it continues as run.c's
documented output does.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama2c_model import BOS, Llama2C, Tokenizer  # noqa: E402

MAX_LENGTH = 512
SELFTEST_PROMPT = "Once upon a time"
SELFTEST_EXPECTED = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
                     "One day, she saw a big, red ball.")


# ---------------------------------------------------------------------------------------------------- documents

def _between(s, start, end):
    i = s.index(start) + len(start)
    j = s.index(end, i) if end is not None else len(s)
    return s[i:j]


def piqa_docs(tasks_dir):
    d = os.path.join(tasks_dir, "piqa")
    with open(os.path.join(d, "valid.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(d, "valid-labels.lst"), encoding="utf-8") as f:
        labels = [int(line) for line in f if line.strip()]
    if len(rows) != len(labels):
        raise ValueError("piqa: %d items but %d labels" % (len(rows), len(labels)))
    for r, gold in zip(rows, labels):
        yield dict(context="Question: %s\nAnswer:" % r["goal"], choices=[r["sol1"], r["sol2"]], gold=gold)


def _load_list(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def arc_docs(tasks_dir, sub="arc-easy"):
    prefix = "Please choose the correct answer to the question: "
    for r in _load_list(os.path.join(tasks_dir, sub, "test.json")):
        ins = r["instruction"]
        if not ins.startswith(prefix):
            raise ValueError("arc: unexpected instruction %r" % ins[:80])
        body, fmt = ins[len(prefix):].rsplit("\n\nAnswer format: ", 1)
        n = len(fmt.split("/"))
        if fmt != "/".join("answer%d" % (k + 1) for k in range(n)):
            raise ValueError("arc: unexpected answer format %r" % fmt)
        question, answers = body.rsplit("\n\nAnswer1: ", 1)
        choices = []
        for k in range(2, n + 1):
            a, answers = answers.split(" Answer%d: " % k, 1)
            choices.append(a)
        choices.append(answers)
        gold = int(r["answer"][len("answer"):]) - 1
        if not r["answer"].startswith("answer") or not 0 <= gold < n:
            raise ValueError("arc: bad answer %r" % r["answer"])
        yield dict(context="Question: %s\nAnswer:" % question, choices=choices, gold=gold)


def winogrande_docs(tasks_dir):
    prefix = "Please choose the correct answer to fill in the blank to complete the given sentence: "
    for r in _load_list(os.path.join(tasks_dir, "winogrande", "test.json")):
        ins = r["instruction"]
        if not ins.startswith(prefix) or not ins.endswith(" Answer format: option1/option2"):
            raise ValueError("winogrande: unexpected instruction %r" % ins[:80])
        body = ins[len(prefix):-len(" Answer format: option1/option2")]
        sentence, options = body.rsplit("\n\nOption1: ", 1)
        opt1, opt2 = options.split(" Option2: ", 1)
        gold = {"option1": 0, "option2": 1}[r["answer"]]
        idx = sentence.index("_")
        continuation = " " + sentence[idx + 1:].strip()
        yield dict(contexts=[sentence[:idx] + o for o in (opt1, opt2)], continuation=continuation,
                   choices=[opt1, opt2], gold=gold)


TASKS = {
    "piqa": (piqa_docs, True),
    "arc_easy": (arc_docs, True),
    "winogrande": (winogrande_docs, False),
}


def requests_of(doc):
    if "contexts" in doc:
        return [[c, doc["continuation"]] for c in doc["contexts"]]
    return [[doc["context"], " " + c] for c in doc["choices"]]


# ---------------------------------------------------------------------------------------------------- scoring

class Scorer:
    def __init__(self, model, tok):
        self.model, self.tok = model, tok

    def encode_pair(self, context, continuation):
        n = len(context) - len(context.rstrip())
        if n > 0:
            continuation = context[-n:] + continuation
            context = context[:-n]
        whole = self.tok.encode(context + continuation, bos=True)
        ctx = self.tok.encode(context, bos=True)
        return ctx, whole[len(ctx):]

    def loglikelihood(self, context, continuation):
        ctx, cont = self.encode_pair(context, continuation)
        if not cont:
            raise ValueError("empty continuation for %r / %r" % (context, continuation))
        full = (ctx + cont)[-(MAX_LENGTH + 1):]
        inp = full[:-1]
        logp = torch.log_softmax(self.model.logits(inp), dim=-1)
        # the last len(cont) positions predict the continuation tokens
        rows = logp[len(inp) - len(cont):]
        target = torch.tensor(cont, dtype=torch.long)
        picked = rows.gather(1, target[:, None])[:, 0]
        ll = float(picked.sum())
        greedy = bool((rows.argmax(dim=-1) == target).all())
        # the greedy margin: min over the continuation of logp[token] - max of the other logps; is_greedy can only
        # flip under rounding when this is near 0
        others = rows.scatter(1, target[:, None], float("-inf")).max(dim=-1).values
        margin = float((picked - others).min())
        return ll, greedy, margin


def argmax_first(values):
    return max(range(len(values)), key=values.__getitem__)  # max() keeps the first of equal maxima, as numpy's argmax


def score_task(scorer, name, tasks_dir, limit, out_dir):
    docs_fn, has_norm = TASKS[name]
    path = os.path.join(out_dir, "samples_%s.jsonl" % name)
    acc = acc_norm = n = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, doc in enumerate(docs_fn(tasks_dir)):
            if limit is not None and doc_id >= limit:
                break
            args = requests_of(doc)
            scored = [scorer.loglikelihood(c, k) for c, k in args]
            resps = [[ll, greedy] for ll, greedy, _ in scored]
            lls = [r[0] for r in resps]
            pred = argmax_first(lls)
            rec = dict(doc_id=doc_id, arguments=args, resps=resps, target=doc["gold"], prediction=pred,
                       acc=int(pred == doc["gold"]))
            if has_norm:
                rec["acc_norm"] = int(argmax_first([ll / len(c) for ll, c in zip(lls, doc["choices"])]) == doc["gold"])
                acc_norm += rec["acc_norm"]
            rec["choices"] = doc["choices"]
            rec["greedy_margins"] = [m for _, _, m in scored]
            acc += rec["acc"]
            n += 1
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    line = "%-12s items %4d  acc %.4f" % (name, n, acc / n if n else float("nan"))
    if has_norm:
        line += "  acc_norm %.4f" % (acc_norm / n if n else float("nan"))
    print(line, flush=True)


def selftest(model, tok):
    tokens = tok.encode(SELFTEST_PROMPT, bos=True)
    out = SELFTEST_PROMPT.encode("utf-8")
    want = SELFTEST_EXPECTED.encode("utf-8")
    while len(out) < len(want) and len(tokens) < model.config["seq_len"]:
        nxt = int(model.logits(tokens)[-1].argmax())
        if nxt == BOS:
            break
        out += tok.decode_piece(tokens[-1], nxt)
        tokens.append(nxt)
    got = out[:len(want)].decode("utf-8", errors="replace")
    if got != SELFTEST_EXPECTED:
        print("selftest FAILED\n  expected: %s\n  got:      %s" % (SELFTEST_EXPECTED, got))
        return False
    print("selftest ok: %s" % got)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--tasks-dir")
    ap.add_argument("--tasks", default="piqa,arc_easy,winogrande")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = Llama2C(a.model), Tokenizer(a.tokenizer)
    if a.selftest:
        ok = selftest(model, tok)
        if not ok or not a.out:
            sys.exit(0 if ok else 1)
    if not a.tasks_dir or not a.out:
        ap.error("--tasks-dir and --out are required to score tasks")
    names = [t for t in a.tasks.split(",") if t]
    for t in names:
        if t not in TASKS:
            ap.error("unknown task %r (known: %s)" % (t, ", ".join(TASKS)))
    os.makedirs(a.out, exist_ok=True)
    scorer = Scorer(model, tok)
    t0 = time.time()
    for t in names:
        score_task(scorer, t, a.tasks_dir, a.limit, a.out)
    print("scored in %.2f s" % (time.time() - t0))


if __name__ == "__main__":
    main()
