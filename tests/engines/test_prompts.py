"""Prompts and Matryoshka dimensions in the engines: read from the model, applied as
sentence-transformers applies them (`encode(prompt_name=, prompt=, truncate_dim=)`), carried by
bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vecq.engines import BadInput, Embedder
from vecq.engines.parity import cosines
from vecq.engines.prompts import PROMPTS_FILE, Prompts, read_prompts

from .prompted_model import PROMPTS, TEXTS, write_prompted_model

#: (sentence-transformers' encode kwargs, vecq's embed kwargs): the same request both ways.
CASES = [
    ({}, {}),  # the default prompt ("query: ")
    ({"prompt_name": "passage"}, {"prompt_name": "passage"}),
    ({"prompt": "Represent this sentence: "}, {"prompt": "Represent this sentence: "}),
    ({"prompt": ""}, {"prompt": ""}),  # no prompt, not even the default
    ({"prompt_name": "document"}, {"prompt_name": "document"}),  # known to every model, empty here
    ({"prompt_name": "passage", "truncate_dim": 16}, {"prompt_name": "passage", "dimensions": 16}),
    ({"truncate_dim": 64}, {"dimensions": 64}),
]


UNKNOWN = "prompt_name: 'nope' is not one of this model's prompts ('document', 'passage', 'query')"


def test_read_from_the_model_dir(prompted_dir: Path) -> None:
    prompts = read_prompts(prompted_dir)
    assert prompts == Prompts(named=PROMPTS, default_name="query", include_prompt=True)
    assert prompts.resolve() == "query: "
    assert prompts.resolve(prompt_name="passage") == "passage: "
    assert prompts.resolve(prompt="") == ""
    assert prompts.resolve(prompt_name="document") == ""
    with pytest.raises(BadInput) as exc:
        prompts.resolve(prompt_name="nope")
    assert str(exc.value) == UNKNOWN
    with pytest.raises(BadInput, match=r"^prompt: give prompt or prompt_name, not both$"):
        prompts.resolve(prompt_name="query", prompt="x")


def test_a_plain_model_has_no_prompts(tiny_bert_dir: Path) -> None:
    prompts = read_prompts(tiny_bert_dir)
    assert not prompts and prompts.resolve() == "" and prompts.resolve(prompt="q: ") == "q: "


def test_include_prompt_false_is_served_without_prompts_only(tmp_path: Path) -> None:
    model = write_prompted_model(tmp_path / "m", include_prompt=False, default_prompt_name=None)
    prompts = read_prompts(model)
    assert prompts.include_prompt is False and prompts.resolve() == ""
    with pytest.raises(BadInput, match=r"^prompt: this model's pooling excludes prompt tokens"):
        prompts.resolve(prompt_name="query")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_parity_with_sentence_transformers(prompted_dir: Path, st_model, backend: str) -> None:  # type: ignore[no-untyped-def]
    embedder = Embedder.load(prompted_dir, backend=backend)
    worst = 1.0
    for st_kwargs, vecq_kwargs in CASES:
        want = st_model.encode(TEXTS, convert_to_numpy=True, **st_kwargs)
        got = embedder.embed(TEXTS, **vecq_kwargs)
        assert got.shape == want.shape == (len(TEXTS), st_kwargs.get("truncate_dim", 64)), st_kwargs
        worst = min(worst, float(cosines(got, want).min()))
        # no normalization after the cut, as sentence-transformers: the norms are its own
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), atol=1e-5)
    assert worst >= 0.99999, f"{backend}: min cosine {worst:.7f}"
    # the prompt changes the vectors (a test that could not fail would be no test)
    assert cosines(embedder.embed(TEXTS), embedder.embed(TEXTS, prompt="")).min() < 0.99


def test_a_bundle_carries_the_prompts(prompted_dir: Path, tmp_path: Path, st_model) -> None:  # type: ignore[no-untyped-def]
    from vecq.engines.build import build_bundle

    out = tmp_path / "bundle"
    build_bundle(prompted_dir, out, backend="onnx")
    saved = json.loads((out / PROMPTS_FILE).read_text())
    assert saved == {"prompts": PROMPTS, "default_prompt_name": "query", "include_prompt": True}
    assert PROMPTS_FILE in json.loads((out / "manifest.json").read_text())["files"]  # checksummed
    got = Embedder.load(out).embed(TEXTS, prompt_name="passage")
    assert cosines(got, st_model.encode(TEXTS, prompt_name="passage")).min() >= 0.99999


def test_dimensions_out_of_range_are_refused_in_one_line(prompted_dir: Path) -> None:
    embedder = Embedder.load(prompted_dir, backend="torch")
    with pytest.raises(BadInput, match=r"^dimensions: 65 is over the model's 64$"):
        embedder.embed(["a"], dimensions=65)
    with pytest.raises(BadInput, match=r"^dimensions: expected an integer of at least 1, got 0$"):
        embedder.embed(["a"], dimensions=0)
