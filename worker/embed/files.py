"""The resumable work area of a `vecq embed` run, between the corpus and the vector file.

Rows are written by chunk index into a preallocated .npy file, and a chunk is marked done only
after its rows are on disk, so a run that is killed and started again skips finished chunks,
never writes a row twice, and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .formats import KEEPS_IDS, WRITERS, CorpusError, Stamp


def run_id(path: Path, *, model: str, chunk_size: int, options: Mapping[str, object] | None = None) -> str:
    """Same file, model, chunking and model options (prompt, dimensions) → same id, so a second
    run finds the first one's work, and a run with another prompt or size never adopts it.
    Options left None do not enter the digest: ids of runs without them are as before."""
    given = sorted((k, repr(v)) for k, v in (options or {}).items() if v is not None)
    h = hashlib.sha256(f"{model}\0{chunk_size}\0".encode() + (repr(given).encode() if given else b""))
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


#: Seconds between commits: chunks written since the last one are marked done together.
COMMIT_S = 0.5


class WorkArea:
    """`OUT.vecq-partial/`: the vectors as a .npy file, one done-byte per chunk, and which run
    they are of.

    Rows go into the .npy file with `os.pwrite` at their chunk's offset (no memory map: its page
    faults and a whole-map msync per chunk cost a bulk run 12 µs per text); every `COMMIT_S` the
    file is synced and only then are the chunks written since marked done, so a done byte never
    reaches the disk before its rows.  A kill loses at most the last half second of work.  The
    vector width is learnt from the first chunk, so the producer side never needs the model; a
    work area left by another input, model or chunking is discarded.
    """

    def __init__(self, out: Path, *, run: str, rows: int, chunk_size: int) -> None:
        self.dir = out.with_name(out.name + ".vecq-partial")
        self.run, self.rows, self.chunk_size = run, rows, chunk_size
        self.chunks = (rows + chunk_size - 1) // chunk_size
        self.dim: int | None = None
        self._fd: int | None = None
        self._offset = 0  # of row 0 in the .npy file (its header's length)
        self._done: np.ndarray | None = None
        self._pending: list[int] = []
        self._committed_at = time.monotonic()
        meta = self._read_meta()
        if meta and (meta["run"], meta["rows"], meta["chunk_size"]) == (run, rows, chunk_size):
            self._open(int(meta["dim"]), create=False)
        elif self.dir.exists():
            shutil.rmtree(self.dir)

    def _read_meta(self) -> dict | None:
        try:
            return json.loads((self.dir / "run.json").read_text())
        except (OSError, ValueError):
            return None

    def _open(self, dim: int, *, create: bool) -> None:
        vectors, done = self.dir / "vectors.npy", self.dir / "done.bin"
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
            np.zeros(max(self.chunks, 1), dtype=np.uint8).tofile(done)
            np.lib.format.open_memmap(vectors, mode="w+", dtype=np.float32, shape=(self.rows, dim)).flush()
        with vectors.open("rb") as f:  # where the rows start: after the .npy header
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            self._offset = f.tell()
        self.dim = dim
        self._fd = os.open(vectors, os.O_RDWR)
        self._done = np.memmap(done, dtype=np.uint8, mode="r+", shape=(max(self.chunks, 1),))
        if create:  # written last: a work area without run.json is never resumed
            meta = {"run": self.run, "rows": self.rows, "chunk_size": self.chunk_size, "dim": dim}
            (self.dir / "run.json").write_text(json.dumps(meta))

    def done_chunks(self) -> set[int]:
        if self._done is None:
            return set()
        return {int(i) for i in np.flatnonzero(self._done[: self.chunks])}

    def rows_in(self, chunks: set[int]) -> int:
        """How many rows these chunks hold (the last one may be short)."""
        return sum(min(self.chunk_size, self.rows - c * self.chunk_size) for c in chunks)

    def write(self, chunk: int, vectors: np.ndarray) -> None:
        """Rows of one chunk at their place; they count as done at the next commit."""
        if self._fd is None:
            self._open(int(vectors.shape[1]), create=True)
        assert self._fd is not None and self.dim is not None
        start = chunk * self.chunk_size
        expected = (min(self.chunk_size, self.rows - start), self.dim)
        if vectors.shape != expected:
            raise AssertionError(f"chunk {chunk}: {vectors.shape} != {expected} (vecq bug)")
        data = np.ascontiguousarray(vectors, dtype="<f4")
        os.pwrite(self._fd, data.data, self._offset + start * self.dim * 4)
        self._pending.append(chunk)
        if time.monotonic() - self._committed_at >= COMMIT_S:
            self.commit()

    def commit(self) -> None:
        """Sync the rows written so far, then mark their chunks done (and sync that)."""
        self._committed_at = time.monotonic()
        if not self._pending or self._fd is None or self._done is None:
            return
        os.fsync(self._fd)
        self._done[self._pending] = 1
        self._done.flush()  # type: ignore[attr-defined]
        self._pending = []

    def finish(self, out: Path, ids: list[object] | None, stamp: Stamp | None = None) -> None:
        """Write the final file atomically and drop the work area (a .npy is moved, not copied)."""
        vectors = self.vectors()
        if out.suffix.lower() == ".npy":
            del vectors
            os.replace(self.dir / "vectors.npy", out)
        else:
            write_atomically(out, vectors, ids, stamp)
        self.drop()

    def vectors(self) -> np.ndarray:
        """All rows, once every chunk is written (memory-mapped, read-only)."""
        self.commit()
        if self._fd is None or len(self.done_chunks()) != self.chunks:
            raise AssertionError("vectors() before every chunk is written (vecq bug)")
        os.close(self._fd)
        self._fd = self._done = None
        return np.load(self.dir / "vectors.npy", mmap_mode="r")

    def drop(self) -> None:
        """Remove the work area: the final file is written."""
        shutil.rmtree(self.dir, ignore_errors=True)


def write_atomically(out: Path, vectors: np.ndarray, ids: list[object] | None, stamp: Stamp | None) -> None:
    """The final file through a temporary beside it: a reader never sees half a file."""
    tmp = out.with_name(out.name + ".tmp")
    WRITERS[out.suffix.lower()](tmp, vectors, ids, stamp)
    os.replace(tmp, out)


def check_output(out: Path, *, ids: bool = False) -> None:
    """Refuse an output that could not be written, or would lose the ids asked for, before any
    text is embedded: a failed write after the first chunk was a traceback, minutes in.  The
    probe file goes where the work area and the final file will."""
    suffix = out.suffix.lower()
    if suffix not in WRITERS:
        raise CorpusError(f"{out}: unsupported output type {out.suffix!r} (use {', '.join(WRITERS)})")
    if ids and suffix not in KEEPS_IDS:
        raise CorpusError(
            f"{out}: a {suffix} file holds vectors only and --id-field's ids would be lost; "
            f"write {' or '.join(sorted(KEEPS_IDS))} (an id beside each vector), or drop --id-field"
        )
    if not out.parent.is_dir():
        raise CorpusError(f"{out.parent}: no such directory")
    if out.is_dir():
        raise CorpusError(f"{out}: is a directory")
    probe = out.with_name(f".{out.name}.vecq-probe-{os.getpid()}")
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CorpusError(f"{out}: cannot write in {out.parent} ({exc.strerror or exc})") from None
