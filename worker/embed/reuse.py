"""Incremental re-indexing: `vecq embed --reuse old.parquet` embeds only what changed.

Every `.parquet` output carries a `text_hash` column (a 16-byte BLAKE2b of the model name, the
prompt options and the text) and, in its schema metadata, what its vectors depend on besides the
texts (`Provenance`).  A later run over an edited corpus hashes its texts the same way, copies the
vectors of hashes the old file has, and sends only the rest to the queue -- each distinct new
text once, however often the corpus repeats it.  Rows and ids follow the new corpus.  An old file
made with another model, prompt or size is refused rather than silently reused for nothing: the
user asked for savings and would not get them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .formats import CorpusError, Stamp

#: How `text_hash` is made; a file stamped with another scheme is refused, never mismatched.
HASH_SCHEME = "blake2b-128(provenance json, 0, utf-8 text)"
HASH_COLUMN = "text_hash"
META_KEY = "vecq"


@dataclass(frozen=True)
class Provenance:
    """What a vector depends on besides its text: two runs agreeing on these and on a text give
    that text the same vector, so one run's vector can stand in for the other's."""

    model: str
    prompt_name: str | None = None
    prompt: str | None = None
    dimensions: int | None = None

    def key(self) -> bytes:
        return json.dumps({**asdict(self), "hash": HASH_SCHEME}, sort_keys=True).encode()

    def describe(self) -> str:
        given = [f"{k} {v!r}" for k, v in asdict(self).items() if v is not None and k != "model"]
        return f"model {self.model}" + (f" ({', '.join(given)})" if given else "")


def text_hashes(texts: Sequence[str], provenance: Provenance) -> list[bytes]:
    """One 16-byte digest per text; the provenance is hashed in, so a text embedded by another
    model or prompt never matches."""
    seed = hashlib.blake2b(provenance.key() + b"\0", digest_size=16)
    out = []
    for text in texts:
        h = seed.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        out.append(h.digest())
    return out


def stamp(hashes: list[bytes], provenance: Provenance) -> Stamp:
    """What a parquet output records so that a later run can reuse it."""
    meta = json.dumps({**asdict(provenance), "hash": HASH_SCHEME}, sort_keys=True)
    return Stamp(column=HASH_COLUMN, hashes=hashes, metadata={META_KEY: meta})


def check_reuse_file(path: Path) -> None:
    """Refuse, before any text is read, a reuse file vecq could not match against."""
    if path.suffix.lower() != ".parquet":
        raise CorpusError(
            f"--reuse {path}: reuse needs a .parquet from an earlier `vecq embed --out X.parquet`"
        )
    if not path.is_file():
        raise CorpusError(f"--reuse {path}: no such file")
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if HASH_COLUMN not in names or "vector" not in names:
        raise CorpusError(
            f"--reuse {path}: no {HASH_COLUMN!r} column to match texts on (written by an older vecq or "
            "another tool); drop --reuse once, and that run's output can be reused"
        )


@dataclass(frozen=True)
class ReusePlan:
    """Which rows of the new corpus come from the old file and which must be computed."""

    rows: int
    reused_rows: np.ndarray  # rows of the new corpus whose vector is copied...
    reused_from: np.ndarray  # ...from these rows of the old file
    todo: list[str]  # distinct texts to embed, in first-occurrence order
    todo_rows: np.ndarray  # rows of the new corpus that are not reused...
    todo_index: np.ndarray  # ...and the index of their text in `todo`
    old_vectors: np.ndarray

    @property
    def rows_reused(self) -> int:
        return len(self.reused_rows)


def plan(path: Path, texts: Sequence[str], hashes: list[bytes], provenance: Provenance) -> ReusePlan:
    """Match the new corpus's hashes against the reuse file's."""
    old_hashes, old_vectors = _read_old(path, provenance)
    where = {h: i for i, h in enumerate(old_hashes)}
    reused_rows, reused_from, todo_rows, todo_index = [], [], [], []
    todo: list[str] = []
    first: dict[bytes, int] = {}
    for row, h in enumerate(hashes):
        old = where.get(h)
        if old is not None:
            reused_rows.append(row)
            reused_from.append(old)
            continue
        if h not in first:
            first[h] = len(todo)
            todo.append(texts[row])
        todo_rows.append(row)
        todo_index.append(first[h])
    return ReusePlan(
        rows=len(hashes),
        reused_rows=np.asarray(reused_rows, dtype=np.int64),
        reused_from=np.asarray(reused_from, dtype=np.int64),
        todo=todo,
        todo_rows=np.asarray(todo_rows, dtype=np.int64),
        todo_index=np.asarray(todo_index, dtype=np.int64),
        old_vectors=old_vectors,
    )


def assemble(p: ReusePlan, computed: np.ndarray | None) -> np.ndarray:
    """The new corpus's vectors: copied rows and computed rows, each at its place."""
    dim = p.old_vectors.shape[1] if computed is None or p.rows_reused else computed.shape[1]
    if computed is not None and computed.shape[1] != dim:
        raise AssertionError(f"computed width {computed.shape[1]} != reused {dim} (vecq bug)")
    out = np.empty((p.rows, dim), dtype=np.float32)
    out[p.reused_rows] = p.old_vectors[p.reused_from]
    if len(p.todo_rows):
        assert computed is not None, "texts to compute but no vectors (vecq bug)"
        out[p.todo_rows] = computed[p.todo_index]
    return out


def _read_old(path: Path, provenance: Provenance) -> tuple[list[bytes], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[HASH_COLUMN, "vector"])
    raw = (table.schema.metadata or {}).get(META_KEY.encode())
    old = json.loads(raw) if raw else None
    want = json.loads(stamp([], provenance).metadata[META_KEY])
    if old != want:
        made = _describe(old)
        raise CorpusError(
            f"--reuse {path}: made with {made}, this run embeds with {provenance.describe()}; "
            "its vectors would not match (drop --reuse to embed everything)"
        )
    vectors = table.column("vector").combine_chunks()
    dim = vectors.type.list_size
    flat = vectors.flatten().to_numpy(zero_copy_only=False)
    return table.column(HASH_COLUMN).to_pylist(), np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def _describe(meta: object) -> str:
    """The old file's provenance in words, whatever its metadata holds."""
    try:
        return Provenance(**{k: v for k, v in meta.items() if k != "hash"}).describe()  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        return "no vecq provenance"
