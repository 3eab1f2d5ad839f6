"""Issue 19: each GPU test must FAIL on a deliberately broken build, or it checks nothing.

For every break of `gpu_breaks_list.BREAKS` (one exact-string substitution in one file of the
vecq installed under `--site`, as benchmarks/gpu_tests.sh installs it), this patches the file,
runs the break's pytest node ids against it, restores the file (always), and records whether
the tests failed as they must.  A test run that passes is NOT CAUGHT; one that errors (collection,
import, a fixture) is an ERROR, not a failing assertion, and counts as not caught too: the point
is that the test's own check sees the break.  Before the breaks, the same tests run unbroken
(`--no-baseline` skips that): a test that fails anyway proves nothing about any break.

    python benchmarks/gpu_breaks.py --check        # CPU: every pattern occurs once, patched files compile
    python benchmarks/gpu_breaks.py --list
    python benchmarks/gpu_breaks.py [--site DIR] [--only NAME|AREA,...] [--no-baseline] [--logs DIR]

Exit status 1 if any break was not caught, any pattern is missing, or the harness failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_breaks_list import BREAKS, ROOT, Break, PatternMissing, check, collected, substitute, unknown_tests

#: Where the original of a file being broken waits; a leftover (a killed run) is restored first.
BACKUP_DIR = ".gpu-breaks-backup"
PYTEST = ("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs")
SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$")


@dataclass
class Outcome:
    """What one break's run showed."""

    name: str
    verdict: str
    caught: bool
    detail: str = ""
    seconds: float = 0.0
    skipped: bool = False


def classify(rc: int, output: str) -> tuple[str, bool]:
    """(verdict, caught) of one pytest run of a break's tests, from its exit code and summary.

    Exit 1 with a FAILED test: caught (an assertion, the test's own bounded wait, pytest-timeout,
    or an exception the test did not expect: said which).  Exit 1 with only ERRORs (a fixture
    failed), or 2 and up (collection error, usage error, no tests): an ERROR, not caught.
    Exit 0: NOT CAUGHT (or every test skipped, which shows nothing either)."""
    lines = [m for m in map(SUMMARY.match, output.splitlines()) if m]
    failed = [m for m in lines if m.group(1) == "FAILED"]
    if rc == 1 and failed:
        node, message = failed[0].group(2), _first_error(output) or (failed[0].group(3) or "").strip()
        return f"CAUGHT: {node.split('::')[-1]} failed by {_failure_kind(message)}", True
    if rc == 0:
        counts = _counts(output)
        if counts.get("skipped") and not counts.get("passed"):
            reasons = [ln.strip() for ln in output.splitlines() if ln.startswith("SKIPPED")]
            return f"NOT CAUGHT: every test skipped ({'; '.join(reasons[:2])[:200]})", False
        return "NOT CAUGHT: the tests passed on the broken build", False
    errors = [f"{m.group(2)}: {(m.group(3) or '').strip()}"[:200] for m in lines if m.group(1) == "ERROR"]
    what = errors[0] if errors else _last_line(output)
    return f"ERROR, not a failing assertion (pytest exit {rc}): {what}", False


def _first_error(output: str) -> str:
    """The first `E   ...` line of pytest's report: what failed (the short summary cuts a long
    message to the terminal's width, or leaves it out: `- a...`)."""
    found = next((ln[1:].strip() for ln in output.splitlines() if ln.startswith("E ")), "")
    return found


def _failure_kind(message: str) -> str:
    if message.startswith(("assert", "AssertionError")):
        return f"assertion ({message[:120]})"
    if message.startswith("Failed:") and "Timeout" in message:
        return "pytest-timeout"
    if message.startswith("Failed:"):
        return f"the test's own check ({message[:120]})"
    return f"an exception, not an assertion ({message[:120]})"


def _counts(output: str) -> dict[str, int]:
    tail = "\n".join(output.strip().splitlines()[-3:])
    return {k.rstrip("s") if k == "errors" else k: int(n) for n, k in re.findall(r"(\d+) (\w+)", tail)}


def _last_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def run_pytest(
    ids: Sequence[str], *, timeout: float, cwd: Path = ROOT, extra: Sequence[str] = ("-x",)
) -> tuple[int | None, str]:
    """(exit code, output) of pytest on `ids` in a session of its own (None: timed out).  On a
    timeout or an interruption its whole process group is ended (workers a test started too)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no pyc of a patched file outlives it
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            [sys.executable, *PYTEST, *extra, *ids],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        rc: int | None = None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                _end_group(proc)
        log.seek(0)
        return rc, log.read()


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the pytest run's process group, SIGKILL it if still there 15 s later."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _drop_pyc(path: Path) -> None:
    for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        pyc.unlink(missing_ok=True)


def restore_leftovers(site: Path) -> list[str]:
    """Put back originals a killed run left in the backup dir; the files restored."""
    backup = site / BACKUP_DIR
    restored = []
    for saved in sorted(p for p in backup.rglob("*.py") if p.is_file()) if backup.is_dir() else []:
        rel = saved.relative_to(backup)
        shutil.copy2(saved, site / rel)
        _drop_pyc(site / rel)
        saved.unlink()
        restored.append(str(rel))
    return restored


def run_break(brk: Break, site: Path, *, cwd: Path = ROOT, logs: Path | None = None) -> Outcome:
    """Patch `brk.path` under `site`, run its tests, restore the file whatever happens."""
    target, saved = site / brk.path, site / BACKUP_DIR / brk.path
    original = target.read_bytes()
    try:
        patched = substitute(original.decode("utf-8"), brk)
    except PatternMissing as exc:
        return Outcome(brk.name, str(exc), caught=False)
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(target, saved)
    start = time.monotonic()
    try:
        target.write_text(patched, encoding="utf-8")
        _drop_pyc(target)
        rc, output = run_pytest(brk.tests, timeout=brk.timeout, cwd=cwd)
    finally:
        shutil.copy2(saved, target)
        _drop_pyc(target)
        shutil.rmtree(site / BACKUP_DIR)
    if target.read_bytes() != original:
        return Outcome(brk.name, f"HARNESS: {brk.path} not restored byte for byte", caught=False)
    _save(logs, brk.name, output)
    seconds = time.monotonic() - start
    if rc is None:
        return Outcome(
            brk.name, f"TIMEOUT after {brk.timeout:.0f}s (not caught)", False, _last_line(output), seconds
        )
    verdict, caught = classify(rc, output)
    return Outcome(brk.name, verdict, caught, "" if caught else _tail(output), seconds)


def _save(logs: Path | None, name: str, output: str) -> None:
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.log").write_text(output, encoding="utf-8")


def _tail(output: str, lines: int = 12) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


def ort_cuda() -> bool:
    """Whether the onnxruntime the tests import has the CUDA EP (in a child: ORT stays out of here)."""
    code = "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() == "True"


def site_problems(site: Path, breaks: Iterable[Break]) -> list[str]:
    """Why the tests would not import the files this breaks (each vecq part must come from `site`)."""
    problems = [f"{b.name}: {site / b.path} does not exist" for b in breaks if not (site / b.path).is_file()]
    for part in ("engines", "worker"):
        code = f"import importlib.util as u; print(u.find_spec('vecq.{part}').submodule_search_locations[0])"
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        found = proc.stdout.strip()
        if not found or Path(found).resolve() != (site / "vecq" / part).resolve():
            problems.append(
                f"vecq.{part} is imported from {found or proc.stderr.strip()[-200:]!r}, not {site}"
            )
    return problems


def baseline(breaks: Sequence[Break], *, timeout: float, cwd: Path = ROOT) -> tuple[set[str] | None, str]:
    """The breaks' tests run unbroken: (node ids that failed or errored, output); None when the
    run itself broke down (timed out, could not collect): then no verdict below would mean anything."""
    ids = sorted({t for b in breaks for t in b.tests})
    print(f"baseline: {len(ids)} test ids unbroken ...", flush=True)
    rc, output = run_pytest(ids, timeout=timeout, cwd=cwd, extra=())
    nodes = {m.group(2) for m in map(SUMMARY.match, output.splitlines()) if m}
    if rc == 0:
        print(f"baseline: passed ({_last_line(output)})", flush=True)
        return set(), output
    if rc == 1 and nodes:
        print(f"baseline: FAILED unbroken: {', '.join(sorted(nodes))}", flush=True)
        return nodes, output
    print(f"baseline: did not run through (exit {rc}):\n{_tail(output)}", flush=True)
    return None, output


def fails_unbroken(brk: Break, failing: set[str]) -> list[str]:
    """Which of `brk`'s tests fail without any break (a parametrized id, or its whole file)."""
    return [
        t for t in brk.tests
        if any(f == t or f.startswith(t + "[") or t.startswith(f + "::") for f in failing)
    ]  # fmt: skip


def select(only: str | None) -> list[Break]:
    """The breaks `--only` names (names or areas, comma-separated), all by default."""
    if not only:
        return list(BREAKS)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    unknown = wanted - {b.name for b in BREAKS} - {b.area for b in BREAKS}
    if unknown:
        raise SystemExit(f"--only: no break or area {', '.join(sorted(unknown))} (see --list)")
    return [b for b in BREAKS if b.name in wanted or b.area in wanted]


def report(outcomes: Sequence[Outcome]) -> str:
    """The closing table: one row per break, its result, seconds and verdict."""
    width = max(len(o.name) for o in outcomes)
    rows = [f"{'break':<{width}}  {'result':<16} {'s':>5}  verdict", "-" * (width + 60)]
    for o in outcomes:
        result = "SKIPPED" if o.skipped else ("caught" if o.caught else o.verdict.split(":")[0][:16])
        rows.append(f"{o.name:<{width}}  {result:<16} {o.seconds:5.0f}  {o.verdict[:150]}")
    bad = [o for o in outcomes if not (o.caught or o.skipped)]
    skipped = sum(o.skipped for o in outcomes)
    rows.append(f"{len(outcomes) - len(bad) - skipped} caught, {len(bad)} not, {skipped} skipped")
    return "\n".join(rows)


def _terminated(signum: int, _frame: object) -> None:
    """A SIGTERM (the device call's timeout) unwinds like an exception: the file restored, the
    tests ended.  A second one is ignored, so that it cannot cut the restore short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def prepare(site: Path, breaks: Sequence[Break]) -> tuple[dict[str, Outcome], list[Break]] | None:
    """(the breaks this machine cannot show, as SKIPPED outcomes; the rest), or None when the
    tests would not import the site's files at all."""
    for rel in restore_leftovers(site):
        print(f"restored {rel} from a run that was killed mid-break", flush=True)
    problems = site_problems(site, breaks)
    if problems:
        print("HARNESS: " + "\nHARNESS: ".join(problems))
        return None
    ort = any(b.needs_ort for b in breaks) and ort_cuda()
    skipped = {}
    for brk in breaks:
        why = brk.why_skipped(ort)
        if why:
            skipped[brk.name] = Outcome(brk.name, why, caught=False, skipped=True)
    return skipped, [b for b in breaks if b.name not in skipped]


def run_one(brk: Break, site: Path, failing: set[str], logs: Path | None) -> Outcome:
    print(brk.describe(), flush=True)
    unbroken = fails_unbroken(brk, failing)
    if unbroken:
        outcome = Outcome(brk.name, f"BASELINE FAILED: {', '.join(unbroken)} fails unbroken", caught=False)
    else:
        outcome = run_break(brk, site, logs=logs)
    print(f"   {outcome.verdict} ({outcome.seconds:.0f} s)", flush=True)
    if outcome.detail:
        print("   | " + outcome.detail.replace("\n", "\n   | "), flush=True)
    return outcome


def run_all(breaks: Sequence[Break], site: Path, *, with_baseline: bool, logs: Path | None) -> int:
    """Every break in turn; the table at the end, also when a SIGTERM cut the run short."""
    signal.signal(signal.SIGTERM, _terminated)
    ready = prepare(site, breaks)
    if ready is None:
        return 1
    outcomes, runnable = ready
    try:
        failing: set[str] | None = set()
        if with_baseline and runnable:
            failing, output = baseline(runnable, timeout=sum(b.timeout for b in runnable))
            _save(logs, "baseline", output)
            if failing is None:
                return 1
        for brk in runnable:
            outcomes[brk.name] = run_one(brk, site, failing, logs)
    except (SystemExit, KeyboardInterrupt) as exc:
        restore_leftovers(site)
        print(f"INTERRUPTED ({type(exc).__name__}): the file being broken is restored", flush=True)
    for brk in breaks:
        outcomes.setdefault(brk.name, Outcome(brk.name, "NOT RUN: interrupted", caught=False))
    print(report([outcomes[b.name] for b in breaks]), flush=True)
    return 0 if all(o.caught or o.skipped for o in outcomes.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path("/tmp/vecq-site"), help="where vecq is installed")
    parser.add_argument("--only", help="comma-separated break names or areas (kernels, packed, ...)")
    parser.add_argument("--check", action="store_true", help="CPU: patterns against the repo's sources")
    parser.add_argument("--list", action="store_true", help="print the breaks and exit")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the unbroken run")
    parser.add_argument("--logs", type=Path, help="write each break's pytest output here")
    args = parser.parse_args(argv)
    breaks = select(args.only)
    if args.list:
        print("\n".join(b.describe() for b in breaks))
        return 0
    if args.check:
        problems = check(ROOT, breaks) + unknown_tests(collected(ROOT, breaks), breaks)
        print("\n".join(problems) or f"{len(breaks)} breaks: each pattern occurs once, patched files compile")
        return 1 if problems else 0
    return run_all(breaks, args.site.resolve(), with_baseline=args.baseline, logs=args.logs)


if __name__ == "__main__":
    sys.exit(main())
