"""`vecq embed --prompt-name/--prompt/--dimensions`: embedded mode on a model that declares
prompts equals sentence-transformers' `encode(prompt_name=..., truncate_dim=...)`, and a run with
other options never adopts an earlier run's chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vecq.worker.cli import main

from ..engines.prompted_model import TEXTS, write_prompted_model

pytest.importorskip("sentence_transformers")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_with_prompt_and_dimensions_equals_sentence_transformers(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = write_prompted_model(tmp_path / "e5-tiny")
    st = SentenceTransformer(str(model), device="cpu")
    texts = [t.strip() or "blank" for t in TEXTS] * 30  # .txt: one text per line, no blank lines
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    runs = [  # (flags, sentence-transformers' encode kwargs)
        ([], {}),  # the model's default prompt
        (["--prompt-name", "passage", "--dimensions", "24"], {"prompt_name": "passage", "truncate_dim": 24}),
        (["--prompt", ""], {"prompt": ""}),
    ]
    base = ["embed", str(src), "--model", str(model), "--backend", "torch", "--chunk-size", "32"]
    for n, (flags, st_kwargs) in enumerate(runs):
        out = tmp_path / f"vectors-{n}.npy"
        result = CliRunner().invoke(main, [*base, "--out", str(out), *flags])
        assert result.exit_code == 0, result.output
        got, want = np.load(out), st.encode(texts, **st_kwargs)
        assert got.shape == want.shape == (len(texts), st_kwargs.get("truncate_dim", 64))
        assert cosines(got, want).min() >= 0.99999, f"{flags}: min cosine {cosines(got, want).min():.7f}"


def test_prompt_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text("a\n", encoding="utf-8")
    out = str(tmp_path / "v.npy")
    both = CliRunner().invoke(
        main, ["embed", str(src), "--out", out, "--prompt", "q: ", "--prompt-name", "query"]
    )
    assert both.exit_code == 2 and "pass --prompt or --prompt-name, not both" in both.output
    zero = CliRunner().invoke(main, ["embed", str(src), "--out", out, "--dimensions", "0"])
    assert zero.exit_code == 2 and "dimensions" in zero.output


def test_run_ids_differ_with_the_model_options(tmp_path: Path) -> None:
    from vecq.worker.embed.files import run_id

    src = tmp_path / "corpus.txt"
    src.write_text("a\n", encoding="utf-8")
    plain = run_id(src, model="m", chunk_size=8)
    assert run_id(src, model="m", chunk_size=8, options={"prompt_name": None, "dimensions": None}) == plain
    ids = {
        plain,
        run_id(src, model="m", chunk_size=8, options={"prompt_name": "query"}),
        run_id(src, model="m", chunk_size=8, options={"prompt": "query"}),
        run_id(src, model="m", chunk_size=8, options={"dimensions": 8}),
    }
    assert len(ids) == 4
