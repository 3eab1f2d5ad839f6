"""The dense ceiling the benchmarks divide by counts every matmul of the architecture."""

from __future__ import annotations

import json
from pathlib import Path

from vecq.worker.bench.baselines import flops_per_token


def _model_dir(root: Path, **config: object) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return root


def test_flops_per_token_counts_bert_and_modernbert_ffns(tmp_path: Path) -> None:
    bert = _model_dir(
        tmp_path / "bert", model_type="bert", hidden_size=768, num_hidden_layers=12, intermediate_size=3072
    )
    assert flops_per_token(bert) == 2 * 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # ~170 MFLOP
    modern = _model_dir(
        tmp_path / "modern", model_type="modernbert", hidden_size=768, num_hidden_layers=22,
        intermediate_size=1152,
    )  # fmt: skip
    # Wqkv + Wo (4·h²); Wi: h → 2 × intermediate (value and gate); Wo: intermediate → h
    assert flops_per_token(modern) == 2 * 22 * (4 * 768 * 768 + 3 * 768 * 1152)
