"""A tiny random BERT in the sentence-transformers layout that declares prompts (no hub).

Used by the prompt and Matryoshka parity tests of the engines, the worker, `vecq embed` and the
gateway: mean pooling, a Normalize module, max_seq_length 48 (so a prompt visibly shifts where
long texts are cut), prompts {"query": "query: ", "passage": "passage: "} with "query" the
default unless told otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from vecq.engines.random_model import write_random_bert

PROMPTS = {"query": "query: ", "passage": "passage: "}
MAX_SEQ_LENGTH = 48
HIDDEN = 64

#: Texts whose vectors the parity tests compare: short, Chinese, emoji, and over max length.
TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "北京是中华人民共和国的首都。",
    "emoji 🚀🔥 and symbols ∑ ≠ ∞",
    "x",
    "a rather long passage about trains and stations " * 20,
    " leading and trailing spaces ",
]


def write_prompted_model(
    path: Path,
    *,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = "query",
    include_prompt: bool = True,
    seed: int = 3,
) -> Path:
    """The model dir at `path`: weights and tokenizer from `write_random_bert`, plus modules.json,
    1_Pooling, 2_Normalize, sentence_bert_config.json and config_sentence_transformers.json."""
    root = write_random_bert(path, hidden=HIDDEN, layers=2, heads=2, vocab="english", seed=seed)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _write(root / "modules.json", modules)
    pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True}
    _write(root / "1_Pooling" / "config.json", {**pooling, "include_prompt": include_prompt})
    (root / "2_Normalize").mkdir(exist_ok=True)
    _write(root / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    config = {"prompts": PROMPTS if prompts is None else prompts, "default_prompt_name": default_prompt_name}
    _write(root / "config_sentence_transformers.json", {**config, "similarity_fn_name": "cosine"})
    return root


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
