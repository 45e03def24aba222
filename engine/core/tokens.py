"""Facts read from a tokenizer (never guessed from a model name)."""

from __future__ import annotations

from typing import Any


def end_token_ids(tokenizer: Any, generation_config: Any = None) -> tuple[int, ...]:
    """End-of-response token ids taken from the tokenizer (and the model's generation config).

    The tokenizer's eos token, the generation config's eos ids, and whichever of the common chat /
    document end markers exist *as tokens in this vocabulary*. Nothing is inferred from a model name.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if generation_config is not None and getattr(generation_config, "eos_token_id", None) is not None:
        eos = generation_config.eos_token_id
        ids.extend(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|end|>"):
        if marker in vocab and marker in set(tokenizer.all_special_tokens):
            ids.append(int(vocab[marker]))
    return tuple(dict.fromkeys(ids))
