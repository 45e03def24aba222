"""A lean forward pass of the Llama-family decoder (qwen2, llama, mistral) over a transformers
module's own parameters, for the hf generator's decode loop.

Why: on CPU the quickstart model's ops are tiny, and transformers' forward spends most of a
decode step of a few sequences in Python and op dispatch (mask building, output capture, rotary
angles per layer, seven ops per RMSNorm, three projections where one would do). A rollout's last
steps decode only its longest responses, often one sequence for a dozen steps, so this fixed cost
is a large share of the generate phase. `LeanDecoder` computes the same function with fewer ops: one
q/k/v product and one gate/up product per layer (weights concatenated, cached between calls while
the parameters do not change), one fused RMSNorm, the rotary angles once per call and applied to
queries and keys together, and one boolean mask per call. At hundreds of sequences the arithmetic
dominates and the two forwards cost about the same. (The trainer's passes, thousands of tokens per
op, gain nothing measurable from it and keep the module's own forward.)

Same maths as transformers' modules: tested against them, the logits agree to float32 rounding (bit
for bit on the quickstart model). The parameters are the module's, so a weight sync or an optimizer
step is seen at once. `lean_decoder` returns None where the model is outside what this covers (other
families, sliding-window or non-full attention, attention dropout, dynamic rope, anything but float32
weights, gradient checkpointing, autocast); callers then use the module's own forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from engine.modeling import preallocated_cache

#: HF ``model_type`` values whose decoder is the Llama layout this module implements.
FAMILIES = ("qwen2", "llama", "mistral")


def lean_decoder(model: torch.nn.Module) -> Optional["LeanDecoder"]:
    """The `LeanDecoder` of ``model`` (built once and kept on the module), or None where it does not
    apply (see the module docstring); the answer is re-checked on every call (cheap)."""
    if not _supported(model):
        return None
    dec = model.__dict__.get("_engine_lean_decoder")
    if dec is None:
        dec = LeanDecoder(model)
        model.__dict__["_engine_lean_decoder"] = dec
    return dec


def _supported(model: torch.nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if cfg is None or inner is None or getattr(cfg, "model_type", None) not in FAMILIES:
        return False
    if getattr(model, "is_gradient_checkpointing", False) or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    kinds = getattr(cfg, "layer_types", None) or ["full_attention"]
    if any(k != "full_attention" for k in kinds) or getattr(cfg, "use_sliding_window", False):
        return False
    window = getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None
    if window is not None and window < cfg.max_position_embeddings:  # a window past every position is full attention
        return False
    if float(getattr(cfg, "attention_dropout", 0.0) or 0.0) != 0.0:
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        return False  # angles that change with the sequence length
    if not hasattr(inner, "rotary_emb") or any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")):
        return False
    return inner.embed_tokens.weight.dtype == torch.float32


class LeanDecoder:
    """The decoder's forward over ``model``'s own modules (see the module docstring).

    Shapes: B sequences, T new tokens, L keys (cached + new); positions are rotary positions (int64);
    ``key_mask`` [B, L] (bool or 0/1) marks the keys that are real tokens (0 = padding). Inference
    only: the fused weights are detached copies, refreshed when a parameter changes.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        cfg = model.config
        self.model = model
        inner = model.model
        self.embed, self.layers, self.norm, self.lm_head = inner.embed_tokens, list(inner.layers), inner.norm, model.lm_head
        self.rotary = inner.rotary_emb
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self._fused: dict[int, tuple[Any, tuple]] = {}

    # -- building blocks -------------------------------------------------------------------------
    def _weights(self, i: int, layer: torch.nn.Module) -> tuple:
        """(w_qkv, b_qkv, w_gate_up, b_gate_up) of layer ``i``, concatenated once and kept while the
        parameters' versions (in-place changes: a weight sync, an optimizer step) stay the same."""
        a, m = layer.self_attn, layer.mlp
        parts = (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, m.gate_proj.weight, m.up_proj.weight)
        biases = (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias, m.gate_proj.bias, m.up_proj.bias)
        key = tuple((p.data_ptr(), p._version) for p in parts + tuple(b for b in biases if b is not None))
        hit = self._fused.get(i)
        if hit is not None and hit[0] == key:
            return hit[1]

        def cat(ws, bs):
            return torch.cat(ws, 0), (None if bs[0] is None else torch.cat(bs, 0))

        out = cat(parts[:3], biases[:3]) + cat(parts[3:], biases[3:])
        self._fused[i] = (key, out)
        return out

    def _angles(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin [B, T, 1, head_dim] of ``positions`` [B, T], as transformers' rotary
        module computes them: ``x * cos + rotate_half(x) * sin == x * cos + roll(x) * sin_signed``."""
        inv = self.rotary.inv_freq.to(device=positions.device, dtype=torch.float)
        freqs = positions[..., None].float() * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        s = self.rotary.attention_scaling
        cos, sin = emb.cos() * s, emb.sin() * s
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos.to(dtype)[:, :, None, :], sin.to(dtype)[:, :, None, :]

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + torch.roll(x, self.head_dim // 2, dims=-1) * sin

    @staticmethod
    def attention_mask(key_mask: torch.Tensor, t: int) -> torch.Tensor:
        """[B, 1, T, L] bool: query j (the j-th of the T new tokens, key index L - T + j) sees the real
        keys at or before itself, and always itself (a padding query then has one key, never none;
        its output is never read)."""
        b, length = key_mask.shape
        valid = key_mask.bool()[:, None, None, :]
        if t == 1:
            return valid
        kpos = torch.arange(length, device=key_mask.device)
        qpos = kpos[length - t:]
        causal = kpos[None, :] <= qpos[:, None]
        own = kpos[None, :] == qpos[:, None]
        return (valid & causal) | own

    def _layer(self, i: int, layer: torch.nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               mask: torch.Tensor, kv) -> torch.Tensor:
        b, t, _ = h.shape
        a = layer.self_attn
        w_qkv, b_qkv, w_gu, b_gu = self._weights(i, layer)
        x = F.rms_norm(h, (h.shape[-1],), layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        qkv = F.linear(x, w_qkv, b_qkv).view(b, t, self.heads + 2 * self.kv_heads, self.head_dim)
        qk = self._rotate(qkv[:, :, :self.heads + self.kv_heads], cos, sin)
        q = qk[:, :, :self.heads].transpose(1, 2)
        k = qk[:, :, self.heads:].transpose(1, 2)
        v = qkv[:, :, self.heads + self.kv_heads:].transpose(1, 2)
        k, v = kv(i, k, v)
        gqa = {"enable_gqa": True} if self.heads != self.kv_heads else {}
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, **gqa)
        h = h + a.o_proj(o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        m = layer.mlp
        x = F.rms_norm(h, (h.shape[-1],), layer.post_attention_layernorm.weight,
                       layer.post_attention_layernorm.variance_epsilon)
        g, u = F.linear(x, w_gu, b_gu).chunk(2, dim=-1)
        return h + m.down_proj(F.silu(g) * u)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, kv,
                keep: Optional[int] = None) -> torch.Tensor:
        """Logits [B, keep or T, V] of the last ``keep`` new tokens. ``kv(i, k, v) -> (keys, values)``
        gives layer i's attention its keys and values (the cached ones and these new ones)."""
        h = self.embed(input_ids)
        cos, sin = self._angles(positions, h.dtype)
        mask = self.attention_mask(key_mask, input_ids.shape[1])
        for i, layer in enumerate(self.layers):
            h = self._layer(i, layer, h, cos, sin, mask, kv)
        if keep is not None:
            h = h[:, -keep:]
        h = F.rms_norm(h, (h.shape[-1],), self.norm.weight, self.norm.variance_epsilon)
        return self.lm_head(h)

    # -- decoding ------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                capacity: int) -> tuple[torch.Tensor, Any]:
        """Run the (left-padded) prompts [B, P]; returns the last position's logits [B, V] and the KV
        cache (`engine.modeling.preallocated_cache`, sized for ``capacity`` positions)."""
        cache = preallocated_cache(self.model, capacity)
        logits = self.forward(input_ids, positions, attention_mask, lambda i, k, v: cache.layers[i].update(k, v), keep=1)
        return logits[:, -1], cache

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """One token per row: ``tokens`` [B], ``attention_mask`` [B, L] over the cached keys and this
        token's, ``positions`` [B, 1]; returns the logits [B, V] and advances ``cache`` in place."""
        logits = self.forward(tokens[:, None], positions, attention_mask, lambda i, k, v: cache.layers[i].update(k, v))
        return logits[:, -1]
