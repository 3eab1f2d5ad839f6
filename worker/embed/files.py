"""The resumable work area of a `vecq embed` run, between the corpus and the vector file.

Rows are written by chunk index into a preallocated memory map, and a chunk is marked done only
after its rows are on disk, so a run that is killed and started again skips finished chunks,
never writes a row twice, and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .formats import WRITERS, CorpusError


def run_id(path: Path, *, model: str, chunk_size: int) -> str:
    """Same file, model and chunking → same id, so a second run finds the first one's work."""
    h = hashlib.sha256(f"{model}\0{chunk_size}\0".encode())
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class WorkArea:
    """`OUT.vecq-partial/`: the vectors memmap, one done-byte per chunk, and which run they are of.

    The vector width is learnt from the first finished chunk, so the producer side never needs
    the model; a work area left by another input, model or chunking is discarded.
    """

    def __init__(self, out: Path, *, run: str, rows: int, chunk_size: int) -> None:
        self.dir = out.with_name(out.name + ".vecq-partial")
        self.run, self.rows, self.chunk_size = run, rows, chunk_size
        self.chunks = (rows + chunk_size - 1) // chunk_size
        self.vectors: np.ndarray | None = None
        self._done: np.ndarray | None = None
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
        mode = "w+" if create else "r+"
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
            np.zeros(max(self.chunks, 1), dtype=np.uint8).tofile(self.dir / "done.bin")
        self.vectors = np.lib.format.open_memmap(
            self.dir / "vectors.npy", mode=mode, dtype=np.float32, shape=(self.rows, dim)
        )
        self._done = np.memmap(self.dir / "done.bin", dtype=np.uint8, mode="r+", shape=(max(self.chunks, 1),))
        if create:  # written last: a work area without run.json is never resumed
            meta = {"run": self.run, "rows": self.rows, "chunk_size": self.chunk_size, "dim": dim}
            (self.dir / "run.json").write_text(json.dumps(meta))

    def done_chunks(self) -> set[int]:
        if self._done is None:
            return set()
        return {int(i) for i in np.flatnonzero(self._done[: self.chunks])}

    def write(self, chunk: int, vectors: np.ndarray) -> None:
        """Rows of one chunk, flushed before the chunk counts as done."""
        if self.vectors is None:
            self._open(int(vectors.shape[1]), create=True)
        assert self.vectors is not None and self._done is not None
        start = chunk * self.chunk_size
        expected = (min(self.chunk_size, self.rows - start), self.vectors.shape[1])
        if vectors.shape != expected:
            raise AssertionError(f"chunk {chunk}: {vectors.shape} != {expected} (vecq bug)")
        self.vectors[start : start + expected[0]] = vectors
        self.vectors.flush()  # type: ignore[attr-defined]
        self._done[chunk] = 1
        self._done.flush()  # type: ignore[attr-defined]

    def finish(self, out: Path, ids: list[object] | None) -> None:
        """Write the final file atomically and drop the work area."""
        if self.vectors is None or len(self.done_chunks()) != self.chunks:
            raise AssertionError("finish() before every chunk is written (vecq bug)")
        tmp = out.with_name(out.name + ".tmp")
        WRITERS[out.suffix.lower()](tmp, np.asarray(self.vectors), ids)
        os.replace(tmp, out)
        self.vectors = self._done = None
        shutil.rmtree(self.dir, ignore_errors=True)


def check_output(out: Path) -> None:
    if out.suffix.lower() not in WRITERS:
        raise CorpusError(f"{out}: unsupported output type {out.suffix!r} (use {', '.join(WRITERS)})")
    if not out.parent.is_dir():
        raise CorpusError(f"{out.parent}: no such directory")
