"""The colocated step order around generation and the weight update, owned here and nowhere else.

A colocated GPU generator (vLLM) and the trainer take turns on the same devices:

    generate -> generator.sleep(level) -> trainer.onload -> update ->
    generator.wake(["weights"]) -> stream the new weights in (the generator resets its prefix cache
    once the stream is complete) -> trainer.offload -> generator.wake(["kv_cache"])

Sleeping frees the KV cache (and offloads or drops the weights) while the trainer needs the memory;
the weights are woken first so the new ones can be written into them before the KV cache takes its
memory back; a stale prefix cache would keep sampling from prefixes computed with the old weights.
On CPU sleep and wake change no memory, but the order is the same, so it is tested there.
"""

from __future__ import annotations

from typing import Any


class StepOrder:
    """Issues the colocated sequence on a run's roles (`engine.runtime.roles.Roles`)."""

    def __init__(self, plan: Any) -> None:
        # what leaves the devices when (`plan.offload`): the generator while the trainer updates, the
        # trainer's optimizer state while the generator samples
        self.sleep_level = plan.rollout.sleep_level if plan.offload.train else 0
        self.offload_trainer = bool(plan.offload.generation) and plan.trainer.offload
        self.bucket_bytes = plan.weight_sync.bucket_bytes

    def after_generation(self, roles: Any) -> None:
        """The generator gives its memory to the trainer; the trainer comes back on the devices."""
        if self.sleep_level:
            roles.generator_call("generator_sleep", self.sleep_level)
        if self.offload_trainer:
            roles.trainer.broadcast("onload")

    def after_update(self, roles: Any) -> int:
        """New weights into the generator (which resets its prefix cache), trainer off the devices, KV
        cache back. Returns the tensors the generator received."""
        if self.sleep_level:
            roles.generator_call("generator_wake", ["weights"])
        received = roles.push_weights(self.bucket_bytes)
        if self.offload_trainer:
            roles.trainer.broadcast("offload")
        if self.sleep_level:
            roles.generator_call("generator_wake", ["kv_cache"])
        return received
