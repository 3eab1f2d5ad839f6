"""The engine thread: the one owner of the model, fed one prefetched batch at a time.

The worker's main thread does Redis I/O and planning; this thread makes each planned batch's
inputs (a padded batch, or a token batch for an engine that packs) and runs the engine.  The
hand-off slot holds exactly one batch, so while batch k runs, batch k+1 is ready and the main
thread is already tokenizing and writing back around it; an interactive batch may take the slot
from a bulk one that has not started (`offer_first`).  On an engine that runs asynchronously
(`vecq.engines.base.start`), batch k+1 is prepared and started before batch k is collected, so
the device never waits for the host between them.  A lone small batch may instead run on the
caller's thread while this one is idle (`run_here`): a query then crosses no thread at all.
Nothing here can die silently: an engine error becomes that batch's `Done.error`, and anything
else that escapes is reported as `Crashed` on the results queue before the thread ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vecq.engines.base import Batch, Engine, Pending, TokenBatch, is_ready, start
from vecq.engines.tokenizer import TextTokenizer

from .errors import engine_hung, error_line
from .packing import PackedPlan
from .planner import PlannedBatch

#: A batch either planner cut.
Planned = PlannedBatch | PackedPlan

log = logging.getLogger(__name__)

_STOP = object()

#: Seconds the main thread yields, at most, after handing a batch to an idle asynchronous engine,
#: until the engine thread has started it (`EngineRunner.offer`).
LAUNCH_WAIT_S = 0.002


@dataclass(frozen=True)
class Done:
    """A batch back from the engine: vectors for its real rows, or the one-line error."""

    planned: Planned
    vectors: np.ndarray | None
    #: from its start to its collection; batches in turn overlap (k+1 starts before k is
    #: collected), so these add up to more than the engine's working time
    seconds: float
    real_tokens: int
    error: str | None = None
    #: the part of `seconds` after the batch before it was collected: these add up to the time
    #: the engine thread held a batch (what the capacity, `capacity.MovingRate`, divides by)
    busy: float = 0.0


@dataclass(frozen=True)
class Crashed:
    """The engine thread itself failed (a vecq bug or a broken engine): the worker must exit."""

    error: BaseException


class EngineRunner:
    """Runs planned batches on `engine` in one daemon thread."""

    def __init__(
        self, engine: Engine, tokenizer: TextTokenizer, *, wake: threading.Event | None = None
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.handoff = _Slot()
        self.results: queue.Queue[Done | Crashed] = queue.Queue()
        #: set whenever a result is put: the main thread waits on it (and on tokenizing) at once
        self.wake = wake or threading.Event()
        self.in_flight = 0
        #: monotonic start of the engine call now running (None: idle); read by the watchdog.
        self.busy_since: float | None = None
        self._thread = threading.Thread(target=self._main, name="vecq-engine", daemon=True)
        self._warm = threading.Event()
        self._warm_error: BaseException | None = None
        self._last_end = 0.0  # perf_counter when the engine thread last reported a batch
        #: set once the engine thread has started the batch `offer` handed to it while idle
        self.launched = threading.Event()
        self.asynchronous = getattr(engine, "start", None) is not None
        #: `run_here` may run batches off the engine thread: an asynchronous engine (its call is
        #: a fraction of a millisecond of host work) that is not tied to the thread that warmed
        #: it up (`thread_bound`: ONNX Runtime's CUDA graphs are per thread)
        self.runs_anywhere = self.asynchronous and not getattr(engine, "thread_bound", False)

    def start(self) -> None:
        """Start the thread and wait while it warms the engine up.

        Warmup runs on this thread, not the caller's, because ONNX Runtime keeps CUDA graphs in
        the per-thread context of the thread that ran them: graphs captured on the main thread
        are invisible to the engine thread, which would capture each shape again on its first
        real batches (BENCHMARKS.md: the ~70 ms first requests on the H100).
        """
        self._thread.start()
        self._warm.wait()
        if self._warm_error is not None:
            raise self._warm_error

    def offer(self, planned: Planned) -> bool:
        """Hand `planned` over if the hand-off slot is free; False if the engine is still behind.

        Handed to an idle engine that runs asynchronously, the batch is started before this
        returns (up to `LAUNCH_WAIT_S`): `engine.start` is ~0.2 ms of Python (pack, copies,
        replay) that needs the GIL, and the caller's next ~0.3 ms of its pass (the take ahead,
        bookkeeping) would hold it meanwhile -- on the H200 a lone query's start waited ~0.3 ms
        for it that way (BENCHMARKS.md, eighth session).  Blocked here, the caller lets the device
        begin first; an engine already busy is not waited for.
        """
        idle = self.in_flight == 0
        if idle:
            self.launched.clear()
        if not self.handoff.put(planned):
            return False
        self.in_flight += 1
        if idle and self.asynchronous:
            self.launched.wait(LAUNCH_WAIT_S)
        return True

    def run_here(self, planned: Planned, *, limit: float) -> Done:
        """Run `planned` on the calling thread, now, and return its result.

        Only while the engine thread holds nothing (`in_flight == 0`: no batch waits in the slot
        or runs on the device, and only the caller hands batches over), and only where
        `runs_anywhere`.  A lone query handed over crossed two threads, each woken from sleep:
        on the H200 host ~0.1 ms to reach the engine thread and ~0.2 ms back before its write
        (BENCHMARKS.md, twelfth session).  The device is waited for by polling, so a call that
        never returns still ends the worker after `limit` seconds, as the watchdog would."""
        assert self.in_flight == 0 and self.runs_anywhere, "run_here beside a busy engine (vecq bug)"
        self.busy_since = since = time.monotonic()
        try:
            begun = self._start(planned)
            if isinstance(begun, Done):  # it failed before reaching the device
                return begun
            while not is_ready(begun.pending):
                if time.monotonic() - since > limit:
                    raise engine_hung(time.monotonic() - since, limit, "its job(s)")
            return self._collect(begun)
        finally:
            self.busy_since = None

    def offer_first(self, planned: PackedPlan) -> tuple[bool, Planned | None]:
        """Hand over an interactive batch ahead of a bulk one waiting in the slot: (whether it
        went, the bulk batch it replaced, for the planner to take back).  It does not go when
        the slot holds an interactive batch already."""
        placed, bumped = self.handoff.replace(planned, lambda old: not getattr(old, "interactive", True))
        if placed and bumped is None:
            self.in_flight += 1
        return placed, bumped  # type: ignore[return-value]

    @property
    def slot_free(self) -> bool:
        return self.handoff.empty

    def wait(self, timeout: float) -> Done | Crashed | None:
        """The next finished batch, waiting up to `timeout` seconds."""
        try:
            item = self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, Done):
            self.in_flight -= 1
        return item

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread; a hung engine call is left behind (daemon thread) after `timeout`."""
        if self._thread.is_alive():
            if not self.handoff.put(_STOP, timeout=timeout):
                return
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            self.engine.warmup()
        except BaseException as exc:
            self._warm_error = exc
            return
        finally:
            self._warm.set()
        try:
            self._serve()
        except BaseException as exc:  # report, never die silently
            log.exception("engine thread crashed")
            self._report(Crashed(exc))

    def _serve(self) -> None:
        """Start each batch as it comes; collect the one before it once the next has started, or
        at once when nothing else is waiting.  Results go out in the order batches started."""
        begun: _Begun | None = None
        while True:
            planned = self._next(holding=begun is not None)
            if planned is None:  # nothing waiting: finish what is on the device
                assert begun is not None
                self._finish(begun)
                begun = self.busy_since = None
                continue
            if planned is _STOP:
                if begun is not None:
                    self._finish(begun)
                return
            if begun is None:
                self.busy_since = time.monotonic()
            started = self._start(planned)  # type: ignore[arg-type]
            self.launched.set()
            if begun is not None:
                self._finish(begun)
            if isinstance(started, Done):  # it failed before reaching the device
                self._report(started)
                begun = None
            else:
                begun = started
            self.busy_since = None if begun is None else begun.since

    def _next(self, *, holding: bool) -> object | None:
        """The next hand-off; without waiting (None if there is none) while a batch is begun."""
        return self.handoff.get(block=not holding)

    def _finish(self, begun: _Begun) -> None:
        self._report(self._collect(begun))

    def _report(self, item: Done | Crashed) -> None:
        self.results.put(item)
        self.wake.set()

    def _start(self, planned: Planned) -> _Begun | Done:
        t0 = time.perf_counter()
        try:
            batch = planned.inputs(self.tokenizer)
            return _Begun(planned, batch, start(self.engine, batch), t0, time.monotonic())
        except Exception as exc:
            return self._failed(planned, exc, t0)

    def _collect(self, begun: _Begun) -> Done:
        planned, batch = begun.planned, begun.batch
        try:
            vectors = np.asarray(begun.pending.result()[: batch.rows], dtype=np.float32)
            if vectors.shape != (batch.rows, self.engine.dim):
                raise ValueError(
                    f"engine returned shape {vectors.shape}, expected {(batch.rows, self.engine.dim)}"
                )
        except Exception as exc:
            return self._failed(planned, exc, begun.t0)
        end = time.perf_counter()
        return Done(planned, vectors, end - begun.t0, batch.real_tokens, busy=self._busy(begun.t0, end))

    def _failed(self, planned: Planned, exc: Exception, t0: float) -> Done:
        log.warning(
            "batch %s of %d rows failed: %s", planned.label, planned.texts, error_line(exc, limit=500)
        )
        end = time.perf_counter()
        return Done(planned, None, end - t0, 0, error=error_line(exc, limit=500), busy=self._busy(t0, end))

    def _busy(self, t0: float, end: float) -> float:
        """Seconds from `t0`, or from the previous batch's end if later, to `end`: batches end
        in the order they start, so these never count one instant twice."""
        busy = end - max(t0, self._last_end)
        self._last_end = end
        return busy


@dataclass(frozen=True)
class _Begun:
    """A batch the engine has started and the thread has not collected yet."""

    planned: Planned
    batch: Batch | TokenBatch
    pending: Pending
    t0: float  # perf_counter at its start, for its Done.seconds
    since: float  # monotonic at its start, for the watchdog


class _Slot:
    """The one-batch hand-off between the main thread (puts) and the engine thread (gets)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item: object | None = None

    @property
    def empty(self) -> bool:
        return self._item is None

    def put(self, item: object, timeout: float = 0.0) -> bool:
        """Place `item` if the slot is (or, within `timeout`, becomes) free."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._item is None, timeout=timeout):
                return False
            self._item = item
            self._cv.notify_all()
            return True

    def replace(self, item: object, bump: Callable[[object], bool]) -> tuple[bool, object | None]:
        """Place `item` in a free slot, or in place of one for which `bump` is true (returned)."""
        with self._cv:
            old = self._item
            if old is not None and (old is _STOP or not bump(old)):
                return False, None
            self._item = item
            self._cv.notify_all()
            return True, old

    def get(self, *, block: bool) -> object | None:
        with self._cv:
            if block:
                self._cv.wait_for(lambda: self._item is not None)
            item, self._item = self._item, None
            if item is not None:
                self._cv.notify_all()
            return item
