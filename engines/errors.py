"""Typed errors of the engine layer.

Every message is one line that names what was wrong, so that it can be shown to a user as is
and stored as a failed job's reason by the worker.
"""

from __future__ import annotations


class VecqEngineError(Exception):
    """Base of every error raised by `vecq.engines`."""


class BadInput(VecqEngineError, ValueError):
    """A text (or the list of texts) handed to `embed` is unusable, e.g. `texts[3]: expected str, got int`."""


class TextTooLong(BadInput):
    """A text is over the model's max length and the caller asked to refuse rather than truncate."""


class ModelNotFound(VecqEngineError, FileNotFoundError):
    """The model directory is missing, or lacks weights, config or tokenizer files."""


class UnsupportedModel(VecqEngineError, ValueError):
    """A model whose architecture (config.json `model_type`) vecq does not serve; the message
    names it and the supported ones (`architectures.py`)."""


class UnknownBackend(VecqEngineError, ValueError):
    """A backend name that vecq does not know, or one whose libraries are not installed."""


class BundleError(VecqEngineError):
    """A bundle that is corrupted (checksum mismatch, missing file) or incompatible with this vecq."""


class ParityError(VecqEngineError):
    """An exported engine that does not reproduce the reference model closely enough to be trusted."""


class ShapeError(VecqEngineError, ValueError):
    """A batch whose (batch, seq_len) is not one the engine was built for: a vecq bug if it ever escapes."""
