"""`vecq embed` reads `.csv` and `.parquet` corpora end to end: the command, the embedded server
and worker (null engine), ids and input order kept, vectors equal to `Embedder.embed`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vecq.engines import Embedder
from vecq.worker.cli import main

pytestmark = pytest.mark.timeout(120)


def _texts(n: int, seed: int) -> list[str]:
    """Texts a line reader would get wrong: commas, quotes, newlines, CRLF, non-ASCII, empty."""
    rng = np.random.default_rng(seed)
    words = ["vector", "queue,", '"quoted"', "向量", "line\nbreak", "crlf\r\nend", "🙂", "a;b", "tab\tx"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(n)]
    texts[7] = ""
    return texts


def _embed(*args: str) -> None:
    result = CliRunner().invoke(main, ["embed", *args, "--backend", "null", "--chunk-size", "50"])
    assert result.exit_code == 0, result.output


def test_csv_corpus_to_parquet_keeps_ids_texts_and_order(tmp_path: Path) -> None:
    """A CSV with quoted fields (commas, quotes, newlines inside a text) and an extra column:
    one vector per record, in record order, beside its id."""
    texts = _texts(333, seed=5)
    src = tmp_path / "docs.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["doc", "lang", "body"])
        writer.writerows([f"d{i:04d}", "en", t] for i, t in enumerate(texts))
    assert len(src.read_text(encoding="utf-8").splitlines()) > 334  # texts span lines
    out = tmp_path / "vectors.parquet"
    _embed(str(src), "--out", str(out), "--text-field", "body", "--id-field", "doc")
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"d{i:04d}" for i in range(333)]
    got = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(got, Embedder.load(backend="null").embed(texts))


def test_parquet_corpus_to_npy_and_to_parquet_with_integer_ids(tmp_path: Path) -> None:
    """A Parquet corpus (text column among others): `.npy` rows in input order; `.parquet`
    output carries the integer ids of the id column, not row numbers."""
    texts = _texts(412, seed=6)
    ids = [int(i) for i in np.random.default_rng(7).permutation(10_000)[:412]]
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"score": np.arange(412.0), "text": texts, "key": ids}), src)
    want = Embedder.load(backend="null").embed(texts)

    npy = tmp_path / "vectors.npy"
    _embed(str(src), "--out", str(npy))
    np.testing.assert_array_equal(np.load(npy), want)

    out = tmp_path / "vectors.parquet"
    _embed(str(src), "--out", str(out), "--id-field", "key")
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ids
    np.testing.assert_array_equal(np.asarray(table.column("vector").to_pylist(), dtype=np.float32), want)
