#!/usr/bin/env bash
# qforge pipeline (issue 15, point 1): generate -> qat -> ptq -> eval on 2 ranks with a report; a rerun skips every
# unit; a changed setting redoes only what depends on it; kill -9 in each stage, then a rerun, gives the report of
# an uninterrupted run; --dry-run says what would run and each unit's memory plan; bad settings are one error.
# usage: test_pipeline_cli.sh QFORGE MPIEXEC
set -u
QFORGE=$1
MPIEXEC=$2
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"

"$QFORGE" init-model --out "$work/teacher" --seed 1 2>/dev/null
head -c 6000 "$(dirname "$0")/../../README.md" >"$work/text.txt"
config() { campaign_config "$work/teacher" "$1" 96 8 2; }  # config RUN_DIR: every stage long enough to kill inside
pipeline() {  # pipeline RUN_DIR [options...]: runs the campaign of RUN_DIR on 2 ranks; $code, $work/out, $work/err
  local dir=$1; shift
  [ -f "$dir.yaml" ] || config "$dir" >"$dir.yaml"
  run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" pipeline --config "$dir.yaml" "$@"
}
units=7  # generate, qat/4-8-4, ptq/4-8-4, eval/fp, eval/rtn-4-8-4, eval/qat-4-8-4, eval/ptq-4-8-4

# 1. Uninterrupted: every unit runs, the report has its four rows, the loss of every step and two valid SVG plots.
pipeline "$work/base"
[ $code -eq 0 ] && [ "$(grep -c -- '-> run (not started)' "$work/err")" -eq $units ] \
  && /usr/bin/python3 - "$work/base" <<'EOF'
import json, sys, xml.etree.ElementTree as ElementTree
run = sys.argv[1]
report = json.load(open(run + "/report.json"))
rows = [(r["kind"], r["bits"]) for r in report["rows"]]
assert rows == [("fp", "16-16-16"), ("rtn", "4-8-4"), ("qat", "4-8-4"), ("ptq", "4-8-4")], rows
assert all(r["perplexity"]["mean_nll"] > 0 for r in report["rows"])
qat = json.load(open(run + "/qat/4-8-4/qat.json"))
assert report["qat_losses"]["4-8-4"] == qat["losses"] and len(qat["losses"]) == qat["steps"] == 48, qat["steps"]
assert report["qat_loss_steps"]["4-8-4"] == {"first": 1, "last": 48}, report["qat_loss_steps"]
assert [s["stage"] for s in report["stage_seconds"]] == ["generate", "qat", "ptq", "eval"]
for plot in report["plots"]:
    assert ElementTree.parse(run + "/" + plot).getroot().tag.endswith("svg")
assert "![distillation loss per step](plots/distill_loss.svg)" in open(run + "/report.md").read()
EOF
check "pipeline: $units units run, report.json/.md with 4 rows, 48 losses, 2 SVG plots" $? || show
base=$(report_figures "$work/base")

# 2. A rerun skips every unit and writes the same report.
pipeline "$work/base"
[ $code -eq 0 ] && [ "$(grep -c -- '-> skip (complete, same inputs and settings)' "$work/err")" -eq $units ] \
  && ! grep -q "qat: " "$work/out" && [ "$(report_figures "$work/base")" = "$base" ]
check "a rerun skips all $units units and gives the same report" $? || show

# 3. --dry-run after a changed learning rate: QAT and its evaluation would be redone, naming the key; the others
#    skipped; every unit has a memory plan. Nothing is written.
pipeline "$work/base" --dry-run --set train.lr=2e-3
[ $code -eq 0 ] && grep -q "qat/4-8-4 *redo *changed since it ran: train; memory [0-9.]* MB per rank" "$work/out" \
  && grep -q "eval/qat-4-8-4 *redo *changed since it ran: model;" "$work/out" \
  && [ "$(grep -c " skip .*; memory [0-9.]* MB per rank" "$work/out")" -eq $((units - 2)) ] \
  && [ "$(report_figures "$work/base")" = "$base" ]
check "--dry-run: qat and its row redo (train changed), 5 skip, memory plans; nothing written" $? || show

# 4. The changed setting for real: only QAT and the QAT row run again, and the report changes.
cp -r "$work/base" "$work/changed" && config "$work/changed" >"$work/changed.yaml"
pipeline "$work/changed" --set train.lr=2e-3
[ $code -eq 0 ] && [ "$(grep -c -- '-> redo' "$work/err")" -eq 2 ] && [ "$(grep -c -- '-> skip' "$work/err")" -eq 5 ] \
  && [ "$(report_figures "$work/changed")" != "$base" ]
check "train.lr changed: 2 units redone, 5 skipped, a different report" $? || show

# 4b. Stages switched off: generate and qat only (2 units), a report without evaluation rows but with the losses;
#     then qat and eval only on the first run's corpus (distill.corpus): no corpus generated, the RTN and QAT rows.
pipeline "$work/part" --set pipeline.stages=generate,qat
[ $code -eq 0 ] && [ "$(grep -c -- '-> run' "$work/err")" -eq 2 ] && [ ! -e "$work/part/ptq" ] && /usr/bin/python3 - \
  "$work/part" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1] + "/report.json"))
assert report["rows"] == [] and len(report["qat_losses"]["4-8-4"]) == 48, report
EOF
check "pipeline.stages=generate,qat: 2 units, a report with the 48 losses and no rows" $? || show
pipeline "$work/part2" --set pipeline.stages=qat,eval --set distill.corpus="$work/base/corpus.h5"
[ $code -eq 0 ] && [ ! -e "$work/part2/corpus.h5" ] && /usr/bin/python3 - "$work/part2" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1] + "/report.json"))
assert [r["kind"] for r in report["rows"]] == ["fp", "rtn", "qat"], report["rows"]
EOF
check "pipeline.stages=qat,eval on distill.corpus: no corpus written, rows fp, rtn, qat" $? || show

# 5. kill -9 of every process inside each stage, then a rerun: the unit resumes and the report is the uninterrupted
#    run's. QAT is killed after a checkpoint, so the rerun continues from it.
kill_in() {  # kill_in STAGE PATTERN: starts the campaign, kills it when PATTERN appears in its log, reruns it
  local dir="$work/kill-$1"
  config "$dir" >"$dir.yaml"
  "${MPI[@]}" -np 2 "$QFORGE" pipeline --config "$dir.yaml" >"$dir.out" 2>"$dir.err" &
  local launcher=$! waited=0
  until grep -q -- "$2" "$dir.err" 2>/dev/null || [ $waited -ge 600 ]; do sleep 0.05; waited=$((waited + 1)); done
  pkill -9 -f "pipeline --config $dir.yaml"
  wait $launcher 2>/dev/null
  [ -f "$dir/report.json" ] && return 1  # it finished before the kill: nothing was tested
  pipeline "$dir"
  [ $code -eq 0 ] && grep -q -- "pipeline: $1[^ ]* -> resume" "$work/err" && [ "$(report_figures "$dir")" = "$base" ]
}
kill_in generate "generate: [1-9]"
check "kill -9 inside generate, rerun: generate resumes, same report" $? || show
kill_in qat "checkpoint of step 4 saved"
check "kill -9 inside qat (after step 4's checkpoint), rerun: same report" $? || show
# The kill lands after step 4's checkpoint, or a later one on a loaded machine: the rerun continues from one of them.
resumed=$(sed -n 's/.*resumed from .*step-[0-9]* (step \([0-9]*\) of 48).*/\1/p' "$work/err")
[ -n "$resumed" ] && [ "$resumed" -ge 4 ] && [ "$resumed" -lt 48 ]
check "  and the rerun's QAT continued from step ${resumed:-?} (>= 4) of 48" $? || show
kill_in ptq "pipeline: ptq/4-8-4; memory plan"
check "kill -9 inside ptq, rerun: ptq starts over, same report" $? || show
kill_in eval "pipeline: eval/qat-4-8-4; memory plan"
check "kill -9 inside eval, rerun: the row resumes, same report" $? || show
grep -q "eval/rtn-4-8-4 -> skip" "$work/err"
check "  and the rows evaluated before the kill were not evaluated again" $? || show

# 6. Bad settings: one error naming the key, exit 2, nothing run.
pipeline "$work/bad" --set pipeline.stages=generate,train
[ $code -eq 2 ] && grep -q "pipeline.stages" "$work/err" \
  && grep -q "one or more of generate, qat, ptq, eval" "$work/err" \
  && [ ! -e "$work/bad" ]
check "pipeline.stages with an unknown stage: exit 2 naming the key" $? || show
pipeline "$work/bad" --set pipeline.bits=4-8-4,4-8
[ $code -eq 2 ] && grep -q "pipeline.bits" "$work/err" && [ ! -e "$work/bad" ]
check "pipeline.bits with a malformed setting: exit 2 naming the key" $? || show
pipeline "$work/bad" --set eval.text=
[ $code -eq 2 ] && grep -q "nothing to evaluate on: set eval.text" "$work/err" && [ ! -e "$work/bad" ]
check "eval stage with nothing to evaluate: exit 2" $? || show

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
