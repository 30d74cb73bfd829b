"""The PyTorch eager model behind bench/reference/llama_eager.py: a qforge checkpoint directory read without the
safetensors package, fake quantization with qforge's quant/quantizer.cpp semantics, Hugging Face transformers'
modeling_llama.py (eager attention) written out, and the llama2.c tokenizer (run.c's encode)."""

import heapq
import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- checkpoint ---------------------------------------------------------------------------------------------------

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """Every tensor of a .safetensors file (8-byte little-endian header length, JSON header, raw data)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length].decode("utf-8"))
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        shape = info["shape"]
        if end == start:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        count = (end - start) // torch.empty(0, dtype=dtype).element_size()
        tensors[name] = torch.frombuffer(data, dtype=dtype, count=count, offset=base + start).reshape(shape)
    return tensors


def read_checkpoint(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if not files:
        raise SystemExit(f"{model_dir}: no .safetensors file")
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(model_dir, name)))
    return tensors


class LlamaConfig:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        if c.get("model_type", "llama") != "llama":
            raise SystemExit(f"{model_dir}: model_type {c.get('model_type')}, this reference is LLaMA only")
        self.vocab_size = c["vocab_size"]
        self.hidden_size = c["hidden_size"]
        self.intermediate_size = c["intermediate_size"]
        self.num_hidden_layers = c["num_hidden_layers"]
        self.num_attention_heads = c["num_attention_heads"]
        self.num_key_value_heads = c.get("num_key_value_heads", self.num_attention_heads)
        self.max_position_embeddings = c.get("max_position_embeddings", 2048)
        self.rms_norm_eps = c.get("rms_norm_eps", 1e-6)
        self.rope_theta = c.get("rope_theta", 10000.0)
        self.tie_word_embeddings = c.get("tie_word_embeddings", False)
        self.bos_token_id = c.get("bos_token_id", 1)
        self.eos_token_id = c.get("eos_token_id", 2)


# ---- fake quantization (qforge's quant/quantizer.cpp semantics) --------------------------------------------------

class QuantSpec:
    def __init__(self, bits, symmetric=True, ste_clip=2.0):
        self.bits, self.symmetric, self.ste_clip = bits, symmetric, ste_clip

    @property
    def enabled(self):
        return self.bits < 16


def parse_quant(text):
    parts = text.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise SystemExit(f"--quant must be W-A-KV (e.g. 4-8-4), got '{text}'")
    bits = [int(p) for p in parts]
    for b in bits:
        if b != 16 and not 2 <= b <= 8:
            raise SystemExit(f"--quant widths must be 2..8 or 16, got '{text}'")
    return QuantSpec(bits[0]), QuantSpec(bits[1]), QuantSpec(bits[2])


def fake_quantized_values(x, spec):
    """x_hat with one min-max range per row of the last dimension, computed in fp32."""
    with torch.no_grad():
        g = x.detach().to(torch.float32)
        if spec.symmetric:
            qmax = float(2 ** (spec.bits - 1) - 1)
            absmax = g.abs().amax(-1, keepdim=True)
            scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
            codes = (g / scale).round().clamp(-qmax, qmax)
            return (codes * scale).to(x.dtype)
        levels = float(2 ** spec.bits - 1)
        top = g.amax(-1, keepdim=True).clamp_min(0)
        neg_bottom = (-g.amin(-1, keepdim=True)).clamp_min(0)
        span = top + neg_bottom
        scale = torch.where(span > 0, span / levels, torch.ones_like(span))
        zero = (neg_bottom / scale).round()
        codes = ((g / scale).round() + zero).clamp(0, levels)
        return ((codes - zero) * scale).to(x.dtype)


class StraightThroughQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec):
        ctx.clip = spec.ste_clip
        if spec.ste_clip > 0:
            ctx.save_for_backward(x.abs() <= spec.ste_clip)
        return fake_quantized_values(x, spec)

    @staticmethod
    def backward(ctx, grad):
        if ctx.clip > 0:
            (keep,) = ctx.saved_tensors
            grad = grad.masked_fill(keep.logical_not(), 0)
        return grad, None


def fake_quantize(x, spec):
    if spec is None or not spec.enabled or x.numel() == 0:
        return x
    if not (x.requires_grad and torch.is_grad_enabled()):
        return fake_quantized_values(x, spec)
    return StraightThroughQuantize.apply(x, spec)


class QuantLinear(nn.Linear):
    """nn.Linear with LLM-QAT's QuantizeLinear hooks: fake-quantized input (per token) and weight (per row)."""

    def __init__(self, in_features, out_features, bias=False):
        super().__init__(in_features, out_features, bias=bias)
        self.act_spec = None
        self.weight_spec = None

    def forward(self, x):
        return F.linear(fake_quantize(x, self.act_spec), fake_quantize(self.weight, self.weight_spec), self.bias)


# ---- the model (transformers' modeling_llama.py, eager) --------------------------------------------------------

class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings, base):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._set_cos_sin_cache(max_position_embeddings)

    def _set_cos_sin_cache(self, seq_len):
        self.max_seq_len_cached = seq_len
        t = torch.arange(seq_len, dtype=self.inv_freq.dtype)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos()[None, None, :, :], persistent=False)
        self.register_buffer("sin_cached", emb.sin()[None, None, :, :], persistent=False)

    def forward(self, x, seq_len):
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len)
        return (self.cos_cached[:, :, :seq_len, ...].to(dtype=x.dtype),
                self.sin_cached[:, :, :seq_len, ...].to(dtype=x.dtype))


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids):
    cos = cos.squeeze(1).squeeze(0)  # [seq_len, dim]
    sin = sin.squeeze(1).squeeze(0)
    cos = cos[position_ids].unsqueeze(1)  # [bs, 1, seq_len, dim]
    sin = sin[position_ids].unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class LlamaAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.q_proj = QuantLinear(self.hidden_size, self.num_heads * self.head_dim)
        self.k_proj = QuantLinear(self.hidden_size, self.num_key_value_heads * self.head_dim)
        self.v_proj = QuantLinear(self.hidden_size, self.num_key_value_heads * self.head_dim)
        self.o_proj = QuantLinear(self.num_heads * self.head_dim, self.hidden_size)
        self.rotary_emb = LlamaRotaryEmbedding(self.head_dim, config.max_position_embeddings, config.rope_theta)
        self.kv_spec = None  # LLM-QAT's KV quantizer: the projections' outputs, per token, before RoPE

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value=None, use_cache=False):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states)
        key_states = fake_quantize(self.k_proj(hidden_states), self.kv_spec)
        value_states = fake_quantize(self.v_proj(hidden_states), self.kv_spec)
        query_states = query_states.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = key_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value_states = value_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)

        kv_seq_len = key_states.shape[-2]
        if past_key_value is not None:
            kv_seq_len += past_key_value[0].shape[-2]
        cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)

        if past_key_value is not None:
            key_states = torch.cat([past_key_value[0], key_states], dim=2)
            value_states = torch.cat([past_key_value[1], value_states], dim=2)
        past_key_value = (key_states, value_states) if use_cache else None

        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)

        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
            attn_weights = torch.max(attn_weights, torch.tensor(torch.finfo(attn_weights.dtype).min))
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
        return self.o_proj(attn_output), past_key_value


class LlamaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = QuantLinear(config.hidden_size, config.intermediate_size)
        self.up_proj = QuantLinear(config.hidden_size, config.intermediate_size)
        self.down_proj = QuantLinear(config.intermediate_size, config.hidden_size)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value=None, use_cache=False):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, present = self.self_attn(hidden_states, attention_mask, position_ids, past_key_value,
                                                use_cache)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states, present


def _make_causal_mask(input_ids_shape, dtype, past_key_values_length):
    bsz, tgt_len = input_ids_shape
    mask = torch.full((tgt_len, tgt_len), torch.finfo(dtype).min)
    mask_cond = torch.arange(mask.size(-1))
    mask.masked_fill_(mask_cond < (mask_cond + 1).view(mask.size(-1), 1), 0)
    mask = mask.to(dtype)
    if past_key_values_length > 0:
        mask = torch.cat([torch.zeros(tgt_len, past_key_values_length, dtype=dtype), mask], dim=-1)
    return mask[None, None, :, :].expand(bsz, 1, tgt_len, tgt_len + past_key_values_length)


def _expand_mask(mask, dtype, tgt_len):
    bsz, src_len = mask.size()
    expanded_mask = mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    inverted_mask = 1.0 - expanded_mask
    return inverted_mask.masked_fill(inverted_mask.to(torch.bool), torch.finfo(dtype).min)


class LlamaModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def _prepare_decoder_attention_mask(self, attention_mask, input_shape, inputs_embeds, past_key_values_length):
        combined_attention_mask = None
        if input_shape[-1] > 1:
            combined_attention_mask = _make_causal_mask(input_shape, inputs_embeds.dtype, past_key_values_length)
        if attention_mask is not None:
            expanded_attn_mask = _expand_mask(attention_mask, inputs_embeds.dtype, tgt_len=input_shape[-1])
            combined_attention_mask = (expanded_attn_mask if combined_attention_mask is None
                                       else expanded_attn_mask + combined_attention_mask)
        return combined_attention_mask

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        batch_size, seq_length = input_ids.shape
        past_key_values_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_key_values_length, seq_length + past_key_values_length,
                                        dtype=torch.long).unsqueeze(0).view(-1, seq_length)
        else:
            position_ids = position_ids.view(-1, seq_length).long()
        inputs_embeds = self.embed_tokens(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones((batch_size, seq_length + past_key_values_length), dtype=torch.bool)
        attention_mask = self._prepare_decoder_attention_mask(attention_mask, (batch_size, seq_length),
                                                              inputs_embeds, past_key_values_length)
        hidden_states = inputs_embeds
        next_decoder_cache = () if use_cache else None
        for idx, decoder_layer in enumerate(self.layers):
            past_key_value = past_key_values[idx] if past_key_values is not None else None
            hidden_states, present = decoder_layer(hidden_states, attention_mask, position_ids, past_key_value,
                                                   use_cache)
            if use_cache:
                next_decoder_cache += (present,)
        return self.norm(hidden_states), next_decoder_cache


class LlamaForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        hidden_states, past = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache)
        logits = self.lm_head(hidden_states).float()
        return logits, past

    def set_quantizers(self, weight, act, kv):
        """LLM-QAT's student: quantizers on every decoder linear's weight and input, and on the KV cache."""
        for module in self.model.modules():
            if isinstance(module, QuantLinear):
                module.weight_spec = weight if weight.enabled else None
                module.act_spec = act if act.enabled else None
            if isinstance(module, LlamaAttention):
                module.kv_spec = kv if kv.enabled else None


def load_model(model_dir):
    config = LlamaConfig(model_dir)
    model = LlamaForCausalLM(config)
    state = {name: t.to(torch.float32) for name, t in read_checkpoint(model_dir).items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"{model_dir}: checkpoint does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    del state
    return model.eval()


# ---- llama2.c tokenizer (qforge's framework/tokenizer/llama2c_tokenizer.cpp, run.c's encode) ---------------------

class Llama2cTokenizer:
    NO_MERGE_SCORE = -1e10

    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        offset = 4
        self.pieces, self.scores = [], []
        while offset < len(data):
            score, length = struct.unpack_from("<fi", data, offset)
            offset += 8
            self.pieces.append(data[offset:offset + length])
            self.scores.append(score)
            offset += length
        self.ids = {}
        for i, piece in enumerate(self.pieces):
            self.ids.setdefault(piece, i)
        self.merges = {}
        for whole, i in self.ids.items():
            if not self.scores[i] > self.NO_MERGE_SCORE:
                continue
            for split in range(len(whole) + 1):
                left, right = self.ids.get(whole[:split]), self.ids.get(whole[split:])
                if left is not None and right is not None:
                    self.merges.setdefault((left, right), (i, self.scores[i]))

    def _piece_or_bytes(self, text, out):
        i = self.ids.get(text)
        if i is not None:
            out.append(i)
        else:
            out.extend(3 + b for b in text)

    def encode(self, text, bos=True):
        symbols = []
        if text:
            self._piece_or_bytes(b" ", symbols)
            start = 0
            for i in range(len(text)):
                continues = i + 1 < len(text) and (text[i + 1] & 0xC0) == 0x80 and i + 1 - start < 4
                if continues:
                    continue
                self._piece_or_bytes(text[start:i + 1], symbols)
                start = i + 1
        n = len(symbols)
        nxt = [i + 1 if i + 1 < n else -1 for i in range(n)]
        prev = [i - 1 for i in range(n)]
        heap = []

        def consider(left):
            right = nxt[left]
            if right < 0 or symbols[left] < 0 or symbols[right] < 0:
                return
            merge = self.merges.get((symbols[left], symbols[right]))
            if merge is not None:
                heapq.heappush(heap, (-merge[1], left, symbols[left], symbols[right], merge[0]))

        for i in range(n - 1):
            consider(i)
        while heap:
            _, left, left_id, right_id, merged = heapq.heappop(heap)
            right = nxt[left]
            if symbols[left] != left_id or right < 0 or symbols[right] != right_id:
                continue
            symbols[left] = merged
            symbols[right] = -1
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            if prev[left] >= 0:
                consider(prev[left])
            consider(left)
        return ([1] if bos else []) + [s for s in symbols if s >= 0]
