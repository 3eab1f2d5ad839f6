"""Every CLI error is one line naming what was wrong, shown before any work starts (issue 18).

Each case runs `vecq` as a user does (a subprocess), and checks the exit code, that stderr is
exactly one line, and what the line names.  Before, most of these were 40-odd lines of traceback,
and an unwritable `--out` was found only after the first chunk had been computed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .servers import VECQ


def one_line_error(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run `vecq ARGS`; it must fail with exactly one line on stderr, which is returned."""
    proc = subprocess.run(
        [*VECQ, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vecq: "), lines[0]
    return lines[0]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("first text\nsecond text\n", encoding="utf-8")
    return path


#: A Redis nobody listens on: a check that came after connecting would hang, then fail otherwise.
NO_REDIS = "redis://127.0.0.1:1/0"


def test_a_hugging_face_id_not_in_the_cache(corpus: Path, tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HOME": str(tmp_path / "hf-home")}
    line = one_line_error(
        "embed", str(corpus), "--out", str(tmp_path / "v.npy"), "--model", "acme/absent", env=env
    )
    assert "acme/absent: not a directory, and not in the local Hugging Face cache" in line
    assert "hf download acme/absent" in line


def test_a_missing_bundle_is_refused_before_redis_is_reached(tmp_path: Path) -> None:
    started = time.monotonic()
    line = one_line_error("worker", "--bundle", str(tmp_path / "absent"), "--redis", NO_REDIS)
    assert line.endswith(f"ModelNotFound: {tmp_path / 'absent'}: not a directory")
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("verb", ["worker", "embed"])
def test_a_folder_without_config_json(verb: str, corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("no model here")
    args = ["worker", "--redis", NO_REDIS] if verb == "worker" else ["embed", str(corpus)]
    args += ["--out", str(tmp_path / "v.npy")] if verb == "embed" else []
    line = one_line_error(*args, "--model", str(folder))
    assert line.endswith(f"{folder}: no config.json (not a Hugging Face model dir)")


def test_an_unwritable_out_is_refused_before_anything_is_embedded(corpus: Path, tmp_path: Path) -> None:
    """A directory vecq may not write in (root may write anywhere but in /sys), and an `--out`
    that is a directory: refused before the server starts, and no work area is left."""
    if os.geteuid() == 0:
        out = Path("/sys/vecq-test-vectors.npy")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = locked / "v.npy"
    line = one_line_error("embed", str(corpus), "--out", str(out), "--backend", "null")
    assert f"{out}: cannot write in {out.parent}" in line
    assert not out.with_name(out.name + ".vecq-partial").exists()
    folder = tmp_path / "v.npy"
    folder.mkdir()
    assert one_line_error("embed", str(corpus), "--out", str(folder)).endswith(f"{folder}: is a directory")


def test_chunk_size_zero_names_the_option_and_its_range(corpus: Path, tmp_path: Path) -> None:
    line = one_line_error("embed", str(corpus), "--out", str(tmp_path / "v.npy"), "--chunk-size", "0")
    assert line == "vecq: Invalid value for '--chunk-size': 0 is not in the range 1<=x<=4096."


def test_usage_errors_of_click_are_one_line_too(tmp_path: Path) -> None:
    line = one_line_error("embed", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "v.npy"))
    assert "'INPUT': File" in line and "absent.txt' does not exist" in line
    assert "No such option '--bogus'" in one_line_error("worker", "--bogus")


def test_a_setting_from_the_environment_is_named_as_its_variable() -> None:
    line = one_line_error("worker", "--redis", NO_REDIS, env={"VECQ_HEARTBEAT_TTL": "1"})
    assert line == "vecq: VECQ_HEARTBEAT_TTL: Input should be greater than or equal to 3 (got '1')"


def test_a_busy_metrics_port_is_refused_before_the_model_loads() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = one_line_error(
            "worker", "--backend", "null", "--redis", NO_REDIS,
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
        )  # fmt: skip
    assert line == f"vecq: PortBusy: --metrics-port {port}: cannot listen on 127.0.0.1:{port} " + (
        "(Address already in use)"
    )


def test_the_model_is_checked_before_the_corpus_is_read(tmp_path: Path) -> None:
    """A corpus that would fail (not UTF-8) and a model that is not there: the model is named,
    since it is checked first, before reading a corpus that may take minutes."""
    src = tmp_path / "big.txt"
    src.write_bytes(b"\xff\xfe not text")
    line = one_line_error(
        "embed", str(src), "--out", str(tmp_path / "v.npy"), "--model", str(tmp_path / "no")
    )
    assert line == f"vecq: ModelNotFound: {tmp_path / 'no'}: not a directory"


def test_serve_and_gateway_without_the_gateway_extra_say_so_in_one_line() -> None:
    """An install with only vecq[worker] (the README's main command) has no fastapi, uvicorn or
    orjson: `vecq serve` named the missing module in a 40-line traceback."""
    no_extra = (
        "import sys; sys.modules.update(orjson=None, fastapi=None); from vecq.worker.cli import main; main()"
    )
    for verb in ("serve", "gateway"):
        proc = subprocess.run(
            [VECQ[0], "-c", no_extra, verb, "--port", "1"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "needs the gateway extra (pip install 'vecq[gateway]')" in proc.stderr
