"""The gateway's guards: API keys on every route but liveness, and the body limit (413)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from vecq.producer.gateway import GatewaySettings, create_app
from vecq.producer.gateway.guard import ApiKeys
from vecq.worker.cli import main as vecq_main


@pytest.fixture
def keyed(redis_url: str, tmp_path: Path) -> TestClient:
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-12\n\nfrom-file\n")
    settings = GatewaySettings(redis_url=redis_url, api_keys="first, second", api_key_file=key_file)
    with TestClient(create_app(settings)) as client:
        yield client


def test_every_route_but_liveness_needs_a_key_in_openais_shape(keyed: TestClient) -> None:
    assert keyed.get("/livez").json() == {"status": "ok"}
    for method, path in [("get", "/health"), ("get", "/metrics"), ("post", "/v1/embeddings")]:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "first"}]:
            answer = getattr(keyed, method)(path, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json() == {
                "error": {
                    "message": "missing or incorrect API key; send it as 'Authorization: Bearer <key>'",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
    for key in ["first", "second", "from-file"]:
        assert keyed.get("/health", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert keyed.get("/metrics", headers={"Authorization": f"bearer {key}"}).status_code == 200


def test_keys_compare_whole_tokens() -> None:
    keys = ApiKeys(["secret"])
    assert keys.allows("Bearer secret") and keys.allows("bearer  secret ")
    assert not any(
        keys.allows(h)
        for h in [None, "", "Bearer", "Bearer ", "Bearer secre", "Bearer secrets", "Basic secret"]
    )
    assert ApiKeys([]).allows(None)  # no keys configured: open (and said so in the log)


def test_a_body_over_the_limit_is_refused_before_it_is_read(redis_url: str) -> None:
    settings = GatewaySettings(redis_url=redis_url, max_body_bytes=4096)
    with TestClient(create_app(settings)) as client:
        big = json.dumps({"model": "default", "input": ["x" * 10_000]})
        declared = client.post("/v1/embeddings", content=big, headers={"Content-Type": "application/json"})
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "body_too_large"
        assert declared.json()["error"]["message"] == (
            "request: body over the limit of 4096 bytes (max_body_bytes)"
        )

        def chunks():  # no Content-Length: cut off once past the limit
            for _ in range(20):
                yield b"x" * 1000

        streamed = client.post(
            "/v1/embeddings", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        small = client.post("/v1/embeddings", json={"model": "default", "input": [1]})
        assert small.status_code == 400  # under the limit: read and refused on its merits


def test_health_tells_no_redis_details(tmp_path: Path) -> None:
    settings = GatewaySettings(redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/health")
    assert answer.status_code == 503 and answer.json() == {"status": "unavailable"}


def test_an_unreadable_key_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(vecq_main, ["gateway", "--api-key-file", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("vecq: api_key_file: cannot read ")
    assert len(result.output.strip().splitlines()) == 1


def test_bodies_fastapi_cannot_parse_and_unknown_routes_answer_in_openais_shape(redis_url: str) -> None:
    """Issue 15 item 7: these answered FastAPI's `{"detail": ...}`."""
    with TestClient(create_app(GatewaySettings(redis_url=redis_url))) as client:
        headers = {"Content-Type": "application/json"}
        bad_utf8 = client.post("/v1/embeddings", content=b'{"input": "\xff\xfe"}', headers=headers)
        deep = client.post(
            "/v1/embeddings", content=b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=headers
        )
        for answer in (bad_utf8, deep):
            assert answer.status_code == 400
            assert answer.json()["error"] == {
                "message": "request: body is not valid JSON (bad UTF-8, or nested too deep)",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_value",
            }
        missing = client.get("/v2/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        wrong = client.get("/v1/embeddings")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
