"""Placement search: choose the parallel layout that fits memory and minimises an estimated step time.

The search enumerates trainer layouts (TP x PP x CP x DP) and generator layouts (vLLM TP x
replicas), and for ``split`` placement also the division of the GPUs between them. Fixed spec
values are honoured; ``auto`` ones range over the legal values of `compiler.rules`. Each candidate
gets a per-GPU memory estimate for every phase of an RL step (`compiler.memory`) and a roofline
step-time estimate; the fastest candidate that fits wins. When nothing fits, the search explains
the closest candidate (which component, how many GiB over) and tries variations of the spec
(more nodes, offload, sleep level, utilisation, response length, ...) to say what would fit.

Phases of one RL step on a GPU (bytes, see `_trainer_phases` / `_generator_phase`):

* generation: the trainer's idle state (all model state, or bf16 params when offloaded) + the
  reference weights (unless offloaded) + trainer overhead + vLLM's reservation (util x capacity)
  + the vLLM process context. In ``split`` placement a trainer GPU has no generation phase and a
  generator GPU only the vLLM reservation + context.
* log_probs: old-policy and reference forward passes (no grad) at log_prob_micro_batch_size:
  model state + reference + one layer's transient activations + forward-only logits on the last
  stage + sleeping vLLM (level 0: its whole reservation; 1 or 2: CUDA graphs and non-torch).
* train: model state + reference (unless offloaded) + 1F1B activations of the stage + training
  logits on the last stage + sleeping vLLM.

A GPU's peak is the largest phase; the plan fits when every GPU's peak <= its capacity and the
vLLM KV cache holds at least one full prompt + response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from schemas import Architecture, ExperimentSpec

from compiler import memory as M
from compiler.backends import backend as backend_info
from compiler.rules import fixed_size, fp8_ok, legal_pp, legal_rollout_tp, legal_trainer_tp
from compiler.sync_cost import (HANDLE_BUFFERS, broadcast_seconds, export_gather_seconds, handle_buffer_bytes,
                                handles_seconds, sleep_copy_seconds, sleep_level)

#: Model FLOPs utilisation of a Megatron trainer at TP1/PP1 (MODELS.md: 41-47% on H100).
BASE_MFU = 0.40
#: Host memory copy (bytes copied per second) of one process: the CPU handles path (`bench/sync`).
HOST_COPY_BW = 4e9
#: Fraction of peak HBM bandwidth a vLLM decode step achieves.
DECODE_BW_EFF = 0.7
#: Fraction of peak FLOP/s a vLLM prefill achieves.
PREFILL_EFF = 0.5
#: All-reduce latency per TP all-reduce in a decode step (s); two per layer.
ALLREDUCE_LATENCY_S = 10e-6
#: Host <-> device bandwidth for offloads (B/s) and inter-node bandwidth for weight sync (B/s).
PCIE_BW = 25e9
INTERNODE_BW = 25e9
NVLINK_BW = 150e9
#: Weight broadcast through host memory over gloo, per link of the tree (CPU plans, `bench/sync`).
HOST_BROADCAST_BW = 2e9
#: Host memory copy (bytes copied per second) of one process: the CPU handles path (`bench/sync`).
HOST_COPY_BW = 4e9
#: Fraction of peak HBM bandwidth a device-local copy (read + write) achieves: copy_bw = eff x HBM / 2.
COPY_BW_EFF = 0.7
#: FP8 GEMM speed-up applied to the training FLOP rate: ASSUMED (Transformer Engine reports 1.3-1.5x on H100
#: GEMMs), not measured by this project; the plan notes say so wherever it is used.
FP8_SPEEDUP = 1.3


@dataclass(frozen=True)
class Inputs:
    """The numbers of a spec the search reads (hashable; variations are made with `replace`)."""

    arch: Architecture
    placement: str
    nodes: int
    gpus_per_node: int
    capacity: float  # bytes per GPU
    headroom: float  # bytes per GPU the plan leaves unplanned (cluster.memory_headroom_gib)
    tflops: float
    bandwidth: float  # B/s
    backend: str
    tp: Optional[int]
    pp: Optional[int]
    cp: int
    sequence_parallel: bool
    distributed_optimizer: bool
    offload: bool
    fp8: str
    recompute: str
    micro_batch: int
    lp_micro_batch: int
    gen_backend: str
    rtp: Optional[int]
    utilization: float
    sleep_level: int
    enforce_eager: bool
    max_num_seqs: int
    hf_micro_batch: Optional[int]
    batch: int
    n: int
    mini_batch: int
    epochs: int
    prompt: int
    response: int
    entropy: bool
    reference: bool
    critic: bool
    bucket: int = 0  # weight-sync bucket (bytes)
    handles: bool = False  # colocated weight sync by handles (a generator with weights of its own)
    eval_seq: int = 0  # longest evaluation sequence (prompt + evaluation response, tokens); 0 = no evaluation

    @classmethod
    def from_spec(cls, spec: ExperimentSpec, arch: Architecture) -> "Inputs":
        tr, ro, cl = spec.trainer, spec.rollout, spec.cluster
        torch_backend = tr.backend == "torch"
        return cls(
            arch=arch, placement=spec.placement, nodes=cl.nodes, gpus_per_node=cl.gpus_per_node,
            capacity=cl.gpu_memory_gib * M.GIB, headroom=cl.memory_headroom_gib * M.GIB, tflops=cl.gpu_bf16_tflops * 1e12,
            bandwidth=cl.gpu_mem_bandwidth_gbs * 1e9, backend=tr.backend,
            tp=1 if torch_backend else fixed_size(tr.tensor_parallel),
            pp=1 if torch_backend else fixed_size(tr.pipeline_parallel),
            cp=1 if torch_backend else tr.context_parallel,
            sequence_parallel=tr.sequence_parallel and not torch_backend,
            distributed_optimizer=tr.distributed_optimizer, offload=tr.offload, fp8=tr.fp8,
            recompute=("full" if spec.model.gradient_checkpointing else "none") if torch_backend else tr.recompute,
            micro_batch=tr.micro_batch_size, lp_micro_batch=tr.log_prob_micro_batch_size,
            gen_backend=ro.backend,
            rtp=1 if ro.backend == "hf" else fixed_size(ro.tensor_parallel),
            utilization=ro.gpu_memory_utilization,
            sleep_level=sleep_level(ro.sleep_level, backend_info("generator", ro.backend).sleep_mode),
            enforce_eager=ro.enforce_eager,
            max_num_seqs=ro.max_num_seqs, hf_micro_batch=ro.micro_batch_size,
            batch=spec.data.train_batch_size, n=ro.n, mini_batch=spec.algorithm.ppo_mini_batch_size,
            epochs=spec.algorithm.ppo_epochs, prompt=spec.data.max_prompt_length,
            response=spec.data.max_response_length, entropy=spec.algorithm.entropy_coef > 0,
            reference=spec.algorithm.kl_coef > 0, critic=spec.algorithm.advantage == "gae",
            bucket=ro.weight_bucket_mib * 2**20,
            handles=spec.placement == "colocated" and backend_info("generator", ro.backend).handle_receiver,
            eval_seq=(spec.data.max_prompt_length + spec.evaluation.max_response_length) if spec.evaluation.every else 0,
        )

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def seq(self) -> int:
        return self.prompt + self.response

    @property
    def sequences(self) -> int:
        return self.batch * self.n

    @property
    def max_model_len(self) -> int:
        """Tokens one sequence may reach in the generator: training's, or evaluation's when longer."""
        return max(self.seq, self.eval_seq)

    @property
    def budget(self) -> float:
        """Bytes per GPU a plan may fill: capacity less the headroom."""
        return self.capacity - self.headroom

    def hf_sequences(self, replicas: int) -> int:
        """Sequences an hf replica decodes at once: rollout.micro_batch_size prompts (default: its
        share of the batch) x n."""
        return (self.hf_micro_batch or math.ceil(self.batch / max(1, replicas))) * self.n


@dataclass
class GpuMemory:
    """Memory of one class of identical GPUs (a trainer pipeline stage, or the generators)."""

    label: str
    stage: Optional[int]
    first_rank: int
    ranks: list[int]
    roles: list[str]
    phases: dict[str, dict[str, float]]  # phase -> component -> bytes

    def phase_total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total)

    @property
    def peak(self) -> float:
        return max(self.phase_total(p) for p in self.phases)


@dataclass
class Candidate:
    """One evaluated layout."""

    tp: int
    pp: int
    cp: int
    dp: int
    rtp: int
    replicas: int
    trainer_ranks: list[int]
    gen_ranks: list[int]
    microbatches: int
    gpus: list[GpuMemory] = field(default_factory=list)
    vllm: Optional[M.VllmMemory] = None
    concurrency: int = 0
    problems: list[str] = field(default_factory=list)
    excess: float = 0.0  # bytes over capacity on the worst GPU (or missing KV bytes)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def step_time(self) -> float:
        return sum(self.times.values())

    @property
    def peak(self) -> float:
        return max((g.peak for g in self.gpus), default=0.0)

    def worst_gpu(self) -> GpuMemory:
        return max(self.gpus, key=lambda g: g.peak)

    def describe(self) -> str:
        return (f"TP{self.tp} PP{self.pp}" + (f" CP{self.cp}" if self.cp > 1 else "")
                + f" DP{self.dp} + generator TP{self.rtp} x {self.replicas}")


@dataclass
class SearchResult:
    """Best candidate (or None), every evaluated candidate, and explanations."""

    inputs: Inputs
    best: Optional[Candidate]
    closest: Optional[Candidate]
    candidates: list[Candidate]
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.best is not None


# ---------------------------------------------------------------------------------------------
# memory of one candidate
# ---------------------------------------------------------------------------------------------

def _trainer_stage_memory(inp: Inputs, tp: int, pp: int, cp: int, dp: int, stage: int, m: int) -> dict[str, dict[str, float]]:
    """Trainer-side components (bytes) of one GPU of ``stage``, per phase (no generator yet)."""
    a = inp.arch
    seq = inp.seq // cp
    last = stage == pp - 1
    if inp.backend == "torch":
        P = M.total_params(a)
        st = M.fsdp_state_bytes(P, dp, M.layer_params(a, 1), inp.offload)
        ref = 2.0 * P / dp if inp.reference else 0.0
    else:
        shard = M.shard_params(a, tp, pp, stage)
        st = M.megatron_state_bytes(shard, dp * cp, inp.distributed_optimizer, inp.offload)
        ref = 2.0 * shard if inp.reference else 0.0
    acts = M.stage_activation_bytes(a, seq, inp.micro_batch, tp, pp, stage, m, inp.recompute, inp.sequence_parallel)
    logits = M.logits_bytes(a, seq, inp.micro_batch, tp, grad=True, entropy=inp.entropy) if last else 0.0
    lp_acts = M.layer_activation_bytes(a, seq, inp.lp_micro_batch, tp, inp.sequence_parallel)
    lp_logits = M.logits_bytes(a, seq, inp.lp_micro_batch, tp, grad=False) if last else 0.0
    critic_state = st.total if inp.critic else 0.0
    critic_idle = st.resident_idle if inp.critic else 0.0
    over = float(M.TRAINER_OVERHEAD)
    gen_idle = {"params": st.params,
                "grads": 0.0 if inp.offload else st.grads,
                "optimizer": 0.0 if inp.offload else st.optimizer,
                "reference": 0.0 if inp.offload else ref,
                "trainer_overhead": over}
    if inp.backend == "torch" and inp.offload:
        gen_idle["params"] = 0.0
    if inp.critic:
        gen_idle["critic"] = critic_idle
    lp = {"params": st.params, "grads": 0.0 if inp.offload else st.grads,
          "optimizer": 0.0 if inp.offload else st.optimizer, "reference": ref,
          "activations": lp_acts, "logits": lp_logits, "trainer_overhead": over}
    train = {"params": st.params, "grads": st.grads, "optimizer": st.optimizer,
             "reference": 0.0 if inp.offload else ref, "activations": acts, "logits": logits,
             "trainer_overhead": over}
    # the weight push: every rank holds one gathered full tensor, the source rank also the bucket
    sync = {"params": st.params, "grads": st.grads, "optimizer": st.optimizer,
            "reference": 0.0 if inp.offload else ref, "trainer_overhead": over,
            "sync_buffers": M.sync_transient_bytes(a, inp.bucket)}
    if inp.handles:  # the buffers the rank hands its device's generator worker
        bucket = min(inp.bucket, int(2 * M.total_params(a)))  # bf16; no bucket outgrows the model
        sync["handle_buffers"] = float(HANDLE_BUFFERS * handle_buffer_bytes(bucket, int(M.largest_tensor_bytes(a))))
    if inp.critic:
        lp["critic"] = critic_idle
        train["critic"] = critic_state
        sync["critic"] = critic_state
    return {"generation": gen_idle, "log_probs": lp, "train": train, "sync": sync}


def _generator_memory(inp: Inputs, rtp: int, replicas: int, colocated: bool) -> tuple[dict[str, float], dict[str, float], Optional[M.VllmMemory]]:
    """(generation-phase components, sleeping components, vLLM breakdown) of one generator GPU (bytes)."""
    a = inp.arch
    ctx = 0.5 * M.GIB
    if inp.gen_backend == "hf":
        gen = {"generator_weights": 2.0 * M.total_params(a),
               "kv_cache": M.hf_generation_bytes(a, inp.hf_sequences(replicas), inp.seq)}
        if not colocated:
            gen["generator_context"] = ctx
        return gen, {}, None
    v = M.vllm_memory(a, rtp, inp.utilization, inp.capacity, max_num_seqs=inp.max_num_seqs,
                      enforce_eager=inp.enforce_eager)
    gen = {"vllm_weights": v.weights, "vllm_activations": v.activations, "cuda_graphs": v.cuda_graphs,
           "vllm_non_torch": v.non_torch, "kv_cache": max(0.0, v.kv_cache), "generator_context": ctx}
    if inp.sleep_level == 0:
        sleep = dict(gen)
    else:
        sleep = {"cuda_graphs": v.cuda_graphs, "vllm_non_torch": v.non_torch, "generator_context": ctx}
    if v.kv_cache < 0:  # over-committed reservation: count what the engine would need
        gen["kv_cache"] = 0.0
    return gen, sleep, v


def _evaluate(inp: Inputs, tp: int, pp: int, cp: int, dp: int, rtp: int, replicas: int,
              trainer_ranks: list[int], gen_ranks: list[int], m: int,
              tcache: dict, gcache: dict) -> Candidate:
    cap = inp.capacity
    colocated = inp.placement == "colocated"
    c = Candidate(tp, pp, cp, dp, rtp, replicas, trainer_ranks, gen_ranks, m)
    gkey = (rtp, replicas, colocated)
    if gkey not in gcache:
        gcache[gkey] = _generator_memory(inp, rtp, replicas, colocated)
    gen, sleep, v = gcache[gkey]
    c.vllm = v
    t_roles = ["trainer"] + (["reference"] if inp.reference else []) + (["critic"] if inp.critic else [])
    per_stage = tp * cp * dp
    for s in range(pp):
        key = (tp, pp, cp, dp, s, m)
        if key not in tcache:
            tcache[key] = _trainer_stage_memory(inp, tp, pp, cp, dp, s, m)
        ph = tcache[key]
        ranks = trainer_ranks[s * per_stage:(s + 1) * per_stage]
        if colocated:
            # the push writes into the woken weights while the KV cache still sleeps
            woken = {**_asleep(sleep), **({"vllm_weights": gen["vllm_weights"]} if "vllm_weights" in gen else {})}
            if inp.sleep_level == 0:
                woken = _asleep(sleep)
            phases = {"generation": {**ph["generation"], **gen},
                      "log_probs": {**ph["log_probs"], **_asleep(sleep)},
                      "train": {**ph["train"], **_asleep(sleep)},
                      "sync": {**ph["sync"], **woken}}
            roles = t_roles + ["generator"]
        else:
            phases = {"log_probs": dict(ph["log_probs"]), "train": dict(ph["train"]), "sync": dict(ph["sync"])}
            roles = t_roles
        c.gpus.append(GpuMemory(f"stage {s}" if pp > 1 else "trainer", s, ranks[0], ranks, roles, phases))
    if not colocated:
        received = {**gen, "sync_buffers": M.largest_tensor_bytes(inp.arch)}  # one received tensor at a time
        c.gpus.append(GpuMemory("generator", None, gen_ranks[0], list(gen_ranks), ["generator"],
                                {"generation": dict(gen), "sync": received}))
    # memory problems (against the budget: capacity less the headroom)
    worst = c.worst_gpu()
    if worst.peak > inp.budget:
        c.excess = worst.peak - inp.budget
        c.problems.append("memory")
    if v is not None:
        if v.kv_cache <= 0:
            c.problems.append("vllm_budget")
            c.excess = max(c.excess, -v.kv_cache + v.kv_bytes_per_token * inp.seq)
        elif v.kv_tokens < inp.max_model_len:
            c.problems.append("kv_capacity")
            c.excess = max(c.excess, (inp.max_model_len - v.kv_tokens) * v.kv_bytes_per_token)
        c.concurrency = M.max_concurrency(v.kv_tokens, inp.seq, inp.max_num_seqs)
    else:
        c.concurrency = inp.hf_sequences(replicas)
    c.times = _times(inp, c)
    return c


def _asleep(sleep: dict[str, float]) -> dict[str, float]:
    """A sleeping engine's components; with sleep level 0 its weights, KV cache and activation
    reserve stay as one 'vllm_asleep' entry."""
    out: dict[str, float] = {}
    for k, v in sleep.items():
        kk = "vllm_asleep" if k in ("vllm_weights", "kv_cache", "vllm_activations") else k
        out[kk] = out.get(kk, 0.0) + v
    return out


# ---------------------------------------------------------------------------------------------
# cost model
# ---------------------------------------------------------------------------------------------

def matmul_params(arch: Architecture) -> int:
    """Parameters taking part in matmuls per token (all but the input-embedding lookup)."""
    return arch.num_layers * M.layer_params(arch, 1) + arch.vocab_size * arch.hidden_size


def forward_flops(inp: Inputs) -> float:
    """FLOPs of one forward over all sequences of an RL step at max length: N (2 P_mm s + attn)."""
    return inp.sequences * (2.0 * matmul_params(inp.arch) * inp.seq + M.attention_flops_per_seq(inp.arch, inp.seq))


def tp_efficiency(tp: int, hidden: int) -> float:
    """Throughput factor of TP inside a node: communication grows relative to compute as h shrinks."""
    return 1.0 / (1.0 + 0.02 * (tp - 1) * 4096 / hidden)


def bubble(pp: int, m: int) -> float:
    """1F1B pipeline bubble fraction (p - 1) / (m + p - 1)."""
    return (pp - 1) / (m + pp - 1) if pp > 1 else 0.0


def pipeline_balance(arch: Architecture, pp: int, seq: int) -> float:
    """Mean / max of per-stage forward FLOPs: the slowest stage sets the pace of a pipeline.

    Stage FLOPs = its layers x (2 x layer params + attention) per token; the last stage adds the
    output layer (2 x V x h per token), which for large vocabularies outweighs a layer or two.
    """
    if pp == 1:
        return 1.0
    per_layer = 2.0 * M.layer_params(arch, 1) + M.attention_flops_per_seq(arch, seq) / arch.num_layers / seq
    stages = [M.stage_layers(arch, pp, s) * per_layer for s in range(pp)]
    stages[-1] += 2.0 * arch.vocab_size * arch.hidden_size
    return sum(stages) / len(stages) / max(stages)


def sync_parts(inp: Inputs, c: Candidate) -> dict[str, float]:
    """Seconds of one weight sync (bf16; `compiler.sync_cost`) by part: the export's gathers, the
    transport, and (sleep level 1) the generator's weights to host and back."""
    model = 2.0 * M.total_params(inp.arch)
    parts = {"gathers": 0.0, "transport": 0.0, "sleep_copy": 0.0}
    if inp.placement == "colocated" and not inp.handles:  # hf: the module is shared on one device
        parts["transport"] = 0.0 if inp.world == 1 else broadcast_seconds(model, len(c.gen_ranks), HOST_BROADCAST_BW)
    else:
        stage_bw = NVLINK_BW if c.tp * c.pp <= inp.gpus_per_node else INTERNODE_BW
        parts["gathers"] = export_gather_seconds(model, c.tp, c.pp, NVLINK_BW, stage_bw)
        if inp.handles:  # every GPU at once: the pack into its buffer and its worker's load
            parts["transport"] = handles_seconds(model, COPY_BW_EFF * inp.bandwidth / 2)
        else:  # NCCL pipelines the broadcast in chunks: about one pass of the model at the link's speed
            parts["transport"] = model / INTERNODE_BW
    if inp.placement == "colocated":  # hf has no sleep mode: level 0
        parts["sleep_copy"] = sleep_copy_seconds(M.vllm_weight_bytes(inp.arch, c.rtp), inp.sleep_level, PCIE_BW)
    return parts


def _times(inp: Inputs, c: Candidate) -> dict[str, float]:
    """Estimated seconds per RL step by phase (upper bound: every response at max length)."""
    a = inp.arch
    P = M.total_params(a)
    gpus_t = len(c.trainer_ranks)
    gpus_g = len(c.gen_ranks)
    # --- generation: prefill (compute) + decode (bandwidth) per replica, replicas in parallel
    prefill = 2.0 * matmul_params(a) * inp.sequences * inp.prompt / (gpus_g * inp.tflops * PREFILL_EFF)
    conc = max(1, c.concurrency)
    per_replica = math.ceil(inp.sequences / c.replicas)
    waves = math.ceil(per_replica / conc)
    conc = min(conc, per_replica)
    if inp.gen_backend == "vllm":
        w = M.vllm_weight_bytes(a, c.rtp)
        kv_tok = M.kv_bytes_per_token(a, c.rtp)
    else:
        w = 2.0 * P
        kv_tok = M.kv_bytes_per_token(a, 1)
    read = w + conc * (inp.prompt + inp.response / 2) * kv_tok
    mem_t = read / (inp.bandwidth * DECODE_BW_EFF)
    comp_t = 2.0 * matmul_params(a) / c.rtp * conc / (inp.tflops * PREFILL_EFF)
    step = max(mem_t, comp_t) + (2 * a.num_layers * ALLREDUCE_LATENCY_S if c.rtp > 1 else 0.0)
    if inp.gen_backend == "hf":
        step *= 3.0  # no paged attention / CUDA graphs
    generation = prefill + waves * inp.response * step
    # --- trainer
    F = forward_flops(inp)
    eff = BASE_MFU * tp_efficiency(c.tp, a.hidden_size) / (1.0 + 0.05 * (c.cp - 1))
    if inp.backend == "torch":
        eff *= 0.9  # FSDP all-gathers
    rate = gpus_t * inp.tflops * eff * pipeline_balance(a, c.pp, inp.seq)
    lp_m = max(1, math.ceil(inp.sequences / (c.dp * inp.lp_micro_batch)))
    passes = 1 + (1 if inp.reference else 0) + (1 if inp.critic else 0)
    log_probs = passes * F / (rate * (1 - bubble(c.pp, lp_m)))
    train_factor = 4.0 if inp.recompute == "full" else 3.0
    train = inp.epochs * train_factor * F * (2 if inp.critic else 1) / (rate * (1 - bubble(c.pp, c.microbatches)))
    if inp.fp8 != "none":
        train /= FP8_SPEEDUP
    times = {"generation": generation, "log_probs": log_probs, "train": train, "sync": sum(sync_parts(inp, c).values())}
    if inp.offload and inp.backend == "megatron":
        shard = M.max_shard_params(a, c.tp, c.pp)
        opt_steps = inp.epochs * inp.batch // max(1, inp.mini_batch)
        times["offload"] = opt_steps * (6.0 * shard / PCIE_BW + 12.0 * shard / (c.dp * c.cp) / 10e9)
    return times


# ---------------------------------------------------------------------------------------------
# enumeration
# ---------------------------------------------------------------------------------------------

def _node_ok(size: int, inp: Inputs) -> bool:
    """A TP group must sit inside one node: size <= gpus_per_node and groups aligned to nodes."""
    g = inp.gpus_per_node
    return size <= g and (g % size == 0 or inp.nodes == 1)


def trainer_tp_options(inp: Inputs) -> list[int]:
    if inp.tp is not None:
        return [inp.tp]
    opts = [t for t in legal_trainer_tp(inp.arch) if _node_ok(t, inp)]
    if inp.fp8 != "none":
        opts = [t for t in opts if fp8_ok(inp.arch, inp.fp8, t) is None]
    return opts


def trainer_pp_options(inp: Inputs) -> list[int]:
    if inp.pp is not None:
        return [inp.pp]
    return [p for p in legal_pp(inp.arch) if p <= inp.world]


def rollout_tp_options(inp: Inputs) -> list[int]:
    if inp.rtp is not None:
        return [inp.rtp]
    return [t for t in legal_rollout_tp(inp.arch, inp.gpus_per_node) if _node_ok(t, inp)]


def _microbatches(inp: Inputs, dp: int) -> Optional[int]:
    seqs = inp.mini_batch * inp.n
    if seqs % (dp * inp.micro_batch):
        return None
    return seqs // (dp * inp.micro_batch)


def enumerate_candidates(inp: Inputs) -> list[Candidate]:
    """Evaluate every legal layout (fixed values honoured)."""
    world = inp.world
    out: list[Candidate] = []
    tcache: dict = {}
    gcache: dict = {}
    rtps = rollout_tp_options(inp)
    for tp in trainer_tp_options(inp):
        for pp in trainer_pp_options(inp):
            mp = tp * pp * inp.cp
            if mp > world:
                continue
            if inp.placement == "colocated":
                if world % mp:
                    continue
                dp = world // mp
                m = _microbatches(inp, dp)
                if m is None:
                    continue
                for rtp in rtps:
                    if world % rtp:
                        continue
                    ranks = list(range(world))
                    out.append(_evaluate(inp, tp, pp, inp.cp, dp, rtp, world // rtp, ranks, ranks, m, tcache, gcache))
            else:
                for dp in range(1, world // mp + 1):
                    gt = mp * dp
                    m = _microbatches(inp, dp)
                    if m is None:
                        continue
                    for rtp in rtps:
                        start = -(-gt // rtp) * rtp
                        replicas = (world - start) // rtp
                        if replicas < 1:
                            continue
                        gen = list(range(start, start + replicas * rtp))
                        out.append(_evaluate(inp, tp, pp, inp.cp, dp, rtp, replicas, list(range(gt)), gen, m, tcache, gcache))
    return out


def _rank_key(c: Candidate) -> tuple:
    return (round(c.step_time, 6), round(c.peak / M.GIB, 3), c.tp, c.pp, c.rtp)


def search(inp: Inputs, explain: bool = True) -> SearchResult:
    """Run the search; with ``explain`` fill reasons (when infeasible) and suggestions."""
    cands = enumerate_candidates(inp)
    fitting = [c for c in cands if c.fits]
    best = min(fitting, key=_rank_key) if fitting else None
    closest = best or (min(cands, key=lambda c: (c.excess, _rank_key(c))) if cands else None)
    res = SearchResult(inp, best, closest, cands)
    if explain and best is None:
        res.reasons = explain_infeasible(inp, closest) + suggestions(inp)
    return res


# ---------------------------------------------------------------------------------------------
# explanations
# ---------------------------------------------------------------------------------------------

def _g(x: float) -> str:
    return f"{x / M.GIB:.1f}"


def component_summary(phase: dict[str, float], top: int = 6) -> str:
    """'params 7.1 + grads 14.2 + ...' for the largest components of a phase (GiB)."""
    items = sorted(((k, v) for k, v in phase.items() if v > 0.05 * M.GIB), key=lambda kv: -kv[1])[:top]
    return " + ".join(f"{k} {_g(v)}" for k, v in items)


def memory_reason(inp: Inputs, c: Candidate) -> str:
    """One sentence: where the candidate's worst GPU exceeds its capacity and by how much."""
    g = c.worst_gpu()
    ph = g.peak_phase
    return (f"{c.describe()}: GPU {g.first_rank} ({g.label}) needs {_g(g.peak)} GiB > {_g(inp.budget)} GiB "
            f"({_g(inp.capacity)} GiB less {_g(inp.headroom)} GiB headroom) in the {ph} phase (over by "
            f"{_g(g.peak - inp.budget)} GiB): {component_summary(g.phases[ph])}")


def explain_infeasible(inp: Inputs, c: Optional[Candidate]) -> list[str]:
    """Why the closest candidate does not fit."""
    if c is None:
        return [f"no legal layout: trainer TP options {trainer_tp_options(inp)}, PP options {trainer_pp_options(inp)}, "
                f"generator TP options {rollout_tp_options(inp)} on {inp.nodes} x {inp.gpus_per_node} GPUs "
                f"(DP must divide the mini-batch of {inp.mini_batch * inp.n} sequences by micro_batch {inp.micro_batch})"]
    out = []
    if "memory" in c.problems:
        out.append("closest layout " + memory_reason(inp, c))
    v = c.vllm
    if v is not None and "vllm_budget" in c.problems:
        out.append(f"{c.describe()}: vLLM's reservation {inp.utilization} x {_g(inp.capacity)} = {_g(v.reservation)} GiB "
                   f"does not cover weights {_g(v.weights)} + activations {_g(v.activations)} + graphs/other "
                   f"{_g(v.cuda_graphs + v.non_torch)} GiB: no KV cache left")
    elif v is not None and "kv_capacity" in c.problems:
        out.append(f"{c.describe()}: the KV cache ({_g(v.kv_cache)} GiB = {v.kv_tokens} tokens per replica) cannot hold one "
                   f"sequence of {inp.seq} tokens ({_g(inp.seq * v.kv_bytes_per_token)} GiB)")
    return out


def _try(inp: Inputs, **changes) -> Optional[Candidate]:
    r = search(replace(inp, **changes), explain=False)
    return r.best


def suggestions(inp: Inputs) -> list[str]:
    """Variations of the spec that would fit (each checked by a search)."""
    out: list[str] = []
    # more nodes
    for k in range(inp.nodes + 1, max(inp.nodes * 16, 32) + 1):
        b = _try(inp, nodes=k)
        if b is not None:
            out.append(f"would fit on {k} nodes x {inp.gpus_per_node} GPUs ({k * inp.gpus_per_node} GPUs): {b.describe()}, "
                       f"peak {_g(b.peak)} GiB")
            break
    else:
        out.append(f"no node count up to {max(inp.nodes * 16, 32)} (x {inp.gpus_per_node} GPUs) fits with the other values as fixed")
    if inp.gpus_per_node < 8:
        for k in range(1, 17):
            b = _try(inp, nodes=k, gpus_per_node=8)
            if b is not None:
                out.append(f"would fit on {k} node(s) x 8 GPUs: {b.describe()}, peak {_g(b.peak)} GiB")
                break
    if not inp.offload:
        b = _try(inp, offload=True)
        if b:
            out.append(f"trainer.offload=true would fit ({b.describe()}, peak {_g(b.peak)} GiB)")
    if inp.placement == "colocated" and inp.sleep_level == 0:
        b = _try(inp, sleep_level=1)
        if b:
            out.append(f"rollout.sleep_level=1 (or 2) would fit ({b.describe()})")
    if inp.gen_backend == "vllm":
        # up: a reservation too small for weights + one sequence of KV; down: room for the trainer
        for step, ok in ((0.05, lambda u: u <= 0.95), (-0.05, lambda u: u >= 0.2)):
            u = round(inp.utilization + step, 2)
            while ok(u):
                b = _try(inp, utilization=u)
                if b:
                    out.append(f"rollout.gpu_memory_utilization={u} would fit ({b.describe()}, KV cache "
                               f"{b.vllm.kv_tokens if b.vllm else 0} tokens per replica)")
                    break
                u = round(u + step, 2)
    halvings = [("trainer.log_prob_micro_batch_size", "lp_micro_batch", inp.lp_micro_batch, 1),
                ("trainer.micro_batch_size", "micro_batch", inp.micro_batch, 1)]
    if inp.gen_backend == "hf":  # hf holds the KV cache of every sequence it decodes at once
        halvings.insert(0, ("rollout.micro_batch_size", "hf_micro_batch", min(inp.hf_micro_batch or inp.batch, inp.batch), 1))
    halvings.append(("data.max_response_length", "response", inp.response, 256))
    if inp.recompute != "full" and inp.backend == "megatron":
        b = _try(inp, recompute="full")
        if b:
            out.append(f"trainer.recompute=full would fit ({b.describe()})")
    for name, attr, start, floor in halvings:  # the largest halving of the value that fits
        v = start // 2
        while v >= floor:
            b = _try(inp, **{attr: v})
            if b:
                extra = f", {v * inp.n} sequences at once" if attr == "hf_micro_batch" else ""
                out.append(f"{name}={v} would fit ({b.describe()}{extra})")
                break
            v //= 2
    other = "split" if inp.placement == "colocated" else "colocated"
    b = _try(inp, placement=other)
    if b:
        out.append(f"placement={other} would fit ({b.describe()})")
    return out


def choice_notes(res: SearchResult) -> list[str]:
    """Why the best candidate beat the alternatives, one line per alternative value of each size."""
    best, inp = res.best, res.inputs
    if best is None:
        return []
    notes = [f"chosen {best.describe()}: estimated step {best.step_time:.0f} s, peak {_g(best.peak)} GiB "
             f"of {_g(inp.capacity)} GiB ({len(res.candidates)} layouts evaluated)"]
    for label, attr, fixed in (("trainer TP", "tp", inp.tp), ("trainer PP", "pp", inp.pp), ("generator TP", "rtp", inp.rtp)):
        if fixed is not None:
            backend_fixed = (attr in ("tp", "pp") and inp.backend == "torch") or (attr == "rtp" and inp.gen_backend == "hf")
            notes.append(f"{label} {fixed} " + ("(the backend has no model parallelism)" if backend_fixed else "fixed by the spec"))
            continue
        by: dict[int, list[Candidate]] = {}
        for c in res.candidates:
            by.setdefault(getattr(c, attr), []).append(c)
        for val in sorted(by):
            if val == getattr(best, attr):
                continue
            group = by[val]
            fit = [c for c in group if c.fits]
            if fit:
                alt = min(fit, key=_rank_key)
                notes.append(f"{label} {val}: fits ({alt.describe()}, peak {_g(alt.peak)} GiB) but estimated step "
                             f"{alt.step_time:.0f} s vs {best.step_time:.0f} s")
            else:
                alt = min(group, key=lambda c: (c.excess, _rank_key(c)))
                if "memory" in alt.problems:
                    g = alt.worst_gpu()
                    notes.append(f"{label} {val}: needs {_g(g.peak)} GiB > {_g(inp.budget)} GiB on GPU {g.first_rank} "
                                 f"({g.label}, {g.peak_phase} phase) at best ({alt.describe()})")
                else:
                    notes.append(f"{label} {val}: vLLM KV cache cannot hold one {inp.max_model_len}-token sequence ({alt.describe()})")
    return notes
