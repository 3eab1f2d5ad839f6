"""Tokenizer processes: a GPU worker's tokenizing, off its own GIL.

`tokenizers` releases the GIL while it tokenizes, but handing its results to Python does not:
one `Encoding` object per text, one Python list of ids per text.  At the packed engine's rate
that per-text Python was most of one worker's host time and capped it at ~20k texts/s
(BENCHMARKS.md, issue 14, `worker_host` probe) -- the GIL, not the cores, was the limit.  So a
GPU worker starts a few child processes that each hold the model's tokenizer and do exactly
`planner.encode_jobs`; the worker sends them texts and gets back each task's token ids as two
flat int32 arrays (ids, lengths), which cost one `np.frombuffer` each.  Nothing is pickled:
frames are msgpack (a 4-byte little-endian length, then the body) on the children's stdin and
stdout.

A child ends when its stdin closes (the worker stopped, or died: no orphan outlives it) and
ignores SIGINT (a terminal's Ctrl-C is the worker's to handle).  A child that dies fails the
task it held, and the worker exits non-zero like for any tokenizer failure (its jobs are
recovered elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Hashable, Sequence
from typing import IO, Any

import msgpack
import numpy as np

from vecq.engines.tokenizer import TextTokenizer, Tokenized, flatten

from .planner import Encoded, NewJob, encode_jobs

_HEADER = struct.Struct("<I")


class TokenizerCrashed(RuntimeError):
    """A tokenizer process died or answered nonsense."""


class TokenizerProcess:
    """One child process and the pipes to it; used from one thread at a time."""

    def __init__(self, tokenizer: TextTokenizer, *, threads: int = 1) -> None:
        # `threads` > 1: the child's batch calls run on a pool of that many `tokenizers` threads;
        # one process with a pool tokenized 1.3x the texts/s of as many one-thread processes
        # (BENCHMARKS.md, tokenize_rate probe), and its Python share stays one core's
        parallel = "true" if threads > 1 else "false"
        env = {**os.environ, "RAYON_NUM_THREADS": str(max(1, threads)), "TOKENIZERS_PARALLELISM": parallel}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vecq.worker.tokenprocs"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        _write(self._in, {"tokenizer": tokenizer.to_json(), "max_seq_len": tokenizer.max_seq_len})

    def encode_jobs(self, jobs: Sequence[NewJob], *, now: float) -> Encoded:
        """`planner.encode_jobs` of `jobs`, done in the child."""
        try:
            _write(self._in, [[j.truncate, list(j.texts), j.query] for j in jobs])
            reply = _read(self._out)
        except (OSError, ValueError) as exc:
            raise TokenizerCrashed(f"tokenizer process {self._proc.pid}: {exc}") from exc
        if reply is None:
            raise TokenizerCrashed(f"tokenizer process {self._proc.pid} exited (code {self._proc.poll()})")
        if "error" in reply:
            raise TokenizerCrashed(f"tokenizer process: {reply['error']}")
        tokens = Tokenized(
            np.frombuffer(reply["ids"], dtype="<i4").astype(np.int64),
            np.frombuffer(reply["lengths"], dtype="<i4").astype(np.int64),
        )
        out: list[tuple[NewJob, Tokenized]] = []
        at = 0
        for i in reply["order"]:  # the child's order (jobs that truncate first, as encode_jobs)
            job = jobs[i]
            out.append((job, tokens.slice(at, at + len(job.texts))))
            at += len(job.texts)
        refused: list[tuple[Hashable, str]] = [(jobs[int(i)].owner, str(m)) for i, m in reply["refused"]]
        return Encoded(out, refused, now)

    def close(self) -> None:
        """Close its stdin (it exits) and reap it; killed if it does not go within a second."""
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._out.close()


def _write(stream: IO[bytes], obj: Any) -> None:
    body = msgpack.packb(obj, use_bin_type=True)
    stream.write(_HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return msgpack.unpackb(body, raw=False)


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The child: the tokenizer from the first frame, then one reply per request until EOF."""
    from tokenizers import Tokenizer

    setup = _read(stdin)
    if setup is None:
        return
    tok = TextTokenizer(Tokenizer.from_str(setup["tokenizer"]), max_seq_len=int(setup["max_seq_len"]))
    while (request := _read(stdin)) is not None:
        try:
            jobs = [
                NewJob(i, texts, truncate=bool(truncate), query=query)
                for i, (truncate, texts, query) in enumerate(request)
            ]
            encoded = encode_jobs(tok, jobs, now=0.0)
            parts = [t for _, t in encoded.jobs]
            joined = Tokenized.join(parts) if parts else flatten([])
            reply: dict[str, Any] = {
                "ids": joined.flat.astype("<i4").tobytes(),
                "lengths": joined.lengths.astype("<i4").tobytes(),
                "order": [job.owner for job, _ in encoded.jobs],
                "refused": [[int(owner), message] for owner, message in encoded.refused],  # type: ignore[call-overload]
            }
        except Exception as exc:  # the worker fails the task and exits: say why in one line
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        _write(stdout, reply)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # frames only on the real stdout: anything a library prints goes to stderr instead
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, frames)
