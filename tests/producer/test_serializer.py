"""MsgpackSerializer: exact round trips, and refusal of everything that is not vecq msgpack."""

from __future__ import annotations

import base64
import pickletools
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from vecq.producer import Client, JobFailed, MsgpackSerializer
from vecq.producer.keys import result_key
from vecq.producer.serializer import SerializationError


def pickle_payload(marker: Path) -> bytes:
    """A protocol-0 pickle that runs `touch <marker>` when unpickled (written by hand: no pickle)."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def test_payload_is_a_real_pickle(tmp_path: Path) -> None:
    ops = [op.name for op, _arg, _pos in pickletools.genops(pickle_payload(tmp_path / "m"))]
    assert ops == ["GLOBAL", "MARK", "STRING", "TUPLE", "REDUCE", "STOP"]


def test_float32_arrays_round_trip_exactly() -> None:
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((7, 384)).astype(np.float32)
    back = MsgpackSerializer.loads(MsgpackSerializer.dumps(arr))
    assert back.dtype == np.float32
    assert back.shape == (7, 384)
    np.testing.assert_array_equal(back, arr)


def test_big_endian_and_non_contiguous_arrays() -> None:
    arr = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    back = MsgpackSerializer.loads(MsgpackSerializer.dumps(arr))
    assert back.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back, np.array([[0, 2], [4, 6], [8, 10]], dtype=np.float32))


def test_nested_values_round_trip() -> None:
    value = (
        "vecq.worker.tasks.embed",
        None,
        [["a", "向量", ""]],
        {"model": "m", "lane": "bulk", "truncate": True},
    )
    back = MsgpackSerializer.loads(MsgpackSerializer.dumps(value))
    assert back == [
        "vecq.worker.tasks.embed",
        None,
        [["a", "向量", ""]],
        {"model": "m", "lane": "bulk", "truncate": True},
    ]
    nested = {"vectors": [np.ones((2, 3), np.float32)], "n": np.int64(5), 1: b"raw"}
    out = MsgpackSerializer.loads(MsgpackSerializer.dumps(nested))
    assert out["n"] == 5 and out[1] == b"raw"
    np.testing.assert_array_equal(out["vectors"][0], np.ones((2, 3), np.float32))


def test_refuses_object_arrays_and_objects() -> None:
    with pytest.raises(TypeError, match=r"^cannot serialize an array of dtype object$"):
        MsgpackSerializer.dumps(np.array([object()], dtype=object))
    with pytest.raises(TypeError, match=r"^cannot serialize PosixPath$"):
        MsgpackSerializer.dumps(Path("/"))


def test_refuses_garbage_bytes() -> None:
    with pytest.raises(SerializationError, match=r"^undecodable payload \("):
        MsgpackSerializer.loads(b"\xc1\xc1\xc1")


def test_refuses_unknown_ext_type() -> None:
    with pytest.raises(SerializationError, match=r"^unknown msgpack extension type 7$"):
        MsgpackSerializer.loads(msgpack.packb(msgpack.ExtType(7, b"zzz")))


def test_refuses_object_dtype_inside_ext() -> None:
    forged = msgpack.packb(msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\0" * 8])))
    with pytest.raises(SerializationError, match=r"^array dtype '\|O' is not allowed$"):
        MsgpackSerializer.loads(forged)


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SerializationError):
        MsgpackSerializer.loads(pickle_payload(marker))
    assert not marker.exists()


def test_pickled_result_entry_fails_the_wait_without_unpickling(
    tmp_path: Path, client: Client, redis_conn: redis.Redis
) -> None:
    """A forged result stream entry holding a pickle: the client refuses it, nothing runs."""
    marker = tmp_path / "pwned"
    payload = base64.b64encode(pickle_payload(marker)).decode()
    redis_conn.xadd(result_key("forged"), {"type": 1, "worker_name": "evil", "return_value": payload})
    with pytest.raises(JobFailed) as info:
        client.result("forged", timeout=1)
    assert info.value.reason.startswith("undecodable result (SerializationError: undecodable payload (")
    assert not marker.exists()
