"""The models benchmarks run: a named one built on the spot, the default model, or a model dir.

No machine of vecq's can reach a model hub, so GPU benchmarks build the model shape they need
with random weights (speed does not depend on the weights).
"""

from __future__ import annotations

from pathlib import Path

#: The seed write-up's shape: BERT-base (12 × 768) with a Chinese character vocab (21,128).
RANDOM_BERT_BASE = "random-bert-base"


def model_dir(name: str, tmp: Path) -> Path:
    """`default` (all-MiniLM-L6-v2), `random-bert-base` (written under `tmp`), or a model dir."""
    if name == "default":
        from vecq.engines import default_model_dir

        return default_model_dir()
    if name == RANDOM_BERT_BASE:
        from vecq.engines.random_model import write_random_bert

        return write_random_bert(tmp / "bert-base-random")
    return Path(name)
