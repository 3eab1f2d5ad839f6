"""Prompts and Matryoshka dimensions through the serving worker (real Redis, a BatchWorker with
the torch CPU backend): each job's vectors equal sentence-transformers' `encode` with the same
`prompt_name` / `prompt` / `truncate_dim`; a job naming a prompt the model lacks, or a size over
its dim, fails alone with one line while its batch-mates finish; jobs from older producers (no
prompt options) get the model's default prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecq.engines import Embedder
from vecq.engines.parity import cosines
from vecq.producer import Client, JobFailed

from ..engines.prompted_model import TEXTS
from .conftest import enqueue, run

pytest.importorskip("sentence_transformers")


def test_worker_applies_prompts_and_dimensions_like_sentence_transformers(
    redis_url: str, redis_conn, make_worker, prompted_dir: Path, st_model
) -> None:  # type: ignore[no-untyped-def]
    embedder = Embedder.load(prompted_dir, backend="torch")
    model = embedder.name
    cases = [  # (vecq's submit options, sentence-transformers' encode kwargs)
        ({}, {}),
        ({"prompt_name": "passage"}, {"prompt_name": "passage"}),
        ({"prompt": "Represent this sentence: "}, {"prompt": "Represent this sentence: "}),
        ({"prompt": ""}, {"prompt": ""}),
        ({"prompt_name": "query", "dimensions": 16}, {"prompt_name": "query", "truncate_dim": 16}),
        ({"dimensions": 64}, {"truncate_dim": 64}),
    ]
    with Client(redis_url) as client:
        jobs = [client.submit(TEXTS, model=model, **opts) for opts, _ in cases]
        unknown = client.submit(TEXTS[:2], model=model, prompt_name="nope")
        too_wide = client.submit(TEXTS[:2], model=model, dimensions=65)
        queue = jobs[0].origin
        # a job from a producer that predates prompts: plain kwargs, rq's own enqueue
        (old,) = enqueue(redis_conn, [TEXTS], queue=queue, model=model)
        run(make_worker(embedder=embedder, max_wait_ms=20), timeout=120)
        worst = 1.0
        for job, (opts, st_kwargs) in zip(jobs, cases, strict=True):
            got = client.result(job, timeout=5)
            want = st_model.encode(TEXTS, **st_kwargs)
            assert got.shape == want.shape == (len(TEXTS), opts.get("dimensions", 64)), opts
            worst = min(worst, float(cosines(got, want).min()))
        assert worst >= 0.99999, f"min cosine {worst:.7f}"
        np.testing.assert_allclose(client.result(old, timeout=5), st_model.encode(TEXTS), atol=1e-5)
        with pytest.raises(JobFailed) as exc:
            client.result(unknown, timeout=5)
        assert exc.value.reason == (
            "BadRequest: prompt_name: 'nope' is not one of this model's prompts "
            "('document', 'passage', 'query')"
        )
        with pytest.raises(JobFailed) as exc:
            client.result(too_wide, timeout=5)
        assert exc.value.reason == "BadRequest: dimensions: 65 is over the model's 64"


def test_prompt_counts_against_the_max_length(redis_url: str, make_worker, prompted_dir: Path) -> None:
    """With truncation off, a text that fits alone but not behind the prompt fails its job, as the
    prompt's tokens are the model's to read too (sentence-transformers tokenizes them together)."""
    embedder = Embedder.load(prompted_dir, backend="torch")
    fits = " ".join(["word"] * 46)  # [CLS] + 46 + [SEP]: the model's 48 tokens exactly
    assert len(embedder.tokenizer.encode([fits], truncate=False).ids[0]) == 48
    assert len(embedder.tokenizer.encode(["passage: " + fits]).ids[0]) == 48  # cut: 2 more
    with Client(redis_url) as client:
        bare = client.submit([fits], model=embedder.name, truncate=False, prompt="")
        prompted = client.submit([fits], model=embedder.name, truncate=False, prompt_name="passage")
        run(make_worker(embedder=embedder), timeout=60)
        assert client.result(bare, timeout=5).shape == (1, 64)
        with pytest.raises(JobFailed, match="longer than the model's max of 48 tokens"):
            client.result(prompted, timeout=5)


def test_producer_refuses_what_it_can_check(redis_url: str) -> None:
    from vecq.producer import BadRequest

    with Client(redis_url) as client:
        with pytest.raises(BadRequest, match=r"^prompt: give prompt or prompt_name, not both$"):
            client.submit(["a"], prompt="q: ", prompt_name="query")
        with pytest.raises(BadRequest, match=r"^dimensions: Input should be greater than or equal to 1$"):
            client.submit(["a"], dimensions=0)
