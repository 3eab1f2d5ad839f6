"""`vecq worker --model A --model B`: several models behind one command (issue 17 item 2).

One supervised single-model worker per model, each with its own engine and queue set: real Redis,
real processes, a tiny random encoder and a tiny random cross-encoder on the CPU.  What a user
gets must be what one worker per model gives: `SentenceTransformer.encode`'s vectors on the
embedder's queues, `CrossEncoder.predict`'s scores on the reranker's.  Two models of one name
would share one queue set, each worker failing the other's jobs: refused before any starts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from rq import Worker

from vecq.engines.random_model import write_random_cross_encoder, write_random_encoder
from vecq.producer import Client
from vecq.worker.cli.worker import worker
from vecq.worker.supervisor import CHILD_COMMAND, Served, Supervisor

from .servers import VECQ, spawn_worker, stop_process, until

pytestmark = pytest.mark.timeout(90)

TEXTS = ["Paris is the capital of France.", "A cat sat on the mat.", "北京是中国的首都。", "short"]
QUERY = "where is the Eiffel Tower?"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(embedder, reranker) dirs, named `emb` and `rerank` after their folders."""
    root = tmp_path_factory.mktemp("models")
    return write_random_encoder(root / "emb", model_type="bert"), write_random_cross_encoder(root / "rerank")


def _workers(conn: redis.Redis) -> dict[str, Worker]:
    return {w.name: w for w in Worker.all(connection=conn) if w.name.startswith("mm.")}


def test_one_command_serves_an_embedder_and_a_reranker_and_sigterm_stops_both(
    redis_url: str, tmp_path: Path, models: tuple[Path, Path]
) -> None:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    emb, rerank = models
    conn = redis.Redis.from_url(redis_url)
    flags = ["--model", str(emb), "--model", str(rerank), "--backend", "torch", "--worker-name", "mm"]
    sup = spawn_worker(redis_url, tmp_path / "supervisor.log", *flags)
    try:
        until(lambda: set(_workers(conn)) == {"mm.emb", "mm.rerank"}, 60, "both workers registered")
        queues = {name: set(w.queue_names()) for name, w in _workers(conn).items()}
        assert queues == {
            "mm.emb": {"vecq.emb.interactive", "vecq.emb.bulk"},
            "mm.rerank": {"vecq.rerank.interactive", "vecq.rerank.bulk"},
        }
        with Client(redis_url) as client:
            vectors = client.embed(TEXTS, model="emb", timeout=30)
            bulk = client.result(client.submit(TEXTS[::-1], model="emb", lane="bulk"), timeout=30)
            ranked = client.rerank(QUERY, TEXTS, model="rerank", timeout=30)
        want = SentenceTransformer(str(emb), device="cpu").encode(TEXTS, convert_to_numpy=True)
        np.testing.assert_allclose(vectors, want, atol=1e-5)
        np.testing.assert_allclose(bulk, want[::-1], atol=1e-5)
        scores = CrossEncoder(str(rerank), device="cpu").predict([(QUERY, t) for t in TEXTS])
        np.testing.assert_allclose([r.score for r in ranked], scores[[r.index for r in ranked]], atol=1e-5)
        assert sorted(r.index for r in ranked) == list(range(len(TEXTS)))
        pids = [int(w.pid or 0) for w in _workers(conn).values()]
        assert len(set(pids)) == 2 and sup.pid not in pids  # a process of its own each
    finally:
        code = stop_process(sup, timeout=60)
    assert code == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no child left behind
    assert not _workers(conn), "every worker deregistered"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VECQ, "worker", *args], capture_output=True, text=True, timeout=60)


def test_two_models_of_one_name_fail_at_start_in_one_line(tmp_path: Path, models: tuple[Path, Path]) -> None:
    emb, _rerank = models
    twin = write_random_encoder(tmp_path / "emb", model_type="bert", seed=1)
    proc = _run(
        "--model",
        str(emb),
        "--bundle",
        f"x={tmp_path}",
        "--model",
        str(twin),
        "--redis",
        "redis://127.0.0.1:1/0",
    )
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"vecq: --model {emb} and --model {twin} are both model 'emb' (one queue set): "
        "name one of them, e.g. --model NAME=DIR"
    ], proc.stderr


def test_help_and_the_children_the_supervisor_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--help` says how; each child gets its model's flags, device, port, name and CPU share."""
    text = CliRunner().invoke(worker, ["--help"], terminal_width=200).output
    assert "--model [NAME=]DIR" in text and "--bundle [NAME=]DIR" in text
    assert "Several models: repeat --bundle/--model" in " ".join(text.split())
    monkeypatch.setenv("VECQ_MODEL", "/elsewhere")  # the flags name a child's model, not the env
    monkeypatch.delenv("VECQ_THREADS", raising=False)
    a, b = (
        Served("a", ("--model", "/m/a"), "--model /m/a"),
        Served("b", ("--bundle", "/b", "--name", "b"), ""),
    )
    cpu = Supervisor.for_device("cpu", ["--redis", "R"], [a, b], metrics_port=9100, worker_name="w").children
    assert [c.argv[len(CHILD_COMMAND) :] for c in cpu] == [
        ["--redis", "R", "--model", "/m/a", "--device", "cpu", "--metrics-port", "9100",
         "--worker-name", "w.a"],
        ["--redis", "R", "--bundle", "/b", "--name", "b", "--device", "cpu", "--metrics-port", "9101",
         "--worker-name", "w.b"],
    ]  # fmt: skip
    assert all("VECQ_MODEL" not in c.env and int(c.env["VECQ_THREADS"]) >= 1 for c in cpu)
    gpus = Supervisor.for_gpus(["0", "1"], [], workers_per_gpu=2, worker_name="w", models=[a, b]).children
    assert [(c.env["CUDA_VISIBLE_DEVICES"], c.argv[-1]) for c in gpus] == [
        (g, f"w.{m}.gpu{g}.{r}") for g in "01" for m in "ab" for r in range(2)
    ]
    assert all(c.argv[c.argv.index("--device") + 1] == "cuda:0" for c in gpus)
