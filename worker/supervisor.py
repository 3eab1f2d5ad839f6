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

Several models (`vecq worker --model A --model B`, with or without `--gpus`): one child per
(model, GPU, replica), each a plain single-model worker with its own engine, CUDA context and
queue set.  Their share of a device is the OS's and the GPU's time-slicing between processes;
inside each child its lanes stay ordered (interactive before bulk), so one model's bulk run
queues behind nothing of the other's (benchmarks/probes/two_models.py measures it).  Names are
read from each model's manifest or config before any child starts, so that two models of one
name -- which would share, and fight over, one queue set -- are refused in one line.
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
from pathlib import Path

from vecq.engines.backends.onnx import physical_cores
from vecq.engines.bundle import MANIFEST, read_manifest
from vecq.engines.embedder import DEFAULT_MODEL_NAME
from vecq.engines.spec import check_model_dir, read_spec, resolve_model
from vecq.producer.keys import model_name

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
#: What names a child's model: with several models its flags do, never the supervisor's env.
MODEL_ENV = ("VECQ_BUNDLE", "VECQ_MODEL", "VECQ_NAME")


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


@dataclass(frozen=True)
class Served:
    """One of the models a supervisor serves: the name its queues derive from, and the flags that
    give a child worker that model (`--model DIR`, `--name N` when one was given)."""

    name: str
    args: tuple[str, ...]
    #: How errors name it: the flag and path it came from.
    where: str


def served(flag: str, path: Path, name: str | None = None) -> Served:
    """The model `--bundle`/`--model` `path` names, and its queue name: `name`, else the model's
    own, read as the worker reads it (the bundle's manifest, the model dir's config or the
    Hugging Face id; `default`: the default model's) but without loading anything."""
    args = (flag, str(path), *(("--name", name) if name else ()))
    return Served(name=model_name(name or _own_name(path)), args=args, where=f"{flag} {path}")


def _own_name(path: Path) -> str:
    if str(path) == "default":
        return DEFAULT_MODEL_NAME
    root, cached = resolve_model(path)
    if (root / MANIFEST).is_file():
        return read_manifest(root).name
    return read_spec(check_model_dir(root), name=cached).name


def distinct(models: Sequence[Served]) -> list[Served]:
    """`models`, or `ValueError` (one line) if two share a name: they would serve one queue set."""
    seen: dict[str, Served] = {}
    for model in models:
        first = seen.setdefault(model.name, model)
        if first is not model:
            raise ValueError(
                f"{first.where} and {model.where} are both model {model.name!r} (one queue set): "
                f"name one of them, e.g. --model NAME=DIR"
            )
    return list(models)


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
        models: Sequence[Served] = (),
    ) -> Supervisor:
        """One child per (GPU, model, replica); metrics ports count up from `metrics_port`, one
        each.  No `models`: the one model `worker_args` name (or the default)."""
        each: list[Served | None] = [*models] or [None]
        # the workers share this host's CPUs: each tokenizes on its share of them
        workers = len(gpus) * len(each) * workers_per_gpu
        threads = tokenize_threads_for(len(os.sched_getaffinity(0)), workers=workers)
        children: list[Child] = []
        for gpu in gpus:
            for model in each:
                for replica in range(workers_per_gpu):
                    slot = len(children)
                    argv = _argv(
                        worker_args, model, "cuda:0", slot, metrics_port, worker_name, f"gpu{gpu}.{replica}"
                    )
                    env = _env(model, {"CUDA_VISIBLE_DEVICES": gpu}, VECQ_TOKENIZE_THREADS=str(threads))
                    label = f"{model.name} on gpu {gpu}: worker {replica}" if model else ""
                    children.append(Child(slot=slot, gpu=gpu, argv=argv, env=env, label=label))
        return cls(children)

    @classmethod
    def for_device(
        cls,
        device: str,
        worker_args: Sequence[str],
        models: Sequence[Served],
        *,
        metrics_port: int | None = None,
        worker_name: str | None = None,
    ) -> Supervisor:
        """Several models on one device (no `--gpus`): one child each on `device`.  On the CPU
        each engine gets its share of the physical cores (`VECQ_THREADS`, unless set): N engines
        of all the cores each would only contend for them."""
        shares = {
            "VECQ_TOKENIZE_THREADS": str(
                tokenize_threads_for(len(os.sched_getaffinity(0)), workers=len(models))
            )
        }
        if device == "cpu":
            shares["VECQ_THREADS"] = str(max(1, physical_cores() // len(models)))
        children: list[Child] = []
        for slot, model in enumerate(models):
            argv = _argv(worker_args, model, device, slot, metrics_port, worker_name, "")
            env = _env(model, {}, **shares)
            children.append(
                Child(slot=slot, gpu=device, argv=argv, env=env, label=f"{model.name} on {device}")
            )
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


def _argv(
    worker_args: Sequence[str],
    model: Served | None,
    device: str,
    slot: int,
    metrics_port: int | None,
    worker_name: str | None,
    where: str,
) -> list[str]:
    """A child's command: the supervisor's flags, its model's, its device, metrics port and name."""
    argv = [*CHILD_COMMAND, *worker_args, *(model.args if model else ()), "--device", device]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port + slot)]
    if worker_name is not None:
        parts = (worker_name, model.name if model else "", where)
        argv += ["--worker-name", ".".join(p for p in parts if p)]
    return argv


def _env(model: Served | None, forced: dict[str, str], **defaults: str) -> dict[str, str]:
    """A child's environment: this one, with `forced`, and `defaults` unless already set.  A child
    of several models is named its model by its flags only (`MODEL_ENV` dropped)."""
    env = {**os.environ, **forced}
    if model is not None:
        for key in MODEL_ENV:
            env.pop(key, None)
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env
