"""Building and loading transformers models from a resolved spec (no downloads, local folders only)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch


def rope_scaling_dict(scaling: Any) -> dict[str, Any]:
    """HF ``rope_scaling`` of a `schemas.RopeScaling` (what transformers and vLLM read)."""
    out: dict[str, Any] = {"rope_type": scaling.type, "factor": scaling.factor}
    if scaling.type == "llama3":
        out.update(original_max_position_embeddings=scaling.original_max_position_embeddings,
                   low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor)
    return out


def hf_config(arch: Any, tokenizer: Any = None):
    """A transformers config for a `schemas.Architecture` (qwen2, llama or mistral family)."""
    from transformers import AutoConfig

    kw: dict[str, Any] = dict(
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads, intermediate_size=arch.ffn_hidden_size,
        vocab_size=arch.vocab_size, tie_word_embeddings=arch.tied_embeddings,
        max_position_embeddings=arch.max_position_embeddings, rope_theta=arch.rope_theta,
        head_dim=arch.kv_channels,
    )
    if arch.family == "mistral" and arch.sliding_window:
        kw["sliding_window"] = arch.sliding_window
    if arch.rope_scaling is not None:
        kw["rope_scaling"] = rope_scaling_dict(arch.rope_scaling)
    if arch.family == "llama":
        kw["attention_bias"] = arch.qkv_bias
    if tokenizer is not None:
        kw.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    return AutoConfig.for_model(arch.family, **kw)


def random_model(arch: Any, tokenizer: Any, seed: int) -> torch.nn.Module:
    """A randomly initialised causal LM of the given architecture (float32, deterministic in ``seed``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch, tokenizer), dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_model(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a HF causal LM from a local folder (never from a hub)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)


def load_tokenizer(path: str):
    """Load a tokenizer from a local folder; the pad token falls back to the eos token.

    A folder saved from a plain `tokenizers` object (the quickstart tokenizer) is loaded as exactly
    that: `AutoTokenizer` would swap in the model family's own tokenizer class (e.g. Qwen2's
    byte-level BPE) and lose its pre-tokenizer.
    """
    import json
    import os

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cls = AutoTokenizer
    cfg_file = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(cfg_file):
        with open(cfg_file) as f:
            if json.load(f).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
                cls = PreTrainedTokenizerFast
    tok = cls.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name of the KV-cache argument of ``model.forward``: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (older releases). Looked up once per model class."""
    return _cache_kwarg_of(type(model))


@lru_cache(maxsize=None)
def _cache_kwarg_of(cls: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def preallocated_cache(model: torch.nn.Module, capacity: int) -> Any:
    """A KV cache for ``model`` whose layers hold their keys and values in buffers of ``capacity``
    positions (tokens), written in place as decoding goes, or None where the model has a layer that
    is not plain full attention (sliding window, linear attention): then the model's own cache is used.

    transformers' `DynamicCache` concatenates each layer's keys and values with every new token, a copy
    of the whole cache per step; on CPU that copy was about a quarter of a decode step at 256 sequences
    of the quickstart model. The attention reads the same numbers either way."""
    from transformers.cache_utils import Cache

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    kinds = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    if any(k != "full_attention" for k in kinds) or getattr(cfg, "use_sliding_window", False):
        return None
    return Cache(layers=[_preallocated_layer_class()(capacity) for _ in kinds])


def pick_rows(buf: torch.Tensor, indices: torch.Tensor, filled: int, row_dim: int, pos_dim: int) -> torch.Tensor:
    """Rows ``indices`` (along ``row_dim``) of a KV buffer, in a new buffer of the same capacity; only the
    first ``filled`` positions (along ``pos_dim``) are copied, the rest is left unwritten."""
    shape = list(buf.shape)
    shape[row_dim] = len(indices)
    out = buf.new_empty(shape)
    torch.index_select(buf.narrow(pos_dim, 0, filled), row_dim, indices, out=out.narrow(pos_dim, 0, filled))
    return out


def grown(buf: torch.Tensor, filled: int, needed: int, pos_dim: int) -> torch.Tensor:
    """``buf`` if it has room for ``needed`` positions along ``pos_dim``; else a new buffer of
    max(``needed``, twice as many) positions holding a copy of the first ``filled``."""
    size = buf.shape[pos_dim]
    if needed <= size:
        return buf
    shape = list(buf.shape)
    shape[pos_dim] = max(needed, 2 * size)
    out = buf.new_empty(shape)
    out.narrow(pos_dim, 0, filled).copy_(buf.narrow(pos_dim, 0, filled))
    return out


@lru_cache(maxsize=None)
def _preallocated_layer_class() -> type:
    """`PreallocatedLayer`, defined on first use so that importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A full-attention cache layer over buffers [B, heads, capacity, head_dim]; ``keys`` and ``values``
        are views of their first positions (grown by doubling should a sequence outrun the capacity)."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = max(1, int(capacity))

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            b, h, _, d = key_states.shape
            self._k = key_states.new_empty((b, h, self.capacity, d))
            self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            self._views(0)
            self.is_initialized = True

        def _views(self, length: int) -> None:
            self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            t, n = self.keys.shape[-2], key_states.shape[-2]
            self._k, self._v = grown(self._k, t, t + n, 2), grown(self._v, t, t + n, 2)
            self._k[:, :, t:t + n] = key_states
            self._v[:, :, t:t + n] = value_states
            self._views(t + n)
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.get_seq_length() > 0:
                t = self.keys.shape[-2]
                self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
                self._views(t)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep the rows ``indices``; copies the filled positions only, not the whole capacity."""
            if self.get_seq_length() > 0:
                t = self.keys.shape[-2]
                self._k, self._v = pick_rows(self._k, indices, t, 0, 2), pick_rows(self._v, indices, t, 0, 2)
                self._views(t)

    return PreallocatedLayer
