"""Building and caching the quickstart's base model (`engine.model_files` decides which model a run uses).

``model.init: random`` builds the inline
architecture with random weights; with ``model.tokenizer: builtin`` the local quickstart tokenizer is
used, and ``model.pretrain_steps > 0`` runs the built-in synthetic pretraining first. The result is
saved once in a cache folder keyed by everything that determines it, and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

CACHE_ENV = "ENGINE_CACHE_DIR"


def cache_root() -> Path:
    """``$ENGINE_CACHE_DIR`` or ``~/.cache/zero-rl-engine``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zero-rl-engine")


def _build_key(spec: Any) -> str:
    from engine.quickstart.pretrain import CORPUS_VERSION
    from engine.quickstart.tokenizer import TOKENIZER_VERSION

    m, d = spec.model, spec.data
    payload = {
        "architecture": m.architecture.model_dump(mode="json") if m.architecture else None,
        "tokenizer": m.tokenizer, "pretrain_steps": m.pretrain_steps, "seed": spec.seed,
        "template": [d.prompt_template, d.custom_template], "levels": d.synthetic.levels,
        "corpus": CORPUS_VERSION,
    }
    if m.tokenizer in (None, "builtin"):
        payload["tokenizer_version"] = TOKENIZER_VERSION
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_cached(spec: Any, arch: Any, log: Callable[[str], None] = print) -> str:
    """The cached folder of the spec's random-init (and optionally pretrained) tiny model, built on
    first use. Model resolution itself lives in `engine.model_files`."""
    m = spec.model
    folder = cache_root() / "base_models" / f"{m.name}-{_build_key(spec)}"
    if (folder / "config.json").exists():
        log(f"base model: cached {folder}")
        return str(folder)
    log(f"base model: building {m.name} (random init" +
        (f", {m.pretrain_steps} pretraining steps" if m.pretrain_steps else "") + f") -> {folder}")
    _build(spec, arch, folder, log)
    return str(folder)


def _build(spec: Any, arch: Any, folder: Path, log: Callable[[str], None]) -> None:
    from engine.data.prompts import template_text
    from engine.modeling import load_tokenizer, random_model
    from engine.quickstart.pretrain import pretrain
    from engine.quickstart.tokenizer import VOCAB_SIZE, build_tokenizer

    m = spec.model
    if m.tokenizer == "builtin" or m.tokenizer is None:
        tok = build_tokenizer()
        if arch.vocab_size < VOCAB_SIZE:
            raise ValueError(f"model.architecture.vocab_size {arch.vocab_size} < builtin tokenizer's {VOCAB_SIZE}")
    else:
        tok = load_tokenizer(m.tokenizer)
    from engine.core.threads import apply_threads

    apply_threads(spec.cluster.cpu_threads)
    model = random_model(arch, tok, spec.seed)
    info: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    if m.pretrain_steps:
        template = template_text(spec.data.prompt_template, spec.data.custom_template) or "{input}\n"
        info.update(pretrain(model, tok, m.pretrain_steps, list(spec.data.synthetic.levels), template,
                             seed=spec.seed, log=log, log_every=max(1, m.pretrain_steps // 20)))
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2))
    if folder.exists():  # another run built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    log(f"base model: ready ({info['params']:,} parameters)")
