"""Megatron-core `GPTModel` built from our resolved `schemas.Architecture`.

Families: qwen2 (q/k/v bias), llama (and DeepSeek-Math's MHA: ``num_kv_heads == num_heads``), mistral
(explicit ``head_dim`` -> ``kv_channels``, which may differ from hidden / heads); tied embeddings.
All are RMSNorm + SwiGLU + RoPE decoders without linear biases besides q/k/v.

Layer spec: Megatron's *local* spec (pure PyTorch modules) on CPU; the Transformer Engine spec on
GPU, which is also what FP8 (``plan.trainer.fp8``) needs. Transformer Engine is imported only when
the TE spec is asked for; on CPU an FP8 plan is refused with a clear message. Sequence parallelism
runs on CPU too: the local spec with `SequenceParallelRMSNorm` (megatron's torch norm refuses SP).

Both specs run causal-only attention with no mask (the trainer's left-aligned layout, `layout`), a
sliding window as megatron's ``window_size`` = (window - 1, 0) (TE's window on GPU, megatron's
sliding-window mask in the local softmax on CPU), and RoPE frequencies set from `rope_inv_freq`
(llama3 / linear scaling, exactly as transformers and vLLM compute them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

#: Megatron pads the vocabulary to a multiple of this times the TP size (its default), so every TP
#: rank holds an equal, aligned slice; the padded rows are masked in `logprobs`.
VOCAB_DIVISIBLE_BY = 128


class MegatronModelError(ValueError):
    """A layout this model builder cannot run (e.g. FP8 or sequence parallel on CPU)."""


@dataclass(frozen=True)
class ModelLayout:
    """How the model is split and run: TP/PP sizes, precision, recompute, FP8 and where it runs.

    dtype: parameter dtype. recompute: "none", "selective" or "full" (the plan's). fp8: "none" or a
    Transformer Engine recipe ("delayed", "tensorwise", "blockwise"). norm_eps: RMSNorm epsilon (from
    the HF config; transformers' default 1e-6).
    """

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    sequence_parallel: bool = False
    dtype: torch.dtype = torch.float32
    recompute: str = "none"
    fp8: str = "none"
    device: str = "cpu"
    norm_eps: float = 1e-6

    @property
    def on_gpu(self) -> bool:
        return torch.device(self.device).type == "cuda"


def padded_vocab_size(vocab_size: int, tensor_parallel: int, divisible_by: int = VOCAB_DIVISIBLE_BY) -> int:
    """The vocabulary Megatron allocates: ``vocab_size`` rounded up to a multiple of
    ``divisible_by * tensor_parallel`` (tokens)."""
    m = divisible_by * tensor_parallel
    return -(-vocab_size // m) * m


def check_layout(layout: ModelLayout) -> None:
    """Refuse what cannot run as asked, naming the reason (never silently change the maths)."""
    if layout.fp8 != "none" and not layout.on_gpu:
        raise MegatronModelError(
            f"trainer.fp8={layout.fp8!r} needs Transformer Engine on a GPU; this trainer runs on "
            f"{layout.device}. Set trainer.fp8=none for CPU runs.")
    if layout.sequence_parallel and layout.tensor_parallel == 1:
        raise MegatronModelError("sequence parallelism needs tensor_parallel > 1")
    if layout.recompute not in ("none", "selective", "full"):
        raise MegatronModelError(f"unknown recompute mode {layout.recompute!r}")


def transformer_config(arch: Any, layout: ModelLayout):
    """The megatron `TransformerConfig` for ``arch`` (a `schemas.Architecture`) under ``layout``."""
    from megatron.core.transformer import TransformerConfig

    check_layout(layout)
    bf16 = layout.dtype == torch.bfloat16
    kw: dict[str, Any] = dict(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads, kv_channels=arch.kv_channels, ffn_hidden_size=arch.ffn_hidden_size,
        normalization="RMSNorm", layernorm_epsilon=layout.norm_eps, gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, add_qkv_bias=bool(arch.qkv_bias),
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=layout.tensor_parallel, pipeline_model_parallel_size=layout.pipeline_parallel,
        sequence_parallel=layout.sequence_parallel,
        params_dtype=layout.dtype, pipeline_dtype=layout.dtype, bf16=bf16,
        use_cpu_initialization=not layout.on_gpu, variable_seq_lengths=True,
        # per-token loss: the loss function returns token sums and counts, Megatron divides the
        # gradients by the global count (see trainer.py)
        calculate_per_token_loss=True,
        # fusions need CUDA kernels (and change nothing in the maths)
        gradient_accumulation_fusion=False, bias_activation_fusion=False, masked_softmax_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, persist_layer_norm=False,
        cross_entropy_loss_fusion=False, attention_softmax_in_fp32=True,
        moe_token_dispatcher_type="alltoall",  # (dense model; the default refuses variable_seq_lengths)
    )
    if arch.sliding_window:
        # each query sees itself and the window - 1 keys before it (HF: kv > q - window; vLLM too)
        kw["window_size"] = (arch.sliding_window - 1, 0)
    if layout.recompute == "full":
        kw.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif layout.recompute == "selective":
        kw.update(recompute_granularity="selective")
    if layout.fp8 != "none":
        # e4m3 forward / e5m2 backward for the per-tensor recipes; blockwise is e4m3 throughout
        kw.update(fp8="e4m3" if layout.fp8 == "blockwise" else "hybrid", fp8_recipe=layout.fp8)
    return TransformerConfig(**kw)


class SequenceParallelRMSNorm:
    """torch RMSNorm for the local spec under sequence parallelism (megatron's `WrappedTorchNorm`
    refuses SP): the norm of the s/TP tokens a rank holds is the norm of those tokens, and its weight
    is marked ``sequence_parallel`` so `finalize_model_grads` sums its gradient over the TP ranks
    (what Transformer Engine's norms do on GPU)."""

    def __new__(cls, config: Any, hidden_size: int, eps: float = 1e-5, **_: Any):
        norm = torch.nn.RMSNorm(normalized_shape=hidden_size, eps=eps)
        norm.weight.sequence_parallel = bool(config.sequence_parallel)
        return norm


def layer_spec(config: Any, layout: ModelLayout):
    """Local (pure PyTorch) spec on CPU, Transformer Engine spec on GPU. Under sequence parallelism
    on CPU: the local spec's layers with `SequenceParallelRMSNorm`, as block submodules."""
    from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                          get_gpt_layer_with_transformer_engine_spec)

    if layout.on_gpu:
        try:
            import transformer_engine  # noqa: F401
        except ImportError as e:
            if layout.fp8 != "none" or layout.sequence_parallel:
                raise MegatronModelError("trainer.fp8 / sequence parallel need Transformer Engine "
                                         "(pip install '.[gpu]')") from e
            return get_gpt_layer_local_spec(normalization="RMSNorm")
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=False)
    local = get_gpt_layer_local_spec(normalization="RMSNorm")
    if not layout.sequence_parallel:
        return local
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    sub = dataclasses.replace(local.submodules, input_layernorm=SequenceParallelRMSNorm,
                              pre_mlp_layernorm=SequenceParallelRMSNorm)
    layer = dataclasses.replace(local, submodules=sub)
    return TransformerBlockSubmodules(layer_specs=[layer] * get_num_layers_to_build(config),
                                      layer_norm=SequenceParallelRMSNorm)


def rope_inv_freq(kv_channels: int, theta: float, scaling: Any = None) -> torch.Tensor:
    """RoPE inverse frequencies [kv_channels / 2] (radians per token, fp32) for base ``theta`` and a
    `schemas.RopeScaling` (None: unscaled). llama3: wavelengths 2 pi / f above original / low_freq_factor
    are divided by ``factor``, those below original / high_freq_factor kept, the band between
    interpolated with s = (original / wavelength - low) / (high - low): (1 - s) f / factor + s f.
    linear: every frequency / factor. Same arithmetic as transformers' rope initialisers."""
    inv = 1.0 / (theta ** (torch.arange(0, kv_channels, 2, dtype=torch.int64).float() / kv_channels))
    if scaling is None:
        return inv
    if scaling.type == "linear":
        return inv / scaling.factor
    if scaling.type != "llama3":
        raise MegatronModelError(f"rope scaling {scaling.type!r} is not implemented")
    old, lo, hi, factor = (scaling.original_max_position_embeddings, scaling.low_freq_factor,
                           scaling.high_freq_factor, scaling.factor)
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
    return torch.where(medium, smoothed, scaled)


def uses_te_spec(layout: ModelLayout) -> bool:
    """Whether `layer_spec` picks Transformer Engine modules (their parameter names differ)."""
    if not layout.on_gpu:
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def build_gpt(arch: Any, layout: ModelLayout, config: Optional[Any] = None, pre_process: Optional[bool] = None,
              post_process: Optional[bool] = None):
    """This rank's `GPTModel` stage (parallel_state must be initialised with ``layout``'s sizes).

    ``pre_process`` / ``post_process`` default to whether this rank is the first / last PP stage."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    config = config or transformer_config(arch, layout)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage()
    if post_process is None:
        post_process = ps.is_pipeline_last_stage()
    model = GPTModel(
        config=config, transformer_layer_spec=layer_spec(config, layout),
        vocab_size=padded_vocab_size(arch.vocab_size, layout.tensor_parallel),
        max_sequence_length=arch.max_position_embeddings, pre_process=pre_process, post_process=post_process,
        share_embeddings_and_output_weights=bool(arch.tied_embeddings), position_embedding_type="rope",
        rotary_base=int(arch.rope_theta) if float(arch.rope_theta).is_integer() else arch.rope_theta,
    )
    rope = getattr(model, "rotary_pos_emb", None)
    if rope is not None:  # the HF/vLLM frequencies (megatron's own llama3 rule fixes 3 of its 4 numbers)
        rope.inv_freq = rope_inv_freq(arch.kv_channels, arch.rope_theta, arch.rope_scaling).to(rope.inv_freq.device)
    if layout.on_gpu:
        model = model.to(torch.device(layout.device))
    return model
