"""The `megatron` trainer backend: megatron-core (TP/PP/DP, distributed optimizer) behind the `Trainer` protocol.

Modules: `model` (GPTModel + TransformerConfig from our Architecture), `cpu` (the CPU shim for
megatron-core's CUDA assumptions, active only on CPU), `bridge` (HF <-> Megatron weights via mbridge),
`logprobs` (vocab-parallel log-probs and entropy), `offload` (GPU memory release), `trainer`.
Nothing here is imported unless a plan selects ``trainer.backend: megatron``.
"""
