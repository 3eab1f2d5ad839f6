"""Fixtures shared by every test package: a clean real-Redis database per test, model dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_HOST = os.environ.get("VECQ_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("VECQ_TEST_REDIS_PORT", "6379"))


def _find_empty_db() -> int:
    """Like rq's test helper: the first database with no keys (db 0 is left to humans)."""
    for db in range(1, 16):
        conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if conn.dbsize() == 0:
            return db
    raise RuntimeError("no empty Redis database in 1..15 for the test run")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of a real Redis database, empty at the start of the test and flushed after it."""
    try:
        db = _find_empty_db()
    except redis.ConnectionError:
        pytest.fail(f"the tests need a Redis server on {REDIS_HOST}:{REDIS_PORT}")
    conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    conn.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        conn.flushdb()
        conn.close()


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from vecq.engines import default_model_dir

    return default_model_dir()
