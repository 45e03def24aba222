"""What a generator is asked for (`SamplingParams`) and what it returns (`Generation`).

The types of the generator protocol (`engine.backends.base.Generator`), kept here so the data,
evaluation and sampling code can name them without importing the backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence


@dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled.

    max_new_tokens: response budget (tokens). temperature 0 means greedy. top_k -1 means off.
    stop: stop strings (a response ends once its text contains one). end_token_ids: token ids that
    end a response (taken from the tokenizer, never guessed from a model name). logprobs: return
    the sampled tokens' log-probs (nats, after temperature, as the trainer computes them).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    end_token_ids: tuple[int, ...] = ()
    logprobs: bool = False


@dataclass
class Generation:
    """Responses for a list of prompts, in prompt-major order (prompt i, sample j at i * n + j).

    response_ids: generated token ids per sequence, including the end token when one was produced.
    finish_reasons: "stop" (end token or stop string) or "length" (hit max_new_tokens).
    texts: decoded responses (special tokens removed).
    log_probs: per sequence, the log-prob (nats) of each sampled token under the generator's
    weights, when `SamplingParams.logprobs` was set; else None.
    """

    response_ids: list[list[int]]
    finish_reasons: list[str]
    texts: list[str]
    stats: dict[str, float] = field(default_factory=dict)
    log_probs: Optional[list[list[float]]] = None


def stop_window(stops: Sequence[str]) -> int:
    """Tokens of a response's tail decoded to look for a stop string: the longest stop string's length
    in characters, plus 4 (a token decodes to at least one character, so the window covers any stop
    string that ends at the last token)."""
    return max((len(s) for s in stops), default=0) + 4


def stops_at(ids: Any, t: int, stops: Sequence[str], decode: Callable[[list[int]], str]) -> bool:
    """Whether a response ends at its token ``t``: the last `stop_window` tokens up to ``t`` of ``ids`` (a
    list or a 1-d tensor), decoded with special tokens kept (``decode``), contain one of ``stops``.

    The one stop-string rule of every generator: the vLLM generator applies it to the tokens vLLM
    returns (`engine.backends.vllm_generator.stop_cut`); the hf generator's decode loop checks the same
    `stop_window` tail after each token."""
    if not stops:
        return False
    window = ids[max(0, t + 1 - stop_window(stops)):t + 1]
    tail = decode(window.tolist() if hasattr(window, "tolist") else list(window))
    return any(s in tail for s in stops)
