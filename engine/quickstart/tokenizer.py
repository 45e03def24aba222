"""The built-in quickstart tokenizer: built locally, no download.

A word-or-character tokenizer: a fixed list of template words (``Question``, ``Answer``,
``\\boxed`` ...) are single tokens, every other printable ASCII character is its own token, so any
ASCII text round-trips exactly and digits are always single tokens. The vocabulary is a constant,
so its size (`VOCAB_SIZE`) is known to the spec before anything is built.

It is a genuine `Qwen2Tokenizer` (byte-level BPE with Qwen2's pre-tokenizer) with no merges and the
words as added tokens. That is what `AutoTokenizer` builds for any folder whose model is a Qwen2, so
a saved quickstart model (a run's ``final/``) loads with the standard Auto classes and tokenizes as
in training. Words are matched leftmost-longest anywhere in the text; on the prompt templates and the
synthetic corpus this gives the same ids as the version-1 tokenizer (a regex of whole words).
Characters outside printable ASCII have no token and are dropped.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken

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

#: Version of the tokenizer files; part of the cache key of a built base model.
TOKENIZER_VERSION = 2


def _byte_level(token: str) -> str:
    """``token`` as byte-level BPE spells it (space -> ``Ġ``, newline -> ``Ċ``; other printable
    ASCII characters are themselves)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in token.encode())


def build_tokenizer():
    """Build the quickstart tokenizer (a `Qwen2Tokenizer`; eos ``<|endoftext|>``, pad ``<|pad|>``)."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    words = {w for w in WORDS if len(w) > 1}  # one-letter words are the letters themselves
    vocab = {(tok if tok in SPECIALS or tok in words else _byte_level(tok)): i for tok, i in _vocab().items()}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=UNK, eos_token=EOS, pad_token=PAD,
                         additional_special_tokens=["<|im_start|>", "<|im_end|>"], clean_up_tokenization_spaces=False)
    tok.add_tokens([AddedToken(w, special=False, normalized=False) for w in WORDS if w in words])
    assert len(tok) == VOCAB_SIZE, (len(tok), VOCAB_SIZE)
    return tok
