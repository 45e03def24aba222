"""Verification functions with failure modes, run inside pool workers by the tests."""

import os
import re

from engine.reward.equivalence import is_equivalent


def misbehaving_verify(pred: str, gold: str) -> bool:
    """Like is_equivalent, but special predictions hang in C code, crash or blow memory."""
    if pred == "hang-in-c":
        # catastrophic backtracking inside the C regex engine: no Python signal can interrupt it
        re.match(r"(a+)+$", "a" * 64 + "b")
        return True
    if pred == "crash":
        os._exit(3)
    if pred == "allocate":
        blocks = []
        while True:  # stopped by the worker's address-space limit (MemoryError)
            blocks.append(bytearray(256 * 1024 * 1024))
    if pred == "raise":
        raise RuntimeError("boom")
    return is_equivalent(pred, gold)
