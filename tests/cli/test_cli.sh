#!/usr/bin/env bash
# End-to-end checks of the qforge executable: exit codes, the layout it reports, and one-line errors.
# usage: test_cli.sh QFORGE MPIEXEC CONFIGS_DIR SHARED_DIR
set -u
QFORGE=$1
MPIEXEC=$2
CONFIGS=$3
SHARED=$4
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"

# 1. A single process without mpirun.
run "$work/out" "$work/err" -- "$QFORGE" env
[ $code -eq 0 ] && grep -q "layout     TP 1 x DP 1" "$work/out"; check "env runs as one rank without mpirun" $? || show

# 2. Four ranks, TP 2: a 2 x 2 layout, printed once, the same on every rank.
run "$work/out" "$work/err" -- "${MPI[@]}" -np 4 "$QFORGE" env --set parallel.tp=2
[ $code -eq 0 ] && grep -q "layout     TP 2 x DP 2" "$work/out" && grep -q "TP groups  {0,1} {2,3}" "$work/out" \
  && grep -q "DP groups  {0,2} {1,3}" "$work/out" && grep -q "every rank reports this layout: yes" "$work/out" \
  && [ "$(grep -c '^qforge ' "$work/out")" -eq 1 ]
check "mpirun -np 4 env --set parallel.tp=2 prints one consistent 2 x 2 layout" $? || show

# 3. A wrong key in a YAML file: one line naming file, key and line; exit code 2.
printf 'log:\n  level: info\nparallel:\n  tpp: 2\n' >"$work/bad.yaml"
run "$work/out" "$work/err" -- "$QFORGE" env --config "$work/bad.yaml"
[ $code -eq 2 ] && [ "$(wc -l <"$work/err")" -eq 1 ] \
  && grep -qx "qforge: error: $work/bad.yaml:4: unknown key 'parallel.tpp' (expected one of: tp)" "$work/err"
check "wrong YAML key: one line with file, key and line; exit 2" $? || show

# 4. The same under mpirun with 2 ranks: still one qforge error line, non-zero exit.
run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" env --config "$work/bad.yaml"
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "bad.yaml:4: unknown key 'parallel.tpp'" "$work/err"
check "wrong YAML key under mpirun -np 2: one error line, non-zero exit" $? || show

# 5. A TP size that does not divide the world.
run "$work/out" "$work/err" -- "${MPI[@]}" -np 4 "$QFORGE" env --set parallel.tp=3
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "parallel.tp = 3 must be a positive divisor of the world size 4" "$work/err"
check "parallel.tp=3 on 4 ranks: one error line, non-zero exit" $? || show

# 6. Unknown command, bad --set value, help.
run "$work/out" "$work/err" -- "$QFORGE" frobnicate
[ $code -eq 2 ] && grep -q "unknown command 'frobnicate'" "$work/err"; check "unknown command: exit 2" $? || show
run "$work/out" "$work/err" -- "$QFORGE" env --set runtime.threads=many
[ $code -eq 2 ] && grep -qx "qforge: error: --set runtime.threads=many: key 'runtime.threads' must be an integer, got 'many'" "$work/err"
check "bad --set value names the option" $? || show
run "$work/out" "$work/err" -- "$QFORGE" --help
[ $code -eq 0 ] && grep -q "^usage: qforge <command>" "$work/out"; check "--help" $? || show

# 7. Outputs: the report and the resolved config beside it; no temporary left.
run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" env --set parallel.tp=2 --set output.dir="$work/run"
[ $code -eq 0 ] && [ -f "$work/run/env.txt" ] && grep -q "TP 2 x DP 1" "$work/run/env.txt" \
  && grep -q "tp: 2" "$work/run/qforge_config.yaml" && [ "$(ls -A "$work/run" | wc -l)" -eq 2 ]
check "output.dir holds env.txt and the resolved config" $? || show
# The resolved config reads back as a config.
run "$work/out" "$work/err" -- "$QFORGE" env --config "$work/run/qforge_config.yaml" --set output.dir=
[ $code -eq 2 ] && grep -q "parallel.tp = 2 must be a positive divisor of the world size 1" "$work/err"
check "the resolved config is a valid config (tp 2 read back)" $? || show

# 8. Per-rank log files (their directory is created).
run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" env --log-file "$work/logs/q.{rank}.log" --set output.dir="$work/run2"
[ $code -eq 0 ] && [ -f "$work/logs/q.0.log" ] && [ -f "$work/logs/q.1.log" ] && grep -q "r0/2\] I wrote env.txt" "$work/logs/q.0.log"
check "--log-file writes one file per rank" $? || show

# 9. Every shipped model config plans as one process, whatever its parallel.tp (qforge plan: docs/memory.md).
for config in "$CONFIGS"/*.yaml; do
  [ "$(basename "$config")" = default.yaml ] && continue
  run "$work/out" "$work/err" -- "$QFORGE" plan --config "$config"
  [ $code -eq 0 ] && grep -q "^total " "$work/out"; check "shipped config $(basename "$config") plans" $? || show
done

# 10. The slow reference BLAS is called out at start-up (forced here by preloading it, when it is installed).
reference=/usr/lib/x86_64-linux-gnu/blas/libblas.so.3
if [ -e "$reference" ]; then
  LD_PRELOAD=$reference "$QFORGE" env >"$work/out" 2>"$work/err"; code=$?
  [ $code -eq 0 ] && grep -q "W libtorch calls the slow reference BLAS" "$work/err" && grep -q "reference BLAS (netlib)" "$work/out"
  check "reference BLAS gives a start-up warning" $? || show
  "$QFORGE" env >"$work/out" 2>"$work/err"
  ! grep -q "slow reference BLAS" "$work/err"; check "the installed OpenBLAS gives no warning" $? || show
else
  echo "skip reference BLAS warning ($reference not installed)"
fi

# 10a. Every shipped config is a valid config.
for config in "$CONFIGS"/*.yaml; do
  run "$work/out" "$work/err" -- "$QFORGE" env --config "$config" --set parallel.tp=1 --set model.device=cpu --set log.file= \
    --set output.dir=
  check "$(basename "$config") loads (every key known, every value valid)" $? || show
done

# 10b. init-model: a random LLaMA with a byte-level tokenizer that the other commands accept.
run "$work/out" "$work/err" -- "$QFORGE" init-model --out "$work/random" --hidden 32 --layers 1 --heads 2 --kv-heads 1
[ $code -eq 0 ] && [ -f "$work/random/config.json" ] && [ -f "$work/random/tokenizer.bin" ] \
  && "$QFORGE" eval ppl --model "$work/random" --text "$CONFIGS/default.yaml" --seq-len 64 --quant 4-8-4 >"$work/out" 2>"$work/err" \
  && grep -q "^perplexity of" "$work/out"
check "init-model writes a model and byte tokenizer that eval ppl --quant 4-8-4 accepts" $? || show
run "$work/out" "$work/err" -- "$QFORGE" init-model --out "$work/random2" --heads 3
[ $code -eq 2 ] && grep -q "heads dividing hidden" "$work/err" && [ ! -e "$work/random2" ]
check "init-model with 3 heads for hidden 64: one usage error, nothing written" $? || show

# 11. The real stories260K model (../shared): import, generate, perplexity; bad checkpoints.
if [ -f "$SHARED/models/stories260K/stories260K.bin" ]; then
  stories="$SHARED/models/stories260K"
  run "$work/out" "$work/err" -- "$QFORGE" convert llama2c --in "$stories/stories260K.bin" --tokenizer "$stories/tok512.bin" --out "$work/stories"
  [ $code -eq 0 ] && [ -f "$work/stories/config.json" ] && [ -f "$work/stories/model.safetensors" ] && [ -f "$work/stories/tokenizer.bin" ]
  check "convert llama2c writes config.json, model.safetensors, tokenizer.bin" $? || show

  expected="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high"
  run "$work/out" "$work/err" -- "${MPI[@]}" -np 4 "$QFORGE" generate-text --model "$work/stories" --max-new-tokens 60 --set parallel.tp=4
  [ $code -eq 0 ] && [ "$(head -c ${#expected} "$work/out")" = "$expected" ]
  check "generate-text under TP 4 reproduces llama2.c's greedy continuation" $? || show

  text="$SHARED/data/tinystories/tinystories_val.txt"
  # The first 200 KB of TinyStories val (the whole file, a minute here, measures 1.62 in windows of 512; these 1.45;
  # its first 64 windows 1.39: test_checkpoint); the band catches a broken model or tokenizer (an untrained model
  # of this vocabulary scores ln 512 = 6.2).
  head -c 200000 "$text" >"$work/val-200k.txt"
  run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/stories" --text "$work/val-200k.txt" \
    --set output.dir="$work/ppl1"
  single=$(grep -o 'mean NLL [0-9.]*' "$work/out" | awk '{print $3}')
  [ $code -eq 0 ] && [ -f "$work/ppl1/perplexity.json" ] && awk -v x="$single" 'BEGIN { exit !(x > 1.30 && x < 1.70) }'
  check "eval ppl on 200 KB of TinyStories val: mean NLL $single nats/token, within 1.30-1.70" $? || show
  cat "$work/out"
  run "$work/out" "$work/err" -- "${MPI[@]}" -np 4 "$QFORGE" eval ppl --model "$work/stories" \
    --text "$work/val-200k.txt" --set parallel.tp=2
  grid=$(grep -o 'mean NLL [0-9.]*' "$work/out" | awk '{print $3}')
  [ $code -eq 0 ] && awk -v a="$single" -v b="$grid" 'BEGIN { d = a - b; exit !(d < 2e-4 && d > -2e-4) }'
  check "eval ppl under TP 2 x DP 2 ($grid) equals one rank ($single)" $? || show

  # Corpus generation: identical corpora on 1, 2 and 4 DP ranks; TP 2 compared token by token; kill -9 and resume.
  reference="$(dirname "$0")/../reference/read_corpus.py"
  gen() {  # gen RANKS TP OUTPUT [options...]
    local ranks=$1 tp=$2 out=$3; shift 3
    "${MPI[@]}" -np "$ranks" "$QFORGE" generate --model "$work/stories" --output "$out" --num-samples 48 --seq-len 64 \
      --batch-size 8 --seed 3 --set parallel.tp="$tp" --set generate.flush_every=2 "$@"
  }
  if /usr/bin/python3 -c "import h5py" 2>/dev/null; then
    for layout in "1 1" "2 1" "4 1" "2 2" "4 2"; do
      set -- $layout
      run "$work/out" "$work/err" -- gen "$1" "$2" "$work/corpus-$1-$2.h5"
      [ $code -eq 0 ] && [ -f "$work/corpus-$1-$2.h5" ] && [ ! -e "$work/corpus-$1-$2.h5.parts" ]
      check "generate on $1 rank(s), TP $2: corpus written, journals removed" $? || show
      /usr/bin/python3 "$reference" "$work/corpus-$1-$2.h5" >"$work/dump-$1-$2.json"
    done
    for ranks in 2 4; do
      cmp -s "$work/dump-1-1.json" "$work/dump-$ranks-1.json"
      check "corpus on TP 1 x DP $ranks equals TP 1 x DP 1, token for token" $?
    done
    for layout in "2 2" "4 2"; do
      set -- $layout
      differing=$(/usr/bin/python3 -c "import h5py, numpy as np, sys; a = h5py.File(sys.argv[1])['tokens'][...]; b = h5py.File(sys.argv[2])['tokens'][...]; print(int((a != b).sum()), a.size)" "$work/corpus-1-1.h5" "$work/corpus-$1-$2.h5")
      echo "TP 2 x DP $(( $1 / 2 )) vs TP 1 x DP 1: differing tokens (of all): $differing"
      # TP changes summation order (fp32 rounding); a sampled token can flip where two choices are that close.
      # Reported, and bounded: a real sharding bug changes nearly every sampled token.
      [ "${differing%% *}" -le $(( ${differing##* } / 20 )) ]
      check "corpus under TP 2 x DP $(( $1 / 2 )) differs from TP 1 in ${differing%% *} of ${differing##* } tokens (at most 5%)" $?
    done

    run "$work/out" "$work/err" -- gen 2 2 "$work/topk.h5" --store-topk 4
    [ $code -eq 0 ] && /usr/bin/python3 -c "
import h5py, numpy as np, sys
f = h5py.File(sys.argv[1])
ids, lp = f['topk_ids'], f['topk_logprobs']
assert ids.shape == (48, 64, 4) and lp.shape == (48, 64, 4), (ids.shape, lp.shape)
first = lp[:, :-1, :]
assert np.all(np.diff(first, axis=-1) <= 0) and np.all(np.exp(first).sum(-1) <= 1 + 1e-5)
assert (f['tokens'][...] == h5py.File(sys.argv[2])['tokens'][...]).all()
" "$work/topk.h5" "$work/corpus-1-1.h5"
    check "--store-topk 4 under TP 2: top-4 ids and sorted log-probs stored, tokens unchanged" $? || show

    # kill -9 of one rank mid-run, then the same command again: the file equals an uninterrupted run's.
    gen 2 1 "$work/killed.h5" --num-samples 160 >"$work/out" 2>"$work/err" &
    job=$!
    for _ in $(seq 1 200); do
      [ "$(cat "$work"/killed.h5.parts/*.qfcj 2>/dev/null | wc -c)" -gt 3000 ] && break
      sleep 0.05
    done
    victim=$(pgrep -f "^$QFORGE generate .*killed.h5" | head -n 1)
    kill -9 "$victim"
    wait "$job"; killed=$?
    [ $killed -ne 0 ] && [ ! -e "$work/killed.h5" ] && [ -d "$work/killed.h5.parts" ]
    check "kill -9 of rank process $victim: job ends ($killed), no corpus file, journals kept" $? || show
    run "$work/out" "$work/err" -- gen 2 1 "$work/killed.h5" --num-samples 160 --seed 4
    [ $code -ne 0 ] && grep -q "qforge: error: .*qfcj" "$work/err" && [ ! -e "$work/killed.h5" ]
    check "resuming with another seed is refused, naming the journal" $? || show
    run "$work/out" "$work/err" -- gen 2 1 "$work/killed.h5" --num-samples 160
    grep -o "resuming: [0-9]* of 160 samples" "$work/err"
    [ $code -eq 0 ] && grep -q "resuming: [1-9][0-9]* of 160 samples" "$work/err"
    check "the same command resumes from the journals" $? || show
    run "$work/out" "$work/err" -- gen 4 1 "$work/whole.h5" --num-samples 160
    /usr/bin/python3 "$reference" "$work/killed.h5" >"$work/dump-killed.json"
    /usr/bin/python3 "$reference" "$work/whole.h5" >"$work/dump-whole.json"
    cmp -s "$work/dump-killed.json" "$work/dump-whole.json"
    check "killed and resumed corpus equals an uninterrupted run's" $?

    # QAT by distillation on stories260K (corpus above: 160 samples x 64 tokens; 3 epochs of 8-sample steps, so
    # that a signal sent while it trains lands mid-run).
    qat() {  # qat RANKS TP OUTDIR [options...]
      local ranks=$1 tp=$2 out=$3; shift 3
      "${MPI[@]}" -np "$ranks" "$QFORGE" qat --model "$work/stories" --corpus "$work/whole.h5" --output "$out" \
        --quant 4-8-4 --lr 1e-3 --set train.global_batch=8 --set train.epochs=3 --set parallel.tp="$tp" \
        --set runtime.threads=1 --set log.progress_interval_s=0 "$@"
    }
    run "$work/out" "$work/err" -- qat 4 2 "$work/qat-whole"
    student="$work/qat-whole/student/model.safetensors"
    [ $code -eq 0 ] && [ -f "$student" ] && grep -q '"quant_method": "gptq"' "$work/qat-whole/gptq/config.json" \
      && grep -q "train: 60/60 steps" "$work/err" && grep -q "student, GPTQ format (gptq)" "$work/out"
    check "qat 4-8-4 on TP 2 x DP 2: 60 steps, student and GPTQ-format exports, sizes printed" $? || show
    grep -A3 "^model size" "$work/out"
    head -c 100000 "$text" >"$work/val-head.txt"  # the first 100 KB: the checks below compare, they need no more
    run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/qat-whole/student" --text "$work/val-head.txt" \
      --seq-len 128 --quant 4-8-4
    [ $code -eq 0 ] && grep -q "fake-quantized W-A-KV 4-8-4: 35 linear layers, 5 attention layers" "$work/err" \
      && grep -q "^perplexity of" "$work/out"
    check "eval ppl of the QAT student with its quantizers active" $? || show
    # The GPTQ-format student reloads with the perplexity of the fake-quantized one (weights on the same grid,
    # scales rounded to fp16), both with the student's activation and KV quantizers (16-8-4: weights as stored).
    # Tolerance 5e-3 relative: fp16 scales move each weight by up to 2^-11 of its scale; measured 4e-4 after 200
    # steps on the whole file, and 1.1e-3, 3.2e-3 and 3.5e-3 after 60 steps on 100 KB as the QAT trajectory moved
    # with the order of floating-point sums (the gradient norm's; TP's summed input gradients). A wrong packing is
    # off by orders of magnitude.
    ppl_of() { "$QFORGE" eval ppl --model "$1" --text "$work/val-head.txt" --seq-len 128 --quant 16-8-4 2>/dev/null \
                 | sed -n 's/^perplexity of.* \([0-9.]*\)$/\1/p'; }
    fake_ppl=$(ppl_of "$work/qat-whole/student"); gptq_ppl=$(ppl_of "$work/qat-whole/gptq")
    /usr/bin/python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 5e-3 * a)" \
      "$fake_ppl" "$gptq_ppl"
    check "QAT student reloaded from the GPTQ format: ppl $gptq_ppl vs $fake_ppl fake-quantized (rel tol 5e-3)" $? \
      || show

    # SIGTERM to every rank (what Slurm sends at the time limit): a checkpoint, exit 0; --resume finishes the run
    # and ends bit for bit where the uninterrupted one did.
    qat 4 2 "$work/qat-term" >"$work/out" 2>"$work/err" &
    job=$!
    for _ in $(seq 1 600); do grep -q "train: [3-9]/60\|train: [1-5][0-9]/60" "$work/err" && break; sleep 0.05; done
    pkill -TERM -f "^$QFORGE qat .*qat-term"
    wait "$job"; code=$?
    [ $code -eq 0 ] && grep -q "stop signal received" "$work/err" && grep -q "rerun with --resume" "$work/err" \
      && [ -f "$work/qat-term/checkpoints/latest" ] && ! grep -q "step-00000060" "$work/qat-term/checkpoints/latest" \
      && [ ! -e "$work/qat-term/student" ]
    check "SIGTERM during qat: checkpoint of $(cat "$work/qat-term/checkpoints/latest" 2>/dev/null), exit 0, no export" $? || show
    run "$work/out" "$work/err" -- qat 4 2 "$work/qat-term" --resume
    [ $code -eq 0 ] && grep -q "resumed from" "$work/err" && cmp -s "$student" "$work/qat-term/student/model.safetensors"
    check "qat --resume after SIGTERM: the same student, byte for byte" $? || show

    # kill -9 of one rank with a checkpoint every 5 steps: the job dies; --resume gives the same student.
    qat 2 1 "$work/qat-kill" --set train.save_every=5 >"$work/out" 2>"$work/err" &
    job=$!
    for _ in $(seq 1 1500); do [ -f "$work/qat-kill/checkpoints/latest" ] && break; sleep 0.02; done
    kill -9 "$(pgrep -f "^$QFORGE qat .*qat-kill" | head -n 1)"
    wait "$job"; killed=$?
    run "$work/out" "$work/err" -- qat 2 1 "$work/qat-kill" --set train.save_every=5 --resume
    grep -o "resumed from .*" "$work/err"
    [ $killed -ne 0 ] && [ $code -eq 0 ] && grep -q "resumed from .*step-000000[0-5][05] (step [1-9][0-9]* of 60)" "$work/err"
    check "kill -9 during qat, then --resume: completes from the last checkpoint" $? || show
    run "$work/out" "$work/err" -- qat 2 1 "$work/qat-dp2"
    cmp -s "$work/qat-dp2/student/model.safetensors" "$work/qat-kill/student/model.safetensors"
    check "the killed and resumed student equals an uninterrupted run's, byte for byte" $? || show

    # Checked resume: qat-kill's checkpoints (steps 55 and 60) under other settings or inputs are refused with
    # one error naming the key and both values; a damaged checkpoint is skipped with a warning naming the file.
    resume_kill() { qat 2 1 "$work/qat-kill" --set train.save_every=5 --resume "$@"; }
    cp "$work/whole.h5" "$work/other.h5"  # the same teacher and size, one token changed
    /usr/bin/python3 -c "
import h5py, sys
f = h5py.File(sys.argv[1], 'r+'); f['tokens'][0, 1] = (int(f['tokens'][0, 1]) + 1) % 512; f.close()" "$work/other.h5"
    for case in "--quant 8-8-8|quant.bits: the checkpoint was trained with 4-8-4, this run has 8-8-8" \
                "--lr 2e-3|train.lr: the checkpoint was trained with 0.001, this run has 0.002" \
                "--max-steps 50|train.max_steps: the checkpoint was trained with 0, this run has 50" \
                "--corpus $work/other.h5|corpus.checksum: the checkpoint was trained with "; do
      run "$work/out" "$work/err" -- resume_kill ${case%%|*}
      [ $code -eq 2 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -qF -- "${case#*|}" "$work/err"
      check "qat --resume ${case%%|*}: refused, '${case#*|}'" $? || show
    done
    flip_signs() {  # flip_signs FILE: the sign bits of its last 10 fp32 values
      /usr/bin/python3 -c "
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
for i in range(1, 40, 4): data[-i] ^= 0x80
open(sys.argv[1], 'wb').write(data)" "$1"
    }
    checkpoints="$work/qat-kill/checkpoints"
    flip_signs "$checkpoints/step-00000060/optimizer-tp00-dp001.safetensors"
    run "$work/out" "$work/err" -- resume_kill
    grep -o "checkpoint .* is damaged: .*" "$work/err"
    [ $code -eq 0 ] && grep -q "resumed from .*step-00000055 (step 55 of 60)" "$work/err" \
      && grep -q "step-00000060 is damaged: .*optimizer-tp00-dp001.safetensors' does not match its checksum" \
           "$work/err" \
      && cmp -s "$work/qat-dp2/student/model.safetensors" "$work/qat-kill/student/model.safetensors"
    check "sign bits flipped in an optimizer shard: a warning naming it, step 55 resumed, the same student" $? || show
    sed -i 's/"step": 60,/"step": 46,/' "$checkpoints/step-00000060/trainer_state.json"
    run "$work/out" "$work/err" -- resume_kill
    [ $code -eq 0 ] && grep -q "resumed from .*step-00000055 (step 55 of 60)" "$work/err" \
      && grep -q "step-00000060 is damaged: .*trainer_state.json' does not match its checksum" "$work/err"
    check "an edited trainer_state.json: a warning naming it, step 55 resumed" $? || show
    sed -i 's/"step": 60,/"step": 46,/' "$checkpoints/step-00000060/trainer_state.json"
    flip_signs "$checkpoints/step-00000055/optimizer-tp00-dp000.safetensors"
    run "$work/out" "$work/err" -- resume_kill
    [ $code -eq 1 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] \
      && grep -q "no intact checkpoint under $checkpoints to resume from (step-00000060: .*; step-00000055: " \
           "$work/err"
    check "every checkpoint damaged: one error naming each" $? || show

    # A corpus is refused by qat with another teacher than the one that generated it.
    run "$work/out" "$work/err" -- "$QFORGE" qat --model "$work/qat-whole/student" --corpus "$work/whole.h5" \
      --output "$work/q-teacher" --quant 4-8-4
    [ $code -eq 2 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && [ ! -e "$work/q-teacher/student" ] \
      && grep -qF "corpus file '$work/whole.h5' was generated by another teacher than --model '$work/qat-whole/student'" \
           "$work/err"
    status=$?
    check "qat with a corpus of another teacher: refused, naming $(grep -o "its teacher_[a-z_.]*" "$work/err")" $status \
      || show
    # Teacher top-K read from the corpus: a positive log-probability is an error naming file, sample and position.
    cp "$work/topk.h5" "$work/topk-bad.h5"
    /usr/bin/python3 -c "
import h5py, sys
f = h5py.File(sys.argv[1], 'r+'); f['topk_logprobs'][:, 0, 0] = 0.5; f.close()" "$work/topk-bad.h5"
    run "$work/out" "$work/err" -- "$QFORGE" qat --model "$work/stories" --corpus "$work/topk-bad.h5" \
      --output "$work/q-topk" --quant 4-8-4 --max-steps 2 --set distill.teacher=corpus --set train.global_batch=8
    [ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] \
      && grep -q "topk-bad.h5': sample [0-9]*, position 0 holds teacher top-K log-probability 0.5" "$work/err"
    check "qat on a corpus with a positive top-K log-probability: one error naming file, sample, position" $? || show

    run "$work/out" "$work/err" -- "$QFORGE" qat --model "$work/stories" --corpus "$work/whole.h5" --output "$work/q" --quant 4-8
    [ $code -eq 2 ] && [ "$(wc -l <"$work/err")" -eq 1 ] && grep -q "quant.bits" "$work/err"
    check "qat --quant 4-8: one error line naming quant.bits, exit 2" $? || show
    run "$work/out" "$work/err" -- "$QFORGE" qat --model "$work/stories" --corpus "$work/nothing.h5" --output "$work/q"
    [ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "nothing.h5" "$work/err" && [ ! -e "$work/q/student" ]
    check "qat with a missing corpus: one error naming the file, no output" $? || show
  else
    echo "skip corpus checks (/usr/bin/python3 has no h5py)"
  fi

  head -c 100000 "$stories/stories260K.bin" >"$work/truncated.bin"
  run "$work/out" "$work/err" -- "$QFORGE" convert llama2c --in "$work/truncated.bin" --out "$work/bad"
  [ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "truncated.bin: 100000 bytes, but its header" "$work/err"     && [ ! -e "$work/bad/model.safetensors" ]
  check "truncated llama2.c checkpoint: one error naming the file and the expected size" $? || show
  run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" eval ppl --model "$work/nowhere" --text "$text"
  [ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "nowhere/config.json: cannot open" "$work/err"
  check "eval ppl of a missing model under mpirun: one error line" $? || show
else
  echo "skip stories260K checks ($SHARED absent)"
fi

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
