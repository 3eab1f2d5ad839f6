"""What `vecq embed` used to do in silence now says so, or refuses, in one line (issue 18, item 4).

Dropped ids, a long first-use build, `--name` taken for a model, a resumed run's rate, and a
file that is not text: each case runs as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vecq.engines import Embedder
from vecq.producer.contract import DEFAULT_MODEL
from vecq.worker.cli import main
from vecq.worker.embed import EmbedSettings, embed_file
from vecq.worker.embed.files import WorkArea, run_id

from .servers import VECQ
from .test_cli_errors import one_line_error


def test_ids_asked_for_a_npy_file_are_refused_with_the_format_that_keeps_them(tmp_path: Path) -> None:
    """A .npy file holds vectors alone: `--id-field` there lost the ids without a word.  Refused
    (not written beside: a second file nobody asked for), pointing at .parquet."""
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "one"}) + "\n")
    out = tmp_path / "x.npy"
    line = one_line_error("embed", str(src), "--id-field", "id", "--out", str(out))
    assert line == (
        f"vecq: CorpusError: {out}: a .npy file holds vectors only and --id-field's ids would be lost; "
        "write .parquet (an id beside each vector), or drop --id-field"
    )


def test_name_alone_never_passes_for_a_model_in_embedded_mode(tmp_path: Path) -> None:
    """`--name bge-small` named the queue and embedded with MiniLM; without --model it is refused."""
    src = tmp_path / "c.txt"
    src.write_text("a text\n")
    line = one_line_error("embed", str(src), "--out", str(tmp_path / "v.npy"), "--name", "bge-small")
    assert line.startswith("vecq: --name 'bge-small' names the queue, not the model: embedded, it would")
    assert f"the default {DEFAULT_MODEL}" in line and "pass --model" in line
    # the default's own name, or any name beside a model, is still a name
    EmbedSettings(input=src, out=tmp_path / "v.npy", name="All-MiniLM-L6-v2")
    EmbedSettings(input=src, out=tmp_path / "v.npy", name="bge-small", model=tmp_path)


def test_a_binary_file_named_txt_names_the_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "picture.txt"
    src.write_bytes(b"a fine first line\n\x89PNG\r\n\x1a\n\x00\x00")
    line = one_line_error("embed", str(src), "--out", str(tmp_path / "v.npy"), "--backend", "null")
    assert line == (
        f"vecq: CorpusError: {src}:2: not UTF-8 text (byte 0x89 at column 1); vecq reads text files as UTF-8"
    )
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert f"{jsonl}:2: not UTF-8 text (byte 0xe9" in one_line_error(
        "embed", str(jsonl), "--out", str(tmp_path / "v.npy")
    )


def _partial_run(src: Path, out: Path, texts: list[str], *, chunk_size: int, chunks: int) -> None:
    """The work area a killed run leaves: its first `chunks` chunks written and committed."""
    run = run_id(src, model=DEFAULT_MODEL, chunk_size=chunk_size, options={})
    area = WorkArea(out, run=run, rows=len(texts), chunk_size=chunk_size)
    vectors = Embedder.load(backend="null").embed(texts[: chunks * chunk_size])
    for c in range(chunks):
        area.write(c, vectors[c * chunk_size : (c + 1) * chunk_size])
    area.commit()


def test_a_resumed_run_rates_only_the_rows_it_computed(tmp_path: Path) -> None:
    texts = [f"text number {i}" for i in range(100)]
    src = tmp_path / "c.txt"
    src.write_text("\n".join(texts) + "\n")
    out = tmp_path / "v.npy"
    _partial_run(src, out, texts, chunk_size=10, chunks=6)
    report = embed_file(EmbedSettings(input=src, out=out, backend="null", chunk_size=10, progress=False))
    assert (report.rows, report.chunks_resumed, report.rows_resumed, report.chunks_computed) == (
        100,
        6,
        60,
        4,
    )
    assert report.texts_per_second == 40 / report.seconds
    np.testing.assert_array_equal(np.load(out), Embedder.load(backend="null").embed(texts))

    out.unlink()
    _partial_run(src, out, texts, chunk_size=10, chunks=3)
    result = CliRunner().invoke(
        main, ["embed", str(src), "--out", str(out), "--backend", "null", "--chunk-size", "10"]
    )
    assert result.exit_code == 0, result.output
    assert "3 chunks resumed (30 rows written by an earlier run, not in the rate))" in result.output


@pytest.mark.slow
def test_a_bundle_built_on_first_use_says_so_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`--precision int8` on a model dir builds a quantized bundle (78 s for MiniLM on 2 cores),
    once: one line says so before the build, and a load from the cache says nothing."""
    from vecq.engines.random_model import write_random_encoder

    model = write_random_encoder(tmp_path / "tiny", model_type="bert")
    src = tmp_path / "c.txt"
    src.write_text("first text\nsecond text\n")
    cache = tmp_path / "cache"
    args = [
        *VECQ,
        "embed",
        str(src),
        "--model",
        str(model),
        "--precision",
        "int8",
        "--out",
        str(tmp_path / "a.npy"),
    ]
    first = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, "VECQ_CACHE_DIR": str(cache)}
    )
    assert first.returncode == 0, first.stderr
    notices = [line for line in first.stderr.splitlines() if "building an ONNX bundle" in line]
    assert len(notices) == 1, first.stderr
    assert "tiny (int8) once: quantizing it MatMul by MatMul until parity holds (about 80 s" in notices[0]
    assert str(cache) in notices[0]
    monkeypatch.setenv("VECQ_CACHE_DIR", str(cache))
    with caplog.at_level("INFO", logger="vecq.engines.cache"):
        again = Embedder.load(model, backend="onnx", precision="int8")
    assert caplog.records == []
    np.testing.assert_allclose(
        again.embed(["first text", "second text"]), np.load(tmp_path / "a.npy"), atol=1e-6
    )
