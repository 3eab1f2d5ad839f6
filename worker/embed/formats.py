"""The file formats of `vecq embed`: corpus readers and vector writers, one registry each.

A format is one function and one line in `READERS` or `WRITERS` (keyed by file suffix); the
command's errors list the suffixes from the registries, so they never go stale.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CorpusError(ValueError):
    """An input or output file vecq cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class Stamp:
    """What a `.parquet` output records beside its vectors so that a later run can reuse them
    (`reuse.py`): a hash column and schema metadata.  A `.npy` output holds vectors only."""

    column: str
    hashes: list[bytes]
    metadata: dict[str, str]


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    ids: list[object] | None  # from --id-field; None means row numbers

    @property
    def size(self) -> int:
        return len(self.texts)


def read_corpus(path: Path, *, text_field: str = "text", id_field: str | None = None) -> Corpus:
    """Texts (and ids) of a corpus file, read by the reader of its suffix."""
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CorpusError(f"{path}: unsupported input type {path.suffix!r} (use {', '.join(READERS)})")
    return reader(path, text_field, id_field)


def _utf8_lines(path: Path) -> Iterator[str]:
    """The file's lines, each with its line ending, decoded one at a time so that bytes that are
    not UTF-8 (a binary file named .txt) are refused naming the file and line, not as
    `UnicodeDecodeError ... position 0`."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    f"{path}:{n}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "vecq reads text files as UTF-8"
                ) from None


def _txt(path: Path, _text_field: str, _id_field: str | None) -> Corpus:
    """One text per line (ids are row numbers)."""
    return Corpus([line.rstrip("\r\n") for line in _utf8_lines(path)], None)


def _jsonl(path: Path, text_field: str, id_field: str | None) -> Corpus:
    return _from_records(path, _jsonl_records(path), text_field, id_field)


def _csv(path: Path, text_field: str, id_field: str | None) -> Corpus:
    return _from_records(path, list(csv.DictReader(_utf8_lines(path))), text_field, id_field)


def _parquet(path: Path, text_field: str, id_field: str | None) -> Corpus:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for field in (text_field, id_field):
        if field and field not in table.column_names:
            raise CorpusError(f"{path}: no column {field!r} (columns: {', '.join(table.column_names)})")
    texts = table.column(text_field).to_pylist()
    ids = table.column(id_field).to_pylist() if id_field else None
    return _checked(path, texts, ids)


def _jsonl_records(path: Path) -> list[dict]:
    records = []
    for n, line in enumerate(_utf8_lines(path), 1):
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


def _npy(path: Path, vectors: np.ndarray, _ids: list[object] | None, _stamp: Stamp | None = None) -> None:
    """The (n, dim) float32 array alone (ids are row numbers)."""
    with path.open("wb") as f:
        np.save(f, vectors)


def write_parquet(
    path: Path, vectors: np.ndarray, ids: list[object] | None, stamp: Stamp | None = None
) -> None:
    """id + vector (fixed-size list of float32) per row, and the stamp's hash column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    id_col = pa.array(ids if ids is not None else np.arange(n, dtype=np.int64))
    columns = {"id": id_col, "vector": column}
    if stamp is not None:
        columns[stamp.column] = pa.array(stamp.hashes, type=pa.binary(16))
    table = pa.table(columns)
    if stamp is not None:
        table = table.replace_schema_metadata(stamp.metadata)
    pq.write_table(table, path)


Reader = Callable[[Path, str, "str | None"], Corpus]
Writer = Callable[[Path, np.ndarray, "list[object] | None", "Stamp | None"], None]
READERS: dict[str, Reader] = {".txt": _txt, ".jsonl": _jsonl, ".csv": _csv, ".parquet": _parquet}
WRITERS: dict[str, Writer] = {".npy": _npy, ".parquet": write_parquet}
#: The writers that keep `--id-field`'s ids (a .npy file holds the vectors alone).
KEEPS_IDS = frozenset({".parquet"})
