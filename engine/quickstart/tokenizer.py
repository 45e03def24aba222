"""The built-in quickstart tokenizer: built locally with `tokenizers`, no download.

A word-or-character tokenizer: a fixed list of template words (``Question``, ``Answer``,
``\\boxed`` ...) are single tokens, every other printable ASCII character is its own token, so any
ASCII text round-trips exactly and digits are always single tokens. The vocabulary is a constant,
so its size (`VOCAB_SIZE`) is known to the spec before anything is built.
"""

from __future__ import annotations

import re
import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<unk>"
SPECIALS = (EOS, PAD, UNK, "<|im_start|>", "<|im_end|>")

#: Whole-word tokens: the words of the two recipe prompt templates and of the synthetic corpus.
WORDS = (
    "\\boxed", "Question", "Answer", "Let's", "think", "step", "by", "Compute", "The", "answer", "is",
    "system", "You", "are", "a", "helpful", "assistant", "user", "Please", "reason", "and", "put",
    "your", "final", "within", "so",
)
CHARS = tuple(string.printable[:95]) + ("\n",)  # digits, letters, punctuation, space, newline


def _vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for tok in SPECIALS + WORDS + CHARS:
        vocab.setdefault(tok, len(vocab))
    return vocab


VOCAB_SIZE = len(_vocab())


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the quickstart tokenizer as a transformers fast tokenizer (eos = pad-free EOS)."""
    vocab = _vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Longest words first so "Answer" wins over "a"; then any single character.
    words = sorted(WORDS, key=len, reverse=True)
    pattern = "|".join(re.escape(w) + (r"\b" if w[-1].isalnum() else "") for w in words) + r"|[\s\S]"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], clean_up_tokenization_spaces=False,
    )
