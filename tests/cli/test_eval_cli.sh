#!/usr/bin/env bash
# End-to-end checks of `qforge eval tasks` on the real stories260K model (../shared): every task from the shared
# files, with results JSON, table and model size; item-for-item agreement with the independent Python scorer
# (tests/reference/score_tasks.py) on the first 50 items of PIQA, ARC-easy and WinoGrande; the same results on
# 1x1, TP 2, DP 2 and TP 2 x DP 2; bad data files fail cleanly. usage: test_eval_cli.sh QFORGE MPIEXEC SHARED_DIR
set -u
QFORGE=$1
MPIEXEC=$2
SHARED=$3
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"
reference="$(dirname "${BASH_SOURCE[0]}")/../reference"

stories_checkpoint eval
# The perplexity sets cut to a few windows' worth: these checks are about plumbing, bench/eval_tasks.sh runs them whole.
head -n 300 "$SHARED/data/wikitext-2/wiki.test.raw" >"$work/wiki.test.raw"
texts="wikitext2=$work/wiki.test.raw,c4=$SHARED/data/c4/c4_validation_2k.jsonl"
evaluate() {  # evaluate RANKS OUTDIR [options...]
  local ranks=$1 out=$2; shift 2
  "${MPI[@]}" -np "$ranks" "$QFORGE" eval tasks --model "$work/stories" --data-dir "$SHARED/tasks" --output "$out" \
    --set runtime.threads=1 --set log.progress_interval_s=0 --batch-size 16 "$@"
}
json() {  # json FILE PYTHON-EXPRESSION-ON-r: prints its value
  /usr/bin/python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print($2)" "$1"
}

# 1. Every task, 4 items each (MMLU: 4 per subject, 5-shot), and both perplexities, on 2 ranks.
all=piqa,arc_easy,arc_challenge,openbookqa,winogrande,boolq,hellaswag,mmlu,triviaqa,wikitext2,c4
run "$work/out" "$work/err" -- evaluate 2 "$work/all" --tasks "$all" --limit 4 --paths "$texts" \
  --set eval.c4_windows=32
/usr/bin/python3 - "$work/all/results.json" "$work/stories/model.safetensors" <<'EOF'
import json, os, sys
r = json.load(open(sys.argv[1]))
res = r["results"]
for t in ["piqa", "arc_easy", "arc_challenge", "openbookqa", "hellaswag"]:
    assert 0 <= res[t]["acc,none"] <= 1 and 0 <= res[t]["acc_norm,none"] <= 1, t
    p = res[t]["acc,none"]   # the standard error of a mean of 0/1 values: sqrt(p (1 - p) / (n - 1))
    assert abs(res[t]["acc_stderr,none"] - (p * (1 - p) / 3) ** 0.5) < 1e-12, t
    assert r["n-samples"][t]["effective"] == 4, t
for t in ["winogrande", "boolq"]:
    assert "acc_norm,none" not in res[t] and 0 <= res[t]["acc,none"] <= 1, t
assert r["n-samples"]["piqa"]["original"] == 1838 and r["n-samples"]["hellaswag"]["original"] == 10042
assert len(r["group_subtasks"]["mmlu"]) == 57 and r["n-shot"]["mmlu"] == 5
assert r["n-samples"]["mmlu"]["effective"] == 57 * 4
assert 0 <= r["groups"]["mmlu"]["acc,none"] <= 1 and 0 <= res["mmlu_abstract_algebra"]["acc,none"] <= 1
assert 0 <= res["triviaqa"]["exact_match,none"] <= 1
assert "passage" in r["configs"]["boolq"]["note"]
assert 1 < res["wikitext2"]["perplexity,none"] < 1e4 and res["c4"]["windows"] == 32
size = r["model_size"]
assert size["bytes"] == os.path.getsize(sys.argv[2]), size
# fp32 safetensors: 4 bytes per parameter and a JSON header (here 4.9 KB for 1 MB of weights)
assert 4 * size["parameters"] < size["bytes"] < 4 * size["parameters"] + 8192, size
print("piqa acc %.3f, mmlu acc %.3f, wikitext2 ppl %.1f, c4 ppl %.1f, %d bytes, %.3f bits/parameter" % (
    res["piqa"]["acc,none"], r["groups"]["mmlu"]["acc,none"], res["wikitext2"]["perplexity,none"],
    res["c4"]["perplexity,none"], size["bytes"], size["bits_per_parameter"]))
EOF
status=$?
[ $code -eq 0 ] && [ $status -eq 0 ] && grep -q '^|piqa|0|acc|' "$work/out" && grep -q '^note: boolq' "$work/out" \
  && grep -q '^|triviaqa|0|exact_match|' "$work/out" && grep -q '^model size: ' "$work/out"
check "eval tasks: every task (4 items each), perplexities, results.json, table, model size" $? || show
grep -E '^\|(piqa|arc_easy|winogrande|mmlu|triviaqa|wikitext2|c4)\||^model size' "$work/out"

# 2. The independent Python scorer agrees item for item on the first 50 items of PIQA, ARC-easy and WinoGrande.
tasks=piqa,arc_easy,winogrande
run "$work/out" "$work/err" -- evaluate 1 "$work/ours" --tasks "$tasks" --limit 50 --log-samples
/usr/bin/python3 "$reference/score_tasks.py" --model "$stories/stories260K.bin" --tokenizer "$stories/tok512.bin" \
  --tasks-dir "$SHARED/tasks" --tasks "$tasks" --limit 50 --out "$work/reference" >"$work/ref.log" 2>&1
/usr/bin/python3 "$reference/compare_samples.py" "$work/ours" "$work/reference" --tasks "$tasks" --limit 50 \
  >"$work/compare.log" 2>&1
status=$?
[ $code -eq 0 ] && [ $status -eq 0 ]
check "eval tasks: item for item equal to tests/reference/score_tasks.py (50 items of $tasks)" $? \
  || { show; cat "$work/ref.log" "$work/compare.log"; }
cat "$work/compare.log"

# 3. The same results on every grid: 1x1 (above), TP 2 x DP 1, TP 1 x DP 2, TP 2 x DP 2.
grid_tasks=piqa,arc_easy,winogrande,hellaswag,triviaqa
run "$work/out" "$work/err" -- evaluate 1 "$work/g11" --tasks "$grid_tasks" --limit 16 --log-samples
for layout in "2 2 g21" "2 1 g12" "4 2 g22"; do
  set -- $layout
  run "$work/out" "$work/err" -- evaluate "$1" "$work/$3" --tasks "$grid_tasks" --limit 16 --log-samples \
    --set parallel.tp="$2"
  /usr/bin/python3 - "$work/g11" "$work/$3" "$grid_tasks" <<'EOF'
import json, sys
one, other, tasks = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
a, b = json.load(open(one + "/results.json")), json.load(open(other + "/results.json"))
worst = 0.0
for t in tasks:
    for k, v in a["results"][t].items():
        if k.endswith(",none"): assert b["results"][t][k] == v, (t, k, v, b["results"][t][k])
    left = [json.loads(l) for l in open("%s/samples_%s.jsonl" % (one, t))]
    right = [json.loads(l) for l in open("%s/samples_%s.jsonl" % (other, t))]
    assert len(left) == len(right) == 16, t
    for x, y in zip(left, right):
        assert x["doc_id"] == y["doc_id"] and x["arguments"] == y["arguments"], t
        if t == "triviaqa":
            assert x["resps"] == y["resps"], (t, x["doc_id"], x["resps"], y["resps"])
            continue
        for (lx, gx), (ly, gy) in zip(x["resps"], y["resps"]):
            worst = max(worst, abs(lx - ly) / max(1.0, abs(lx)))
            assert gx == gy, (t, x["doc_id"])
assert worst < 1e-5, worst   # fp32: TP splits the sums differently
print("%s: every metric equal to 1x1; log-likelihoods within %.1e relative" % (b["config"]["model_args"], worst))
EOF
  status=$?
  [ $code -eq 0 ] && [ $status -eq 0 ]
  check "eval tasks on $1 ranks, TP $2: the results of one process" $? || show
done

# 4. Bad data: one clear error naming the file and line, a non-zero exit, no results.json.
head -3 "$SHARED/tasks/piqa/valid.jsonl" >"$work/bad.jsonl"
echo '{"goal": "unterminated' >>"$work/bad.jsonl"
head -4 "$SHARED/tasks/piqa/valid-labels.lst" >"$work/bad-labels.lst"
run "$work/out" "$work/err" -- evaluate 2 "$work/bad" --tasks piqa --paths piqa="$work/bad.jsonl"
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "bad.jsonl.*4" "$work/err" \
  && [ ! -e "$work/bad/results.json" ]
check "eval tasks: a malformed PIQA file is one error naming it and its line (exit $code)" $? || show
grep -m1 "bad.jsonl" "$work/err"
run "$work/out" "$work/err" -- evaluate 1 "$work/bad" --tasks mmlu --paths mmlu="$work/nowhere"
[ $code -ne 0 ] && grep -q "nowhere" "$work/err" && [ ! -e "$work/bad/results.json" ]
check "eval tasks: a missing MMLU folder is named (exit $code)" $? || show
run "$work/out" "$work/err" -- evaluate 1 "$work/bad" --tasks piqa,lambada
[ $code -eq 2 ] && grep -q "unknown task 'lambada'" "$work/err"
check "eval tasks: an unknown task is a usage error (exit $code)" $? || show

# 5. An OPT checkpoint with its byte-level BPE tokenizer (GPT-2's vocab.json + merges.txt beside it) end to end.
"$QFORGE" init-model --family opt --out "$work/opt" --vocab 50272 --hidden 32 --layers 2 --heads 4 --kv-heads 4 \
  >/dev/null 2>&1
rm -f "$work/opt/tokenizer.bin"
cp "$SHARED/models/gpt2_tokenizer/vocab.json" "$SHARED/models/gpt2_tokenizer/merges.txt" "$work/opt/"
run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" eval tasks --model "$work/opt" --data-dir "$SHARED/tasks" \
  --output "$work/opt-eval" --tasks piqa,wikitext2 --limit 10 --paths "$texts" --set parallel.tp=2 \
  --set eval.seq_len=128 --set runtime.threads=1
ppl=$(json "$work/opt-eval/results.json" 'r["results"]["wikitext2"]["perplexity,none"]')
tokens=$(json "$work/opt-eval/results.json" 'r["results"]["wikitext2"]["windows"] * 128')
[ $code -eq 0 ] && [ "$(json "$work/opt-eval/results.json" 'r["config"]["tokenizer"]')" = gpt2-bpe ] \
  && /usr/bin/python3 -c "import sys, math; p = float(sys.argv[1]); sys.exit(not (1 < p and math.isfinite(p)))" "$ppl"
check "eval tasks: a random OPT with GPT-2's BPE on TP 2 (wikitext2: about $tokens tokens, ppl $ppl)" $? || show

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
