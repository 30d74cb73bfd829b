# The cases of test_bad_input.sh (sourced by it: $QFORGE, $F fixtures, $B damaged copies, expect, enospc).
# expect NAME CODE 'PART@@PART' [PATHS THAT MUST NOT EXIST] -- COMMAND...
Q=$QFORGE
T=$F/small.txt
W=$work/outs  # outputs that must not appear
mkdir -p "$W"
ppl() { echo "$Q" eval ppl --text "$T" --seq-len 32 --model; }  # word-split on purpose: $(ppl) DIR

# ---- YAML configs and --set ------------------------------------------------------------------------------------
y=$work/yaml
mkdir -p "$y/dir.yaml"
printf 'log:\n  level: info\nparallel:\n  tp: 1\nlog:\n  all_ranks: true\n' >"$y/dup_section.yaml"
printf 'log:\n  level: info\n  file: a\n  level: debug\n' >"$y/dup_key.yaml"
printf 'train:\n  lr: 1e-4\n  lr: 1e-3\n' >"$y/dup_train.yaml"
printf 'log: [unclosed\n' >"$y/syntax.yaml"
printf -- '- a\n- b\n' >"$y/list.yaml"
printf 'parallel:\n  tpp: 2\n' >"$y/unknown.yaml"
printf 'parallel:\n  tp: two\n' >"$y/type.yaml"
printf 'parallel: 3\n' >"$y/section_scalar.yaml"
printf 'train:\n  beta1: 1.5\n' >"$y/beta1.yaml"
expect "YAML: a section written twice names the file, the key and both lines" 2 \
  "$y/dup_section.yaml:5: duplicate key 'log' (first at line 1)" -- $Q env --config "$y/dup_section.yaml"
expect "YAML: a key written twice in a section" 2 "$y/dup_key.yaml:4: duplicate key 'log.level' (first at line 2)" \
  -- $Q env --config "$y/dup_key.yaml"
expect "YAML: train.lr written twice" 2 "dup_train.yaml:3: duplicate key 'train.lr'" \
  -- $Q env --config "$y/dup_train.yaml"
expect "--config DIR names the directory" 2 "$y/dir.yaml: is a directory" -- $Q env --config "$y/dir.yaml"
expect "--config of a missing file" 2 "$y/absent.yaml: cannot open the config file" -- $Q env --config "$y/absent.yaml"
expect "YAML syntax error" 2 "$y/syntax.yaml:@@YAML syntax error" -- $Q env --config "$y/syntax.yaml"
expect "YAML unknown key" 2 "$y/unknown.yaml:2: unknown key 'parallel.tpp'" -- $Q env --config "$y/unknown.yaml"
expect "YAML train.beta1 1.5" 2 "$y/beta1.yaml:2: key 'train.beta1' must be in [0, 1)" \
  -- $Q env --config "$y/beta1.yaml"
expect "--set without =" 2 "--set parallel.tp: expected KEY.PATH=VALUE" -- $Q env --set parallel.tp
expect "--set value that is not YAML" 2 "--set log.level=[: the value is not valid YAML" -- $Q env --set 'log.level=['
expect "--set empty key part" 2 "the key path 'log..level' has an empty part" -- $Q env --set log..level=info
for bad in train.beta1=1.5 train.beta2=1 train.eps=0 train.lr=0 train.weight_decay=-0.1 train.beta1=.nan; do
  expect "--set $bad is out of range" 2 "--set $bad: key '${bad%%=*}' must be" -- $Q env --set "$bad"
done
expect "runtime.threads=100000 names the key and the allowed range" 2 \
  "runtime.threads = 100000 is out of range: expected 0.." \
  -- $Q env --set runtime.threads=100000
expect "runtime.threads=-1" 2 "key 'runtime.threads' must be a value >= 0" -- $Q env --set runtime.threads=-1
expect "generate_text.top_p 1.5" 2 "key 'generate_text.top_p' must be in (0, 1]" -- $Q env --set generate_text.top_p=1.5
expect "unknown command" 2 "unknown command 'frobnicate'" -- $Q frobnicate

# ---- ranks that disagree (mpiexec -np 2) -----------------------------------------------------------------------
M=("$MPIEXEC" --oversubscribe)
expect "-np 2: ranks with different config values stop with one error naming the key" 2 \
  "config key 'log.level' is debug on rank 1 but info on rank 0" \
  -- "${M[@]}" -np 1 $Q env : -np 1 $Q env --set log.level=debug
expect "-np 2: ranks with different model.path" 2 "config key 'model.path' is $F/st on rank 1 but $F/tiny on rank 0" \
  -- "${M[@]}" -np 1 $Q env --set model.path="$F/tiny" : -np 1 $Q env --set model.path="$F/st"
expect "-np 2: ranks running different commands" 2 "rank 1 runs 'qforge --help' but rank 0 runs 'qforge env'" \
  -- "${M[@]}" -np 1 $Q env : -np 1 $Q --help
expect "-np 2: a duplicate YAML key is reported once" 2 "duplicate key 'log.level'" \
  -- "${M[@]}" -np 2 $Q env --config "$y/dup_key.yaml"
expect "-np 2: a NaN weight on every rank is reported once" 1 \
  "$B/w_nan/model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight' holds 1 NaN" \
  -- "${M[@]}" -np 2 $(ppl) "$B/w_nan"

# ---- config.json and safetensors: eval ppl on a damaged copy of tiny (or stories260K) -----------------------------
# CODE|MODEL DIR (under $B, or a path)|PARTS the error names after the directory (the line must name the directory)
while IFS='|' read -r code dir parts; do
  [[ "$dir" == /* ]] || dir=$B/$dir
  expect "eval ppl --model $(basename "$dir"): $parts" "$code" "$dir$parts" -- $(ppl) "$dir"
done <<EOF
1|cfg_hidden_1e12|/config.json: key 'hidden_size' is 1000000000000, implausibly large
1|cfg_hidden_2p30|/config.json: key 'hidden_size' is 1073741824, implausibly large
1|cfg_layers_huge|/config.json: key 'num_hidden_layers' is 1000000
1|cfg_vocab_zero|/config.json: key 'vocab_size' must be positive
1|cfg_vocab_other|/config.json: vocab_size and hidden_size imply@@'model.embed_tokens.weight' of shape [300, 32]
1|cfg_intermediate|/config.json: hidden_size and intermediate_size imply@@'model.layers.0.mlp.down_proj.weight'
1|cfg_fewer_layers|/config.json: num_hidden_layers is 3@@layers up to 4@@model.layers.3.@@/model.safetensors
1|cfg_hidden_64|/config.json: vocab_size and hidden_size imply
1|cfg_more_layers|/config.json: num_hidden_layers is 4@@layers 0..0 only
1|cfg_not_json|/config.json: not valid JSON
1|cfg_type_gpt2|/config.json: model_type 'gpt2' is not supported
1|cfg_heads_3|/config.json: hidden_size 32 is not a multiple
1|cfg_no_vocab|/config.json: missing key 'vocab_size'
1|cfg_missing|/config.json: cannot open
1|cfg_directory|/config.json: is a directory
1|$work/nowhere|/config.json: cannot open
1|st_truncated|/model.safetensors' gives tensor@@(is it truncated?)
1|st_empty|/model.safetensors' is empty
1|st_header_huge|/model.safetensors' declares a header length
1|st_header_garbage|/model.safetensors'
1|st_missing|
1|st_directory|/model.safetensors' is not a regular file
1|w_nan|/model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight' holds 1 NaN or infinite value
1|w_inf|/model.safetensors: tensor 'model.norm.weight' holds 1 NaN or infinite value
1|w_i32|/model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight' is stored as Int
1|w_transposed|: tensor 'model.layers.0.self_attn.q_proj.weight' has shape [32, 16]
1|w_missing|: the checkpoint has no tensor 'model.layers.0.mlp.up_proj.weight'
1|h_dtype_f8|/model.safetensors' gives tensor 'model.layers.0.self_attn.q_proj.weight' the unknown dtype "F8"
1|h_shape_negative|/model.safetensors' gives tensor@@expected a list of non-negative integers
1|h_shape_span|/model.safetensors' gives tensor@@the shape needs
1|h_shape_overflow|/model.safetensors'@@more than 2^63
1|h_overlap|/model.safetensors'@@overlap
1|idx_missing_shard|
1|idx_not_json|/model.safetensors.index.json
EOF

source "$here/bad_input_cases_files.sh"
