"""Corpus files in and vector files out for `vecq embed`, with a resumable work area.

Rows are written by chunk index into a preallocated memory map, and a chunk is marked done only
after its rows are on disk, so a run that is killed and started again skips finished chunks,
never writes a row twice, and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
OUTPUT_SUFFIXES = (".npy", ".parquet")


class CorpusError(ValueError):
    """An input or output file vecq cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    ids: list[object] | None  # from --id-field; None means row numbers

    @property
    def size(self) -> int:
        return len(self.texts)


def read_corpus(path: Path, *, text_field: str = "text", id_field: str | None = None) -> Corpus:
    """Texts (and ids) of a .txt (one text per line), .jsonl, .csv or .parquet file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    if suffix == ".txt":
        with path.open(encoding="utf-8", newline="\n") as f:
            texts = [line.rstrip("\r\n") for line in f]
        return Corpus(texts, None)
    if suffix == ".jsonl":
        return _from_records(path, _jsonl_records(path), text_field, id_field)
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return _from_records(path, list(csv.DictReader(f)), text_field, id_field)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for field in (text_field, id_field):
            if field and field not in table.column_names:
                raise CorpusError(f"{path}: no column {field!r} (columns: {', '.join(table.column_names)})")
        texts = table.column(text_field).to_pylist()
        ids = table.column(id_field).to_pylist() if id_field else None
        return _checked(path, texts, ids)
    raise CorpusError(f"{path}: unsupported input type {suffix!r} (use {', '.join(INPUT_SUFFIXES)})")


def _jsonl_records(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise CorpusError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise CorpusError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
    return records


def _from_records(path: Path, records: list[dict], text_field: str, id_field: str | None) -> Corpus:
    texts, ids = [], []
    for n, rec in enumerate(records, 1):
        if text_field not in rec:
            raise CorpusError(f"{path}: record {n} has no field {text_field!r} (use --text-field)")
        texts.append(rec[text_field])
        if id_field:
            if id_field not in rec:
                raise CorpusError(f"{path}: record {n} has no field {id_field!r}")
            ids.append(rec[id_field])
    return _checked(path, texts, ids if id_field else None)


def _checked(path: Path, texts: list, ids: list | None) -> Corpus:
    for n, t in enumerate(texts, 1):
        if not isinstance(t, str):
            raise CorpusError(f"{path}: record {n}: text is {type(t).__name__}, expected str")
    return Corpus(texts, ids)


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
        if out.suffix.lower() == ".npy":
            with tmp.open("wb") as f:
                np.save(f, np.asarray(self.vectors))
        else:
            write_parquet(tmp, np.asarray(self.vectors), ids)
        os.replace(tmp, out)
        self.vectors = self._done = None
        shutil.rmtree(self.dir, ignore_errors=True)


def write_parquet(path: Path, vectors: np.ndarray, ids: list[object] | None) -> None:
    """id + vector (fixed-size list of float32) per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    id_col = pa.array(ids if ids is not None else np.arange(n, dtype=np.int64))
    pq.write_table(pa.table({"id": id_col, "vector": column}), path)


def check_output(out: Path) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise CorpusError(f"{out}: unsupported output type {out.suffix!r} (use {', '.join(OUTPUT_SUFFIXES)})")
    if not out.parent.is_dir():
        raise CorpusError(f"{out.parent}: no such directory")
