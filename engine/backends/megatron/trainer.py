"""`megatron` trainer: megatron-core GPTModel with TP/PP/DP, Megatron DDP and the distributed optimizer.

One instance per rank of the trainer group. The caller (the worker group) has initialised
torch.distributed (gloo on CPU, NCCL on GPU) with one process per trainer rank; the trainer forms
Megatron's parallel groups with the plan's sizes and checks that they agree with the compiler's rank
convention (`compiler.mesh`: tp fastest, then dp, then pp). A single-process run needs no caller
setup (the trainer starts a one-rank group itself).

Losses are those of `engine.algorithm.losses`, as in the torch trainer, at the rollout temperature.
Exactness across ranks: the loss function returns a *sum* over its micro-batch, weighted by the
mini-batch's `loss_weights`, and the whole-number count they cover (`calculate_per_token_loss`);
Megatron adds gradients over micro-batches and DP ranks and divides by the global count, so the
update equals the single-process update on the whole batch, in every aggregation mode.

Input layout (`layout`): each forward-backward call re-forms its micro-batches from the runtime's
batch into left-aligned rows padded to `seq_multiple` tokens and runs the model with no attention
mask, which is what Transformer Engine's causal-only attention computes correctly.

On CPU every call into megatron-core runs inside `engine.backends.megatron.cpu.cpu_compat` (its
CUDA assumptions mapped to the CPU); on GPU megatron-core runs unpatched.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

import torch

from engine.algorithm.losses import loss_weights, mismatch_per_token, policy_loss_per_token
from engine.backends.base import WeightBucket
from engine.backends.config import BatchConfig, LossConfig, OptimConfig, from_plan
from engine.backends.device import release_cached
from engine.backends.manifest import bucketed
from engine.backends.megatron.bridge import WeightBridge, norm_eps, read_hf_config
from engine.backends.megatron.cpu import compat_for
from engine.backends.megatron.layout import micro_batches, seq_multiple
from engine.backends.megatron.logprobs import vocab_parallel_log_probs
from engine.backends.megatron.model import ModelLayout, build_gpt, transformer_config
from engine.core.batch import GROUP_KEYS
from engine.core.batch import split_rows as _rows  # the torch trainer's row split, one rule for both

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


#: Per-token statistics summed by the loss function: name -> index in the stats vector; then the
#: trainer-vs-generator gap of an on-policy update (`_MISMATCH`: two sums and a max).
_STATS = ("trainer/pg_loss", "trainer/entropy", "trainer/pg_clipfrac", "trainer/ppo_kl", "trainer/kl")
_MISMATCH = ("rollout/token_mult_prob_error", "rollout/kl", "rollout/max_abs_diff")


def _compat(method):
    """Run a trainer method inside the CPU shim when the trainer is on CPU (no-op on GPU)."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with compat_for(self.device):
            return method(self, *args, **kwargs)

    return wrapped


def _flat(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The flat-layout tensors of a `pack_groups` batch on ``device`` (per-prompt keys dropped)."""
    return {k: v.to(device) for k, v in batch.items()
            if isinstance(v, torch.Tensor) and k not in GROUP_KEYS}


class MegatronTrainer:
    """Policy optimisation with megatron-core (one rank of a TP x PP x DP group)."""

    def __init__(self, arch: Any, model_path: str, layout: ModelLayout, optim: OptimConfig, loss: LossConfig,
                 sizes: BatchConfig, data_parallel: int = 1, seed: int = 0, temperature: Optional[float] = None,
                 distributed_optimizer: bool = True, frozen: bool = False) -> None:
        """``frozen``: the reference policy, forward only (no DDP, no optimizer), on the process groups
        the trainer of the same rank already set up. ``temperature``: that of the log-probs and entropy
        (default ``loss.temperature``, the rollout's)."""
        self.arch, self.layout, self.optim_cfg, self.loss_cfg, self.sizes = arch, layout, optim, loss, sizes
        self.device = torch.device(layout.device)
        self.temperature = float(loss.temperature if temperature is None else temperature)
        self.data_parallel = data_parallel
        self.model_path = model_path
        self.steps = 0  # optimizer steps taken (drives the warm-up)
        self._owns_process_group = False  # the one-rank group of a single-process trainer
        self._frozen = frozen
        with compat_for(self.device):
            self._init_parallel(seed)
            self._build(distributed_optimizer, frozen)

    # -- set-up ------------------------------------------------------------------------------------
    def _init_parallel(self, seed: int) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from compiler.mesh import coords

        tp, pp, dp = self.layout.tensor_parallel, self.layout.pipeline_parallel, self.data_parallel
        dist = torch.distributed
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # megatron-core allocates on the current device
        if not dist.is_initialized():
            if tp * pp * dp != 1:
                raise RuntimeError(f"a TP{tp} PP{pp} DP{dp} trainer needs torch.distributed initialised by its "
                                   "worker group (one process per rank)")
            from engine.backends.megatron._single import init_single_process_group

            init_single_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._owns_process_group = True
        world = dist.get_world_size()
        if world != tp * pp * dp:
            raise RuntimeError(f"trainer group has {world} ranks but the plan is TP{tp} x PP{pp} x DP{dp}")
        same = (ps.model_parallel_is_initialized() and ps.get_tensor_model_parallel_world_size() == tp
                and ps.get_pipeline_model_parallel_world_size() == pp)
        if not same:  # a second model on this rank (the reference) shares the groups already made
            if ps.model_parallel_is_initialized():
                ps.destroy_model_parallel()
            ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        rank = dist.get_rank()
        got = (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
               ps.get_data_parallel_rank())
        want = coords(rank, tp, pp, dp)
        if got != want:
            raise RuntimeError(f"rank {rank}: megatron placed it at (tp, pp, dp) = {got}, the plan at {want}")
        self.rank, self.tp_rank, self.pp_rank, self.dp_rank = rank, *got
        torch.manual_seed(seed)
        model_parallel_cuda_manual_seed(seed)

    def _build(self, distributed_optimizer: bool, frozen: bool = False) -> None:
        from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                               finalize_model_grads)
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.hf_config = read_hf_config(self.model_path)
        if self.layout.norm_eps != norm_eps(self.hf_config):
            self.layout = ModelLayout(**{**self.layout.__dict__, "norm_eps": norm_eps(self.hf_config)})
        self.config = transformer_config(self.arch, self.layout)
        module = build_gpt(self.arch, self.layout, self.config)
        self.bridge = WeightBridge(self.arch, self.config, self.layout, self.hf_config)
        self.bridge.load_hf(module, self.model_path)
        if frozen:
            module.requires_grad_(False)
            self.model, self.optimizer = module, None
            return
        ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                use_distributed_optimizer=distributed_optimizer)
        self.model = DistributedDataParallel(config=self.config, ddp_config=ddp_cfg, module=module)
        self.config.finalize_model_grads_func = finalize_model_grads
        o = self.optim_cfg
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=o.lr, weight_decay=o.weight_decay, adam_beta1=o.betas[0],
                            adam_beta2=o.betas[1], adam_eps=1e-8, clip_grad=o.grad_clip,
                            bf16=self.layout.dtype == torch.bfloat16, params_dtype=self.layout.dtype,
                            use_distributed_optimizer=distributed_optimizer),
            [self.model], config_overrides={})  # {}: weight decay on every parameter, like torch AdamW
        self._set_lr(self._lr_at(0))

    # -- learning rate (the torch trainer's linear warm-up) -----------------------------------------
    def _lr_at(self, step: int) -> float:
        return self.optim_cfg.lr * self.optim_cfg.lr_factor(step)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- forward -----------------------------------------------------------------------------------
    @property
    def seq_multiple(self) -> int:
        """Every micro-batch's sequence length is a multiple of this (TP under sequence parallelism,
        16 x / 128 x that under FP8; `layout.seq_multiple`)."""
        return seq_multiple(self.layout.tensor_parallel, self.layout.sequence_parallel, self.layout.fp8)

    def _micro_batches(self, batch: Mapping[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
        """The micro-batches of one forward-backward call, in the left-aligned layout (`layout`)."""
        return micro_batches(batch, size, self.seq_multiple)

    def _response_log_probs(self, logits: torch.Tensor, mb: Mapping[str, torch.Tensor], with_entropy: bool):
        """(log p, entropy or None) of the response tokens, [b, T], from vocab-parallel logits [b, S, V/tp]
        of a left-aligned micro-batch (``mb['logit_index']`` names the column predicting each token)."""
        from megatron.core import parallel_state as ps

        v_local = logits.shape[-1]
        return vocab_parallel_log_probs(logits, mb["responses"], self.tp_rank * v_local, self.arch.vocab_size,
                                        self.temperature, with_entropy,
                                        ps.get_tensor_model_parallel_group() if self.layout.tensor_parallel > 1
                                        else None, index=mb["logit_index"])

    def _forward_step(self, loss_fn):
        def step(data_iterator, model):
            mb = next(data_iterator)
            # no attention mask: real tokens come first in every row, so causal attention (what
            # Transformer Engine's causal mask type computes) never reaches a padding key
            out = model(mb["input_ids"], mb["position_ids"], None)
            return out, functools.partial(loss_fn, mb)
        return step

    def _run(self, micro: list[dict[str, torch.Tensor]], loss_fn, forward_only: bool) -> list[Any]:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=self._forward_step(loss_fn), data_iterator=iter(micro), model=[self.model],
            num_microbatches=len(micro), seq_length=micro[0]["input_ids"].shape[1],
            micro_batch_size=micro[0]["input_ids"].shape[0], forward_only=forward_only)

    def _is_last_stage(self) -> bool:
        from megatron.core import parallel_state as ps

        return ps.is_pipeline_last_stage()

    def _broadcast_from_last_stage(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as the last PP stage holds it, on every stage (same shape and dtype everywhere)."""
        from megatron.core import parallel_state as ps

        if self.layout.pipeline_parallel == 1:
            return t
        t = t.contiguous()
        torch.distributed.broadcast(t, src=ps.get_pipeline_model_parallel_last_rank(),
                                    group=ps.get_pipeline_model_parallel_group())
        return t

    def close(self) -> None:
        """Tear down Megatron's process groups (and the one-rank world this trainer made), so that
        another trainer can start in this process. The frozen reference leaves them to the trainer."""
        if self._frozen:
            return
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        if self._owns_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_process_group = False

    # -- the Trainer protocol -------------------------------------------------------------------------
    @_compat
    @torch.no_grad()
    def compute_log_probs(self, batch: Mapping[str, Any], with_entropy: bool = False):
        """Per-token log-probs (nats) of ``batch['responses']``, [B, T] on CPU (every rank returns them);
        with ``with_entropy`` a pair (log_probs, entropy)."""
        self.model.eval()
        flat = _flat(batch, self.device)
        micro = self._micro_batches(flat, self.sizes.log_prob_micro_batch)

        def loss_fn(mb, logits):
            logp, ent = self._response_log_probs(logits, mb, with_entropy)
            out = {"logp": logp}
            if ent is not None:
                out["entropy"] = ent
            return torch.zeros((), device=logits.device), out

        outs = self._run(micro, loss_fn, forward_only=True)
        b, t = flat["responses"].shape
        k = 2 if with_entropy else 1
        result = torch.empty(k, b, t, dtype=torch.float32, device=self.device)
        if self._is_last_stage():
            result[0] = torch.cat([o["logp"] for o in outs])
            if with_entropy:
                result[1] = torch.cat([o["entropy"] for o in outs])
        result = self._broadcast_from_last_stage(result).cpu()
        return (result[0], result[1]) if with_entropy else result[0]

    def _loss(self, mb: Mapping[str, torch.Tensor], logits: torch.Tensor):
        cfg = self.loss_cfg
        m = mb["response_mask"].float()
        logp, ent = self._response_log_probs(logits, mb, with_entropy=True)
        old = mb["old_log_probs"] if "old_log_probs" in mb else logp.detach()
        per_tok, pg, clipped, kl = policy_loss_per_token(logp, old, mb["advantages"], ent, cfg, mb.get("ref_log_probs"),
                                                         mb.get("rollout_log_probs"))
        if kl is None:
            kl = torch.zeros_like(logp)
        # a weighted *sum* and its (whole-number) count, weights from the mini-batch (`loss_weights`):
        # Megatron divides the summed gradients by the global count
        total, count = (per_tok * mb["loss_weights"]).sum(), mb["loss_counts"].sum().round()
        with torch.no_grad():
            parts = [(pg * m).sum(), (ent * m).sum(), (clipped * m).sum(), ((old - logp) * m).sum(), (kl * m).sum()]
            if "old_log_probs" not in mb and "rollout_log_probs" in mb:  # on-policy: logp is pi_old
                mult, kl_gap, gap = mismatch_per_token(logp, mb["rollout_log_probs"])
                parts += [(mult * m).sum(), (kl_gap * m).sum(), (gap * m).max()]
            else:
                parts += [torch.zeros((), device=m.device)] * 3
            stats = torch.stack([*parts, m.sum()])
        return total, count.to(torch.int).to(logits.device), {"stats": stats}

    @_compat
    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """PPO-clip update over this DP rank's shard of the batch (same objective and metrics as the
        torch trainer; metrics are global over the DP group and equal on every rank)."""
        from megatron.core import parallel_state as ps

        flat = _flat(batch, self.device)
        self.model.train()
        stats = torch.zeros(len(_STATS) + len(_MISMATCH) + 1, dtype=torch.float64, device=self.device)
        grad_norms: list[float] = []
        skipped = 0
        for _ in range(self.sizes.epochs):
            for mini in _rows(flat, self.sizes.mini_batch):
                cfg = self.loss_cfg
                mini["loss_weights"], mini["loss_counts"] = loss_weights(
                    mini["response_mask"], cfg.loss_agg, cfg.max_response_length, cfg.loss_micro_batch)
                self.model.zero_grad_buffer()
                self.optimizer.zero_grad()
                outs = self._run(self._micro_batches(mini, self.sizes.micro_batch), self._loss, forward_only=False)
                for o in outs:
                    o = o["stats"].to(stats.dtype)
                    worst = torch.maximum(stats[-2], o[-2])
                    stats += o
                    stats[-2] = worst
                self._set_lr(self._lr_at(self.steps))
                gn = self._checked_step()
                if gn is None:
                    skipped += 1
                else:
                    grad_norms.append(gn)
                self.steps += 1
        # per-token sums: over DP ranks, then from the last stage to every stage
        if self.data_parallel > 1:
            worst = stats[-2:-1].clone()
            torch.distributed.all_reduce(stats, group=ps.get_data_parallel_group())
            torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX, group=ps.get_data_parallel_group())
            stats[-2] = worst[0]
        stats = self._broadcast_from_last_stage(stats)
        tokens = float(stats[-1])
        out = {name: float(stats[i]) / tokens for i, name in enumerate(_STATS) if tokens > 0}
        if "old_log_probs" not in flat and "rollout_log_probs" in flat and tokens > 0:
            k = len(_STATS)
            out.update({_MISMATCH[0]: float(stats[k]) / tokens, _MISMATCH[1]: float(stats[k + 1]) / tokens,
                        _MISMATCH[2]: float(stats[k + 2])})
        if self.loss_cfg.kl_coef <= 0:
            out.pop("trainer/kl", None)
        if grad_norms:
            out["trainer/grad_norm"] = sum(grad_norms) / len(grad_norms)
        out["trainer/lr"] = self._lr_at(self.steps)
        out["trainer/skipped_steps"] = float(skipped)
        return out

    def _checked_step(self) -> Optional[float]:
        """One optimizer step, unless the global gradient norm is not finite (then the gradient is
        dropped and None returned). Returns the norm before clipping."""
        self.optimizer.prepare_grads()
        norm = float(self.optimizer.get_grad_norm())
        if not math.isfinite(norm):
            self.optimizer.zero_grad()
            return None
        ok, gn, _ = self.optimizer.step()
        if not ok:
            return None
        return float(gn)

    # -- weights -----------------------------------------------------------------------------------
    def weight_names(self) -> list[str]:
        """Every HF parameter name `weight_stream` yields."""
        return self.bridge.names()

    def weight_stream(self, bucket_bytes: int) -> Iterator[WeightBucket]:
        """HF-named full tensors (TP shards gathered, PP stages broadcast), bucketed. Collective: every
        rank of the trainer group iterates it to the end."""
        def named():
            # the shim is active only while the export computes the next tensor, never while the
            # consumer (e.g. a generator taking the weights) runs between tensors
            it = self.bridge.export(self.model)
            while True:
                with compat_for(self.device):
                    item = next(it, None)
                if item is None:
                    return
                yield item
        return bucketed(named(), bucket_bytes)

    @_compat
    def export_hf(self, path: str) -> None:
        """HF folder (config.json + model.safetensors) at ``path``, written by global rank 0."""
        self.bridge.save_hf(self.model, path, write=self.rank == 0)
        if self.rank == 0:
            gen = os.path.join(self.model_path, "generation_config.json")
            if os.path.exists(gen):
                shutil.copy(gen, os.path.join(path, "generation_config.json"))

    # -- memory ------------------------------------------------------------------------------------
    def offload(self) -> None:
        """Move parameters, gradients and optimizer state to host memory (GPU; a no-op on CPU)."""
        if self.device.type != "cuda":
            return
        if self._frozen:  # the reference: a plain module, no DDP buffers or optimizer to move
            self.model.to("cpu")
            torch.cuda.empty_cache()
            return
        from engine.backends.megatron.offload import offload_model_and_optimizer

        offload_model_and_optimizer(self.model, self.optimizer)
        torch.cuda.empty_cache()

    def release_memory(self) -> None:
        """Empty the caching allocator (GPU; a no-op on CPU)."""
        release_cached(self.device)

    def onload(self) -> None:
        """Inverse of `offload`."""
        if self.device.type != "cuda":
            return
        if self._frozen:
            self.model.to(self.device)
            return
        from engine.backends.megatron.offload import onload_model_and_optimizer

        onload_model_and_optimizer(self.model, self.optimizer, self.device)

    # -- checkpoints -------------------------------------------------------------------------------
    def _sharded_state(self, is_loading: bool) -> dict[str, Any]:
        from megatron.core.dist_checkpointing.mapping import ShardedObject

        model_sd = self.model.module.sharded_state_dict()
        tp, pp, dp = self.layout.tensor_parallel, self.layout.pipeline_parallel, self.data_parallel
        rng = ShardedObject("rng_state", self._rng_state(), (pp, tp, dp), (self.pp_rank, self.tp_rank, self.dp_rank),
                            replica_id=0)
        # dp_reshardable: every rank writes and reads its own optimizer shard, no gathering
        meta = {"distrib_optim_sharding_type": "dp_reshardable"}
        return {"model": model_sd,
                "optimizer": self.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=meta),
                "rng_state": rng, "trainer_steps": self.steps}

    def _rng_state(self) -> dict[str, Any]:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        state = {"cpu": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    @_compat
    def save_checkpoint(self, folder: str) -> None:
        """This rank's shards of the model, optimizer and RNG state into ``folder`` (Megatron
        distributed checkpoint; every rank of the group calls it with the same folder, which the
        caller renames into place afterwards)."""
        from megatron.core import dist_checkpointing

        if self.rank == 0:
            os.makedirs(folder, exist_ok=True)
        torch.distributed.barrier()
        dist_checkpointing.save(self._sharded_state(is_loading=False), folder)
        torch.distributed.barrier()

    @_compat
    @torch.no_grad()
    def load_checkpoint(self, folder: str) -> None:
        """Inverse of `save_checkpoint` (same TP/PP/DP layout, or one dist_checkpointing can reshard)."""
        from megatron.core import dist_checkpointing
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        state = dist_checkpointing.load(self._sharded_state(is_loading=True), folder)
        self.model.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._restore_adam_steps()
        rng = state["rng_state"]
        torch.set_rng_state(rng["cpu"])
        get_cuda_rng_tracker().set_states(rng["tracker"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
        self.steps = int(state["trainer_steps"])
        self._set_lr(self._lr_at(self.steps))


    def _restore_adam_steps(self) -> None:
        """Megatron's checkpoint keeps Adam's step count per parameter *group* (what TE/Apex FusedAdam
        read); torch.optim.AdamW (its CPU fallback) reads a per-parameter ``state['step']``, which the
        load leaves as it was. Copy the group's count into every parameter's state."""
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            inner = getattr(opt, "optimizer", None)
            if not isinstance(inner, torch.optim.Optimizer):
                continue
            for group in inner.param_groups:
                if "step" not in group:
                    continue
                for p in group["params"]:
                    st = inner.state.get(p)
                    if st and "step" in st:
                        old = st["step"]
                        st["step"] = (torch.tensor(float(group["step"]), dtype=old.dtype, device=old.device)
                                      if isinstance(old, torch.Tensor) else group["step"])


def layout_from_plan(plan: Plan, device: str) -> ModelLayout:
    """The model layout the plan asks for on ``device``."""
    t = plan.trainer
    on_gpu = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if on_gpu and plan.dtype == "bfloat16" else torch.float32
    return ModelLayout(tensor_parallel=t.tensor_parallel, pipeline_parallel=t.pipeline_parallel,
                       sequence_parallel=bool(t.sequence_parallel and t.tensor_parallel > 1),
                       dtype=dtype, recompute=t.recompute, fp8=t.fp8, device=device)


def build(ctx: Any) -> MegatronTrainer:
    """The plan's Megatron trainer for this rank (registry entry ``megatron``)."""
    plan = ctx.plan  # gae and context parallelism are refused by the compiler (`compiler.backends`)
    # a sliding window is executed (`model.transformer_config`: window_size), as vLLM and HF do
    optim, loss, sizes = from_plan(plan)
    return MegatronTrainer(plan.architecture, ctx.model_path, layout_from_plan(plan, ctx.device), optim, loss, sizes,
                           data_parallel=plan.trainer.data_parallel, seed=plan.schedule.seed,
                           distributed_optimizer=plan.trainer.distributed_optimizer, frozen=ctx.frozen)
