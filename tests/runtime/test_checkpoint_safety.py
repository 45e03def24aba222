"""Checkpoints hold tensors and plain data only, and are verified before anything loads them.

A run folder is shared data: a pickled callable planted in ``trainer.pt`` or ``state.pt`` (with its
checksum rewritten, as an attacker would) is refused and never runs, on ``engine run --resume`` and
on ``engine eval``; a flipped byte, a truncated or an empty file is named before anything is
loaded, with the previous kept checkpoint offered (``--from-previous``). A real tiny run (random-init
Qwen2, torch trainer) is trained once for the module.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.runtime import checkpoint as C
from tests.runtime.conftest import write_spec


@pytest.fixture
def run(tiny_run_copy) -> Path:
    return tiny_run_copy


class _Payload:
    """Unpickling this writes a marker file: what an attacker would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _plant(step_dir: Path, rel: str, obj) -> None:
    """Replace ``rel`` with a torch file of ``obj`` and rewrite its checksum (checksums are integrity,
    not authenticity: only the loader can refuse the content)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    (step_dir / rel).write_bytes(buf.getvalue())
    path = step_dir / "checksums.json"
    if path.exists():
        sums = json.loads(path.read_text())
        sums["files"][rel] = {"bytes": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
        path.write_text(json.dumps(sums))


def _flip_a_tensor_byte(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        skip = int.from_bytes(f.read(2), "little") + int.from_bytes(f.read(2), "little")
    offset = info.header_offset + 30 + skip + info.file_size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def _resume(run: Path, *extra: str) -> int:
    return main(["run", str(run), "--resume", "trainer.total_steps=6", "--quiet", *extra])


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rel", ["trainer/trainer.pt", "state.pt"])
def test_a_pickled_payload_is_refused_on_resume_and_never_runs(run, rel, capsys):
    marker = run.parent / "PWNED"
    step = run / "checkpoints" / "step_000004"
    _plant(step, rel, {"model": _Payload(marker), "optimizer": {}, "scheduler": {}, "rng": _Payload(marker)})
    assert _resume(run) == 1
    err = capsys.readouterr().err
    assert not marker.exists()
    assert rel.split("/")[-1] in err and "refused" in err and "Traceback" not in err
    assert _steps(run) == [1, 2, 3, 4]  # nothing trained, nothing rewritten


def test_a_pickled_payload_is_refused_on_eval_and_never_runs(run, capsys):
    marker = run.parent / "PWNED"
    step = run / "checkpoints" / "step_000004"
    _plant(step, "trainer/trainer.pt", {"model": _Payload(marker)})
    assert main(["eval", str(step)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and "trainer.pt" in err and "refused" in err


def test_a_flipped_byte_is_detected_and_the_previous_checkpoint_offered(run, capsys):
    _flip_a_tensor_byte(run / "checkpoints" / "step_000004" / "trainer" / "trainer.pt")
    assert _resume(run) == 1
    err = capsys.readouterr().err
    assert "step_000004 is corrupt" in err and "trainer/trainer.pt: sha256 differs" in err
    assert "--from-previous" in err and "step 2" in err
    assert main(["eval", str(run / "checkpoints" / "step_000004")]) == 2
    assert "sha256 differs" in capsys.readouterr().err


def test_resume_from_previous_skips_the_corrupt_latest(run, capsys):
    _flip_a_tensor_byte(run / "checkpoints" / "step_000004" / "trainer" / "trainer.pt")
    assert _resume(run, "--from-previous") == 0
    assert "skipping the checkpoint of step 4" in capsys.readouterr().err
    assert _steps(run) == [1, 2, 3, 4, 5, 6]  # steps 3-4 redone from step 2, each logged once
    assert (run / "checkpoints" / "skipped-step_000004" / "trainer" / "trainer.pt").exists()  # kept, named
    assert C.list_checkpoints(run / "checkpoints") == [4, 6]
    assert C.verify_checkpoint(run / "checkpoints" / "step_000006") == []


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_truncated_and_empty_files_are_named(run, damage, capsys):
    f = run / "checkpoints" / "step_000004" / ("trainer/trainer.pt" if damage == "truncated" else "state.pt")
    f.write_bytes(f.read_bytes()[:1000] if damage == "truncated" else b"")
    assert _resume(run) == 1
    err = capsys.readouterr().err
    assert f"{f.relative_to(f.parents[1 if damage == 'truncated' else 0])}" in err and "bytes" in err
    assert "Traceback" not in err and "EOFError" not in err


def test_a_file_added_to_a_checkpoint_is_refused(run):
    step = run / "checkpoints" / "step_000004"
    (step / "trainer" / "extra.pt").write_bytes(b"\x80\x04K\x01.")
    problems = C.verify_checkpoint(step)
    assert any("trainer/extra.pt: not written by the checkpoint's save" in p for p in problems)


def test_checkpoint_files_load_with_weights_only(run):
    step = run / "checkpoints" / "step_000004"
    state = torch.load(step / "state.pt", weights_only=True)
    C.set_rng_state(state["rng"])  # the driver's RNG state round-trips as tensors and plain data
    trainer = torch.load(step / "trainer" / "trainer.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler"} <= set(trainer)
    assert C.verify_checkpoint(step) == [] and C.verify_checkpoint(run / "checkpoints" / "step_000002") == []


def test_rng_state_round_trips_and_never_touches_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: calls.append("is_available") or True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: calls.append("get_rng_state_all") or [])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: calls.append("set_rng_state_all"))
    state = C.rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    a = (np.random.rand(), torch.rand(2).tolist())
    C.set_rng_state(loaded)
    assert (np.random.rand(), torch.rand(2).tolist()) == a
    assert calls == []  # the driver opens no CUDA context: each trainer rank saves its own generator


def test_megatron_style_metadata_pickles_are_scanned_before_loading(tmp_path):
    """A torch.distributed checkpoint (what Megatron writes) keeps a raw pickle, ``.metadata``, that
    Megatron reads with `pickle.load`: a real one passes the scan, a planted callable does not."""
    import torch.distributed.checkpoint as dcp

    from engine.backends.safe_load import check_raw_pickles, unsafe_globals

    dcp.save({"w": torch.randn(3, 4), "step": torch.tensor(5)}, checkpoint_id=str(tmp_path / "dcp"))
    meta = tmp_path / "dcp" / ".metadata"
    assert unsafe_globals(meta.read_bytes()) == [] and check_raw_pickles([meta]) == []
    meta.write_bytes(pickle.dumps(_Payload(tmp_path / "PWNED")))
    problems = check_raw_pickles([meta])
    assert len(problems) == 1 and "builtins.exec" in problems[0] and not (tmp_path / "PWNED").exists()
