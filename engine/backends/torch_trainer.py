"""`torch` trainer: plain PyTorch policy optimisation (CPU and one GPU).

One RL update splits the rollout batch into mini-batches (one AdamW step each) and every mini-batch
into micro-batches whose gradients are accumulated; losses are normalised by the mini-batch total so
the accumulated gradient equals the gradient of the whole mini-batch's loss. On GPU the forward pass
runs under bf16 autocast over fp32 master weights.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import torch

from engine.algorithm.losses import (aggregate, entropy_from_logits, loss_weights, masked_mean, mismatch_per_token,
                                     policy_loss_per_token, token_log_probs, value_loss_per_token)
from engine.backends.base import WeightBucket
from engine.backends.config import BatchConfig, LossConfig, OptimConfig  # noqa: F401  (re-exported)
from engine.backends.device import release_cached
from engine.backends.manifest import bucketed
from engine.core.batch import GROUP_KEYS, split_rows
from engine.modeling import cache_kwarg


def response_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits that predict each response token, [B, T, V] (float32).

    Flat layout: ``input_ids`` is [B, P + T] (left-padded prompt, right-padded response); the logits
    at positions P-1 .. P+T-2 predict response tokens 0 .. T-1, and only the last T+1 positions reach
    the LM head. Grouped layout (``prompt_ids`` [G, P] present, B = G * n, or ``prompt_index`` [B]
    naming each response's prompt row): the responses of a prompt share one forward pass over the
    prompt, whose KV cache (with its autograd graph) is repeated for each of them; the responses then
    run on top of it. Same maths, far fewer prompt tokens.
    """
    t = batch["responses"].shape[1]
    if "prompt_ids" in batch and not getattr(model, "is_gradient_checkpointing", False):
        return _grouped_response_logits(model, batch)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False, logits_to_keep=t + 1)
    return out.logits[:, :-1, :].float()


def _grouped_response_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``prompt_index`` [B] (optional): the row of ``prompt_ids`` each response continues (default: the
    n consecutive responses of each prompt, B = G * n)."""
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    responses, rmask = batch["responses"], batch["response_mask"]
    g, b, t = prompt_ids.shape[0], responses.shape[0], responses.shape[1]
    index = batch.get("prompt_index")
    if index is None:
        index = torch.arange(g, device=prompt_ids.device).repeat_interleave(b // g)
    kw = cache_kwarg(model)
    ppos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=ppos, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1:, :].float()[index]  # predicts response token 0
    if t == 1:
        return first
    cache = getattr(out, kw)
    cache.batch_select_indices(index)  # each response's copy of its prompt's KV cache (and its graph)
    attn = torch.cat([prompt_mask[index], rmask[:, :-1].to(prompt_mask.dtype)], dim=1)
    start = prompt_mask.sum(-1)[index][:, None]
    pos = start + torch.arange(t - 1, device=start.device)[None, :]
    rest = model(input_ids=responses[:, :-1], attention_mask=attn, position_ids=pos, use_cache=True, **{kw: cache})
    return torch.cat([first, rest.logits.float()], dim=1)


def response_log_probs(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs (nats) of ``batch['responses']`` under ``model`` at ``temperature``, [B, T]."""
    return token_log_probs(response_logits(model, batch), batch["responses"], temperature)


def _log_probs_and_entropy(model: torch.nn.Module, batch: Mapping[str, torch.Tensor],
                           temperature: float = 1.0) -> torch.Tensor:
    """[B, T, 2]: log-prob of each response token and the policy's entropy there (nats), at ``temperature``."""
    logits = response_logits(model, batch)
    return torch.stack([token_log_probs(logits, batch["responses"], temperature),
                        entropy_from_logits(logits, temperature)], dim=-1)


def bf16_autocast(enabled: bool):
    """bf16 autocast on CUDA when ``enabled``, else a no-op context."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def map_micro_batches(fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch: Mapping[str, Any], size: int,
                      device: torch.device, bf16: bool) -> torch.Tensor:
    """``fn`` over micro-batches of at most ``size`` sequences (`micro_batches`: grouped by response
    length, trimmed to their longest response; each moved to ``device``; no grad; bf16 autocast when
    ``bf16``), the per-token results put back in batch order on CPU, [B, T, ...] (0 past each
    micro-batch's longest response, where every response is padding)."""
    b, t = batch["responses"].shape
    out = None
    for rows, mb in micro_batches(batch, size):
        mb = {k: v.to(device) for k, v in mb.items()}
        with bf16_autocast(bf16):
            part = fn(mb).cpu()
        if out is None:
            out = part.new_zeros((b, t) + tuple(part.shape[2:]))
        out[rows, :part.shape[1]] = part
    return out


#: A micro-batch's fixed cost (its forward and backward calls) in padded response tokens, as a share of
#: the whole batch's: `micro_batches` splits off a shorter group only when that saves more than this.
SPLIT_COST_SHARE = 0.125


def length_parts(lengths: list[int], cost: float) -> list[int]:
    """Where to cut units sorted by length (longest first) into parts that each pad to their own first
    (longest) unit: the part starts, from 0, minimising sum(units x longest length) + ``cost`` per
    extra part. ``lengths``: one per unit (tokens), non-increasing. Cuts fall only where the length
    changes, so the search is over the distinct lengths."""
    u = len(lengths)
    if u == 0:
        return []
    starts = [0] + [k for k in range(1, u) if lengths[k] != lengths[k - 1]]
    ends = starts[1:] + [u]
    d = len(starts)
    best = [0.0] + [float("inf")] * d  # best[j]: cheapest cut of the units before starts[j] (ends[j-1])
    back = [0] * (d + 1)
    for j in range(1, d + 1):
        for i in range(j):  # the last part holds runs i..j-1 and pads to lengths[starts[i]]
            c = best[i] + (ends[j - 1] - starts[i]) * lengths[starts[i]] + (cost if i else 0.0)
            if c < best[j]:
                best[j], back[j] = c, i
    cuts, j = [], d
    while j > 0:
        cuts.append(starts[back[j]])
        j = back[j]
    return sorted(cuts)


def micro_batches(batch: Mapping[str, Any], size: int) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """The batch's micro-batches of at most ``size`` sequences, each trimmed to its longest response:
    ``(rows, chunk)`` with ``rows`` the batch rows it holds.

    Responses are padded to the longest in the batch, and computing padding costs as much as real
    tokens. So the sequences are ordered by response length, cut where a shorter part saves more
    padding than a micro-batch costs (`length_parts`, `SPLIT_COST_SHARE`) and then into at most
    ``size`` sequences, and each chunk's per-token tensors are cut to its own longest response. In the
    grouped layout a chunk carries the prompts its sequences continue (`GROUP_KEYS`) and
    ``prompt_index``, each sequence's row among them. Padding never enters a loss or a metric (every
    reduction is masked), so only the work changes.
    """
    resp = batch["responses"]
    rows, t = resp.shape
    lengths = batch["response_mask"].sum(1).long() if "response_mask" in batch else torch.full((rows,), t)
    groups = batch["prompt_ids"].shape[0] if "prompt_ids" in batch else 0
    n = rows // groups if groups and rows % groups == 0 else 0
    order = torch.sort(lengths, descending=True, stable=True).indices
    sorted_len = lengths[order].tolist()
    cuts = length_parts(sorted_len, SPLIT_COST_SHARE * rows * max(1, sorted_len[0] if sorted_len else 1))
    bounds = cuts + [rows]
    full = batch["input_ids"].shape[1] if "input_ids" in batch else None
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        for a in range(lo, hi, max(1, size)):
            idx = order[a:min(a + size, hi)]
            keep = max(1, int(lengths[idx].max()))
            chunk: dict[str, Any] = {}
            for k, v in batch.items():
                if not isinstance(v, torch.Tensor) or k in GROUP_KEYS or k == "prompt_index":
                    continue
                v = v[idx]
                if v.dim() >= 2 and v.shape[1] == t:
                    v = v[:, :keep]
                elif v.dim() >= 2 and full is not None and v.shape[1] == full:
                    v = v[:, :full - t + keep]
                chunk[k] = v
            if n:
                used, chunk["prompt_index"] = torch.unique(idx // n, return_inverse=True)
                chunk.update({k: batch[k][used] for k in GROUP_KEYS if k in batch})
            out.append((idx, chunk))
    return out


class TorchTrainer:
    """Policy (and optional critic) optimisation with plain PyTorch."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, loss: LossConfig, sizes: BatchConfig,
                 device: str | torch.device = "cpu", bf16: bool = False, critic: torch.nn.Module | None = None,
                 critic_lr: float = 1e-5) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.loss_cfg, self.sizes, self.optim_cfg = loss, sizes, optim
        self.bf16 = bf16 and self.device.type == "cuda"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                     weight_decay=optim.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, optim.lr_factor)
        self.critic = critic.to(self.device) if critic is not None else None
        self.critic_opt = (torch.optim.AdamW(self.critic.parameters(), lr=critic_lr, betas=tuple(optim.betas),
                                             weight_decay=optim.weight_decay) if self.critic is not None else None)

    def _autocast(self):
        return bf16_autocast(self.bf16)

    def _to(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    # -- log-probs and values ------------------------------------------------------------------
    def compute_log_probs(self, batch: Mapping[str, Any], with_entropy: bool = False) -> Any:
        """Per-token log-probs (nats) of the responses under the current policy at the rollout temperature
        (``loss.temperature``), [B, T], on CPU; with ``with_entropy`` also the per-token entropy of the
        policy (nats), as a pair."""
        self.model.eval()
        t = self.loss_cfg.temperature
        if not with_entropy:
            return map_micro_batches(partial(response_log_probs, self.model, temperature=t), batch,
                                     self.sizes.log_prob_micro_batch, self.device, self.bf16)
        both = map_micro_batches(partial(_log_probs_and_entropy, self.model, temperature=t), batch,
                                 self.sizes.log_prob_micro_batch, self.device, self.bf16)
        return both[..., 0], both[..., 1]

    def compute_values(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Critic value before each response token, [B, T] (reward units), on CPU."""
        assert self.critic is not None, "compute_values needs a critic (algorithm.advantage = gae)"
        self.critic.eval()
        return map_micro_batches(self._values, batch, self.sizes.log_prob_micro_batch, self.device, self.bf16)

    def _values(self, mb: Mapping[str, torch.Tensor]) -> torch.Tensor:
        t = mb["responses"].shape[1]
        out = self.critic(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                          position_ids=mb["position_ids"])
        return out.logits[:, -t - 1:-1, 0].float()

    # -- update ------------------------------------------------------------------------------------
    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """PPO-clip update over ``batch`` (needs responses, response_mask, advantages, and
        ref_log_probs when kl_coef > 0).

        Returns metrics that do not depend on the micro-batch size: per-token quantities (pg_loss,
        entropy, kl, pg_clipfrac, ppo_kl) are means over every response token of the batch;
        grad_norm and the critic's values are means over optimizer steps; ``trainer/skipped_steps``
        counts the steps skipped for a non-finite gradient norm.

        Without ``old_log_probs`` the update is taken as on-policy (one mini-batch, one epoch): the
        old log-probs are the current ones, detached (ratio 1), which saves a forward pass; with
        ``rollout_log_probs`` the trainer-vs-generator metrics (``rollout/token_mult_prob_error``,
        ``rollout/kl``, ``rollout/max_abs_diff``, as `mismatch_metrics`) are then taken from them.

        Log-probs and entropy are at ``loss.temperature``; the loss is aggregated over each mini-batch
        with `loss_weights` (``loss.loss_agg``), whatever the micro-batch size."""
        cfg = self.loss_cfg
        batch = self._to(batch)
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}

        def add(name: str, value: float, weight: float = 1.0) -> None:
            sums[name] = sums.get(name, 0.0) + float(value) * weight
            counts[name] = counts.get(name, 0.0) + weight

        def add_tokens(name: str, values: torch.Tensor, m: torch.Tensor) -> None:
            """Token-weighted: the batch metric is the mean over all response tokens."""
            n = float(m.sum())
            if n > 0:
                add(name, float(masked_mean(values, m)), n)

        skipped = critic_skipped = 0

        for _ in range(self.sizes.epochs):
            for mini in split_rows(batch, self.sizes.mini_batch):
                # the mini-batch's weights and normaliser: micro-batch losses add up to the mini-batch loss
                w, c = loss_weights(mini["response_mask"], cfg.loss_agg, cfg.max_response_length, cfg.loss_micro_batch)
                mini["loss_weights"] = w
                norm = float(c.sum().clamp(min=1))
                self.opt.zero_grad(set_to_none=True)
                for _, mb in micro_batches(mini, self.sizes.micro_batch):
                    m = mb["response_mask"]
                    with self._autocast():
                        logits = response_logits(self.model, mb)
                    logp = token_log_probs(logits, mb["responses"], cfg.temperature)
                    old = mb["old_log_probs"] if "old_log_probs" in mb else logp.detach()
                    with torch.set_grad_enabled(cfg.entropy_coef > 0):  # no graph for an unused entropy
                        ent = entropy_from_logits(logits, cfg.temperature)
                    per_tok, pg, clipped, kl = policy_loss_per_token(
                        logp, old, mb["advantages"], ent, cfg, mb.get("ref_log_probs"), mb.get("rollout_log_probs"))
                    if kl is not None:
                        add_tokens("trainer/kl", kl.detach(), m)
                    loss = aggregate(per_tok, m, normaliser=norm, weights=mb["loss_weights"])
                    loss.backward()
                    with torch.no_grad():
                        add_tokens("trainer/pg_loss", pg, m)
                        add_tokens("trainer/entropy", ent, m)
                        add_tokens("trainer/pg_clipfrac", clipped, m)
                        add_tokens("trainer/ppo_kl", old - logp, m)
                        if "old_log_probs" not in mb and "rollout_log_probs" in mb:  # on-policy: logp is pi_old
                            mult, kl_gap, gap = mismatch_per_token(logp, mb["rollout_log_probs"])
                            add_tokens("rollout/token_mult_prob_error", mult, m)
                            add_tokens("rollout/kl", kl_gap, m)
                            worst = float((gap * m).max()) if bool(m.any()) else 0.0
                            sums["rollout/max_abs_diff"] = max(sums.get("rollout/max_abs_diff", 0.0), worst)
                            counts["rollout/max_abs_diff"] = 1.0
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
                if math.isfinite(float(gn)):
                    self.opt.step()
                    add("trainer/grad_norm", gn)
                else:
                    skipped += 1
                self.sched.step()
                if self.critic is not None:
                    critic_metrics, applied = self._critic_step(mini)
                    critic_skipped += not applied
                    for k, v in critic_metrics.items():
                        add(k, v)
        out = {k: sums[k] / counts[k] for k in sums}
        out["trainer/lr"] = self.sched.get_last_lr()[0]
        out["trainer/skipped_steps"] = float(skipped)
        if self.critic is not None:
            out["critic/skipped_steps"] = float(critic_skipped)
        return out

    def _critic_step(self, mini: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], bool]:
        """One critic optimizer step on ``mini``; returns its metrics and whether it was applied."""
        self.critic.train()
        self.critic_opt.zero_grad(set_to_none=True)
        norm = float(mini["response_mask"].sum().clamp(min=1))
        total = 0.0
        for mb in split_rows(mini, self.sizes.micro_batch):
            with self._autocast():
                v = self._values(mb)
            vl = value_loss_per_token(v, mb["old_values"], mb["returns"])
            loss = aggregate(vl, mb["response_mask"], "token_mean", norm)
            loss.backward()
            total += float(loss.detach())
        gn = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.optim_cfg.grad_clip)
        if not math.isfinite(float(gn)):  # like the actor: a non-finite gradient is never applied
            self.critic_opt.zero_grad(set_to_none=True)
            return {"critic/value_loss": total}, False
        self.critic_opt.step()
        return {"critic/value_loss": total, "critic/grad_norm": float(gn)}, True

    # -- weights and state ---------------------------------------------------------------------------
    def hf_module(self) -> torch.nn.Module:
        """The policy as the HF module it is (an in-process hf generator samples from it directly)."""
        return self.model

    def weight_names(self) -> list[str]:
        """HF names of the policy parameters, the manifest of `weight_stream`."""
        return [n for n, _ in self.model.named_parameters()]

    def weight_stream(self, bucket_bytes: int) -> Iterator[WeightBucket]:
        """The policy parameters (HF names, detached, on the trainer's device) in buckets."""
        return bucketed(((n, p.detach()) for n, p in self.model.named_parameters()), bucket_bytes)

    def offload(self) -> None:
        """Move the policy and the optimizer state to CPU (a no-op on CPU)."""
        if self.device.type != "cpu":
            self._move(torch.device("cpu"))

    def onload(self) -> None:
        """Inverse of `offload`."""
        if self.device.type != "cpu":
            self._move(self.device)

    def release_memory(self) -> None:
        """Empty the caching allocator (GPU; a no-op on CPU)."""
        release_cached(self.device)

    def close(self) -> None:
        """Nothing to tear down: the torch trainer makes no process groups."""

    def _move(self, device: torch.device) -> None:
        for module in (self.model, self.critic):
            if module is not None:
                module.to(device)
        for opt in (self.opt, self.critic_opt):
            for state in (opt.state.values() if opt is not None else ()):
                for k, v in state.items():
                    if isinstance(v, torch.Tensor) and k != "step":
                        state[k] = v.to(device)

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and scheduler state (and the critic's, if any)."""
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict()}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_opt.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of `state_dict`."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])
            self.critic_opt.load_state_dict(state["critic_optimizer"])

    def save_checkpoint(self, folder: str) -> None:
        """``folder/trainer.pt``: `state_dict` (one rank: the torch trainer runs on one device), and on a
        GPU this device's CUDA RNG state (``cuda_rng``): the rank saves its own, the driver never
        touches CUDA. Tensors and plain data only."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        with open(Path(folder) / "trainer.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    def load_checkpoint(self, folder: str) -> None:
        """Inverse of `save_checkpoint`. ``trainer.pt`` is read with ``weights_only=True``: anything but
        tensors and plain data (a pickled callable) is refused with a `CheckpointFileError`, never run."""
        from engine.backends.safe_load import load_plain

        state = load_plain(Path(folder) / "trainer.pt", map_location=self.device)
        self.load_state_dict(state)
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)

    def export_hf(self, path: str) -> None:
        """Save the policy as a HF model folder (safetensors)."""
        self.model.save_pretrained(path)


def build(ctx: Any) -> TorchTrainer:
    """The torch trainer for a plan (`engine.backends.registry`): the policy in fp32 (bf16 autocast on
    GPU, as the memory model counts it), and a critic for ``algorithm.advantage: gae``."""
    from engine.backends.config import from_plan
    from engine.modeling import load_model

    plan = ctx.plan
    model = load_model(ctx.model_path, dtype=torch.float32, device=ctx.device)
    if ctx.frozen:
        model.requires_grad_(False)
    elif plan.trainer.recompute != "none":  # the compiler's recompute of a torch trainer: model.gradient_checkpointing
        model.gradient_checkpointing_enable()
    critic = critic_from(model) if plan.schedule.critic and not ctx.frozen else None
    optim, loss, sizes = from_plan(plan)
    return TorchTrainer(model, optim, loss, sizes, device=ctx.device, bf16=plan.dtype == "bfloat16",
                        critic=critic, critic_lr=plan.optim.critic_lr)


def critic_from(policy: torch.nn.Module) -> torch.nn.Module:
    """A value model: the policy's backbone (copied weights) with a fresh scalar head."""
    import copy

    from transformers import AutoModelForTokenClassification

    cfg = copy.deepcopy(policy.config)
    cfg.num_labels = 1
    critic = AutoModelForTokenClassification.from_config(cfg)
    backbone = {k: v for k, v in policy.state_dict().items() if not k.startswith("lm_head")}
    critic.load_state_dict(backbone, strict=False)
    torch.nn.init.zeros_(critic.score.weight)
    if getattr(critic.score, "bias", None) is not None:
        torch.nn.init.zeros_(critic.score.bias)
    return critic.to(next(policy.parameters()).device)
