"""A model's prompts: the instruction prefixes sentence-transformers prepends to texts.

Many retrieval models were trained with a prefix per task ("query: " / "passage: " for E5, BGE's
Chinese query instruction) and declare them in `config_sentence_transformers.json` as `prompts`
(name → text) and `default_prompt_name`.  The worker owns the model, so it owns these: a job names
a prompt (`prompt_name`) or carries a literal one (`prompt`), and the worker prepends the text
before tokenizing, exactly as `SentenceTransformer.encode` does -- so token counts and truncation
include the prompt.

Resolution follows sentence-transformers 6 (`_resolve_prompt`): a literal `prompt` wins (an empty
one means "no prompt", the default included); else `prompt_name` must be one of the model's names;
else the default prompt applies when the model declares one.  sentence-transformers 6 always knows
the names "query" and "document" (empty unless the model sets them), so a generic client may send
them to any model.  A Pooling module with `include_prompt: false` (INSTRUCTOR-style) pools without
the prompt's tokens; vecq's engines pool in the graph over every real token, so such a model is
served without prompts only, and a job asking for one is refused in one line.

A bundle carries the resolved facts in `prompts.json` (written by `vecq build`), so a worker
serving a bundle knows them without the model dir.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput, ModelNotFound

#: sentence-transformers' own file of prompts, beside modules.json.
ST_CONFIG = "config_sentence_transformers.json"
#: What a bundle holds of them (vecq's own form, checksummed with the bundle's other files).
PROMPTS_FILE = "prompts.json"
#: Names sentence-transformers 6 knows for every model (empty prompts unless declared).
ALWAYS_KNOWN = ("query", "document")


@dataclass(frozen=True)
class Prompts:
    """A model's named prompts, its default, and whether its pooling counts prompt tokens."""

    named: Mapping[str, str] = field(default_factory=dict)
    default_name: str | None = None
    include_prompt: bool = True

    def __bool__(self) -> bool:
        return bool(self.named) or self.default_name is not None or not self.include_prompt

    def resolve(self, *, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The text to prepend for a request ("" for none); `BadInput` in one line for a name
        the model does not have, both fields at once, or a prompt its pooling cannot serve."""
        if prompt is not None and prompt_name is not None:
            raise BadInput("prompt: give prompt or prompt_name, not both")
        if prompt is None:
            if prompt_name is not None:
                prompt = self._named(prompt_name)
            elif self.default_name is not None:
                prompt = self.named.get(self.default_name, "")
            else:
                prompt = ""
        if prompt and not self.include_prompt:
            raise BadInput(
                "prompt: this model's pooling excludes prompt tokens (include_prompt: false), "
                "which vecq does not serve; send texts without a prompt"
            )
        return prompt

    def _named(self, name: str) -> str:
        if name in self.named:
            return self.named[name]
        if name in ALWAYS_KNOWN:
            return ""
        known = ", ".join(repr(n) for n in sorted(set(self.named) | set(ALWAYS_KNOWN)))
        raise BadInput(f"prompt_name: {name[:100]!r} is not one of this model's prompts ({known})")

    def to_json(self) -> str:
        body = {
            "prompts": dict(self.named),
            "default_prompt_name": self.default_name,
            "include_prompt": self.include_prompt,
        }
        return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def apply(prompt: str, texts: Sequence[str]) -> list[str]:
    """`texts` with `prompt` in front of each, as sentence-transformers tokenizes them."""
    return [prompt + t for t in texts] if prompt else list(texts)


def read_prompts(path: str | Path) -> Prompts:
    """The prompts of a bundle (its `prompts.json`) or of a sentence-transformers model dir (none
    for a plain Hugging Face dir); `ModelNotFound` for an unreadable file or a default prompt
    name that is not among the prompts (sentence-transformers refuses that model too)."""
    root = Path(path)
    if (root / PROMPTS_FILE).is_file():
        data = _json(root / PROMPTS_FILE)
        return _checked(root / PROMPTS_FILE, data, include_prompt=bool(data.get("include_prompt", True)))
    return _checked(root / ST_CONFIG, _json(root / ST_CONFIG), include_prompt=_include_prompt(root))


def write_prompts(model_dir: str | Path, out: str | Path) -> list[str]:
    """Write the model dir's prompts into a bundle being built; the names of the files written
    (none when the model declares no prompts)."""
    prompts = read_prompts(model_dir)
    if not prompts:
        return []
    (Path(out) / PROMPTS_FILE).write_text(prompts.to_json(), encoding="utf-8")
    return [PROMPTS_FILE]


def _checked(path: Path, data: dict[str, Any], *, include_prompt: bool) -> Prompts:
    named = data.get("prompts") or {}
    default = data.get("default_prompt_name")
    if not isinstance(named, dict) or not all(isinstance(v, str) for v in named.values()):
        raise ModelNotFound(f"{path}: prompts: expected a map of name to text")
    if default is not None and (not isinstance(default, str) or default not in named):
        names = ", ".join(sorted(named)) or "none"
        raise ModelNotFound(f"{path}: default_prompt_name {default!r} is not among its prompts ({names})")
    return Prompts(named=dict(named), default_name=default, include_prompt=include_prompt)


def _include_prompt(root: Path) -> bool:
    """False when the model's Pooling module says `include_prompt: false`."""
    modules = _json(root / "modules.json", default=[])
    for module in modules if isinstance(modules, list) else []:
        if str(module.get("type", "")).endswith("Pooling"):
            return bool(_json(root / str(module.get("path", "")) / "config.json").get("include_prompt", True))
    return True


def _json(path: Path, *, default: Any = None) -> Any:
    if not path.is_file():
        return {} if default is None else default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{path}: unreadable ({exc})") from None
