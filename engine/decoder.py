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

At hundreds of sequences the cost that remains is attention over the KV cache: a rollout samples n
responses of each prompt, and a cache repeated n times makes every step read each prompt's keys n
times. `SharedPrefixCache` holds them once per prompt and attends in two parts (the prompt's keys, one
product per prompt over its samples' queries; each sample's own keys): about 15% off a quickstart
rollout's decoding (paired runs on one machine).

Same maths as transformers' modules: tested against them, the logits agree to float32 rounding (the
prefill bit for bit on the quickstart model). The parameters are the module's, so a weight sync or an
optimizer step is seen by the next prefill. `lean_decoder` returns None where the model is outside
what this covers (other families, sliding-window or non-full attention, attention dropout, dynamic
rope, anything but float32 weights, gradient checkpointing, autocast); callers then use the module's
own forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from engine.modeling import grown, pick_rows, preallocated_cache

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
        self._current: list[tuple] = []  # `refresh`'s list as of the last prefill

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

    def refresh(self) -> list[tuple]:
        """Every layer's weights as `_layer` takes them: (norm 1 weight, eps, w_qkv, b_qkv, o_proj
        weight, bias, norm 2 weight, eps, w_gate_up, b_gate_up, down_proj weight, bias), the fused ones
        checked against the parameters (`_weights`). Called by each prefill; the steps of a decode reuse
        it, so a decode sees the weights of its prefill (nothing changes them in between: the hf
        generator's decode loop holds the process)."""
        out = []
        for i, layer in enumerate(self.layers):
            a, m, n1, n2 = layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
            w_qkv, b_qkv, w_gu, b_gu = self._weights(i, layer)
            out.append((n1.weight, n1.variance_epsilon, w_qkv, b_qkv, a.o_proj.weight, a.o_proj.bias,
                        n2.weight, n2.variance_epsilon, w_gu, b_gu, m.down_proj.weight, m.down_proj.bias))
        self._current = out
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

    def _layer(self, i: int, w: tuple, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               mask: torch.Tensor, attend) -> torch.Tensor:
        b, t, hidden = h.shape
        n1, eps1, w_qkv, b_qkv, w_o, b_o, n2, eps2, w_gu, b_gu, w_down, b_down = w
        x = F.rms_norm(h, (hidden,), n1, eps1)
        qkv = F.linear(x, w_qkv, b_qkv).view(b, t, self.heads + 2 * self.kv_heads, self.head_dim)
        qk = self._rotate(qkv[:, :, :self.heads + self.kv_heads], cos, sin)
        q = qk[:, :, :self.heads].transpose(1, 2)
        k = qk[:, :, self.heads:].transpose(1, 2)
        v = qkv[:, :, self.heads + self.kv_heads:].transpose(1, 2)
        o = attend(i, q, k, v, mask)
        h = h + F.linear(o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim), w_o, b_o)
        x = F.rms_norm(h, (hidden,), n2, eps2)
        g, u = F.linear(x, w_gu, b_gu).chunk(2, dim=-1)
        return h + F.linear(F.silu(g) * u, w_down, b_down)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention of queries [B, H, T, D] over keys and values [B, Hkv, L, D]."""
        gqa = {"enable_gqa": True} if self.heads != self.kv_heads else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, **gqa)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, attend,
                keep: Optional[int] = None, weights: Optional[list[tuple]] = None) -> torch.Tensor:
        """Logits [B, keep or T, V] of the last ``keep`` new tokens. ``attend(i, q, k, v, mask) -> out``
        is layer i's attention of these queries [B, H, T, D] over the cached keys and values and these
        new ones (k, v [B, Hkv, T, D]), ``mask`` [B, 1, T, L] (`attention_mask`); out [B, H, T, D].
        ``weights``: `refresh`'s list (taken afresh when not given)."""
        h = self.embed(input_ids)
        cos, sin = self._angles(positions, h.dtype)
        mask = self.attention_mask(key_mask, input_ids.shape[1])
        for i, w in enumerate(weights if weights is not None else self.refresh()):
            h = self._layer(i, w, h, cos, sin, mask, attend)
        if keep is not None:
            h = h[:, -keep:]
        h = F.rms_norm(h, (h.shape[-1],), self.norm.weight, self.norm.variance_epsilon)
        return self.lm_head(h)

    def _cached(self, cache: Any):
        """``attend`` over a transformers-style cache whose layers append and return their keys and values."""
        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            k, v = cache.layers[i].update(k, v)
            return self.attention(q, k, v, mask)
        return attend

    # -- decoding ------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                capacity: int, n: int = 1) -> tuple[torch.Tensor, Any]:
        """Run the (left-padded) prompts [G, P]; returns the last position's logits [G, V] and a KV cache
        for ``n`` samples of each prompt (G * n rows, prompt-major), sized for ``capacity`` positions
        (prompt + response). With n > 1 it is a `SharedPrefixCache` (each prompt's keys and values held
        once); else `engine.modeling.preallocated_cache`."""
        if n > 1:
            cache = SharedPrefixCache(self, n, capacity - input_ids.shape[1], attention_mask)

            def attend(i, q, k, v, mask):
                cache.set_prompt(i, k, v)
                return self.attention(q, k, v, mask)
        else:
            cache = preallocated_cache(self.model, capacity)
            attend = self._cached(cache)
        logits = self.forward(input_ids, positions, attention_mask, attend, keep=1, weights=self.refresh())
        return logits[:, -1], cache

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """One token per row: ``tokens`` [B], ``attention_mask`` [B, L] over the cached keys and this
        token's, ``positions`` [B, 1]; returns the logits [B, V] and advances ``cache`` in place."""
        attend = cache.attend if isinstance(cache, SharedPrefixCache) else self._cached(cache)
        logits = self.forward(tokens[:, None], positions, attention_mask, attend, weights=self._current or None)
        return logits[:, -1]


#: `SharedPrefixCache` keeps the shared layout while at least this share of its G * n rows is live; below
#: it, the live rows' keys and values are copied into one flat cache (the shared prompt part's work is
#: per prompt, not per live row, so it stops paying once most rows have finished).
SHARED_MIN_LIVE = 0.25


class SharedPrefixCache:
    """KV cache for decoding n samples of each of G prompts, one token per step.

    Each prompt's keys and values are held once, [G, Hkv, P, D] per layer, and each sample's own (response)
    ones in position-major buffers [capacity, B, Hkv, D], B live rows out of G * n (prompt-major;
    ``rows`` are the live rows' numbers). A step's attention is the softmax over the two parts joined: the prompt part a product
    per prompt over its n samples' queries, so the prompt's keys are read once per prompt, not once per
    sample, and never copied n times. The same maths as attention over the repeated cache, to float32
    rounding. When fewer than `SHARED_MIN_LIVE` of the rows are live, the live rows' keys and values are
    gathered into a flat `engine.modeling.preallocated_cache` and decoding goes on over that.
    """

    def __init__(self, decoder: LeanDecoder, n: int, capacity: int, prompt_mask: torch.Tensor) -> None:
        self.decoder, self.n, self.capacity = decoder, n, max(1, int(capacity))
        g, self.prompt_len = prompt_mask.shape
        self.groups = g
        self.rows = torch.arange(g * n, device=prompt_mask.device)
        self.prompt: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.own: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0  # own positions written by every layer
        zero = torch.zeros((), dtype=torch.float32, device=prompt_mask.device)
        bias = torch.where(prompt_mask.bool(), zero, float("-inf"))  # [G, P]: 0 on real prompt keys
        self._bias = bias.repeat_interleave(n, 0)[:, None, None, :]  # [B, 1, 1, P], the live rows'
        self.flat: Any = None

    def set_prompt(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Layer i's prompt keys and values [G, Hkv, P, D] (from the prefill)."""
        self.prompt[i] = (k.contiguous(), v.contiguous())
        self._bias = self._bias.to(k.dtype)

    def get_seq_length(self) -> int:
        """Positions each live row attends to (prompt, padded, + its own), as transformers' caches count."""
        return self.flat.get_seq_length() if self.flat is not None else self.prompt_len + self.length

    def _own(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys and values [B, Hkv, 1, D] into layer i's own buffers, which are
        position-major [capacity, B, Hkv, D] so that their filled part is one contiguous block; returns
        that part, [t, B, Hkv, D]."""
        t = self.length
        buf = self.own.get(i)
        if buf is None:
            buf = (k.new_empty((self.capacity,) + k.shape[:2] + k.shape[3:]),
                   v.new_empty((self.capacity,) + v.shape[:2] + v.shape[3:]))
        buf = self.own[i] = (grown(buf[0], t, t + 1, 0), grown(buf[1], t, t + 1, 0))
        buf[0][t] = k[:, :, 0]
        buf[1][t] = v[:, :, 0]
        if i == len(self.decoder.layers) - 1:
            self.length = t + 1
        return buf[0][:t + 1], buf[1][:t + 1]

    def attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Layer i's attention for one new token per live row (q [B, H, 1, D]); see the class docstring."""
        if self.flat is not None:
            k, v = self.flat.layers[i].update(k, v)
            return self.decoder.attention(q, k, v, mask)
        kp, vp = self.prompt[i]
        g, hkv, p, d = kp.shape
        b, h, n = q.shape[0], q.shape[1], self.n
        r = h // hkv
        ko, vo = self._own(i, k, v)
        q = q.reshape(b, hkv, r, d)
        full = b == g * n

        def grouped(x: torch.Tensor) -> torch.Tensor:  # [B, Hkv, r, X] -> [G, Hkv, n * r, X]
            if not full:
                x = x.new_zeros((g * n,) + x.shape[1:]).index_copy_(0, self.rows, x)
            return x.view(g, n, hkv, r, -1).transpose(1, 2).reshape(g, hkv, n * r, x.shape[-1])

        def per_row(x: torch.Tensor) -> torch.Tensor:  # [G, Hkv, n * r, X] -> [B, Hkv, r, X]
            x = x.view(g, hkv, n, r, -1).transpose(1, 2).reshape(g * n, hkv, r, x.shape[-1])
            return x if full else x.index_select(0, self.rows)

        # the own part is a few keys per row: products broadcast over the position-major buffers beat
        # that many tiny matrix products
        own = (ko.unsqueeze(3) * q.unsqueeze(0)).sum(-1).permute(1, 2, 3, 0)  # [B, Hkv, r, t]
        scores = torch.cat([per_row(torch.matmul(grouped(q), kp.transpose(-1, -2))) + self._bias, own], dim=-1)
        w = torch.softmax(scores * self.decoder.scale, dim=-1)
        wo = w[..., p:].permute(3, 0, 1, 2).contiguous()  # [t, B, Hkv, r]
        out = per_row(torch.matmul(grouped(w[..., :p]), vp)) + (wo.unsqueeze(-1) * vo.unsqueeze(3)).sum(0)
        return out.reshape(b, h, 1, d)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the live rows ``indices`` (positions among the live rows), in that order."""
        if self.flat is not None:
            self.flat.batch_select_indices(indices)
            return
        self.rows = self.rows[indices]
        self._bias = self._bias[indices]
        t = self.length
        for i, (k, v) in self.own.items():
            self.own[i] = (pick_rows(k, indices, t, 1, 0), pick_rows(v, indices, t, 1, 0))  # position-major
        if len(self.rows) < SHARED_MIN_LIVE * self.groups * self.n:
            self._flatten()

    def _flatten(self) -> None:
        """Copy the live rows' prompt and own keys and values into one flat preallocated cache."""
        flat = preallocated_cache(self.decoder.model, self.prompt_len + self.capacity)
        prompt = self.rows // self.n
        t = self.length
        for i, (kp, vp) in self.prompt.items():
            parts_k, parts_v = [kp.index_select(0, prompt)], [vp.index_select(0, prompt)]
            if t:
                ko, vo = self.own[i]
                parts_k.append(ko[:t].permute(1, 2, 0, 3))
                parts_v.append(vo[:t].permute(1, 2, 0, 3))
            flat.layers[i].update(torch.cat(parts_k, 2), torch.cat(parts_v, 2))
        self.flat, self.prompt, self.own = flat, {}, {}

