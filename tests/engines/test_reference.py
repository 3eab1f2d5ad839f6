"""vecq's vectors against sentence-transformers (real model) and torch against ONNX (tiny model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vecq.engines import Embedder
from vecq.engines.parity import cosines


def test_varied_texts_cover_what_the_issue_asks_for(varied_texts: list[str], default_torch) -> None:
    lengths = default_torch.tokenizer.encode(varied_texts, truncate=True).lengths
    raw = [len(default_torch.tokenizer._tok.encode(t).overflowing) for t in varied_texts]
    assert len(varied_texts) >= 50
    assert "" in varied_texts and "a" in varied_texts and "   " in varied_texts
    assert any("東京" in t for t in varied_texts) and any("北京" in t for t in varied_texts)
    assert any("https://" in t for t in varied_texts) and any("😀" in t for t in varied_texts)
    assert sum(r > 0 for r in raw) >= 5 and lengths.max() == 256  # over-long texts, truncated


def test_torch_backend_matches_sentence_transformers(default_torch, varied_texts, st_vectors) -> None:
    cos = cosines(default_torch.embed(varied_texts), st_vectors)
    assert cos.min() >= 0.99999, f"text {cos.argmin()}: cosine {cos.min()}"


def test_onnx_backend_matches_sentence_transformers(default_onnx, varied_texts, st_vectors) -> None:
    vectors = default_onnx.embed(varied_texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(varied_texts), 384)
    cos = cosines(vectors, st_vectors)
    assert cos.min() >= 0.99999, f"text {cos.argmin()}: cosine {cos.min()}"


def test_tiny_chinese_bert_torch_and_onnx_agree_with_cls_pooling(tiny_bert_dir: Path) -> None:
    import torch
    from transformers import BertModel

    texts = ["今天天气很好", "我们在北京开会。", "中", "", "ok 中文 mixed 123", "向量检索" * 100]
    torch_emb = Embedder.load(tiny_bert_dir, backend="torch")
    onnx_emb = Embedder.load(tiny_bert_dir, backend="onnx")  # built and cached on first use
    assert torch_emb.spec.pooling == "cls" and not torch_emb.spec.normalize
    a, b = torch_emb.embed(texts), onnx_emb.embed(texts)
    assert cosines(a, b).min() >= 0.99999
    model = BertModel.from_pretrained(str(tiny_bert_dir)).eval()
    ids = torch_emb.tokenizer.encode(texts[:1]).ids[0]
    with torch.inference_mode():
        cls = model(input_ids=torch.from_numpy(ids)[None]).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(a[0], cls, rtol=1e-4, atol=1e-5)
