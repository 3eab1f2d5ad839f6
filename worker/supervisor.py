"""`vecq worker --gpus`: one worker process per GPU, started, restarted and stopped together.

Processes, not threads: each worker owns one CUDA context, one engine and its own Python GIL, so
GPUs do not queue behind one interpreter, and a crash takes down one GPU's worker, not all.  A
child sees only its GPU (`CUDA_VISIBLE_DEVICES=<id>`, `--device cuda:0`), the way TEI and vLLM
pin replicas; everything else (Redis URL, bundle, lanes) is the supervisor's own flags and env.

Workers need no coordination with each other: each takes jobs from the shared queues with an
atomic Lua script, so the same job can never be taken twice, on one machine or many.

Lifecycle: SIGTERM/SIGINT is passed to every child, which drains its in-flight batch and exits 0;
the supervisor exits 0 once all have.  Children run in sessions of their own: a terminal's Ctrl-C
(SIGINT to its foreground process group) reaches the supervisor only, which then sends each child
one SIGTERM; a child that got both would take the second signal as "exit now, skip the drain".
Children stop in stages (`Child.stage`, lowest first: `vecq serve` stops its gateway before the
workers that answer its requests), each stage within its children's `stop_timeout`.

A child that dies is restarted with capped backoff (its jobs are recovered by the live workers
meanwhile).  A child that fails its very first start with exit code 2 (a bad flag, bundle or
Redis URL) stops the whole group: no restart can fix that.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .processes import die_with_parent
from .settings import tokenize_threads_for

log = logging.getLogger(__name__)

#: The command a child runs (`python -m vecq.worker` = `vecq`), so it needs no console script.
CHILD_COMMAND = (sys.executable, "-m", "vecq.worker", "worker")
#: A child that lived this long is healthy again: its next crash restarts it without delay.
HEALTHY_AFTER_S = 30.0
BACKOFF_CAP_S = 30.0
#: Seconds children get to drain after SIGTERM before they are killed.
STOP_TIMEOUT_S = 120.0
USAGE_ERROR = 2  # click's and the worker CLI's exit code for bad flags / settings


class NoGPUs(RuntimeError):
    """`--gpus all` found no GPU."""


def visible_gpus() -> list[str]:
    """The GPUs this process may use: `CUDA_VISIBLE_DEVICES` if set, else what `nvidia-smi` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        if ids and not ids[0].startswith("-"):
            return ids
        raise NoGPUs(f"--gpus all: CUDA_VISIBLE_DEVICES={env!r} hides every GPU")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise NoGPUs("--gpus all: no GPU found (no CUDA_VISIBLE_DEVICES and no nvidia-smi on PATH)")
    out = subprocess.run(
        [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
    )
    ids = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not ids:
        raise NoGPUs(f"--gpus all: nvidia-smi listed no GPU ({' '.join(out.stderr.split())[:200]})")
    return ids


def parse_gpus(spec: str) -> list[str]:
    """`all`, or a comma list of GPU indexes or UUIDs (`0,1`, `GPU-3f…`); order kept, repeats refused."""
    if spec.strip().lower() == "all":
        return visible_gpus()
    ids = [g.strip() for g in spec.split(",") if g.strip()]
    if not ids:
        raise ValueError(f"--gpus: {spec!r} names no GPU (use 'all' or e.g. '0,1')")
    bad = [g for g in ids if not (g.isdigit() or g.startswith(("GPU-", "MIG-")))]
    if bad:
        raise ValueError(f"--gpus: {bad[0]!r} is not a GPU index or UUID")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus: {spec!r} names a GPU twice (use --workers-per-gpu for several per GPU)")
    return ids


@dataclass
class Child:
    """One child process (a worker, or `vecq serve`'s gateway) and what it takes to start it again."""

    slot: int
    gpu: str
    argv: list[str]
    env: dict[str, str]
    #: How logs name it (default: "gpu G: worker N").
    label: str = ""
    #: Stop stage: lower stages are stopped (and waited for) first.
    stage: int = 1
    #: Seconds its stage may take to stop (default: the supervisor's `stop_timeout`).
    stop_timeout: float | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    restart_at: float | None = None
    backoff: float = 1.0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, env=self.env, preexec_fn=die_with_parent, start_new_session=True
        )
        self.started_at, self.starts, self.restart_at = time.monotonic(), self.starts + 1, None
        log.info("%s started (pid %d)", self.what, self.proc.pid)

    @property
    def what(self) -> str:
        return self.label or f"gpu {self.gpu}: worker {self.slot}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    """Runs `children` until a stop signal; see the module docstring for the rules."""

    children: list[Child]
    stop_timeout: float = STOP_TIMEOUT_S
    _stopping: bool = field(default=False, init=False)

    @classmethod
    def for_gpus(
        cls,
        gpus: Sequence[str],
        worker_args: Sequence[str],
        *,
        workers_per_gpu: int = 1,
        metrics_port: int | None = None,
        worker_name: str | None = None,
    ) -> Supervisor:
        """One child per (GPU, replica); metrics ports count up from `metrics_port`, one each."""
        children = []
        # the workers share this host's CPUs: each tokenizes on its share of them
        threads = tokenize_threads_for(len(os.sched_getaffinity(0)), workers=len(gpus) * workers_per_gpu)
        for gpu in gpus:
            for replica in range(workers_per_gpu):
                slot = len(children)
                argv = [*CHILD_COMMAND, *worker_args, "--device", "cuda:0"]
                if metrics_port is not None:
                    argv += ["--metrics-port", str(metrics_port + slot)]
                if worker_name is not None:
                    argv += ["--worker-name", f"{worker_name}.gpu{gpu}.{replica}"]
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                env.setdefault("VECQ_TOKENIZE_THREADS", str(threads))
                children.append(Child(slot=slot, gpu=gpu, argv=argv, env=env))
        return cls(children)

    def run(self) -> int:
        """Exit code: 0 after a clean stop, 2 when a child cannot start at all, else 1."""
        with self.signals():
            self.start()
            while not self.stopping:
                failed = self.tend()
                if failed is not None:
                    self.stop()
                    return failed
                time.sleep(0.2)
            return self.stop()

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT set `stopping` (a second one kills the children) while inside."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def stopping(self) -> bool:
        """A stop signal came."""
        return self._stopping

    def start(self) -> None:
        """Start every child not started yet (`vecq serve` adds its gateway once workers are up)."""
        for child in self.children:
            if child.proc is None:
                child.start()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stopping:  # a second signal: stop waiting on the drain
            for child in self.children:
                if child.alive:
                    child.proc.kill()  # type: ignore[union-attr]
        self._stopping = True
        log.info("%s: stopping %d child process(es)", signal.Signals(signum).name, len(self.children))

    def tend(self) -> int | None:
        """Restart what died; the group's exit code if one can never start."""
        now = time.monotonic()
        for child in self.children:
            if child.alive:
                continue
            if child.restart_at is None:  # just noticed it died
                rc = child.proc.returncode if child.proc else None
                lived = now - child.started_at
                if rc == USAGE_ERROR and child.starts == 1 and lived < HEALTHY_AFTER_S:
                    log.error("%s exited with code 2 at start; stopping all workers", child.what)
                    return USAGE_ERROR
                if lived >= HEALTHY_AFTER_S:
                    child.backoff = 1.0
                child.restart_at = now + child.backoff
                log.warning(
                    "%s exited (code %s) after %.1fs; restarting in %.0fs",
                    child.what, rc, lived, child.backoff,
                )  # fmt: skip
                child.backoff = min(child.backoff * 2, BACKOFF_CAP_S)
            elif now >= child.restart_at:
                child.start()
        return None

    def stop(self) -> int:
        """SIGTERM every live child, stage by stage, and wait for its drain; 0 if each exited 0."""
        codes: list[int] = []
        for stage in sorted({child.stage for child in self.children}):
            codes += self._stop_stage([c for c in self.children if c.stage == stage])
        return 0 if all(c == 0 for c in codes) else 1

    def _stop_stage(self, children: list[Child]) -> list[int]:
        running = [child for child in children if child.alive]
        for child in running:
            child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        budget = max((c.stop_timeout or self.stop_timeout for c in children), default=0.0)
        deadline = time.monotonic() + budget
        codes = []
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in %.1fs; killing it", child.what, budget)
                child.proc.kill()
                child.proc.wait()
            # Ended by the SIGTERM just sent (uvicorn re-raises it after a clean shutdown): as asked.
            codes.append(0 if child.proc.returncode == -signal.SIGTERM else child.proc.returncode)
        return codes
