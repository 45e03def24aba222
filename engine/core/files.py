"""Reading the data files users hand us (JSON lines, parquet) without a traceback on a bad byte, and
writing files atomically.

Rows are counted, never silently dropped: `json_lines` yields each non-blank line's object or the
reason it cannot be one (``line 7: not UTF-8 text``, ``line 9: invalid JSON (...)``, ``line 12: not
a JSON object``), and the readers built on it count those reasons. A file that cannot be read as a
whole (a truncated parquet) is a `DataFileError` naming it.

Files the engine writes (run records, rollouts, reports) go through `atomic_path`: written under a
temporary name in the same folder, then renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional


class DataFileError(ValueError):
    """A data file that cannot be read at all (the message names it and why)."""


def json_lines(path: str | Path) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
    """``(line number, row, None)`` for each JSON-object line of ``path``, ``(line number, None,
    reason)`` for each other non-blank line. Bytes are decoded line by line, so one bad byte costs
    its line only."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, None, f"line {n}: not UTF-8 text (byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                obj: Any = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"line {n}: invalid JSON ({e.msg})"
                continue
            except RecursionError:
                yield n, None, f"line {n}: invalid JSON (nested too deeply)"
                continue
            if not isinstance(obj, dict):
                yield n, None, f"line {n}: not a JSON object"
                continue
            yield n, obj, None


def parquet_rows(path: str | Path) -> list[dict]:
    """All rows of a parquet file as dicts; `DataFileError` when it cannot be read (truncated, not parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(str(path)).to_pylist()
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataFileError(f"{path}: not a readable parquet file (truncated or corrupt: "
                            f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None


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
