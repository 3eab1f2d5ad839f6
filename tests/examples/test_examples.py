"""examples/: each one run on a small input, against real Redis and real `vecq worker` processes.

The RAG example runs the two commands its docstring gives, with the real default model
(`vecq embed` in embedded mode); the others use null-engine workers, whose vectors are exact.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vecq.engines import Embedder
from vecq.producer import Client, similarity

from ..worker.servers import VECQ, spawn_worker, stop_process, until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORPUS = EXAMPLES / "corpus.jsonl"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"vecq_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def hits(output: str) -> list[tuple[float, str, str]]:
    """rag_faiss.py's lines: score, id, text."""
    rows = [line.split("\t") for line in output.strip().splitlines()]
    return [(float(score), id_, text) for score, id_, text in rows]


@pytest.fixture(scope="module")
def null_embedder() -> Embedder:
    return Embedder.load(backend="null")


@pytest.fixture
def null_worker(redis_url: str, tmp_path: Path) -> Iterator[None]:
    """A `vecq worker --backend null` process on the test's database, stopped by pid."""
    proc = spawn_worker(redis_url, tmp_path / "worker.log")
    yield
    stop_process(proc)


def test_corpus_is_varied_jsonl_with_ids() -> None:
    records = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    assert 50 <= len(records) <= 200
    assert len({r["id"] for r in records}) == len(records)
    assert all(isinstance(r["text"], str) and len(r["text"]) > 20 for r in records)
    assert len({r["id"].split("-")[0] for r in records}) >= 6  # several topics to retrieve between


def test_rag_faiss_finds_the_topic_of_a_query_with_the_real_model(tmp_path: Path) -> None:
    vectors = tmp_path / "vectors.parquet"
    out = run(*VECQ, "embed", str(CORPUS), "--id-field", "id", "--out", str(vectors), cwd=tmp_path)
    assert out.startswith(f"{vectors}: 96 vectors of 384 dims")

    script = [sys.executable, str(EXAMPLES / "rag_faiss.py"), str(vectors)]
    tomatoes = hits(run(*script, "how do I keep tomato plants healthy?", cwd=tmp_path))
    planets = hits(run(*script, "which planet is the hottest", "-k", "1", cwd=tmp_path))

    assert len(tomatoes) == 3 and all(id_.startswith("garden-") for _, id_, _ in tomatoes), tomatoes
    assert [s for s, _, _ in tomatoes] == sorted((s for s, _, _ in tomatoes), reverse=True)
    assert [id_ for _, id_, _ in planets] == ["astro-11"], planets  # "Venus is the hottest planet ..."
    assert planets[0][2].startswith("Venus is the hottest planet")


def test_rag_faiss_query_through_workers(redis_url: str, null_worker: None, tmp_path: Path) -> None:
    """`vecq embed --redis` and `rag_faiss.py --redis`: a corpus text finds itself (cosine 1)."""
    vectors = tmp_path / "vectors.parquet"
    run(*VECQ, "embed", str(CORPUS), "--id-field", "id", "--out", str(vectors), "--redis", redis_url,
        cwd=tmp_path)  # fmt: skip
    text = "Bond prices usually fall when interest rates rise."
    out = run(sys.executable, str(EXAMPLES / "rag_faiss.py"), str(vectors), text, "--redis", redis_url,
              "-k", "2", cwd=tmp_path)  # fmt: skip
    (score, id_, found), _second = hits(out)
    assert (id_, found) == ("money-10", text) and score == pytest.approx(1.0, abs=1e-5)


def test_webapp_embeds_waits_and_hands_out_job_ids(redis_url: str, null_worker: None, null_embedder) -> None:
    webapp = load_example("webapp")
    texts = ["async enqueue from a web app", "你好啊"]
    want = null_embedder.embed(texts)
    with TestClient(webapp.create_app(redis_url)) as http:
        waited = http.post("/embed", json={"texts": texts})
        assert waited.status_code == 200 and waited.json()["dim"] == 384
        assert np.array_equal(np.array(waited.json()["vectors"], dtype=np.float32), want)

        submitted = http.post("/jobs", json={"texts": texts})
        assert submitted.status_code == 202
        job_url = f"/jobs/{submitted.json()['id']}"
        until(lambda: http.get(job_url).json()["status"] == "done", 30, "the job's vectors")
        assert np.array_equal(np.array(http.get(job_url).json()["vectors"], dtype=np.float32), want)

        pending = http.post("/jobs", json={"texts": ["nobody serves this"], "model": "nobody"})
        assert http.get(f"/jobs/{pending.json()['id']}").json() == {"status": "pending"}
        assert http.get("/jobs/no-such-job").status_code == 404
        empty = http.post("/embed", json={"texts": []})
        assert empty.status_code == 400
        assert empty.json()["detail"] == "texts: empty list (send at least one text)"


def test_predict_vec_and_sim_through_client(
    redis_url: str, null_worker: None, null_embedder, tmp_path: Path
) -> None:
    predict = load_example("predict")
    a, b = "今天天气怎么样", "what is the weather today"
    want = null_embedder.embed([a, b])
    with Client(redis_url) as client:
        vectors = predict.predict_vec([a, b], client)
        assert vectors.dtype == np.float32 and np.array_equal(vectors, want)
        want_sim = float(similarity(want[0], want[1]))
        assert predict.predict_sim(a, b, client) == pytest.approx(want_sim, abs=1e-6)
        assert predict.predict_sim(a, a, client) == pytest.approx(1.0, abs=1e-6)

    out = run(sys.executable, str(EXAMPLES / "predict.py"), "--redis", redis_url, a, b, cwd=tmp_path)
    assert out.splitlines() == ["vectors: 2 x 384 float32", f"similarity: {float(similarity(*want)):.4f}"]


def test_rag_faiss_names_the_workers_as_vecq_worker_does(tmp_path: Path) -> None:
    """`--redis` with `--model`/`--rerank`: the queues a model dir or bundle is served under."""
    rag_faiss = load_example("rag_faiss")
    bundle = tmp_path / "some-bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"name": "bge-small"}), encoding="utf-8")
    assert rag_faiss.served_name(str(bundle)) == "bge-small"
    assert rag_faiss.served_name(str(tmp_path / "My_Reranker")) == "my-reranker"
    assert rag_faiss.served_name(str(tmp_path / "gt_pkg" / "model")) == "gt-pkg"
