"""The README's LangChain and LlamaIndex snippets, run as written against a real gateway, Redis
and worker (only the gateway's address differs).

They are cut out of README.md at run time, so the README cannot drift from what works.  The
worker runs the null engine (this package's conftest), so each vector is checked exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from ..worker.servers import until

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
README_URL = "http://localhost:8000/v1"


def snippet(first_import: str) -> str:
    """The one README python block that starts with `first_import`."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    found = [b for b in blocks if b.startswith(first_import)]
    assert len(found) == 1, f"README needs one python block starting with {first_import!r}"
    assert README_URL in found[0]
    return found[0]


def run_snippet(code: str, gateway_url: str) -> dict[str, object]:
    names: dict[str, object] = {}
    exec(compile(code.replace(README_URL, f"{gateway_url}/v1"), "README.md", "exec"), names)
    return names


@pytest.mark.parametrize(
    ("first_import", "module"),
    [
        ("from langchain_openai import OpenAIEmbeddings", "langchain_openai"),
        (
            "from llama_index.embeddings.openai_like import OpenAILikeEmbedding",
            "llama_index.embeddings.openai_like",
        ),
    ],
)
def test_a_readme_framework_snippet_embeds_through_the_gateway(
    first_import, module, redis_url, start_worker, start_gateway, expected
) -> None:
    code = snippet(first_import)
    pytest.importorskip(module)
    start_worker(redis_url)
    gateway = start_gateway(redis_url)
    served = lambda: httpx.get(f"{gateway.url}/v1/models", timeout=5).json()["data"]  # noqa: E731
    until(served, 30, "the worker's model in /v1/models")  # the worker may come up after the gateway
    names = run_snippet(code, gateway.url)
    docs = np.asarray(names["docs"], dtype=np.float32)
    query = np.asarray(names["query"], dtype=np.float32)
    texts = ["tomatoes need full sun", "prune the side shoots weekly"]
    np.testing.assert_allclose(docs, expected(texts), rtol=0, atol=1e-6)
    np.testing.assert_allclose(query, expected(["how do I grow tomatoes?"])[0], rtol=0, atol=1e-6)


def test_token_id_arrays_are_refused_which_is_why_langchain_needs_the_flag(redis_url, start_gateway) -> None:
    """What `OpenAIEmbeddings` sends by default (tiktoken ids): a 400 naming `input`."""
    client = start_gateway(redis_url).openai()
    with pytest.raises(openai.BadRequestError, match="input"):
        client.embeddings.create(model="default", input=[[1820, 374, 264]])
