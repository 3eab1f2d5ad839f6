"""A worker's capacity: texts per second of engine-busy time, which it puts in its health record.

The gateway sizes each model's queued-texts limit from the sum over its workers (issue 15,
`vecq.producer.gateway.admission`).  Busy time, not wall time: an idle worker still says what it
does when it works.  It divides by the engine thread's `Done.busy` (the time it held a batch,
never counting an instant twice), not by `Done.seconds`: the runner starts batch k+1 before it
collects batch k, so under full load those overlap and add up to about twice the working time.
Measured on the 2-core development VM (2026-12-03, one ONNX Runtime CPU worker of the default
model, 4,000 texts of `make_corpus(seed=7)` in jobs of 32): `Done.seconds` gave 61 texts/s
against 114 served end to end, `Done.busy` 100 against 102; fed one text at a time, 87 against
69 (the rest of those requests' time is their round trips, not the engine's).
Updated once per batch, never per text."""

from __future__ import annotations

#: Weight kept per batch in the capacity's moving sums (~20 batches of memory).
DECAY = 0.95


class MovingRate:
    """Units per second from moving sums of units and of seconds, one step per batch.

    Sums, not an average of per-batch rates: a few slow batches of long texts would otherwise
    drag the rate far below what the engine sustains.  The prefetch budget (`prefetch.py`) and
    the capacity a worker reports (this module) are both one of these."""

    def __init__(self, decay: float = DECAY) -> None:
        self.decay = decay
        self._units = self._seconds = 0.0

    def add(self, units: float, seconds: float) -> None:
        if seconds <= 0:
            return
        self._units = self.decay * self._units + units
        self._seconds = self.decay * self._seconds + seconds

    @property
    def per_s(self) -> float | None:
        """The rate, None before the first batch."""
        return self._units / self._seconds if self._seconds > 0 else None
