"""Which model folder a run or an evaluation starts from, and its tokenizer and end tokens.

``model.path`` (a local HF folder) is used as is. ``model.init: random`` builds the inline
architecture (with the quickstart's tokenizer and optional synthetic pretraining, see
`engine.quickstart.base_model`) once and caches it. An explicit folder (a run's ``final/`` or
another HF export) brings its own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


@dataclass(frozen=True)
class ModelFiles:
    """The folders a role loads from, and the tokenizer facts every role shares.

    end_token_ids: ids that end a response (tokenizer and generation config); end_token_strings: the
    same as token strings (the reward strips them from responses).
    """

    model_path: str
    tokenizer_path: str
    tokenizer: Any
    end_token_ids: tuple[int, ...]
    end_token_strings: tuple[str, ...]


def resolve_base_model(spec: Any, architecture: Any = None, log: Callable[[str], None] = print) -> tuple[str, str]:
    """(model folder, tokenizer folder) a run starts from; builds and caches a random-init model."""
    m = spec.model
    if m.init == "pretrained":
        if not m.path or not Path(m.path).is_dir():
            raise FileNotFoundError(
                f"model.path {m.path!r} is not a local model folder; downloads are not done at run time. "
                f"Pass model.path=/path/to/{m.name} (a HF folder with config.json and weights).")
        tok = m.tokenizer if m.tokenizer and m.tokenizer != "builtin" else m.path
        return m.path, tok
    arch = architecture or m.architecture
    if arch is None:
        raise ValueError("model.init 'random' needs model.architecture")
    from engine.quickstart.base_model import build_cached

    folder = build_cached(spec, arch, log)
    return folder, folder


def resolve_model_files(plan: Plan, log: Callable[[str], None], model_path: Optional[str] = None) -> ModelFiles:
    """The plan's base model (built and cached if need be), or the HF folder ``model_path`` with its
    own tokenizer."""
    from transformers import GenerationConfig

    from engine.core.tokens import end_token_ids
    from engine.modeling import load_tokenizer

    if model_path is None:
        model_path, tok_path = resolve_base_model(plan.spec, plan.architecture, log=log)
    else:
        if not (Path(model_path) / "config.json").exists():
            raise FileNotFoundError(f"{model_path} is not a model folder (no config.json)")
        tok_path = model_path
    tokenizer = load_tokenizer(tok_path)
    try:
        gen_cfg = GenerationConfig.from_pretrained(model_path, local_files_only=True)
    except OSError:
        gen_cfg = None
    ids = end_token_ids(tokenizer, gen_cfg)
    return ModelFiles(model_path, tok_path, tokenizer, ids, tuple(tokenizer.convert_ids_to_tokens(list(ids))))
