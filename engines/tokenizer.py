"""Texts → token ids with the model's own `tokenizers` tokenizer, and token ids → padded batches.

The `tokenizers` library is called directly (`encode_batch` runs in Rust threads); the
transformers wrapper costs more host time than a small GPU batch takes to run.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .base import Batch
from .errors import ModelNotFound, TextTooLong
from .shapes import Shape


@dataclass(frozen=True)
class Tokenized:
    """Token ids of several texts, unpadded, with `[CLS]`/`[SEP]` already in place: one flat
    array of every text's ids in turn and each text's length (a packing engine takes them as
    they are; `ids` splits them per text for padded batches)."""

    flat: np.ndarray  # int64, (sum(lengths),)
    lengths: np.ndarray  # int64, one per text

    @cached_property
    def ids(self) -> list[np.ndarray]:
        """One int64 view per text."""
        return np.split(self.flat, self.offsets[1:-1]) if len(self.lengths) else []

    def __len__(self) -> int:
        return len(self.lengths)

    def slice(self, start: int, stop: int) -> Tokenized:
        """Texts start..stop (views, no copy)."""
        offsets = self.offsets
        return Tokenized(self.flat[offsets[start] : offsets[stop]], self.lengths[start:stop])

    @cached_property
    def offsets(self) -> np.ndarray:
        """Where each text starts in `flat`, and where the last one ends (len + 1 entries)."""
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    @classmethod
    def join(cls, parts: Sequence[Tokenized]) -> Tokenized:
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.flat for p in parts]), np.concatenate([p.lengths for p in parts]))


class TextTokenizer:
    """The model's tokenizer with truncation at `max_seq_len` and padding left to vecq."""

    def __init__(self, tokenizer: Tokenizer, *, max_seq_len: int) -> None:
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_seq_len)
        self.max_seq_len = max_seq_len
        #: Batch calls may use `tokenizers`' thread pool (one thread per core); False: this
        #: thread only (the worker's choice, `WorkerSettings.parallel_tokenize`).
        self.parallel = True
        self.pad_id = _token_id(tokenizer, ("[PAD]", "<pad>"), default=0)
        cls_id = _token_id(tokenizer, ("[CLS]", "<s>"), default=101)
        sep_id = _token_id(tokenizer, ("[SEP]", "</s>"), default=102)
        self.filler = np.array([cls_id, sep_id], dtype=np.int64)

    @classmethod
    def from_dir(cls, path: str | Path, *, max_seq_len: int) -> TextTokenizer:
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise ModelNotFound(f"{path}: no tokenizer.json (vecq needs the fast-tokenizer file)")
        return cls(Tokenizer.from_file(str(file)), max_seq_len=max_seq_len)

    def to_json(self) -> str:
        """The tokenizer as `tokenizers` serializes it (truncation included): another process
        rebuilds the same one from it (`TextTokenizer(Tokenizer.from_str(...), ...)`)."""
        return self._tok.to_str()

    def with_parallelism(self, parallel: bool) -> TextTokenizer:
        """This tokenizer (the same underlying one) with its batch calls on or off the pool."""
        other = copy.copy(self)
        other.parallel = parallel
        return other

    def encode(self, texts: Sequence[str], *, truncate: bool = True) -> Tokenized:
        """Token ids of each text; over-long texts are cut to `max_seq_len`, or refused with
        `TextTooLong` naming the first one when `truncate` is False."""
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets vecq never reads:
        # ~40% less time per text.
        encodings = self._encode_cut(list(texts))
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    raise TextTooLong(
                        f"texts[{i}]: longer than the model's max of {self.max_seq_len} tokens "
                        "(truncation is off)"
                    )
        return flatten([e.ids for e in encodings])

    def encode_pairs(self, query: str, documents: Sequence[str]) -> Tokenized:
        """Token ids of each (query, document) pair, `[CLS] q [SEP] d [SEP]` (or the model's own
        pair template), cut to `max_seq_len` longest-first: exactly the pair encoding and
        truncation `sentence_transformers.CrossEncoder` asks of the same tokenizer.  No prefix
        cut here: which side loses tokens depends on both lengths."""
        pairs = [(query, d) for d in documents]
        if self.parallel and len(pairs) > SEQUENTIAL_MAX:
            batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
            return flatten([e.ids for e in batch(pairs, add_special_tokens=True)])
        return flatten([self._tok.encode(q, d, add_special_tokens=True).ids for q, d in pairs])

    def _encode_cut(self, texts: list[str]) -> list:
        """Encodings of `texts`, long ones tokenized from a prefix only.

        The tokenizer reads a whole text before truncating it, so a corpus's few long documents
        cost most of the tokenizing time.  A prefix cut at whitespace holds whole words only, and
        BERT's normalizer and pre-tokenizer act within words, so when the prefix alone already
        overflows `max_seq_len`, its first tokens are exactly the full text's.  A prefix that does
        not overflow is tokenized again in full.
        """
        encode = self._encode_many
        limit = self.max_seq_len * CHARS_PER_TOKEN_CUT
        cut = {i: _prefix(t, limit) for i, t in enumerate(texts) if len(t) > limit}
        cut = {i: p for i, p in cut.items() if p is not None}
        if not cut:
            return encode(texts, add_special_tokens=True)
        encodings = encode([cut.get(i, t) for i, t in enumerate(texts)], add_special_tokens=True)
        redo = [i for i in cut if not encodings[i].overflowing]
        if redo:
            for i, enc in zip(redo, encode([texts[i] for i in redo], add_special_tokens=True), strict=True):
                encodings[i] = enc
        return encodings

    def _encode_many(self, texts: list[str], *, add_special_tokens: bool) -> list:
        """Many texts in one batch call on `tokenizers`' thread pool when `parallel`; else (and
        for a few texts) one by one on the calling thread.

        The pool has a thread per core: a CPU engine (or Redis, on a small box) needs those
        cores, and on the 16-core GPU machine the pool's wake-up and spin cost a small call more
        than the tokenizing itself -- the seed workload ran 1.2-1.3× more calls/s with batches of
        2-16 queries tokenized without it (BENCHMARKS.md, the seed tokenizer probe).
        """
        if self.parallel and len(texts) > SEQUENTIAL_MAX:
            batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
            return batch(texts, add_special_tokens=add_special_tokens)  # no offsets: cheaper
        return [self._tok.encode(t, add_special_tokens=add_special_tokens) for t in texts]

    def make_batch(self, rows: Sequence[np.ndarray], shape: Shape) -> Batch:
        """A `Batch` of exactly `shape`: rows right-padded, spare rows filled with `[CLS] [SEP]`."""
        if len(rows) > shape.batch:
            raise ValueError(f"{len(rows)} rows do not fit shape {shape} (vecq bug)")
        input_ids = np.full((shape.batch, shape.seq_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((shape.batch, shape.seq_len), dtype=np.int64)
        if rows:
            # One masked assignment instead of a copy per row: the row-major order of a boolean
            # mask's True cells is exactly "each row's tokens, left-aligned", so concatenated ids
            # land right-padded (about half the host time of a per-row loop for 128 rows).
            lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
            real = np.arange(shape.seq_len) < lengths[:, None]
            input_ids[: len(rows)][real] = np.concatenate(rows)
            mask[: len(rows)] = real
        if len(rows) < shape.batch:
            k = len(self.filler)
            input_ids[len(rows) :, :k] = self.filler
            mask[len(rows) :, :k] = 1
        return Batch(input_ids=input_ids, attention_mask=mask, rows=len(rows))


def flatten(ids: Sequence[Sequence[int]]) -> Tokenized:
    """`Tokenized` of per-text id lists: one pass over all ids (a numpy array per text cost ~30 %
    more host time, and the arrays are never needed apart)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return Tokenized(flat, lengths)


#: Up to this many texts are tokenized one by one even when the thread pool may be used.
SEQUENTIAL_MAX = 16


#: Texts longer than max_seq_len × this many characters are tokenized from a prefix first.
CHARS_PER_TOKEN_CUT = 8


def _prefix(text: str, limit: int) -> str | None:
    """`text` cut to at most `limit` characters at a whitespace boundary (None: no whitespace)."""
    head = text[:limit]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return head[:cut] if cut > 0 else None


def _token_id(tok: Tokenizer, candidates: tuple[str, ...], *, default: int) -> int:
    for c in candidates:
        i = tok.token_to_id(c)
        if i is not None:
            return int(i)
    return default
