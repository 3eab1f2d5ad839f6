"""The SimCSE write-up's `predict_vec(texts)` and `predict_sim(a, b)`, served by vecq workers.

The write-up loads the model into the calling process; here the caller only needs
`pip install vecq` (no torch) and a Redis that vecq workers listen to:

    vecq worker --redis redis://localhost:6379/0          # one shell (or a GPU host)
    python examples/predict.py --redis redis://localhost:6379/0 "今天天气怎么样" "what is the weather today"

`Client.embed` sends the texts as one job on the interactive lane and waits for its vectors;
the worker batches them with everyone else's.  `similarity` is the cosine the write-up computes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from vecq.producer import Client, similarity


def predict_vec(texts: Sequence[str], client: Client, *, model: str | None = None) -> np.ndarray:
    """(len(texts), dim) float32 vectors, one row per text, in order."""
    return client.embed(list(texts), model=model)


def predict_sim(a: str, b: str, client: Client, *, model: str | None = None) -> float:
    """Cosine similarity of two texts' vectors (1.0: same direction), both embedded in one job."""
    va, vb = predict_vec([a, b], client, model=model)
    return float(similarity(va, vb))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Embed two texts with vecq and print their similarity.")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--redis", dest="redis_url", help="Redis URL (default: env VECQ_REDIS_URL)")
    parser.add_argument("--model", help="vecq model name (default: all-minilm-l6-v2)")
    args = parser.parse_args(argv)

    with Client(args.redis_url) as client:
        vectors = predict_vec([args.a, args.b], client, model=args.model)
        print(f"vectors: {vectors.shape[0]} x {vectors.shape[1]} float32")
        print(f"similarity: {predict_sim(args.a, args.b, client, model=args.model):.4f}")


if __name__ == "__main__":
    main()
