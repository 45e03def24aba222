"""Model resolution: which architecture and which tokenizer special tokens a `ModelSpec` means.

Order: an inline ``model.architecture`` wins; else an existing local ``model.path`` folder's
``config.json``; else the built-in catalog by ``model.name``. Reads JSON only (no transformers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from compiler.catalog import CATALOG
from compiler.errors import Problem, SpecError
from schemas import Architecture, ModelSpec, RopeScaling

#: HF ``model_type`` -> `Architecture.family`.
_FAMILIES = {"qwen2": "qwen2", "llama": "llama", "mistral": "mistral"}

#: End-of-sequence tokens of each catalog model's tokenizer (the generator always stops on these).
END_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2": ("<|im_end|>", "<|endoftext|>"),
    "llama3": ("<|eot_id|>", "<|end_of_text|>"),
    "mistral": ("</s>",),
    "deepseek": ("<｜end▁of▁sentence｜>",),
}

#: Special (added) tokens of each tokenizer family the catalog models use.
SPECIAL_TOKENS: dict[str, frozenset[str]] = {
    "qwen2": frozenset({
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
        "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
        "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
        "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
        "<|repo_name|>", "<|file_sep|>",
    }),
    "llama3": frozenset({
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
        "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>",
        *(f"<|reserved_special_token_{i}|>" for i in range(248)),
    }),
    "mistral": frozenset({"<s>", "</s>", "<unk>"}),
    "deepseek": frozenset({"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>",
                           "<｜fim▁begin｜>", "<｜fim▁end｜>"}),
}

#: Catalog name -> tokenizer family (keys of SPECIAL_TOKENS).
CATALOG_TOKENIZER: dict[str, str] = {
    "qwen2.5-0.5b": "qwen2", "qwen2.5-1.5b": "qwen2", "qwen2.5-7b": "qwen2", "qwen2.5-14b": "qwen2",
    "qwen2.5-32b": "qwen2", "qwen2.5-math-7b": "qwen2", "llama3.1-8b": "llama3", "mistral-7b": "mistral",
    "mistral-24b": "mistral", "deepseek-math-7b": "deepseek",
}

#: Strings shaped like a special token: ``<|...|>``, ``<｜...｜>`` (DeepSeek), ``<s>``, ``</s>``, ``<unk>``.
_SPECIAL_SHAPE = re.compile(r"^(<\|[^|<>\s]+\|>|<｜[^<>\s]+｜>|</?s>|<unk>|<pad>)$")


def looks_special(text: str) -> bool:
    """Whether a stop string has the shape of a tokenizer special token."""
    return bool(_SPECIAL_SHAPE.match(text))


def _local_dir(path: Optional[str]) -> Optional[Path]:
    if not path:
        return None
    p = Path(path).expanduser()
    return p if p.is_dir() else None


def _rope(config: dict[str, Any], source: str) -> tuple[float, Optional[RopeScaling]]:
    """(rope_theta, rope scaling) of a HF config: ``rope_theta`` / ``rope_scaling`` (transformers 4),
    or ``rope_parameters`` (transformers 5 writes both there). A scaling rule the trainers do not
    implement raises `SpecError` (never silently dropped: the generator would apply it)."""
    params = config.get("rope_parameters") or {}
    if isinstance(params, dict) and set(params) and not ("rope_type" in params or "rope_theta" in params):
        params = {}  # per-layer-type dicts (not used by these families)
    theta = float(config.get("rope_theta", params.get("rope_theta", 10000.0)))
    scaling = config.get("rope_scaling") or params
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind not in ("linear", "llama3"):
        raise SpecError([Problem("model.path", f"{source}: rope scaling {kind!r} is not implemented by the trainers",
                                 "supported: linear, llama3; or give model.architecture inline")])
    keep = ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor")
    try:
        return theta, RopeScaling(type=kind, **{k: scaling[k] for k in keep if scaling.get(k) is not None})
    except Exception as exc:  # pydantic ValidationError
        raise SpecError([Problem("model.path", f"{source} has an invalid rope scaling: {exc}", "")]) from None


def architecture_from_config(config: dict[str, Any], source: str = "config.json") -> Architecture:
    """Map a HF ``config.json`` dict to an `Architecture` (raises `SpecError` on ``model.path``)."""
    model_type = str(config.get("model_type", ""))
    family = _FAMILIES.get(model_type)
    if family is None:
        raise SpecError([Problem("model.path", f"unsupported model_type {model_type!r} in {source}",
                                 f"supported: {', '.join(sorted(_FAMILIES))}; or give model.architecture inline")])
    heads = config.get("num_attention_heads")
    theta, scaling = _rope(config, source)
    sliding = config.get("sliding_window")
    if family == "qwen2" and not config.get("use_sliding_window", False):
        sliding = None
    fields = dict(
        family=family,
        hidden_size=config.get("hidden_size"),
        num_layers=config.get("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim"),
        ffn_hidden_size=config.get("intermediate_size"),
        vocab_size=config.get("vocab_size"),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_position_embeddings=config.get("max_position_embeddings"),
        qkv_bias=True if family == "qwen2" else bool(config.get("attention_bias", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=sliding,
    )
    missing = [k for k, v in fields.items() if v is None and k not in ("head_dim", "sliding_window", "rope_scaling")]
    if missing:
        raise SpecError([Problem("model.path", f"{source} lacks {', '.join(missing)}",
                                 "give model.architecture inline instead")])
    try:
        return Architecture(**fields)
    except Exception as exc:  # pydantic ValidationError: bad values in config.json
        raise SpecError([Problem("model.path", f"{source} has invalid values: {exc}", "")]) from None


def resolve_architecture(model: ModelSpec) -> Architecture:
    """The architecture ``model`` denotes (inline > local config.json > catalog by name).

    Raises `SpecError` with a Problem on ``model.name`` (listing the catalog) when nothing matches.
    """
    if model.architecture is not None:
        return model.architecture
    folder = _local_dir(model.path)
    if folder is not None:
        cfg = folder / "config.json"
        if not cfg.is_file():
            raise SpecError([Problem("model.path", f"{folder} has no config.json",
                                     "point model.path at a HF model folder, or give model.architecture")])
        try:
            config = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecError([Problem("model.path", f"cannot read {cfg}: {exc}", "")]) from None
        return architecture_from_config(config, str(cfg))
    arch = CATALOG.get(model.name)
    if arch is not None:
        return arch
    where = f" and model.path {model.path!r} is not a local folder" if model.path else ""
    raise SpecError([Problem("model.name", f"unknown model {model.name!r}{where}",
                             f"catalog names: {', '.join(CATALOG)}; or set model.path to a local HF "
                             "folder, or give model.architecture inline")])


def _tokenizer_dir(model: ModelSpec) -> Optional[Path]:
    if model.tokenizer == "builtin":
        return None
    return _local_dir(model.tokenizer) or _local_dir(model.path)


def _collect_token_strings(value: Any, out: set[str]) -> None:
    """Strings of special-token entries in tokenizer_config / special_tokens_map values."""
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, dict):
        if isinstance(value.get("content"), str):
            out.add(value["content"])
        else:
            for v in value.values():
                _collect_token_strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _collect_token_strings(v, out)


def _read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; None when unreadable or not JSON (a damaged file adds no tokens)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tokenizer_json_tokens(data: dict, tokens: set[str]) -> None:
    """Added tokens and special-shaped vocabulary strings of a ``tokenizer.json``."""
    for tok in data.get("added_tokens") or []:
        if isinstance(tok, dict) and isinstance(tok.get("content"), str):
            tokens.add(tok["content"])
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        tokens.update(k for k in vocab if looks_special(k))
    elif isinstance(vocab, list):
        tokens.update(v[0] for v in vocab if isinstance(v, list) and v and isinstance(v[0], str) and looks_special(v[0]))


def _tokenizer_config_tokens(data: dict, tokens: set[str]) -> None:
    """Added and named special tokens of a ``tokenizer_config.json``."""
    for entry in (data.get("added_tokens_decoder") or {}).values():
        _collect_token_strings(entry, tokens)
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens"):
        if key in data:
            _collect_token_strings(data[key], tokens)


#: Tokenizer files of a HF folder and how each one's special tokens are read.
_TOKENIZER_FILES = (
    ("tokenizer.json", _tokenizer_json_tokens),
    ("tokenizer_config.json", _tokenizer_config_tokens),
    ("special_tokens_map.json", _collect_token_strings),
)


def local_tokenizer_tokens(folder: Path) -> Optional[frozenset[str]]:
    """Special/added tokens and vocabulary strings of a local tokenizer folder (None: no files)."""
    tokens: set[str] = set()
    found = False
    for name, read in _TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            continue
        found = True
        data = _read_json(path)
        if data is not None:
            read(data, tokens)
    return frozenset(tokens) if found else None


def tokenizer_special_tokens(model: ModelSpec) -> Optional[frozenset[str]]:
    """Special tokens the model's tokenizer can produce, or None when unknown (no check possible).

    A local tokenizer folder (``model.tokenizer`` or ``model.path``) is read; else the catalog's
    tokenizer family by ``model.name``; else the built-in quickstart tokenizer's tokens.
    """
    folder = _tokenizer_dir(model)
    if folder is not None:
        found = local_tokenizer_tokens(folder)
        if found is not None:
            return found
    if model.tokenizer == "builtin":
        return frozenset({"<|endoftext|>", "<|pad|>", "<unk>", "<|im_start|>", "<|im_end|>"})  # engine.quickstart.tokenizer.SPECIALS
    family = CATALOG_TOKENIZER.get(model.name)
    if family is not None and model.tokenizer is None:
        return SPECIAL_TOKENS[family]
    return None


def end_tokens(model: ModelSpec) -> tuple[str, ...]:
    """End-of-sequence tokens of a catalog model's tokenizer (empty when not a catalog model)."""
    family = CATALOG_TOKENIZER.get(model.name)
    return END_TOKENS.get(family, ()) if family else ()
