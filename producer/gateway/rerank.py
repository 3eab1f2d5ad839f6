"""`POST /v1/rerank`: the request and response shape Cohere, Jina and TEI users know.

`{model, query, documents: [str], top_n?, return_documents?}` becomes one rerank job on the
model's interactive lane (`AsyncClient.rerank`), through the same key check, body limit and
admission as `/v1/embeddings` (`Gateway.admitted`); its answer is `{"object": "list", model,
results: [{index, relevance_score, document?: {text}}], usage}`, best first.  Bad requests get
a 400 in OpenAI's error shape with one line naming the field.  `usage` counts the pairs' tokens
with the model's tokenizer (`--tokenizer NAME=DIR`, the cross-encoder's dir or bundle), as the
worker encodes them; 0 for a model with no known tokenizer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import BadRequest
from ..rerank import check_rerank
from .settings import canonical_model

RERANK_PATH = "/v1/rerank"


class RerankRequest(BaseModel):
    """The rerank body; unknown fields are ignored, as OpenAI's are on `/v1/embeddings`."""

    model_config = ConfigDict(extra="ignore")

    query: Any
    documents: Any
    model: str = "default"
    top_n: Any = None
    return_documents: Any = False


async def rerank_answer(gateway: Any, body: RerankRequest) -> dict[str, Any]:
    """The ranking of `body.documents` against `body.query` by the model's workers (`gateway`:
    the app's `Gateway`)."""
    check_rerank(body.documents, body.top_n)
    if type(body.return_documents) is not bool:
        raise BadRequest(f"return_documents: expected a bool, got {type(body.return_documents).__name__}")
    model = canonical_model(body.model)
    async with gateway.admitted(model, len(body.documents)):
        ranked, tokens = await asyncio.gather(  # the count runs while the workers score
            gateway.client.rerank(
                body.query, body.documents, model=model, top_n=body.top_n, timeout=gateway.settings.timeout
            ),
            _pair_tokens(gateway.tokenizers.get(model), body),
        )
    gateway.metrics.texts.inc(len(body.documents))
    gateway.metrics.tokens.inc(tokens)
    results = []
    for r in ranked:
        entry: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if body.return_documents:
            entry["document"] = {"text": body.documents[r.index]}
        results.append(entry)
    return {
        "object": "list",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _pair_tokens(tokenizer: Any, body: RerankRequest) -> int:
    """The pairs' tokens by the model's tokenizer, off the loop (0: no tokenizer, or a query the
    client's checks refuse)."""
    if tokenizer is None or not isinstance(body.query, str):
        return 0
    return await asyncio.to_thread(tokenizer.count_pairs, body.query, body.documents)
