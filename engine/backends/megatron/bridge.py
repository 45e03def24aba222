"""HF <-> Megatron weights through mbridge, behind a small interface of our own.

`WeightBridge` loads a HF folder (safetensors) into this rank's TP/PP shard of a `GPTModel`, and exports
the model as HF-named *full* tensors one at a time (gathering TP shards and broadcasting from the PP
stage that owns each tensor): the weight stream to the generator and `export_hf` both use it.

mbridge 0.15 assumes Transformer Engine's layer spec (norms fused into the linear layers); with
Megatron's local spec (CPU) the two norms are their own modules, so `_LocalSpecBridge` maps those two
names and otherwise leaves mbridge's mapping (q/k/v interleaving per KV group, gate/up concatenation,
TP split dimensions, vocabulary padding) to it. The model itself is built by our `model.py`, not by
mbridge. `hand_mapping` (a plain, hand-checked Qwen2 mapping at TP=1) is the tests' oracle.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import torch

from engine.backends.megatron.model import VOCAB_DIVISIBLE_BY, ModelLayout, padded_vocab_size, uses_te_spec


def hf_weight_names(arch: Any) -> list[str]:
    """Every HF parameter name of ``arch``'s model, in export order (the weight-sync manifest)."""
    names = ["model.embed_tokens.weight"]
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        names.append(p + "input_layernorm.weight")
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkv"]
        if arch.qkv_bias:
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
        names.append(p + "self_attn.o_proj.weight")
        names.append(p + "post_attention_layernorm.weight")
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    names.append("model.norm.weight")
    if not arch.tied_embeddings:
        names.append("lm_head.weight")
    return names


def _bridge_class():
    from mbridge.core.llm_bridge import LLMBridge

    class _LocalSpecBridge(LLMBridge):
        """mbridge's dense-decoder mapping, with our TransformerConfig and either layer spec."""

        def __init__(self, hf_config: Any, config: Any, dtype: torch.dtype, tied: bool, local_spec: bool,
                     vocab_size: int, padded: int, divisible_by: int) -> None:
            self._given_config = config
            self._tied, self._local = tied, local_spec
            super().__init__(hf_config, dtype=dtype, make_vocab_size_divisible_by=divisible_by)
            self.vocab_size, self.padded_vocab_size = vocab_size, padded
            # per instance: mbridge's Qwen2 bridge edits its class-level dict for tied embeddings
            self._DIRECT_MAPPING = {
                "embedding.word_embeddings.weight": "model.embed_tokens.weight",
                "decoder.final_layernorm.weight": "model.norm.weight",
                "output_layer.weight": "model.embed_tokens.weight" if tied else "lm_head.weight",
            }

        def _build_config(self):
            return self._given_config

        def _get_hf_shared_weight_keys(self):
            return ["model.embed_tokens.weight"] if self._tied else []

        def _weight_name_mapping_mcore_to_hf(self, name: str) -> list[str]:
            if self._local and ".layers." in name:
                layer = name.split(".")[2]
                if name.endswith(".input_layernorm.weight"):
                    return [f"model.layers.{layer}.input_layernorm.weight"]
                if name.endswith(".pre_mlp_layernorm.weight"):
                    return [f"model.layers.{layer}.post_attention_layernorm.weight"]
            return super()._weight_name_mapping_mcore_to_hf(name)

    return _LocalSpecBridge


class WeightBridge:
    """HF <-> Megatron for one rank of a TP/PP group (parallel_state initialised)."""

    def __init__(self, arch: Any, config: Any, layout: ModelLayout, hf_config: Any) -> None:
        self.arch, self.layout, self.hf_config = arch, layout, hf_config
        divisible = VOCAB_DIVISIBLE_BY * layout.tensor_parallel
        self._bridge = _bridge_class()(hf_config, config, layout.dtype, bool(arch.tied_embeddings),
                                       not uses_te_spec(layout), arch.vocab_size,
                                       padded_vocab_size(arch.vocab_size, layout.tensor_parallel), divisible)

    def names(self) -> list[str]:
        """The HF names `export` yields, once each."""
        return hf_weight_names(self.arch)

    @torch.no_grad()
    def load_hf(self, model: torch.nn.Module, folder: str) -> None:
        """Copy the HF safetensors in ``folder`` into this rank's shard of ``model`` (collective over
        the TP group: TP rank 0 reads and scatters)."""
        self._bridge.load_weights([_unwrap(model)], folder)

    @torch.no_grad()
    def export(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """HF-named full tensors, one at a time (collective: every rank of the model-parallel group
        must iterate to the end; every rank receives every tensor). A tied output layer held by the
        last PP stage is the embedding again and is not sent twice."""
        seen: set[str] = set()
        for name, t in self._bridge.export_weights([_unwrap(model)]):
            if name in seen:
                continue
            seen.add(name)
            yield name, t.detach()

    def save_hf(self, model: torch.nn.Module, path: str, write: bool) -> None:
        """Write a HF folder (config.json + model.safetensors) at ``path``; every rank iterates the
        export, only the rank with ``write`` set keeps tensors and writes."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for name, t in self.export(model):
            if write:
                tensors[name] = t.to("cpu", copy=True).contiguous()
        if not write:
            return
        os.makedirs(path, exist_ok=True)
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        self.hf_config.save_pretrained(path)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


def read_hf_config(folder: str):
    """The transformers config of a local HF folder (never from a hub)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def norm_eps(hf_config: Any) -> float:
    """RMSNorm epsilon of a HF config (transformers' default 1e-6 when absent)."""
    return float(getattr(hf_config, "rms_norm_eps", 1e-6) or 1e-6)


def hand_mapping(hf_state: dict[str, torch.Tensor], arch: Any) -> dict[str, torch.Tensor]:
    """Megatron (local spec, TP=1, PP=1) state of a HF Qwen2/Llama state dict, written out by hand.

    linear_qkv rows are grouped per KV head g: [q rows of the heads in g; k_g; v_g] (each head
    ``kv_channels`` rows); linear_fc1 is [gate; up]; the vocabulary is padded with zero rows to
    `padded_vocab_size`. Used as the test oracle for mbridge's mapping.
    """
    hd, kv, heads = arch.kv_channels, arch.num_kv_heads, arch.num_heads
    per = heads // kv
    out: dict[str, torch.Tensor] = {}
    emb = hf_state["model.embed_tokens.weight"]
    pad = padded_vocab_size(arch.vocab_size, 1) - emb.shape[0]
    out["embedding.word_embeddings.weight"] = torch.cat([emb, emb.new_zeros(pad, emb.shape[1])])
    for i in range(arch.num_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[m + "input_layernorm.weight"] = hf_state[h + "input_layernorm.weight"]
        for kind in ("weight", "bias") if arch.qkv_bias else ("weight",):
            q = hf_state[h + f"self_attn.q_proj.{kind}"]
            k = hf_state[h + f"self_attn.k_proj.{kind}"]
            v = hf_state[h + f"self_attn.v_proj.{kind}"]
            rows = []
            for g in range(kv):
                rows += [q[g * per * hd:(g + 1) * per * hd], k[g * hd:(g + 1) * hd], v[g * hd:(g + 1) * hd]]
            out[m + f"self_attention.linear_qkv.{kind}"] = torch.cat(rows)
        out[m + "self_attention.linear_proj.weight"] = hf_state[h + "self_attn.o_proj.weight"]
        out[m + "pre_mlp_layernorm.weight"] = hf_state[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([hf_state[h + "mlp.gate_proj.weight"],
                                                      hf_state[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = hf_state[h + "mlp.down_proj.weight"]
    out["decoder.final_layernorm.weight"] = hf_state["model.norm.weight"]
    if not arch.tied_embeddings:
        lm = hf_state["lm_head.weight"]
        out["output_layer.weight"] = torch.cat([lm, lm.new_zeros(pad, lm.shape[1])])
    return out


def config_dict(folder: str) -> dict:
    """config.json of a HF folder as a dict."""
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)
