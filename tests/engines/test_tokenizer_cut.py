"""Long texts are tokenized from a whitespace-cut prefix: the ids must equal a full tokenization."""

from __future__ import annotations

from vecq.engines import Embedder
from vecq.engines.parity import parity_texts


def test_prefix_tokenization_equals_full_tokenization() -> None:
    tok = Embedder.load(backend="null").tokenizer
    texts = [
        *parity_texts(),
        "word " * 3000,
        "长" * 5000 + " tail",
        "a" * 9000,
        ("Ünïcödé ACCENTS and CAPS, punctuation!? " * 200).strip(),
        "short " * 200 + "x" * 4000,  # a prefix that does not overflow: tokenized again in full
        " " * 5000 + "late words only",
    ]
    got = tok.encode(texts)
    full = tok._tok.encode_batch(texts, add_special_tokens=True)
    for i, enc in enumerate(full):
        assert got.ids[i].tolist() == enc.ids, f"texts[{i}] tokenized differently"
