# More cases of test_bad_input.sh (sourced by bad_input_cases.sh): tokenizers, llama2.c checkpoints, text, corpora,
# GPTQ-format directories, init-model, qat and ptq outputs, and a full disk.

# ---- tokenizers ------------------------------------------------------------------------------------------------
expect "tokenizer with more pieces than the model's vocabulary names both files and sizes" 1 \
  "$F/tok512.bin: the tokenizer has 512 pieces, more than the vocabulary of 259 in $F/tiny/config.json" \
  -- $(ppl) "$F/tiny" --tokenizer "$F/tok512.bin"
expect "generate-text with a tokenizer larger than the vocabulary" 1 "$F/tok512.bin: the tokenizer has 512 pieces" \
  -- $Q generate-text --model "$F/tiny" --tokenizer "$F/tok512.bin" --max-new-tokens 2
expect "tokenizer file empty" 1 "$B/tok_empty.bin: the file is empty" -- $(ppl) "$F/tiny" --tokenizer "$B/tok_empty.bin"
expect "tokenizer truncated" 1 "$B/tok_truncated.bin" -- $(ppl) "$F/tiny" --tokenizer "$B/tok_truncated.bin"
expect "tokenizer garbage" 1 "$B/tok_garbage.bin" -- $(ppl) "$F/tiny" --tokenizer "$B/tok_garbage.bin"
expect "tokenizer.json without a model" 1 "$B/tok_garbage.json" -- $(ppl) "$F/tiny" --tokenizer "$B/tok_garbage.json"
expect "vocab.json without merges.txt" 1 "merges.txt" -- $(ppl) "$F/tiny" --tokenizer "$B/tok_vocab_only/vocab.json"
expect "tokenizer directory without a tokenizer" 1 "$work/yaml: is a directory without a tokenizer" \
  -- $(ppl) "$F/tiny" --tokenizer "$work/yaml"
expect "model directory without a tokenizer" 2 "$B/no_tokenizer has no tokenizer.model" -- $(ppl) "$B/no_tokenizer"

# ---- convert llama2c -------------------------------------------------------------------------------------------
L2C=("$Q" convert llama2c --tokenizer "$F/tok512.bin")
expect "convert: a tokenizer of another vocabulary is refused, nothing written" 1 \
  "$F/tiny/tokenizer.bin: the tokenizer has 259 pieces, but the checkpoint $F/stories260K.bin has a vocabulary of 512" \
  "$W/conv1" -- $Q convert llama2c --in "$F/stories260K.bin" --tokenizer "$F/tiny/tokenizer.bin" --out "$W/conv1"
expect "convert: a tokenizer it cannot parse" 1 "$B/tok_garbage.bin" "$W/conv2" \
  -- $Q convert llama2c --in "$F/stories260K.bin" --tokenizer "$B/tok_garbage.bin" --out "$W/conv2"
expect "convert: truncated checkpoint" 1 "$B/l2c_truncated.bin: @@bytes, but its header" "$W/conv3" \
  -- "${L2C[@]}" --in "$B/l2c_truncated.bin" --out "$W/conv3"
expect "convert: negative dim in the header" 1 "$B/l2c_negative.bin: header field -64 is not positive" "$W/conv5" \
  -- "${L2C[@]}" --in "$B/l2c_negative.bin" --out "$W/conv5"
expect "convert: a 2^30 dim gives no negative byte count" 1 \
  "$B/l2c_dim_2p30.bin: @@implies more than 2^63 bytes" "$W/conv6" \
  -- "${L2C[@]}" --in "$B/l2c_dim_2p30.bin" --out "$W/conv6"
expect "convert: --in a directory" 1 "$F/st: is a directory" "$W/conv7" -- "${L2C[@]}" --in "$F/st" --out "$W/conv7"

# ---- text, eval --------------------------------------------------------------------------------------------------
expect "--text DIR names the directory" 1 "$work/yaml: is a directory; expected a text file" \
  -- $Q eval ppl --model "$F/tiny" --text "$work/yaml"
expect "--text missing" 1 "$work/absent.txt: cannot open the text file" \
  -- $Q eval ppl --model "$F/tiny" --text "$work/absent.txt"
expect "--text without text" 1 "$B/empty.txt: holds no text" -- $Q eval ppl --model "$F/tiny" --text "$B/empty.txt"
expect "eval tasks: unknown task" 2 "frobnicate" \
  -- $Q eval tasks --model "$F/tiny" --tasks frobnicate --data-dir "$work"

# ---- plan: byte counts of a 2^30 dimension (negative before: 64-bit overflow) ------------------------------------
expect "plan --model with hidden_size 2^30: refused, no negative byte count" 1 \
  "$B/cfg_hidden_2p30/config.json: key 'hidden_size' is 1073741824, implausibly large" \
  -- $Q plan --model "$B/cfg_hidden_2p30"

# ---- init-model --------------------------------------------------------------------------------------------------
expect "init-model --hidden 1000000000000: refused before allocating, nothing written" 2 \
  "key 'hidden_size' is 1000000000000, implausibly large" "$W/init1" \
  -- $Q init-model --out "$W/init1" --hidden 1000000000000 --heads 4
expect "init-model --hidden 1e12" 2 "--hidden must be a non-negative integer, got '1e12'" "$W/init2" \
  -- $Q init-model --out "$W/init2" --hidden 1e12
expect "init-model --hidden 2^30 --layers 4: parameters beyond any model" 2 "implausibly" "$W/init3" \
  -- $Q init-model --out "$W/init3" --hidden 1048576 --layers 65536 --intermediate 16 --heads 4

# ---- qat outputs -------------------------------------------------------------------------------------------------
printf 'x' >"$work/a_file"
mkdir -p "$work/finished/student" && echo '{}' >"$work/finished/qat.json"
QAT=("$Q" qat --model "$F/tiny" --corpus "$F/corpus.h5" --quant 4-8-4 --max-steps 1 --set train.global_batch=4)
expect "qat: an unwritable --output is refused at start-up" 2 "output.dir $work/a_file/run is not writable" \
  -- "${QAT[@]}" --output "$work/a_file/run"
expect "qat: a finished run's directory is not overwritten without --resume" 2 \
  "output.dir $work/finished holds a finished qat run@@another --output" -- "${QAT[@]}" --output "$work/finished"
expect "qat: a NaN teacher names the file" 1 \
  "w_nan/model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight'" \
  "$W/qat3/student" -- "${QAT[@]}" --model "$B/w_nan" --output "$W/qat3"
expect "qat: a corpus that is not HDF5" 1 "$B/corpus_text.h5" "$W/qat4/student" \
  -- "${QAT[@]}" --corpus "$B/corpus_text.h5" --output "$W/qat4"
expect "qat: a truncated corpus" 1 "$B/corpus_truncated.h5" "$W/qat5/student" \
  -- "${QAT[@]}" --corpus "$B/corpus_truncated.h5" --output "$W/qat5"
expect "qat: train.beta1=1.5" 2 "key 'train.beta1' must be in [0, 1)" "$W/qat6" \
  -- "${QAT[@]}" --output "$W/qat6" --set train.beta1=1.5

# ---- ptq, GPTQ-format directories, corpora -------------------------------------------------------------------------
expect "ptq: --calib DIR" 1 "$work/yaml: is a directory" "$W/ptq1" \
  -- $Q ptq --model "$F/tiny" --output "$W/ptq1" --calib "$work/yaml" --wbits 4
expect "ptq: --calib-corpus not HDF5" 1 "$B/corpus_text.h5" "$W/ptq2" \
  -- $Q ptq --model "$F/tiny" --output "$W/ptq2" --calib-corpus "$B/corpus_text.h5" --wbits 4
expect "ptq: gptq without calibration" 2 "needs calibration data" "$W/ptq4" \
  -- $Q ptq --model "$F/tiny" --output "$W/ptq4"
expect "ptq: a NaN weight" 1 "w_nan/model.safetensors" "$W/ptq5" \
  -- $Q ptq --model "$B/w_nan" --output "$W/ptq5" --method rtn --wbits 4
expect "GPTQ dir: bits 5" 1 "gptq_bits_5" -- $(ppl) "$B/gptq_bits_5"
expect "GPTQ dir: quant_method awq" 1 "gptq_method_awq" -- $(ppl) "$B/gptq_method_awq"
expect "GPTQ dir: scales missing" 1 "gptq_no_scales@@model.layers.0.self_attn.q_proj@@no scales" \
  -- $(ppl) "$B/gptq_no_scales"
expect "GPTQ dir: qweight stored as F32" 1 "model.layers.0.self_attn.q_proj.qweight" -- $(ppl) "$B/gptq_qweight_f32"
expect "show-corpus: a truncated corpus" 1 "$B/corpus_truncated.h5" \
  -- $Q show-corpus --corpus "$B/corpus_truncated.h5" --model "$F/tiny"

# ---- a full disk: outputs appear complete or not at all ----------------------------------------------------------
enospc "full disk: convert llama2c leaves no output directory" empty \
  "${L2C[@]}" --in "$F/stories260K.bin" --out @OUT@
enospc "full disk: init-model leaves no output directory" empty $Q init-model --out @OUT@ --hidden 128 --layers 2
enospc "full disk: ptq (fake-quantized and GPTQ exports) leaves no output directory" empty \
  $Q ptq --model "$F/st" --output @OUT@ --method rtn --wbits 4 --group-size 16
enospc "full disk: eval ppl --output leaves no output directory" full $(ppl) "$F/tiny" --output @OUT@
