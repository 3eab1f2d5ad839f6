"""The models benchmarks run: a named one built on the spot, the default model, or a model dir.

No machine of vecq's can reach a model hub, so GPU benchmarks build the model shape they need
with random weights (speed does not depend on the weights).
"""

from __future__ import annotations

from pathlib import Path

#: BERT-base (12 × 768) with bert-base-uncased's WordPiece tokenizer: English texts as long as
#: real English BERTs see them (the GPU benchmarks' default).
RANDOM_BERT_BASE_EN = "random-bert-base-en"
#: The seed write-up's model: BERT-base with a Chinese character vocab (21,128).  It splits
#: English into letters, so English corpora come out ~4x longer than on a real English model.
RANDOM_BERT_BASE_ZH = "random-bert-base-zh"
#: The name the Chinese one had before the English one existed (BENCHMARKS.md's older tables).
_OLD_NAME = "random-bert-base"


def model_dir(name: str, tmp: Path) -> Path:
    """`default` (all-MiniLM-L6-v2), one of the random BERT-bases (written under `tmp`), or a
    model dir."""
    if name == "default":
        from vecq.engines import default_model_dir

        return default_model_dir()
    if name in (RANDOM_BERT_BASE_EN, RANDOM_BERT_BASE_ZH, _OLD_NAME):
        from vecq.engines.random_model import write_random_bert

        vocab = "english" if name == RANDOM_BERT_BASE_EN else "chinese"
        return write_random_bert(tmp / name, vocab=vocab)
    return Path(name)
