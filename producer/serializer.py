"""vecq's wire serializer: msgpack, with numpy arrays as raw bytes — never pickle.

rq runs every job field (data, meta, results) through the job's serializer, and falls back to
pickle wherever none is passed.  vecq passes this one everywhere, so nothing read from Redis can
execute code: msgpack only builds plain values, and arrays are rebuilt from a whitelisted numeric
dtype, a shape and their bytes.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_NDARRAY = 1
# Numeric dtypes only: an object dtype would be a way back to arbitrary Python objects.
_DTYPES = frozenset({"<f4", "<f2", "<f8", "<i8", "<i4", "<i2", "|i1", "|u1", "<u2", "<u4", "<u8", "|b1"})


class SerializationError(ValueError):
    """A payload that is not valid vecq msgpack (garbage bytes, unknown extension, bad array)."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dtype.str not in _DTYPES:
            raise TypeError(f"cannot serialize an array of dtype {arr.dtype}")
        arr = arr.astype(dtype, copy=False)
        return msgpack.ExtType(_NDARRAY, msgpack.packb([dtype.str, list(arr.shape), arr.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY:
        raise SerializationError(f"unknown msgpack extension type {code}")
    dtype, shape, raw = msgpack.unpackb(data, raw=False)
    if dtype not in _DTYPES:
        raise SerializationError(f"array dtype {dtype!r} is not allowed")
    arr = np.frombuffer(raw, dtype=np.dtype(dtype))
    return arr.reshape(shape)


class MsgpackSerializer:
    """rq-compatible serializer (`dumps`/`loads`); pass the class itself as `serializer=`."""

    @staticmethod
    def dumps(obj: Any, /) -> bytes:
        return msgpack.packb(obj, default=_default, use_bin_type=True)

    @staticmethod
    def loads(data: bytes, /) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)
        except SerializationError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise SerializationError(f"undecodable payload ({type(exc).__name__}: {exc})") from None


# The dotted path, for places that name a serializer by string (rq CLI `--serializer`).
SERIALIZER_PATH = "vecq.producer.serializer.MsgpackSerializer"
