"""`vecq embed`: embedded mode end to end, input order, formats, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vecq.engines import Embedder
from vecq.worker.cli import main
from vecq.worker.embed import EmbedSettings, embed_file


def _lines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["vector", "queue", "redis", "向量", "检索", "worker", "GPU", "batch", "🙂", "shape", "text"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(n)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from vecq.worker.cli import main; main()", *args]


def test_embedded_default_model_equals_embedder(tmp_path: Path) -> None:
    """2,000 lines through the embedded server and worker = `Embedder.embed` on the same texts."""
    texts = _lines(2000)
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    result = CliRunner().invoke(main, ["embed", str(src), "--out", str(out), "--backend", "torch"])
    assert result.exit_code == 0, result.output
    got = np.load(out)
    want = Embedder.load(backend="torch").embed(texts)
    assert got.shape == (2000, 384) and got.dtype == np.float32
    cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999
    assert not out.with_name(out.name + ".vecq-partial").exists()


def test_jsonl_to_parquet_keeps_ids_and_order(tmp_path: Path) -> None:
    texts = _lines(700, seed=1)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"doc": f"d{i}", "body": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "vectors.parquet"
    report = embed_file(
        EmbedSettings(
            input=src,
            out=out,
            backend="null",
            text_field="body",
            id_field="doc",
            chunk_size=64,
            progress=False,
        )
    )
    table = pq.read_table(out)
    assert report.rows == 700 and report.chunks_computed == 11
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(700)]
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, Embedder.load(backend="null").embed(texts))


def test_bad_input_file_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    result = CliRunner().invoke(
        main, ["embed", str(src), "--out", str(tmp_path / "v.npy"), "--backend", "null"]
    )
    assert result.exit_code == 2
    assert "record 2 has no field 'text'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_resume_after_kill_9(tmp_path: Path) -> None:
    """kill -9 mid-run, run again: finished chunks are not recomputed, output = uninterrupted run."""
    texts = _lines(30000, seed=2)
    src = tmp_path / "big.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    args = _cli("embed", str(src), "--out", str(out), "--backend", "null", "--chunk-size", "100")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    done_file = tmp_path / "v.npy.vecq-partial" / "done.bin"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if done_file.is_file() and 20 <= np.fromfile(done_file, dtype=np.uint8).sum() < 250:
            break
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = int(np.fromfile(done_file, dtype=np.uint8).sum())
    assert 20 <= done_before < 300
    time.sleep(0.5)
    assert _orphan_servers(tmp_path) == []

    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{done_before} chunks resumed" in second.stdout
    np.testing.assert_array_equal(np.load(out), Embedder.load(backend="null").embed(texts))


def test_ctrl_c_ends_the_run_at_once_in_one_line_and_it_resumes(tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to vecq's whole process group) mid-run: vecq exits
    within seconds with one line saying how to resume, leaves no server, and the same command
    finishes the run.  Before, the signal reached the embedded server too, and vecq retried the
    dead server for ~30 s, printing dozens of lines."""
    texts = _lines(30000, seed=4)
    src = tmp_path / "big.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    args = _cli("embed", str(src), "--out", str(out), "--backend", "null", "--chunk-size", "100")
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    done_file = tmp_path / "v.npy.vecq-partial" / "done.bin"
    deadline = time.monotonic() + 120
    while not (done_file.is_file() and np.fromfile(done_file, dtype=np.uint8).sum() >= 20):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before Ctrl-C"
        time.sleep(0.01)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10, f"took {time.monotonic() - sent:.1f}s"
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2 and "interrupted; run the same command again" in lines[-1], err
    time.sleep(0.5)
    assert _orphan_servers(tmp_path) == []
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    np.testing.assert_array_equal(np.load(out), Embedder.load(backend="null").embed(texts))


def _orphan_servers(tmp_path: Path) -> list[str]:
    """valkey-server processes started for this test's runs that outlived vecq (there must be none)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"valkey-server") and any(b"vecq-embedded-" in c for c in cmd):
            found.append(pid)
    return found


pytestmark = pytest.mark.timeout(300)


def test_precision_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    corpus = tmp_path / "in.txt"
    corpus.write_text("a\nb\n", encoding="utf-8")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}", encoding="utf-8")
    out = tmp_path / "out.npy"
    with pytest.raises(ValueError, match="with --redis the workers decide"):
        embed_file(EmbedSettings(input=corpus, out=out, redis_url="redis://127.0.0.1:1/0", precision="int8"))
    with pytest.raises(ValueError, match="a bundle has its own"):
        embed_file(EmbedSettings(input=corpus, out=out, bundle=bundle, precision="int8", progress=False))
    assert not out.exists()
