"""`hf` generator: batched sampling with a KV cache on a transformers causal LM (CPU, one GPU).

A lean decode loop instead of `model.generate`: prompts are left-padded into one batch, the prompt
is run once to fill the cache, then one token per step is sampled for every live sequence. Each
sequence stops on its own (end token, stop string, or the length budget) and leaves the batch and
its KV cache, so the later steps compute only the sequences still running; the loop ends when all
have stopped. The forward is `engine.decoder.LeanDecoder` where it covers the model (the Llama
family in float32: the same logits with a fraction of transformers' per-call cost, which dominates
the steps that decode a few long responses), else the module's own (`HFDecoder`). Sampling uses
a seeded `torch.Generator` (one uniform number per sequence and step), so a given seed reproduces
the responses.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional, Sequence

import torch

from engine.backends.base import Generation, SamplingParams, WeightBucket
from engine.backends.manifest import check_manifest
from engine.core.batch import left_pad
from engine.core.generation import stops_at
from engine.core.tokens import end_token_ids  # noqa: F401  (re-exported: tests and benches import it here)
from engine.decoder import lean_decoder
from engine.modeling import cache_kwarg, preallocated_cache


def sample_next(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator,
                uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one token per row of ``logits`` [B, V] (float) with temperature / top-k / top-p.

    Each row's draw is the inverse CDF of its distribution at one uniform number, ``uniform`` [B]
    (drawn from ``gen`` when not given): a row's token depends only on its own logits and its own
    number, not on which other rows share the batch (the decode loop drops finished rows).
    """
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    if uniform is None:
        uniform = torch.rand(probs.shape[0], generator=gen, device=probs.device)
    cdf = probs.cumsum(-1)
    tok = torch.searchsorted(cdf, (uniform.to(cdf.dtype) * cdf[:, -1])[:, None], right=True).squeeze(-1)
    # a number that rounds to the total mass: the last token with any probability
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(-1)
    return torch.minimum(tok, last)


class HFGenerator:
    """Generator backed by a transformers causal LM.

    model: the policy module (may be the trainer's own module when colocated in one process, then
    `load_weights` is not needed). micro_batch_size: prompts decoded at once (None = all).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, micro_batch_size: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.micro_batch_size = micro_batch_size
        self.device = torch.device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._cache_kw = cache_kwarg(model)

    # -- weight sync -------------------------------------------------------------------------
    def update_weights(self, buckets: Iterable[WeightBucket], expected: Optional[Sequence[str]] = None) -> int:
        """Copy streamed weights (HF names) into the local module, bucket by bucket; a tensor that is
        already the module's own (a shared in-process module) is not copied. ``expected``: the
        manifest, checked before any weight is used (`engine.backends.manifest`)."""
        params = dict(self.model.named_parameters())
        received: list[str] = []
        with torch.no_grad():
            for bucket in buckets:
                for name, value in bucket:
                    received.append(name)
                    p = params.get(name)
                    if p is not None and p.data_ptr() != value.data_ptr():
                        p.copy_(value.to(p.device, p.dtype))
        if expected is not None:
            check_manifest(expected, received)
        return len(received)

    def sleep(self, level: int = 1) -> None:
        """Nothing to release for the hf backend (it allocates its KV cache per call)."""

    def wake(self, tags: Optional[Sequence[str]] = None) -> None:
        """Nothing to re-acquire for the hf backend."""

    def reset_prefix_cache(self) -> None:
        """The hf backend keeps no cache between calls."""

    def close(self) -> None:
        """Nothing to stop: the hf backend runs in this process."""

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        """Sample ``n`` responses per prompt (prompt-major order); reproducible for ``seed``."""
        t0 = time.perf_counter()
        gen = torch.Generator(device=self.device).manual_seed(int(seed))  # multinomial needs it on the logits' device
        chunk = self.micro_batch_size or len(prompt_ids)
        out_ids: list[list[int]] = []
        reasons: list[str] = []
        logps: list[list[float]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(prompt_ids), chunk):
                ids, why, lp = self._generate_chunk(prompt_ids[s:s + chunk], n, params, gen)
                out_ids.extend(ids)
                reasons.extend(why)
                logps.extend(lp)
        finally:
            self.model.train(was_training)
        texts = self.tokenizer.batch_decode(out_ids, skip_special_tokens=True)
        n_tok = sum(len(r) for r in out_ids)
        dt = time.perf_counter() - t0
        return Generation(out_ids, reasons, texts, {"gen_time_s": dt, "gen_tokens": float(n_tok)},
                          log_probs=logps if params.logprobs else None)

    def _generate_chunk(self, prompts: list[list[int]], n: int, params: SamplingParams,
                        gen: torch.Generator) -> tuple[list[list[int]], list[str], list[list[float]]]:
        """Decode ``n`` samples of each prompt; the prompt is run once and its KV cache shared by its n
        samples (held once by the lean decoder, repeated n times by transformers' forward);
        finished sequences leave the batch. Also returns each sampled token's log-prob after temperature (empty lists unless ``params.logprobs``)."""
        input_ids, attn = left_pad(prompts, self.pad_id)
        input_ids, attn = input_ids.to(self.device), attn.to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        b = len(prompts) * n
        end_ids = torch.tensor(sorted(set(params.end_token_ids)) or [-1], device=self.device)
        stops = tuple(params.stop)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731  (special tokens kept)

        out = torch.full((b, params.max_new_tokens), self.pad_id, dtype=torch.long, device=self.device)
        out_lp = torch.zeros((b, params.max_new_tokens), dtype=torch.float32, device=self.device)
        lengths = torch.zeros(b, dtype=torch.long, device=self.device)
        stopped = torch.zeros(b, dtype=torch.bool, device=self.device)

        # keys and values written in place into buffers sized for the prompt and the longest response
        dec = decoder_for(self.model, self._cache_kw)
        logits, cache = dec.prefill(input_ids, attn, pos, input_ids.shape[1] + params.max_new_tokens, n)
        logits = logits.repeat_interleave(n, dim=0)
        attn = attn.repeat_interleave(n, dim=0)
        next_pos = pos[:, -1:].repeat_interleave(n, dim=0) + 1
        # the model's batch holds only the unfinished sequences: ``live`` maps its rows to the output rows
        live = torch.arange(b, device=self.device)
        for t in range(params.max_new_tokens):
            # one uniform number per output row and step, used or not: the samples do not depend on
            # when finished rows leave the batch
            uniform = None if params.temperature <= 0 else torch.rand(b, generator=gen, device=self.device)[live]
            tok = sample_next(logits, params, gen, uniform).to(self.device)
            out[live, t] = tok
            if params.logprobs:
                scaled = logits.float() / params.temperature if params.temperature > 0 else logits.float()
                out_lp[live, t] = torch.log_softmax(scaled, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
            lengths[live] += 1
            hit_end = torch.isin(tok, end_ids)
            if stops:
                for j in (~hit_end).nonzero().flatten().tolist():
                    if stops_at(out[int(live[j])], t, stops, decode):
                        hit_end[j] = True
            stopped[live[hit_end]] = True
            if bool(hit_end.all()) or t + 1 == params.max_new_tokens:
                break
            if bool(hit_end.any()):  # finished sequences leave the batch (and the KV cache)
                keep = (~hit_end).nonzero().flatten()
                cache.batch_select_indices(keep)
                live, tok, attn, next_pos = live[keep], tok[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, torch.ones((len(live), 1), dtype=attn.dtype, device=self.device)], dim=1)
            logits = dec.step(tok, attn, next_pos, cache)
            next_pos = next_pos + 1
        lens = lengths.tolist()
        rows = out.tolist()
        ids = [rows[i][:lens[i]] for i in range(b)]
        reasons = ["stop" if s else "length" for s in stopped.tolist()]
        lps = out_lp.tolist() if params.logprobs else [[] for _ in range(b)]
        return ids, reasons, [lps[i][:lens[i]] for i in range(b)] if params.logprobs else lps


class HFDecoder:
    """Prefill and one-token steps through the module's own forward (``model(...)``) and a transformers
    cache (preallocated buffers where the model's layers allow): the path for models that
    `engine.decoder.lean_decoder` does not cover. Same interface as `engine.decoder.LeanDecoder`."""

    def __init__(self, model: torch.nn.Module, cache_kw: str) -> None:
        self.model, self.cache_kw = model, cache_kw

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                capacity: int, n: int = 1) -> tuple[torch.Tensor, Any]:
        """The prompts' last logits [G, V] and the cache of their ``n`` samples each (repeated n times)."""
        kv = preallocated_cache(self.model, capacity)
        res = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **({self.cache_kw: kv} if kv is not None else {}))
        cache = getattr(res, self.cache_kw)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return res.logits[:, -1, :], cache

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """One token per row; transformers' caches are updated in place (the same object is returned)."""
        res = self.model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=positions,
                         use_cache=True, **{self.cache_kw: cache})
        return res.logits[:, -1, :]


def decoder_for(model: torch.nn.Module, cache_kw: str) -> Any:
    """`engine.decoder.LeanDecoder` where it covers ``model``, else `HFDecoder`."""
    return lean_decoder(model) or HFDecoder(model, cache_kw)


def build(ctx: Any, shared_model: Optional[torch.nn.Module] = None) -> HFGenerator:
    """The hf generator for a plan (`engine.backends.registry`): on ``shared_model`` (an in-process
    trainer's module: no weight copies) or on its own copy of the model in the spec's dtype (random
    values with ``ctx.dummy_weights``, until the first weight sync)."""
    from engine.modeling import load_model, load_tokenizer

    dtype = torch.bfloat16 if ctx.plan.dtype == "bfloat16" and ctx.device != "cpu" else torch.float32
    if shared_model is not None:
        model = shared_model
    elif ctx.dummy_weights:  # the right shapes, random values: the first weight sync brings the real ones
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(ctx.model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(ctx.device)
    else:
        model = load_model(ctx.model_path, dtype=dtype, device=ctx.device)
    return HFGenerator(model, load_tokenizer(ctx.tokenizer_path), ctx.plan.rollout.micro_batch_size or None,
                       ctx.device)
