"""What vecq must know about a model beyond its weights: dim, pooling, normalization, max length.

Read from the sentence-transformers layout when there is one (modules.json, 1_Pooling,
sentence_bert_config.json, a Normalize module), else from config.json with CLS pooling — the
SimCSE convention vecq's seed write-up used.  What differs per architecture (where the dim is,
how many positions a RoBERTa reserves) is `architectures.py`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .architectures import architecture
from .architectures import max_seq_len as model_max_len
from .errors import ModelNotFound

Pooling = Literal["cls", "mean"]
_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


class ModelSpec(BaseModel):
    """The model facts that shape the exported graph and the batches fed to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dim: int
    pooling: Pooling
    normalize: bool
    max_seq_len: int


def read_spec(
    model_dir: str | Path,
    *,
    name: str | None = None,
    pooling: Pooling | None = None,
    normalize: bool | None = None,
    max_seq_len: int | None = None,
) -> ModelSpec:
    """The spec of a Hugging Face / sentence-transformers model dir; arguments override the files.

    Refuses (`UnsupportedModel`, one line) a model whose architecture vecq does not serve, so that
    loading, building and serving all fail the same way before any weights are read.  The max
    length is `max_seq_len`, else the model's own as sentence-transformers reads it, never past
    the model's positions nor 8,192 (`architectures.max_seq_len`).
    """
    root = Path(model_dir)
    config = load_json(root / "config.json", what="config.json")
    arch = architecture(config, where=root)
    st_pooling, st_normalize = _sentence_transformers_head(root)
    st_max = load_json(root / "sentence_bert_config.json", required=False).get("max_seq_length")
    tokenizer_max = load_json(root / "tokenizer_config.json", required=False).get("model_max_length")
    # sentence-transformers' order: max_seq_length, else the tokenizer's model_max_length
    limit = model_max_len(config, wanted=max_seq_len or st_max or tokenizer_max)
    return ModelSpec(
        name=name or _default_name(root),
        dim=arch.dim(config),
        pooling=pooling or st_pooling or "cls",
        normalize=st_normalize if normalize is None else normalize,
        max_seq_len=limit,
    )


def resolve_model(model: str | Path) -> tuple[Path, str | None]:
    """A model dir, or a Hugging Face model id found in the local Hugging Face cache, where most
    users keep their models (sentence-transformers loads them offline from there): (its dir, the
    name it goes by -- the id's last part, not the cache's snapshot hash -- or None for a dir).
    vecq never downloads: an id that is not cached is `ModelNotFound`, in one line."""
    root = Path(model)
    text = str(model)
    if root.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        return root, None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return root, None
    try:
        return Path(snapshot_download(text, local_files_only=True)), text.split("/")[1]
    except (LocalEntryNotFoundError, ValueError, OSError):
        raise ModelNotFound(
            f"{text}: not a directory, and not in the local Hugging Face cache (vecq never downloads: "
            f"fetch it with `hf download {text}`, or pass a model dir)"
        ) from None


def check_model_dir(model_dir: str | Path) -> Path:
    """The model dir, or `ModelNotFound` naming the first missing piece."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelNotFound(f"{root}: not a directory")
    if not (root / "config.json").is_file():
        raise ModelNotFound(f"{root}: no config.json (not a Hugging Face model dir)")
    if not any((root / w).is_file() for w in _WEIGHTS):
        raise ModelNotFound(f"{root}: no weights (expected one of {', '.join(_WEIGHTS[:2])})")
    if not (root / "tokenizer.json").is_file():
        raise ModelNotFound(f"{root}: no tokenizer.json (vecq needs the fast-tokenizer file)")
    return root


def _sentence_transformers_head(root: Path) -> tuple[Pooling | None, bool]:
    modules = load_json(root / "modules.json", required=False, default=[])
    pooling: Pooling | None = None
    normalize = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = load_json(root / module.get("path", "") / "config.json", required=False)
            if cfg.get("pooling_mode_mean_tokens"):
                pooling = "mean"
            elif cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def _default_name(root: Path) -> str:
    name = root.resolve().name
    if name == "model":  # packaged models keep their files in .../<package>/model
        name = root.resolve().parent.name
    return name.lower().replace("_", "-")


def load_json(path: Path, *, what: str = "", required: bool = True, default=None):
    if not path.is_file():
        if required:
            raise ModelNotFound(f"{path.parent}: no {what or path.name}")
        return {} if default is None else default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{path}: unreadable ({exc})") from None
