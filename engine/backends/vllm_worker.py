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

Colocated, each worker maps the buckets the trainer rank on its device packed into shared buffers
(`engine_receive_by_handles`: CUDA IPC on GPU, shared memory on CPU; `engine.backends.handle_transport`),
or takes them as bytes (`engine_load_bucket`; `collective_rpc` cannot carry tensors); split, each
worker joins a broadcast group with the trainer (`engine_join_broadcast`) and pulls the buckets
itself (`engine_receive_broadcast`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from engine.backends.base import WeightBucket
from engine.backends.handle_transport import HandleReceiver
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


def _detach_pending(model: Any, bucket: WeightBucket) -> int:
    """Copy out of ``bucket``'s memory whatever the layerwise reload still holds by reference: a layer
    whose weights straddle two buckets keeps the first part's tensors (views into the sender's
    buffer) until the rest arrives, and the sender reuses that buffer once the bucket is
    acknowledged. Returns the tensors copied (at most one layer's worth per bucket boundary)."""
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

    spans = set()
    for _, t in bucket:
        s = t.untyped_storage()
        spans.add((s.data_ptr(), s.data_ptr() + s.nbytes()))
    copied = 0
    for layer in model.modules():
        info = LAYERWISE_INFO.get(layer)
        for _, args in (info.loaded_weights if info is not None else ()):
            for key, value in list(args.arguments.items()):
                if isinstance(value, torch.Tensor) and value.numel() and any(
                        lo <= value.data_ptr() < hi for lo, hi in spans):
                    args.arguments[key] = value.clone()
                    copied += 1
    return copied


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

    def engine_receive_by_handles(self, channels: Sequence[Sequence[str]],
                                  expected: Optional[Sequence[str]] = None) -> list[str]:
        """Colocated: map and load one weight stream from the trainer rank on this worker's device
        (``channels[tp rank]``: its socket path and key, `engine.backends.handle_transport.HandleSender`);
        returns every name received, in order. The layers are settled even when the stream breaks."""
        address, key = channels[int(getattr(self, "rank", 0)) % len(channels)]
        receiver = HandleReceiver(address, key)
        model = self.model_runner.get_model()
        self.engine_begin_update(expected)
        try:
            for bucket in receiver.receive():
                self._engine_load(bucket)
                _detach_pending(model, bucket)
        finally:
            receiver.close()
            received = self.engine_finish_update()
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
