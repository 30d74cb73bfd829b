#!/usr/bin/python3
"""Compares two directories of per-item task samples, item for item.

    compare_samples.py OURS_DIR REF_DIR [--tasks piqa,arc_easy,winogrande] [--limit 50]

Reads OURS_DIR/samples_<task>.jsonl (qforge eval tasks --log-samples) and REF_DIR/samples_<task>.jsonl
(score_tasks.py), matching lines by doc_id (any order; extra keys ignored), and checks for every item:
  - the [context, continuation] strings are equal;
  - each loglikelihood agrees within LL_TOLERANCE * max(1, |ll|) (one side computes in float32);
  - is_greedy is equal, unless the reference's greedy margin for that request (greedy_margins, written by
    score_tasks.py: the smallest logp[token] - max other logp over the continuation) is within tolerance of 0;
  - the prediction is equal, unless the reference's top two lls are within 2 x tolerance (a near tie, counted and
    printed, not a failure).
Prints per task: items compared, max |delta ll|, max relative delta, predictions equal, near ties (and those whose
predictions differ), acc on each side. Exits 1 on any mismatch (naming task, doc_id and values), on a missing file
or on fewer items than --limit; 0 otherwise.
"""
import argparse
import json
import os
import sys

LL_TOLERANCE = 1e-4  # relative to max(1, |ll|)


def tolerance(ll):
    return LL_TOLERANCE * max(1.0, abs(ll))


def _pairs(args):
    # [[ctx, cont], ...]; also accept the harness's {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
    if isinstance(args, dict):
        keys = sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]))
        return [[args[k]["arg_0"], args[k]["arg_1"]] for k in keys]
    return [list(a) for a in args]


def _resps(resps):
    # [[ll, greedy], ...]; also accept the harness's nesting [[[ll, greedy]], ...]
    out = []
    for r in resps:
        if len(r) == 1 and isinstance(r[0], (list, tuple)):
            r = r[0]
        out.append((float(r[0]), bool(r[1])))
    return out


def load(path):
    items = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            d = int(rec["doc_id"])
            if d in items:
                raise ValueError("%s:%d: doc_id %d appears twice" % (path, n, d))
            items[d] = dict(arguments=_pairs(rec["arguments"]), resps=_resps(rec["resps"]),
                            target=int(rec["target"]), prediction=rec.get("prediction"),
                            acc=rec.get("acc"), acc_norm=rec.get("acc_norm"), margins=rec.get("greedy_margins"))
    return items


def argmax_first(values):
    return max(range(len(values)), key=values.__getitem__)  # max() keeps the first of equal maxima, as numpy's argmax


def compare_task(task, ours_dir, ref_dir, limit, errors):
    paths = [os.path.join(d, "samples_%s.jsonl" % task) for d in (ours_dir, ref_dir)]
    sides = []
    for p in paths:
        if not os.path.isfile(p):
            errors.append("%s: missing %s" % (task, p))
            return
        try:
            sides.append(load(p))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            errors.append("%s: cannot read %s: %s" % (task, p, e))
            return
    ours, ref = sides
    ids = sorted(ref)
    if limit is not None:
        for name, side in (("ours", ours), ("reference", ref)):
            if len(side) < limit:
                errors.append("%s: %s holds %d items, fewer than --limit %d" % (task, name, len(side), limit))
        ids = [i for i in range(limit)]
    else:
        if sorted(ours) != ids:
            errors.append("%s: doc_ids differ (ours %d items, reference %d)" % (task, len(ours), len(ref)))
    n = max_abs = max_rel = preds_equal = acc_o = acc_r = n_near = 0
    near_ties, greedy_flips = [], []
    for d in ids:
        if d not in ours or d not in ref:
            errors.append("%s doc_id %d: missing from %s" % (task, d, "ours" if d not in ours else "reference"))
            continue
        o, r = ours[d], ref[d]
        where = "%s doc_id %d" % (task, d)
        n += 1
        if o["arguments"] != r["arguments"]:
            errors.append("%s: arguments differ\n    ours %r\n    ref  %r" % (where, o["arguments"], r["arguments"]))
            continue
        if len(o["resps"]) != len(r["resps"]):
            errors.append("%s: %d responses vs %d" % (where, len(o["resps"]), len(r["resps"])))
            continue
        if o["target"] != r["target"]:
            errors.append("%s: target %d vs %d" % (where, o["target"], r["target"]))
        lls_r = [x[0] for x in r["resps"]]
        top = sorted(lls_r, reverse=True)
        near_tie = len(top) > 1 and top[0] - top[1] <= 2 * tolerance(top[0])
        n_near += int(near_tie)
        for k, ((llo, go), (llr, gr)) in enumerate(zip(o["resps"], r["resps"])):
            delta = abs(llo - llr)
            max_abs = max(max_abs, delta)
            max_rel = max(max_rel, delta / max(1.0, abs(llr)))
            if not delta <= tolerance(llr):  # also catches NaN
                errors.append("%s choice %d: ll %.9g vs reference %.9g (|delta| %.3g > tolerance %.3g)"
                              % (where, k, llo, llr, delta, tolerance(llr)))
            elif go != gr:
                m = r["margins"][k] if r["margins"] is not None and k < len(r["margins"]) else None
                if m is not None and abs(m) <= tolerance(llr):
                    greedy_flips.append("%s choice %d: is_greedy %s vs reference %s at greedy margin %.3g"
                                        % (where, k, go, gr, m))
                else:
                    errors.append("%s choice %d: is_greedy %s vs reference %s (ll %.9g vs %.9g, greedy margin %s)"
                                  % (where, k, go, gr, llo, llr, "%.3g" % m if m is not None else "unknown"))
        pred_r = argmax_first(lls_r)
        pred_o = o["prediction"] if o["prediction"] is not None else argmax_first([x[0] for x in o["resps"]])
        if r["prediction"] is not None and r["prediction"] != pred_r:
            errors.append("%s: reference prediction %s is not the argmax %d of its lls"
                          % (where, r["prediction"], pred_r))
        if pred_o == pred_r:
            preds_equal += 1
        elif near_tie:
            near_ties.append("%s: near tie, prediction %d vs reference %d (top lls %.9g, %.9g)"
                             % (where, pred_o, pred_r, top[0], top[1]))
        else:
            errors.append("%s: prediction %d vs reference %d (lls ours %s, reference %s)"
                          % (where, pred_o, pred_r, [x[0] for x in o["resps"]], lls_r))
        acc_o += int(pred_o == o["target"])
        acc_r += int(pred_r == r["target"])
    if n:
        print("%-12s items %4d  max|dll| %.3g  max rel %.3g  predictions equal %d/%d  near ties %d  "
              "acc ours %.4f ref %.4f" % (task, n, max_abs, max_rel, preds_equal, n, n_near, acc_o / n, acc_r / n))
    if near_ties:
        print("  %d near tie(s) with differing predictions (accepted):" % len(near_ties))
    for line in near_ties + greedy_flips:
        print("  " + line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ours_dir")
    ap.add_argument("ref_dir")
    ap.add_argument("--tasks", default="piqa,arc_easy,winogrande")
    ap.add_argument("--limit", type=int)
    a = ap.parse_args()
    errors = []
    for task in [t for t in a.tasks.split(",") if t]:
        compare_task(task, a.ours_dir, a.ref_dir, a.limit, errors)
    if errors:
        print("MISMATCH (%d):" % len(errors))
        for e in errors[:50]:
            print("  " + e)
        if len(errors) > 50:
            print("  ... and %d more" % (len(errors) - 50))
        sys.exit(1)
    print("all items agree (LL_TOLERANCE %g relative)" % LL_TOLERANCE)


if __name__ == "__main__":
    main()
