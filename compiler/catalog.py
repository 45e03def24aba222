"""Built-in architectures of the ten SimpleRL-Zoo base models (values from their config.json)."""

from __future__ import annotations

from schemas import Architecture, RopeScaling


def _arch(family: str, h: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, max_pos: int,
          *, tied: bool = False, head_dim: int | None = None, rope_theta: float = 1e6,
          sliding_window: int | None = None, rope_scaling: RopeScaling | None = None) -> Architecture:
    return Architecture(
        family=family, hidden_size=h, num_layers=layers, num_heads=heads, num_kv_heads=kv,
        head_dim=head_dim, ffn_hidden_size=ffn, vocab_size=vocab, tied_embeddings=tied,
        max_position_embeddings=max_pos, qkv_bias=(family == "qwen2"), rope_theta=rope_theta,
        sliding_window=sliding_window, rope_scaling=rope_scaling,
    )


#: Llama 3.1's rope_scaling (config.json of every Llama-3.1 size).
LLAMA31_ROPE = RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=8192, low_freq_factor=1.0,
                           high_freq_factor=4.0)


#: Catalog name -> architecture. Parameter counts (billions) are in PARAMS_B for cross-checks.
CATALOG: dict[str, Architecture] = {
    "qwen2.5-0.5b": _arch("qwen2", 896, 24, 14, 2, 4864, 151936, 32768, tied=True),
    "qwen2.5-1.5b": _arch("qwen2", 1536, 28, 12, 2, 8960, 151936, 131072, tied=True),
    "qwen2.5-7b": _arch("qwen2", 3584, 28, 28, 4, 18944, 152064, 131072),
    "qwen2.5-14b": _arch("qwen2", 5120, 48, 40, 8, 13824, 152064, 131072),
    "qwen2.5-32b": _arch("qwen2", 5120, 64, 40, 8, 27648, 152064, 131072),
    "qwen2.5-math-7b": _arch("qwen2", 3584, 28, 28, 4, 18944, 152064, 4096, rope_theta=1e4),
    "llama3.1-8b": _arch("llama", 4096, 32, 32, 8, 14336, 128256, 131072, rope_theta=5e5,
                          rope_scaling=LLAMA31_ROPE),
    "mistral-7b": _arch("mistral", 4096, 32, 32, 8, 14336, 32000, 32768, rope_theta=1e4, sliding_window=4096),
    "mistral-24b": _arch("mistral", 5120, 40, 32, 8, 32768, 131072, 32768, head_dim=128, rope_theta=1e8),
    "deepseek-math-7b": _arch("llama", 4096, 30, 32, 32, 11008, 102400, 4096, rope_theta=1e4),
}

#: Published parameter counts (billions), MODELS.md.
PARAMS_B: dict[str, float] = {
    "qwen2.5-0.5b": 0.494, "qwen2.5-1.5b": 1.544, "qwen2.5-7b": 7.616, "qwen2.5-14b": 14.770,
    "qwen2.5-32b": 32.764, "qwen2.5-math-7b": 7.616, "llama3.1-8b": 8.030, "mistral-7b": 7.242,
    "mistral-24b": 23.572, "deepseek-math-7b": 6.910,
}
