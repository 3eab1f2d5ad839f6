"""Fixtures shared by every test package: a clean real-Redis database per test, model dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_HOST = os.environ.get("VECQ_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("VECQ_TEST_REDIS_PORT", "6379"))


def _claim_empty_db() -> int:
    """Like rq's test helper, the first database with no keys (db 0 is left to humans), claimed
    with a lock key in db 0 so that concurrent test runs never share one."""
    lock = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    for db in range(1, 16):
        if not lock.set(f"vecq-test-lock:{db}", os.getpid(), nx=True, ex=900):
            continue
        if redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).dbsize() == 0:
            return db
        lock.delete(f"vecq-test-lock:{db}")
    raise RuntimeError("no free, empty Redis database in 1..15 for the test run")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of a real Redis database, empty at the start of the test and flushed after it."""
    try:
        db = _claim_empty_db()
    except redis.ConnectionError:
        pytest.fail(f"the tests need a Redis server on {REDIS_HOST}:{REDIS_PORT}")
    conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    conn.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        conn.flushdb()
        conn.close()
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0).delete(f"vecq-test-lock:{db}")


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from vecq.engines import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (hidden 32, 2 layers, 2 heads) with a Chinese character vocab and no
    sentence-transformers files, so vecq reads it as CLS pooling — the seed write-up's setup."""
    from vecq.engines.random_model import write_random_bert

    return write_random_bert(
        tmp_path_factory.mktemp("tiny-bert") / "tiny-chinese-bert",
        hidden=32,
        layers=2,
        heads=2,
        vocab_size=3000,
        max_positions=128,
    )


@pytest.fixture(scope="session")
def prompted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT declaring sentence-transformers prompts (tests/engines/prompted_model.py)."""
    from .engines.prompted_model import write_prompted_model

    return write_prompted_model(tmp_path_factory.mktemp("prompted") / "e5-tiny")


@pytest.fixture(scope="session")
def st_model(prompted_dir: Path):  # type: ignore[no-untyped-def]
    """sentence-transformers' own load of `prompted_dir`: the reference for prompts and dimensions."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(prompted_dir), device="cpu")
