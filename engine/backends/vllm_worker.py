"""Worker-side half of the vLLM generator: a `worker_extension_cls` mixed into every vLLM worker.

vLLM calls these methods through ``LLM.collective_rpc(name, args=...)`` on each worker (one per TP
rank). They load a weight stream bucket by bucket with vLLM's layerwise in-place reload: at the start
every layer's weights are staged, each bucket goes through the model's own ``load_weights`` (HF
names -> fused / sharded vLLM parameters), a layer is processed (CPU repacking, FP8 quantisation)
and copied into the live storage as soon as all of its weights arrived, and the finish step settles
the layers that got nothing. Only incomplete layers are ever buffered: never the whole model.

The receiver keeps the manifest count: names not in the expected set and names seen twice are
not loaded, and `engine_finish_update` returns every name received so the driver can check the
manifest (`engine.backends.manifest.check_manifest`) and name what is wrong.

Colocated, buckets arrive as bytes (`engine_load_bucket`; `collective_rpc` cannot carry tensors);
split, each worker joins a broadcast group with the trainer (`engine_join_broadcast`) and pulls the
buckets itself (`engine_receive_broadcast`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from engine.backends.base import WeightBucket
from engine.backends.weight_transfer import BroadcastGroup, unpack_bytes


def _reprocess_tied_heads(model: Any) -> None:
    """Re-run weight processing on every LM head: a head tied to the embeddings receives no weight of
    its own (HF streams send the embedding once), so the layerwise reload leaves it alone, but on CPU
    its processed copy (the packed GEMM weight) was built from the old embedding and must be rebuilt."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    with torch.no_grad():
        for module in model.modules():
            method = getattr(module, "quant_method", None)
            if isinstance(module, ParallelLMHead) and method is not None:
                method.process_weights_after_loading(module)


class WeightReceiverExtension:
    """Methods added to vLLM's worker class (``self`` is the worker: ``model_runner``, ``vllm_config``, ``rank``)."""

    # -- one update -----------------------------------------------------------------------------
    def engine_begin_update(self, expected: Optional[Sequence[str]] = None) -> None:
        """Stage every layer for an in-place reload; ``expected`` is the manifest (None: accept any name)."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        self._sync_expected = set(expected) if expected is not None else None
        self._sync_received: list[str] = []
        self._sync_loaded: set[str] = set()
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def _engine_load(self, bucket: WeightBucket) -> list[str]:
        from vllm.config import set_current_vllm_config

        keep = []
        for name, t in bucket:
            self._sync_received.append(name)
            if name in self._sync_loaded or (self._sync_expected is not None and name not in self._sync_expected):
                continue  # reported by the manifest check; never loaded twice or under a foreign name
            self._sync_loaded.add(name)
            keep.append((name, t))
        if keep:
            with set_current_vllm_config(self.vllm_config), torch.no_grad():
                self.model_runner.get_model().load_weights(iter(keep))
        return [name for name, _ in bucket]

    def engine_load_bucket(self, header_json: str, blob: bytes) -> list[str]:
        """Load one packed bucket (`engine.backends.weight_transfer.pack_bytes`); returns its names."""
        return self._engine_load(unpack_bytes(header_json, blob))

    def engine_finish_update(self) -> list[str]:
        """Settle every layer (those that got no weights keep their old ones) and drop stale caches;
        returns every name received, in order (duplicates included)."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        runner = self.model_runner
        model = runner.get_model()
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(model, self.vllm_config.model_config)
            _reprocess_tied_heads(model)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            fn = getattr(runner, reset, None)
            if fn is not None:
                fn()
        received, self._sync_received = self._sync_received, []
        return received

    # -- split placement --------------------------------------------------------------------------
    def engine_join_broadcast(self, host: str, port: int, world_size: int, rank_offset: int,
                              backend: str = "gloo", timeout_s: float = 300.0) -> int:
        """Join the trainer's weight broadcast group as rank ``rank_offset + this worker's rank``."""
        rank = int(rank_offset) + int(getattr(self, "rank", 0))
        device = "cpu" if backend == "gloo" else str(getattr(self, "device", "cuda"))
        self._sync_group = BroadcastGroup(host, int(port), int(world_size), rank, backend=backend, device=device,
                                          timeout_s=timeout_s)
        return rank

    def engine_receive_broadcast(self, expected: Optional[Sequence[str]] = None) -> list[str]:
        """Receive one whole weight stream from the broadcast group and load it; returns the names received."""
        group: Any = getattr(self, "_sync_group", None)
        if group is None:
            raise RuntimeError("engine_join_broadcast was not called on this worker")
        self.engine_begin_update(expected)
        for bucket in group.receive():
            self._engine_load(bucket)
        return self.engine_finish_update()
