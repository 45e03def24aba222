"""The colocated step order around generation and the weight update, owned here and nowhere else.

A colocated GPU generator (vLLM) and the trainer take turns on the same devices:

    start:  generators start (reserving their memory on still-free devices) -> generator.sleep(level)
            -> the trainer builds its state -> first sync (below)
    step:   generate -> generator.sleep(level) -> [reference.onload] -> old and reference log-probs ->
            [reference.offload -> trainer.onload] -> update ->
    sync:   trainer.release_memory -> generator.wake(["weights"]) -> stream the new weights in (the
            generator resets its prefix cache once the stream is complete) -> [trainer.offload] ->
            trainer.release_memory -> generator.wake(["kv_cache"])

(bracketed: with ``trainer.offload``, as the memory model plans it: the optimizer state and gradients
come back only for the update, the reference only for its log-prob pass.)

Sleeping frees the KV cache (and offloads or drops the weights) while the trainer needs the memory;
the weights are woken first so the new ones can be written into them before the KV cache takes its
memory back; the trainer's caching allocator hands back what its activations and logits left cached
(``torch.cuda.empty_cache``) before the weights wake and again before the KV cache does, or vLLM
would re-map onto memory the trainer still holds; a stale prefix cache would keep sampling from
prefixes computed with the old weights. Every trainer-side log-prob pass, the step-0 parity gate's
included, runs with the generator asleep. On CPU sleep, wake and release change no memory, but the
order is the same, so it is tested there (and the rehearsal charges it to a per-device ledger).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


class StepOrder:
    """Issues the colocated sequence on a run's roles (`engine.runtime.roles.Roles`)."""

    def __init__(self, plan: Plan) -> None:
        # what leaves the devices when (`plan.offload`): the generator while the trainer updates, the
        # trainer's optimizer state while the generator samples
        self.sleep_level = plan.rollout.sleep_level if plan.offload.train else 0
        self.offload_trainer = bool(plan.offload.generation) and plan.trainer.offload
        self.bucket_bytes = plan.weight_sync.bucket_bytes

    def after_start(self, roles: Any) -> None:
        """Freshly started generators give their memory back before the trainer builds its state (the
        first sync, `after_update`, wakes them)."""
        if self.sleep_level:
            roles.generators.generator_sleep(self.sleep_level)

    def before_export(self, roles: Any) -> None:
        """The run is over: the generator's memory goes back before the export gathers full tensors."""
        if self.sleep_level:
            roles.generators.generator_sleep(self.sleep_level)

    def after_generation(self, roles: Any) -> None:
        """The generator gives its memory to the trainer's log-prob passes (the reference comes back)."""
        if self.sleep_level:
            roles.generators.generator_sleep(self.sleep_level)
        if self.offload_trainer:
            roles.trainer.onload(["reference"])

    def before_update(self, roles: Any) -> None:
        """The log-prob passes are done: the reference leaves, the optimizer state comes back."""
        if self.offload_trainer:
            roles.trainer.offload(["reference"])
            roles.trainer.onload(["trainer"])

    def after_update(self, roles: Any, skip: tuple[str, ...] = ()) -> int:
        """New weights into the generator (which resets its prefix cache), trainer off the devices, KV
        cache back. Returns the tensors the generator received. ``skip``: weight names left out on
        purpose (the parity gate's own test)."""
        roles.trainer.release_memory()
        if self.sleep_level:
            roles.generators.generator_wake(["weights"])
        received = roles.push_weights(self.bucket_bytes, skip=skip)
        if self.offload_trainer:
            roles.trainer.offload(["trainer", "reference"])
        roles.trainer.release_memory()
        if self.sleep_level:
            roles.generators.generator_wake(["kv_cache"])
        return received
