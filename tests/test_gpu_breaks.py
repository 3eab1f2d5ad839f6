"""benchmarks/gpu_breaks.py on the CPU: its breaks still apply, and its harness reads pytest right.

The breaks run only on a GPU machine, so a refactor that makes a pattern stale (the old string
gone, or there twice) or renames a test would otherwise show up only there, as a PATTERN MISSING
or an ERROR.  Here: every pattern occurs exactly once in the repo's own source and the patched
file compiles; every test id a break names is collected; and the harness itself, on a fake
installed package, calls a failing test caught, a passing one NOT CAUGHT, an import error an
ERROR and a hung one a TIMEOUT, restoring the file byte for byte each time.
"""

from __future__ import annotations

import compileall
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_breaks
from gpu_breaks_list import BREAKS, Break, check, collected, unknown_tests


def test_every_break_applies_once_to_the_repo_sources_and_compiles() -> None:
    assert check() == []
    assert {b.area for b in BREAKS} >= {"kernels", "packed", "graphs", "ort", "supervisor"}


def test_every_break_names_tests_that_are_collected() -> None:
    ids = collected()
    assert ids, "collection of the GPU test files found nothing"
    assert unknown_tests(ids) == []


def test_a_stale_pattern_is_reported_missing(tmp_path: Path) -> None:
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "x.py").write_text("a = 1\na = 1\n")
    twice = Break("t.twice", "vecq/engines/x.py", "a = 1", "a = 2", ("t.py::t",))
    gone = Break("t.gone", "vecq/engines/x.py", "b = 1", "b = 2", ("t.py::t",))
    broken = Break("t.syntax", "vecq/engines/x.py", "a = 1\na = 1\n", "a = (\n", ("t.py::t",))
    problems = check(tmp_path, [twice, gone, broken])
    assert "occurs 2x" in problems[0] and "occurs 0x" in problems[1]
    assert "does not compile" in problems[2]


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed package `fakepkg` (compiled, as pip installs it) and a test of it in tmp_path."""
    site = tmp_path / "site"
    (site / "fakepkg").mkdir(parents=True)
    (site / "fakepkg" / "mod.py").write_text("VALUE = 1\n")
    compileall.compile_dir(site, quiet=1)  # a stale .pyc must not hide a break of the same size
    (tmp_path / "test_fake.py").write_text(
        "import time\nfrom fakepkg.mod import VALUE\n\n"
        "def test_value():\n    assert VALUE == 1\n\n"
        "def test_hangs():\n    time.sleep(60)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # a second of startup per run saved
    return site


@pytest.mark.parametrize(
    ("new", "test", "verdict", "caught"),
    [
        ("VALUE = 2", "test_value", "CAUGHT: test_value failed by assertion", True),
        ("VALUE = 1  # same value", "test_value", "NOT CAUGHT: the tests passed", False),
        ("VALUE = no_such_name", "test_value", "ERROR, not a failing assertion", False),
        ("VALUE = 3", "test_hangs", "TIMEOUT after 2s", False),
    ],
    ids=["caught", "not-caught", "import-error", "timeout"],
)
def test_the_harness_restores_the_file_and_reads_the_result(
    fake_site: Path, new: str, test: str, verdict: str, caught: bool
) -> None:
    original = (fake_site / "fakepkg" / "mod.py").read_bytes()
    timeout = 2.0 if test == "test_hangs" else 120.0
    brk = Break("fake.one", "fakepkg/mod.py", "VALUE = 1", new, (f"test_fake.py::{test}",), timeout=timeout)
    outcome = gpu_breaks.run_break(brk, fake_site, cwd=fake_site.parent)
    assert outcome.verdict.startswith(verdict), outcome.verdict + "\n" + outcome.detail
    assert outcome.caught is caught
    assert (fake_site / "fakepkg" / "mod.py").read_bytes() == original
    assert not (fake_site / gpu_breaks.BACKUP_DIR).exists()


def test_a_missing_pattern_is_not_run_and_a_killed_runs_file_is_restored(fake_site: Path) -> None:
    brk = Break("fake.gone", "fakepkg/mod.py", "VALUE = 9", "VALUE = 1", ("test_fake.py::test_value",))
    outcome = gpu_breaks.run_break(brk, fake_site, cwd=fake_site.parent)
    assert outcome.verdict.startswith("PATTERN MISSING") and not outcome.caught
    saved = fake_site / gpu_breaks.BACKUP_DIR / "fakepkg" / "mod.py"
    saved.parent.mkdir(parents=True)
    saved.write_text("VALUE = 1\n")
    (fake_site / "fakepkg" / "mod.py").write_text("VALUE = 2  # left broken by a killed run\n")
    assert gpu_breaks.restore_leftovers(fake_site) == ["fakepkg/mod.py"]
    assert (fake_site / "fakepkg" / "mod.py").read_text() == "VALUE = 1\n"


@pytest.mark.parametrize(
    ("rc", "output", "verdict", "caught"),
    [
        (1, "FAILED t.py::a - Failed: Timeout (>300.0s) from pytest-timeout.", "pytest-timeout", True),
        (1, "FAILED t.py::a - Failed: timed out after 300s waiting for restart", "the test's own", True),
        (1, "FAILED t.py::a - RuntimeError: CUDA error\n1 failed", "an exception, not an assertion", True),
        (1, "ERROR t.py::test_a - RuntimeError: fixture broke\n1 error in 2.0s", "ERROR", False),
        (4, "ERROR: not found: t.py::test_b\nno tests ran in 0.1s", "ERROR", False),
        (0, "SKIPPED [1] t.py:3: needs CUDA\n1 skipped in 0.1s", "NOT CAUGHT: every test skipped", False),
    ],
)  # fmt: skip
def test_classify_reads_pytests_exit_code_and_summary(
    rc: int, output: str, verdict: str, caught: bool
) -> None:
    got, was_caught = gpu_breaks.classify(rc, output)
    assert verdict in got and was_caught is caught
