"""vecq.engines: model loading, ONNX export, bundles and the backends behind one `Engine` protocol.

Importing this package loads no model and imports no torch; backends import their heavy
libraries when an engine is made.
"""

from .base import Batch, Engine
from .embedder import Embedder, default_model_dir
from .errors import (
    BadInput,
    BundleError,
    ModelNotFound,
    ParityError,
    ShapeError,
    TextTooLong,
    UnknownBackend,
    UnsupportedModel,
    VecqEngineError,
)
from .shapes import Shape, ShapeSet
from .spec import ModelSpec

__all__ = [
    "BadInput",
    "Batch",
    "BundleError",
    "Embedder",
    "Engine",
    "ModelNotFound",
    "ModelSpec",
    "ParityError",
    "Shape",
    "ShapeError",
    "ShapeSet",
    "TextTooLong",
    "UnknownBackend",
    "UnsupportedModel",
    "VecqEngineError",
    "default_model_dir",
]
