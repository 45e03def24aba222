"""Megatron-core `GPTModel` built from our resolved `schemas.Architecture`.

Families: qwen2 (q/k/v bias), llama (and DeepSeek-Math's MHA: ``num_kv_heads == num_heads``), mistral
(explicit ``head_dim`` -> ``kv_channels``, which may differ from hidden / heads); tied embeddings.
All are RMSNorm + SwiGLU + RoPE decoders without linear biases besides q/k/v.

Layer spec: Megatron's *local* spec (pure PyTorch modules) on CPU; the Transformer Engine spec on
GPU, which is also what FP8 (``plan.trainer.fp8``) and sequence parallelism need. Transformer Engine
is imported only when the TE spec is asked for; on CPU an FP8 plan is refused with a clear message.
"""

from __future__ import annotations

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
    if layout.sequence_parallel and not layout.on_gpu:
        raise MegatronModelError("sequence parallelism needs the Transformer Engine norm (GPU only); "
                                 "the plan must not enable it on CPU")
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
    if layout.recompute == "full":
        kw.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif layout.recompute == "selective":
        kw.update(recompute_granularity="selective")
    if layout.fp8 != "none":
        # e4m3 forward / e5m2 backward for the per-tensor recipes; blockwise is e4m3 throughout
        kw.update(fp8="e4m3" if layout.fp8 == "blockwise" else "hybrid", fp8_recipe=layout.fp8)
    return TransformerConfig(**kw)


def layer_spec(config: Any, layout: ModelLayout):
    """Local (pure PyTorch) spec on CPU, Transformer Engine spec on GPU."""
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
    return get_gpt_layer_local_spec(normalization="RMSNorm")


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
    if layout.on_gpu:
        model = model.to(torch.device(layout.device))
    return model
