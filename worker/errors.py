"""Typed errors of the worker, and the one-line form every error takes when shown or stored."""

from __future__ import annotations


class NameTaken(ValueError):
    """Another live worker already uses this worker name."""


class PortBusy(OSError):
    """The metrics port is held by another process (the message names the flag and address)."""


class WorkerCrashed(RuntimeError):
    """The engine thread, the finishing thread or the loop failed in a way the worker cannot
    serve through: the process exits non-zero and recovery gives its jobs to other workers."""


def engine_hung(seconds: float, limit: float, jobs: str) -> WorkerCrashed:
    """The watchdog's verdict on an engine call past `engine_timeout` (`jobs`: what is retried)."""
    return WorkerCrashed(
        f"engine call running for {seconds:.0f}s, over engine_timeout={limit:g}s; exiting "
        f"so that {jobs} are retried by other workers"
    )


class JobRefused(Exception):
    """Why a taken job cannot run (`kind` is its metrics label; the message is one line)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def error_line(exc: BaseException, *, limit: int = 300) -> str:
    """`Type: message` on one line, cut at `limit` characters: a failed job's reason, a CLI error."""
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:limit]}"
