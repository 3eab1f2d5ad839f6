"""`vecq embed --reuse old.parquet`: only new or changed texts reach the queue, and the output
equals a full run (null engine: deterministic, so equal means byte-equal)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vecq.engines import Embedder
from vecq.worker.cli import main
from vecq.worker.embed import EmbedSettings, embed_file
from vecq.worker.worker import BatchWorker

pytestmark = pytest.mark.timeout(300)


def _texts_computed(worker: BatchWorker) -> int:
    return int(worker.metrics.registry.get_sample_value("vecq_texts_total") or 0)


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_five_percent_changed_computes_five_percent(tmp_path: Path, redis_url, make_worker, serving) -> None:
    """100k texts, 5% edited (and the order shuffled): the worker computes exactly the 5,000
    edited texts, and the output equals a full run over the new corpus."""
    n = 100_000
    old_texts = [f"t{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    changed = set(rng.choice(n, size=n // 20, replace=False).tolist())
    new_texts = [f"t{i} v2" if i in changed else t for i, t in enumerate(old_texts)]
    order = rng.permutation(n)  # ids and rows follow the new corpus, whatever its order
    new_texts = [new_texts[i] for i in order]
    worker = serving(make_worker(burst=False, max_wait_ms=2.0))

    def run(texts: list[str], name: str, reuse: Path | None = None):
        src = tmp_path / f"{name}.txt"
        src.write_text("\n".join(texts) + "\n")
        settings = EmbedSettings(  # 32 dims: a quick file to write and read back
            input=src, out=tmp_path / f"{name}.parquet", redis_url=redis_url, dimensions=32,
            chunk_size=2500, progress=False, reuse=reuse,
        )  # fmt: skip
        before = _texts_computed(worker)
        report = embed_file(settings)
        return report, _texts_computed(worker) - before

    _, computed = run(old_texts, "old")
    assert computed == n
    jobs_before = worker.finished_jobs
    report, computed = run(new_texts, "new", reuse=tmp_path / "old.parquet")
    assert computed == n // 20 == report.texts_sent, "only the changed texts reach the worker"
    assert worker.finished_jobs - jobs_before == 2 == report.chunks_computed
    assert report.rows == n and report.rows_reused == n - n // 20
    run(new_texts, "full")
    assert pq.read_table(tmp_path / "new.parquet").equals(pq.read_table(tmp_path / "full.parquet"))


def _embed(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["embed", *args, "--backend", "null", "--chunk-size", "16"])
    return result.exit_code, result.output


def test_reuse_edge_cases(tmp_path: Path) -> None:
    """Duplicates, an all-reused run, another prompt, a file without hashes, a .npy output."""
    old = _jsonl(tmp_path / "old.jsonl", ["a", "b", "c", "b"])
    code, out = _embed(str(old), "--id-field", "id", "--out", str(tmp_path / "old.parquet"))
    assert code == 0, out
    # new texts repeated: computed once; old duplicates and unchanged texts: copied
    new_texts = ["x", "b", "a", "x", "y", "b"]
    new = _jsonl(tmp_path / "new.jsonl", new_texts)
    args = [str(new), "--id-field", "id", "--out", str(tmp_path / "new.parquet")]
    code, out = _embed(*args, "--reuse", str(tmp_path / "old.parquet"))
    assert code == 0, out
    assert "3 reused from old.parquet, 2 embedded" in out
    table = pq.read_table(tmp_path / "new.parquet")
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(6)]
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, Embedder.load(backend="null").embed(new_texts))
    # everything unchanged: nothing to embed, the same file
    code, out = _embed(*args[:-1], str(tmp_path / "again.parquet"), "--reuse", str(tmp_path / "new.parquet"))
    assert code == 0 and "6 reused from new.parquet, 0 embedded" in out, out
    assert pq.read_table(tmp_path / "again.parquet").equals(table)

    refusals = {
        "made with model all-minilm-l6-v2, this run embeds with model all-minilm-l6-v2 (prompt 'q: ')": [
            *args, "--prompt", "q: ", "--reuse", str(tmp_path / "old.parquet"),
        ],
        "no 'text_hash' column": [*args, "--reuse", str(_unhashed(tmp_path))],
        "--reuse needs a .parquet --out": [str(new), "--out", str(tmp_path / "v.npy"), "--reuse", str(old)],
        "reuse needs a .parquet from an earlier": [*args, "--reuse", str(old)],
    }  # fmt: skip
    for expected, argv in refusals.items():
        code, out = _embed(*argv)
        assert code == 2 and expected in out and len(out.strip().splitlines()) == 1, out


def _unhashed(tmp_path: Path) -> Path:
    """A vector file as vecq wrote it before text hashes (id and vector only)."""
    path = tmp_path / "unhashed.parquet"
    column = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4, dtype=np.float32)), 2)
    pq.write_table(pa.table({"id": pa.array([0, 1]), "vector": column}), path)
    return path
