"""Reading checkpoint files without running code from them.

A run folder is data that gets copied and shared, so nothing in it may execute on load:

* torch files (``torch.save``) are read with ``weights_only=True``: torch's own unpickler that
  rebuilds tensors and plain containers (dict, list, tuple, str, numbers, None) and refuses any
  other global. `load_plain` turns its refusal, a truncated file and a non-torch file into a
  `CheckpointFileError` naming the file.
* raw pickles (the ``.metadata`` of a torch.distributed checkpoint, which Megatron writes and reads
  with `pickle.load`) are scanned opcode by opcode before anything loads them (`unsafe_globals`):
  every global they reference must be one of `PICKLE_ALLOWED` (the checkpoint metadata dataclasses,
  torch.Size, dtypes); a global whose name cannot be read statically counts as unsafe.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any, Iterable, Optional

#: Globals a raw checkpoint pickle may reference: module -> names (``"*"``: every name). The
#: torch.distributed.checkpoint metadata module holds only dataclasses and enums. Checked against
#: the ``.metadata`` of a real Megatron checkpoint (megatron-core 0.16.1, torch 2.13).
PICKLE_ALLOWED: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset({"*"}),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    # the save plan Megatron keeps in the metadata: dataclasses and enums only (not the planners)
    "torch.distributed.checkpoint.planner": frozenset({"LoadItemType", "WriteItemType", "SavePlan", "LoadPlan",
                                                        "WriteItem", "ReadItem", "TensorWriteData", "BytesIOWriteData"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({
        "Size", "strided", "sparse_coo", "sparse_csr", "contiguous_format", "channels_last", "preserve_format",
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
        "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64",
    }),
    "collections": frozenset({"OrderedDict"}),
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"}),
    "builtins": frozenset({"set", "frozenset", "slice"}),
    "megatron.core.dist_checkpointing.strategies.torch": frozenset({"MCoreMetadata", "MCoreSavePlan"}),
}


class CheckpointFileError(ValueError):
    """A checkpoint file that is refused or cannot be read; the message names the file."""


def _strings(op: pickletools.OpcodeInfo, arg: Any) -> Optional[str]:
    return arg if isinstance(arg, str) and op.name in (
        "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING") else None


def pickle_globals(data: bytes) -> list[str]:
    """Every global (``module.name``) a pickle references, read from its opcodes without running it.

    A global whose module or name is not a plain string pushed just before it (``STACK_GLOBAL`` of a
    computed value) is listed as ``<unknown>``. Raises `CheckpointFileError` on a malformed pickle.
    """
    out: list[str] = []
    stack: list[Optional[str]] = []  # recent values: a string, or None for anything else
    memo: dict[int, Optional[str]] = {}
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name == "GLOBAL" or name == "INST":
                module, _, attr = str(arg).partition(" ")
                out.append(f"{module}.{attr}")
                stack.append(None)
            elif name == "STACK_GLOBAL":
                attr = stack.pop() if stack else None
                module = stack.pop() if stack else None
                out.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else "<unknown>")
                stack.append(None)
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1] if stack else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg)))
            elif _strings(op, arg) is not None:
                stack.append(arg)
            elif name not in ("PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK"):
                stack.append(None)
            del stack[:-64]  # only the last few values can name a global
    except (ValueError, EOFError, pickle.UnpicklingError, IndexError) as exc:
        raise CheckpointFileError(f"malformed pickle ({exc})") from None
    return out


def unsafe_globals(data: bytes, allowed: dict[str, frozenset[str]] = PICKLE_ALLOWED) -> list[str]:
    """The globals of pickle ``data`` outside ``allowed`` (sorted, unique; empty: safe to load)."""
    bad = set()
    for g in pickle_globals(data):
        module, _, attr = g.rpartition(".")
        names = allowed.get(module)
        if g == "<unknown>" or names is None or ("*" not in names and attr not in names):
            bad.add(g)
    return sorted(bad)


def is_raw_pickle(path: Path) -> bool:
    """Whether ``path`` starts like a pickle of protocol 2 or later (``\\x80`` and a version byte)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def check_raw_pickles(paths: Iterable[Path]) -> list[str]:
    """Problems (one line each) of the raw pickles among ``paths`` that reference other globals."""
    problems = []
    for p in paths:
        if not is_raw_pickle(p):
            continue
        try:
            bad = unsafe_globals(Path(p).read_bytes())
        except CheckpointFileError as exc:
            problems.append(f"{p}: {exc}")
            continue
        if bad:
            problems.append(f"{p}: refused: a pickle that references {', '.join(bad[:5])}"
                            f"{' ...' if len(bad) > 5 else ''} (code, not checkpoint data); it was not loaded")
    return problems


def load_plain(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only.

    Raises `CheckpointFileError` naming ``path`` when it holds anything else (a pickled callable is
    refused, never run), is truncated or empty, or is not a torch file.
    """
    import torch

    p = Path(path)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointFileError(f"{p}: missing") from None
    except pickle.UnpicklingError as exc:
        import re

        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
        what = f"it references {', '.join(names)}" if names else "it holds objects other than tensors and plain data"
        raise CheckpointFileError(
            f"{p}: refused: {what} (code, not checkpoint data); loading it could run code, so it was not loaded") from None
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        size = p.stat().st_size if p.exists() else 0
        raise CheckpointFileError(f"{p}: cannot read it ({size} bytes; truncated, empty or not a torch file: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
