"""The two backend interfaces the runtime drives: `Generator` (sampling) and `Trainer` (updates).

Backends are picked by the plan (`plan.rollout.backend`, `plan.trainer.backend`) through one registry
(`engine.backends.registry`); workers hold them as these protocol types and never branch on a backend
name. Implementations: generator `hf` (transformers, CPU / one GPU) and `vllm`; trainer `torch`
(plain PyTorch, DDP across ranks) and `megatron` (megatron-core TP/PP/DP).

Weight sync is a stream: the trainer yields HF-named full tensors (`Trainer.weight_stream`, in
buckets of bounded size, gathered from TP shards and PP stages), the generator takes them
(`Generator.update_weights`) and checks them against a manifest (`engine.backends.manifest`): every
expected name exactly once. The colocated step order (sleep, wake weights, stream, offload trainer,
wake KV cache, reset prefix cache) is owned by `engine.runtime.sync`, not by the backends.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional, Protocol, Sequence, runtime_checkable

from engine.core.batch import Batch
from engine.core.generation import Generation, SamplingParams

#: A bucket of the weight stream: (HF parameter name, full tensor) pairs.
WeightBucket = list[tuple[str, Any]]

#: Sleep levels (vLLM's meaning): 0 keep everything, 1 offload weights and free the KV cache,
#: 2 discard weights and free the KV cache.
SLEEP_LEVELS = (0, 1, 2)

#: Tags `Generator.wake` accepts: re-acquire the weights, or the KV cache (None: both).
WAKE_TAGS = ("weights", "kv_cache")


@runtime_checkable
class Generator(Protocol):
    """Samples responses from the current policy."""

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        """Sample ``n`` responses per prompt; reproducible for a given ``seed``."""

    def update_weights(self, buckets: Iterable[WeightBucket], expected: Optional[Sequence[str]] = None) -> int:
        """Take new policy weights (HF names) from a stream of buckets; returns the tensors received.

        ``expected``: the manifest (every parameter name the trainer sends); when given, a name missing,
        received twice, or not expected raises `engine.backends.manifest.WeightSyncError` naming it,
        and the generator's weights must not be used for sampling afterwards. A complete update resets
        the prefix cache (cached prefixes were computed with the old weights)."""

    def sleep(self, level: int = 1) -> None:
        """Release accelerator memory while the trainer runs (`SLEEP_LEVELS`; a no-op on CPU)."""

    def wake(self, tags: Optional[Sequence[str]] = None) -> None:
        """Re-acquire what `sleep` released: ``tags`` from `WAKE_TAGS`, None for all."""

    def reset_prefix_cache(self) -> None:
        """Drop cached prefixes (after every weight update: a stale cache samples from old weights)."""

    def close(self) -> None:
        """Stop the engine's processes and free its memory now (not at garbage collection)."""


@runtime_checkable
class Trainer(Protocol):
    """Owns the policy parameters and the optimizer (one rank of a trainer group)."""

    def compute_log_probs(self, batch: Batch, with_entropy: bool = False) -> Any:
        """Per-token log-probs (nats) of ``batch['responses']`` under the current policy, [B, T], on CPU;
        with ``with_entropy``, a pair (log_probs, entropy) of [B, T] tensors."""

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One RL update over the batch (mini-batches, micro-batches, accumulation); returns metrics.
        Without ``old_log_probs`` the update is on-policy (old = current, detached); with
        ``rollout_log_probs`` too, it also returns the ``rollout/*`` trainer-vs-generator metrics of
        `engine.algorithm.losses.mismatch_metrics`, taken from its own forward pass."""

    def weight_stream(self, bucket_bytes: int) -> Iterator[WeightBucket]:
        """The current policy as HF-named full tensors, in buckets of at most ``bucket_bytes`` (a tensor
        larger than that is a bucket of its own). Memory bounded by one bucket; never the whole model."""

    def weight_names(self) -> list[str]:
        """The manifest of `weight_stream`: every HF name it yields, once each."""

    def offload(self) -> None:
        """Move parameters, gradients and optimizer state off the accelerator (a no-op on CPU)."""

    def onload(self) -> None:
        """Inverse of `offload`."""

    def release_memory(self) -> None:
        """Return the accelerator memory this process caches but no tensor uses (torch's caching
        allocator: ``torch.cuda.empty_cache``) so a colocated generator can map it; a no-op on CPU.
        The runtime calls it before the weight push and before the generator's KV cache wakes."""

    def save_checkpoint(self, folder: str) -> None:
        """Write this rank's state (model, optimizer, scheduler, RNG) into ``folder`` (which the caller
        renames into place: a checkpoint is complete or absent)."""

    def load_checkpoint(self, folder: str) -> None:
        """Inverse of `save_checkpoint`."""

    def export_hf(self, path: str) -> None:
        """Write the policy as a HF model folder (config and safetensors; rank 0 writes)."""

    def close(self) -> None:
        """Tear down what the trainer set up in this process (process groups), so a later one starts clean."""


# -- capabilities: what only some backends offer; workers test for them with isinstance ------------

@runtime_checkable
class ValueModel(Protocol):
    """A trainer with a critic (``algorithm.advantage: gae``)."""

    def compute_values(self, batch: Batch) -> Any:
        """Per-token value estimates of the responses, [B, T], on CPU."""


@runtime_checkable
class SharesModule(Protocol):
    """A trainer whose HF module an in-process hf generator may sample from directly (no weight copy)."""

    def hf_module(self) -> Any:
        """The policy as a transformers module (shared, not copied)."""


@runtime_checkable
class BroadcastReceiver(Protocol):
    """A generator that takes weights from a broadcast group of its own (split placement, colocated GPUs)."""

    def join_broadcast(self, host: str, port: int, world_size: int, rank_offset: int = 1,
                       backend: str = "gloo") -> Any:
        """Every worker of this engine joins trainer rank 0's broadcast group (rank_offset + worker rank)."""

    def receive_weights(self, expected: Optional[Sequence[str]] = None) -> int:
        """Receive one weight stream from the group, check it against ``expected``; returns tensors received."""


@runtime_checkable
class RecordsEvents(Protocol):
    """A generator that records the engine calls it issued, in order (``sleep(1)``, ``wake(weights)``...)."""

    events: list[str]
