"""RAG retrieval with vecq and FAISS: embed a corpus once, find the passages nearest a query, and
optionally rerank them with a cross-encoder.

The commands a user runs (the first needs `vecq[worker]`, the others also `faiss-cpu`):

    vecq embed examples/corpus.jsonl --id-field id --out vectors.parquet
    python examples/rag_faiss.py vectors.parquet "how do I keep tomato plants healthy?"
    python examples/rag_faiss.py vectors.parquet "how do I keep tomato plants healthy?" \
        --rerank ./bge-reranker-base

The first writes one row per corpus line (`id`, `vector`), in corpus order, with the default
model (all-MiniLM-L6-v2) on CPU; add `--redis URL` to use running workers instead.  The second
builds a FAISS inner-product index over the normalized vectors (inner product = cosine), embeds
the query with the same model and prints the k nearest texts with their cosines.  The query is
embedded in this process, as `vecq embed`'s embedded worker does (ONNX Runtime on CPU); pass
`--redis URL` to send it to the workers that embedded the corpus, `--model DIR` if `vecq embed`
was given one.

The third takes the 20 nearest texts (`--candidates N`) from FAISS and reranks them with a
cross-encoder model dir (a one-label `*ForSequenceClassification`, e.g. the bge-reranker family):
it prints the k most relevant by the cross-encoder's score (`CrossEncoder.predict`'s), best first.
The pairs are scored in this process by vecq's `Reranker` (torch on CPU); with `--redis URL` they
go through `Client.rerank` to workers serving the model (`vecq worker --model ./bge-reranker-base`),
whose queues are named after the dir (`bge-reranker-base`) unless `--rerank-name` gives the
`--name` they were started with.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Hit:
    score: float
    id: str
    text: str


def read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """Ids and float32 vectors of a `vecq embed --out *.parquet` file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    ids = [str(i) for i in table.column("id").to_pylist()]
    vectors = table.column("vector").combine_chunks()
    flat = vectors.flatten().to_numpy(zero_copy_only=False)
    return ids, np.ascontiguousarray(flat.reshape(len(ids), -1), dtype=np.float32)


def read_texts(corpus: Path, *, text_field: str = "text", id_field: str = "id") -> dict[str, str]:
    """id → text of a .jsonl corpus (the file given to `vecq embed`)."""
    texts = {}
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                texts[str(record[id_field])] = record[text_field]
    return texts


def build_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    """An exact inner-product index over L2-normalized copies of `vectors`."""
    normalized = vectors.copy()
    faiss.normalize_L2(normalized)
    index = faiss.IndexFlatIP(normalized.shape[1])
    index.add(normalized)
    return index


def embed_query(query: str, *, redis_url: str | None, model: Path | None) -> np.ndarray:
    """The query's vector with the corpus's model: through the workers, or in this process."""
    if redis_url is not None:
        from vecq.producer import Client

        with Client(redis_url) as client:  # the workers of `model` when one was given
            return client.embed([query], model=served_name(str(model)) if model else None)
    from vecq.engines import Embedder

    with Embedder.load(model, backend="onnx") as embedder:
        return embedder.embed([query])


def search(
    index: faiss.IndexFlatIP, query: np.ndarray, ids: list[str], texts: dict[str, str], k: int
) -> list[Hit]:
    """The k nearest corpus texts, best first, with their cosine scores."""
    q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
    faiss.normalize_L2(q)
    scores, rows = index.search(q, min(k, index.ntotal))
    return [Hit(float(s), ids[r], texts[ids[r]]) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]


def rerank(
    query: str, candidates: list[Hit], k: int, *, model: str, redis_url: str | None, name: str | None
) -> list[Hit]:
    """The k candidates most relevant to `query` by a cross-encoder, best first, with its scores:
    through the workers serving it (queues named `name`, else after the model dir), or here."""
    from vecq.producer.rerank import ranked

    documents = [hit.text for hit in candidates]
    if redis_url is not None:
        from vecq.producer import Client

        with Client(redis_url) as client:
            results = client.rerank(query, documents, model=name or served_name(model), top_n=k)
    else:
        from vecq.engines.reranker import Reranker

        with Reranker.load(model) as reranker:
            results = ranked(reranker.score(query, documents), k)
    return [Hit(r.score, candidates[r.index].id, candidates[r.index].text) for r in results]


def served_name(model: str) -> str:
    """The name `vecq worker --model DIR` (or `--bundle DIR`: its manifest's) serves a model
    under when not given `--name`."""
    root = Path(model).resolve()
    if (root / "manifest.json").is_file():
        return str(json.loads((root / "manifest.json").read_text(encoding="utf-8"))["name"])
    name = root.parent.name if root.name == "model" else root.name  # packaged: .../<package>/model
    return name.lower().replace("_", "-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Nearest corpus texts to a query (vecq + FAISS).")
    parser.add_argument("vectors", type=Path, help="vecq embed --out *.parquet")
    parser.add_argument("query")
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus.jsonl", help="the embedded .jsonl")
    parser.add_argument("-k", type=int, default=3, help="how many texts to print")
    parser.add_argument("--redis", dest="redis_url", help="embed (and rerank) through vecq's workers here")
    parser.add_argument("--model", type=Path, help="the --model/--bundle given to vecq embed, if any")
    parser.add_argument("--rerank", metavar="MODEL_DIR", help="rerank the candidates with this cross-encoder")
    parser.add_argument("--candidates", type=int, default=20, metavar="N", help="FAISS hits to --rerank (20)")
    parser.add_argument("--rerank-name", metavar="NAME", help="with --redis: the reranking workers' --name")
    args = parser.parse_args(argv)

    ids, vectors = read_vectors(args.vectors)
    index = build_index(vectors)
    query = embed_query(args.query, redis_url=args.redis_url, model=args.model)
    texts = read_texts(args.corpus)
    if args.rerank is None:
        hits = search(index, query, ids, texts, args.k)
    else:
        candidates = search(index, query, ids, texts, args.candidates)
        hits = rerank(
            args.query, candidates, args.k, model=args.rerank, redis_url=args.redis_url, name=args.rerank_name
        )
    for hit in hits:
        print(f"{hit.score:.4f}\t{hit.id}\t{hit.text}")


if __name__ == "__main__":
    main()
