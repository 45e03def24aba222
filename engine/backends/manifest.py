"""The weight-sync manifest: every expected parameter exactly once.

Real conversion bugs refit half the layers and pass every other check, so the receiver of a weight
stream counts what arrived against the names the sender promised and stops the run naming the
missing, duplicated and unexpected ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence


class WeightSyncError(RuntimeError):
    """A weight stream did not match its manifest. ``missing``, ``duplicate`` and ``unexpected`` name
    the parameters."""

    def __init__(self, missing: Sequence[str], duplicate: Sequence[str], unexpected: Sequence[str]) -> None:
        self.missing, self.duplicate, self.unexpected = list(missing), list(duplicate), list(unexpected)
        parts = []
        for label, names in (("missing", self.missing), ("sent more than once", self.duplicate),
                             ("not expected", self.unexpected)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
                parts.append(f"{label}: {shown}")
        super().__init__("weight sync does not match its manifest; " + "; ".join(parts))


def check_manifest(expected: Iterable[str], received: Iterable[str]) -> None:
    """Raise `WeightSyncError` unless ``received`` holds every name of ``expected`` exactly once."""
    want = set(expected)
    got = Counter(received)
    missing = sorted(want - set(got))
    duplicate = sorted(name for name, c in got.items() if c > 1)
    unexpected = sorted(set(got) - want)
    if missing or duplicate or unexpected:
        raise WeightSyncError(missing, duplicate, unexpected)


def bucketed(named: Iterable[tuple[str, object]], bucket_bytes: int) -> Iterable[list[tuple[str, object]]]:
    """Group (name, tensor) pairs into buckets of at most ``bucket_bytes`` (one oversized tensor is a
    bucket of its own). Consumes ``named`` lazily: one bucket is held at a time."""
    bucket: list[tuple[str, object]] = []
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket
