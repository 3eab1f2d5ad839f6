"""A deterministic, realistic text corpus for benchmarks.

Benchmarks compare vecq with sentence-transformers on the same texts, so the texts must be the
same on every run and every machine, and look like what users embed: mostly short queries and
sentences, some paragraphs, a long tail of documents over the model's max length, a little
Chinese, code and URLs.  On all-MiniLM-L6-v2's tokenizer the default mix averages ~48 tokens.
"""

from __future__ import annotations

import random

_SUBJECTS = (
    "The embedding model", "A GPU worker", "The retriever", "Our search page", "The batch planner",
    "A vector index", "The web app", "This corpus job", "The tokenizer", "Every Redis queue",
)  # fmt: skip
_VERBS = (
    "returns", "splits", "serves", "ranks", "stores", "pads", "sorts", "rewrites", "caches", "measures",
)  # fmt: skip
_OBJECTS = (
    "short user queries", "long product descriptions", "recipes and cooking notes", "support tickets",
    "source code comments", "news articles about the weather", "legal contracts", "song lyrics",
    "scientific abstracts", "customer reviews of running shoes",
)  # fmt: skip
_TAILS = (
    "with fixed shapes", "after a worker restarts", "without losing a single job", "in under a second",
    "so padding stays small", "for the new search page", "on a small CPU", "before the deadline",
)  # fmt: skip
_CHINESE = ("今天天气很好", "我们在北京开会", "这个模型的效果不错", "请把文件发给我", "向量检索很快")
_CODE = ("def embed(texts): return model.encode(texts)", "SELECT id, title FROM docs WHERE score > 0.5;")
_URLS = ("https://example.com/docs/search?q=vector+index&page=2", "see http://localhost:8080/metrics")

# (share of texts, sentences per text) — queries, sentences, paragraphs, long documents
_MIX = ((0.30, (1, 1)), (0.42, (2, 3)), (0.25, (4, 6)), (0.03, (20, 40)))


def sentence(rng: random.Random) -> str:
    """One short English sentence, sometimes with a Chinese phrase, code or a URL mixed in."""
    words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
    extra = rng.random()
    if extra < 0.08:
        words.append(rng.choice(_CHINESE))
    elif extra < 0.12:
        words.append(rng.choice(_CODE))
    elif extra < 0.15:
        words.append(rng.choice(_URLS))
    return " ".join(words) + "."


def make_corpus(n: int = 4000, *, seed: int = 0) -> list[str]:
    """`n` texts of mixed lengths (mean ~48 tokens), the same for the same `n` and `seed`."""
    rng = random.Random(seed)
    shares = [share for share, _ in _MIX]
    texts = []
    for _ in range(n):
        lo, hi = rng.choices([span for _, span in _MIX], weights=shares)[0]
        texts.append(" ".join(sentence(rng) for _ in range(rng.randint(lo, hi))))
    return texts
