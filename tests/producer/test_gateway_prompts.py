"""The gateway's `dimensions` (OpenAI's field) and `prompt_name` / `prompt` (vecq's additions)
against real processes: a `vecq worker --model DIR --backend torch` of a tiny model declaring
prompts, and `vecq gateway --tokenizer NAME=DIR`.  Vectors equal sentence-transformers'
`encode(prompt_name=..., truncate_dim=...)`; usage counts the prompt's tokens (hand-counted
below); what only the worker can check comes back as OpenAI's 400."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from ..engines.prompted_model import write_prompted_model

pytest.importorskip("sentence_transformers")

MODEL = "e5-tiny"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def vectors(response: object) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)  # type: ignore[attr-defined]


def test_gateway_dimensions_and_prompts(redis_url: str, start_worker, start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    model = write_prompted_model(tmp_path / MODEL)
    st = SentenceTransformer(str(model), device="cpu")
    start_worker(redis_url, "--model", str(model), "--backend", "torch")
    # --models: queued even before the worker advertises the model (it loads in a few seconds)
    gateway = start_gateway(redis_url, "--tokenizer", f"{MODEL}={model}", "--models", MODEL)
    client = gateway.openai()
    texts = ["hello world", "hello"]

    default = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    passage = client.embeddings.create(
        model=MODEL, input=texts, dimensions=16, extra_body={"prompt_name": "passage"}
    )
    bare = client.embeddings.create(model=MODEL, input=texts, extra_body={"prompt": ""})

    assert cosines(vectors(default), st.encode(texts)).min() >= 0.99999
    want = st.encode(texts, prompt_name="passage", truncate_dim=16)
    assert vectors(passage).shape == want.shape == (2, 16)
    assert cosines(vectors(passage), want).min() >= 0.99999
    assert cosines(vectors(bare), st.encode(texts, prompt="")).min() >= 0.99999
    # [CLS] query : hello world [SEP] + [CLS] query : hello [SEP]; without a prompt 4 + 3
    assert default.usage.prompt_tokens == default.usage.total_tokens == 6 + 5
    assert passage.usage.prompt_tokens == 6 + 5  # "passage" is one token too; dimensions change nothing
    assert bare.usage.prompt_tokens == 4 + 3

    with pytest.raises(openai.BadRequestError) as caught:  # known here: refused before Redis
        client.embeddings.create(model=MODEL, input=texts, dimensions=65)
    assert caught.value.body["message"] == f"dimensions: 65 is over model '{MODEL}''s 64"
    unknown = httpx.post(
        f"{gateway.url}/v1/embeddings", json={"model": MODEL, "input": "a", "prompt_name": "nope"}, timeout=30
    )  # only the worker knows: its refusal answered as OpenAI's 400
    assert unknown.status_code == 400
    assert unknown.json()["error"] == {
        "message": "prompt_name: 'nope' is not one of this model's prompts ('document', 'passage', 'query')",
        "type": "invalid_request_error",
        "param": "prompt_name",
        "code": "invalid_value",
    }
