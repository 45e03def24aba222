"""Reading the data files users hand us (JSON lines, parquet) without a traceback on a bad byte.

Rows are counted, never silently dropped: `json_lines` yields each non-blank line's object or the
reason it cannot be one (``line 7: not UTF-8 text``, ``line 9: invalid JSON (...)``, ``line 12: not
a JSON object``), and the readers built on it count those reasons. A file that cannot be read as a
whole (a truncated parquet) is a `DataFileError` naming it.
"""

from __future__ import annotations

import json
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
