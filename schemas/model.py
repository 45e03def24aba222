"""`model:` the policy's base model, by catalog name, local folder, or inline architecture."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt, model_validator

from schemas.common import Section


class RopeScaling(Section):
    """RoPE frequency scaling (HF ``config.json`` ``rope_scaling``): ``linear`` divides every
    frequency by ``factor``; ``llama3`` (Llama 3.1) divides the low frequencies (wavelength above
    original_max_position_embeddings / low_freq_factor) by ``factor``, keeps the high ones (below
    original / high_freq_factor) and interpolates smoothly in between."""

    type: Literal["linear", "llama3"] = Field(description="Scaling rule (HF rope_type).")
    factor: float = Field(gt=0, description="Frequency divisor (context extension factor).")
    original_max_position_embeddings: Optional[PositiveInt] = Field(
        None, description="Context length the model was pre-trained at (tokens); llama3 only.")
    low_freq_factor: float = Field(1.0, gt=0, description="llama3: wavelengths above original / low_freq_factor are scaled.")
    high_freq_factor: float = Field(4.0, gt=0, description="llama3: wavelengths below original / high_freq_factor are kept.")

    @model_validator(mode="after")
    def _llama3_needs_context(self) -> "RopeScaling":
        if self.type == "llama3":
            if self.original_max_position_embeddings is None:
                raise ValueError("llama3 rope scaling needs original_max_position_embeddings")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")
        return self


class Architecture(Section):
    """Transformer decoder shape (the fields of a HF ``config.json`` the compiler needs)."""

    family: Literal["qwen2", "llama", "mistral"] = Field("qwen2", description="HF model_type; decides biases and rope defaults.")
    hidden_size: PositiveInt = Field(description="Model width h (elements).")
    num_layers: PositiveInt = Field(description="Number of decoder layers L.")
    num_heads: PositiveInt = Field(description="Attention (query) heads a.")
    num_kv_heads: PositiveInt = Field(description="Key/value heads (GQA groups); equal to num_heads for MHA.")
    head_dim: Optional[PositiveInt] = Field(None, description="Per-head width (elements); default hidden_size / num_heads.")
    ffn_hidden_size: PositiveInt = Field(description="SwiGLU intermediate width (elements).")
    vocab_size: PositiveInt = Field(description="Tokenizer vocabulary size (tokens).")
    tied_embeddings: bool = Field(False, description="Input and output embeddings share one matrix.")
    max_position_embeddings: PositiveInt = Field(description="Longest sequence the model supports (tokens).")
    qkv_bias: bool = Field(False, description="Bias on the q/k/v projections (Qwen2).")
    rope_theta: float = Field(10000.0, description="RoPE base frequency.")
    rope_scaling: Optional[RopeScaling] = Field(None, description="RoPE frequency scaling (llama3, linear), if any.")
    sliding_window: Optional[PositiveInt] = Field(None, description="Sliding-window attention span (tokens): each token attends to itself and the window - 1 before it.")

    @property
    def kv_channels(self) -> int:
        """Per-head width in elements."""
        return self.head_dim or self.hidden_size // self.num_heads


class ModelSpec(Section):
    """Which base model RL starts from."""

    name: str = Field(description="Catalog name (e.g. 'qwen2.5-7b') or any label when `path` or `architecture` is given.")
    path: Optional[str] = Field(None, description="Local HF model folder; when it exists its config.json is the architecture.")
    architecture: Optional[Architecture] = Field(None, description="Inline architecture (e.g. a tiny random-init model); overrides the catalog.")
    init: Literal["pretrained", "random"] = Field("pretrained", description="'random' builds the architecture with random weights (tests, quickstart).")
    pretrain_steps: int = Field(0, ge=0, description="Steps of built-in synthetic pretraining applied to a 'random' model before RL (optimizer steps).")
    tokenizer: Optional[str] = Field(None, description="Tokenizer folder; default `path`; 'builtin' builds the local quickstart tokenizer.")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Parameter dtype for weights on GPU (CPU runs in float32).")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings besides the tokenizer's end tokens.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass (torch backend).")
