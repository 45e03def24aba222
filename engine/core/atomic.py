"""Writing files atomically: the run records, rollouts and reports the engine writes go through
`atomic_path`, written under a temporary name in the same folder and then renamed into place, so a
crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.NAME.tmp-PID.SUFFIX``: same folder, same suffix, so writers
    that pick a format by suffix still work) for the block to write; when the block ends without an
    error it is renamed onto ``path`` (`os.replace`: a reader sees the old file or the new one, never
    half of one). On an error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_file():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any, **dumps: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically; ``dumps``: `json.dumps` options (indent, sort_keys...)."""
    write_text_atomic(path, json.dumps(data, **dumps))
