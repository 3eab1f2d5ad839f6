"""Bad requests are refused at submit, in one line, before anything reaches Redis."""

from __future__ import annotations

import pytest
import redis

from vecq.producer import BadRequest, Client
from vecq.producer.contract import MAX_CHARS_PER_TEXT, MAX_TEXTS_PER_JOB, parse_request

CASES = [
    (["ok", 3], {}, "texts[1]: expected str, got int"),
    (None, {}, "texts: expected a list of str, got NoneType"),
    ("just a string", {}, "texts: expected a list of str, got str"),
    ([], {}, "texts: empty list (send at least one text)"),
    (["x"] * (MAX_TEXTS_PER_JOB + 1), {}, "texts: 4097 texts in one job, over the limit of 4096"),
    (["ok", "y" * (MAX_CHARS_PER_TEXT + 1)], {}, "texts[1]: 100001 characters, over the limit of 100000"),
    (["fine", "a\ud800b"], {}, "texts[1]: not valid Unicode (surrogates not allowed at 1)"),
    (["x"], {"lane": "urgent"}, "lane: Input should be 'interactive' or 'bulk'"),
    (
        ["x"],
        {"model": "Bad Model!"},
        "model: 'Bad Model!' is not a valid model name (a-z, 0-9, '.', '_', '-'; max 64)",
    ),
    (["x"], {"truncate": "yes"}, "truncate: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("texts", "options", "message"), CASES)
def test_submit_refuses(client: Client, redis_conn: redis.Redis, texts, options, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadRequest) as info:
        client.submit(texts, **options)
    assert str(info.value) == message
    assert redis_conn.dbsize() == 0  # nothing written


def test_unknown_option_is_refused(client: Client, redis_conn: redis.Redis) -> None:
    with pytest.raises(TypeError, match=r"^Client.submit\(\) got an unexpected keyword argument 'pooling'$"):
        client.submit(["x"], pooling="mean")  # type: ignore[call-arg]
    # The same refusal on the wire, for jobs written by other producers.
    with pytest.raises(BadRequest) as info:
        parse_request([["x"]], {"pooling": "mean"})
    assert (
        str(info.value)
        == "options: unknown option(s) pooling; known: dimensions, lane, model, prompt, prompt_name, "
        "query, result_dtype, result_encoding, truncate"
    )
    assert redis_conn.dbsize() == 0


def test_embed_validates_before_enqueue(client: Client, redis_conn: redis.Redis) -> None:
    with pytest.raises(BadRequest, match=r"^texts\[0\]: expected str, got bytes$"):
        client.embed([b"bytes"])  # type: ignore[list-item]
    assert redis_conn.dbsize() == 0
