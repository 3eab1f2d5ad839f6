"""What vecq is measured against, each on the same texts and device: sentence-transformers'
`encode`, plain PyTorch (Hugging Face's `BertModel`, fp16, SDPA attention, length-sorted batches
of a token budget, pre-tokenized), and the card's dense ceiling.

Rates are texts/s and real tokens/s (the model's own tokenizer, special tokens in, cut at its max
length): a corpus's texts/s mean nothing without its token length.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rate:
    """A measured rate of one contender."""

    label: str
    texts_per_s: float
    tokens_per_s: float


def real_tokens(model_dir: Path, texts: list[str]) -> list[int]:
    """Each text's token count as the model reads it."""
    from vecq.engines.spec import read_spec
    from vecq.engines.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_dir(model_dir, max_seq_len=read_spec(model_dir).max_seq_len)
    return [int(n) for n in tokenizer.encode(texts).lengths]


def flops_per_token(model_dir: Path) -> float:
    """Dense FLOPs per token of a BERT-shaped encoder's matmuls (2 per multiply-add), the
    attention scores left out: they grow with the text's length and are small at real lengths."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    h, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    ffn = int(config.get("intermediate_size", 4 * h))
    # ModernBERT's gated FFN: its input projection is 2 × intermediate wide (value and gate)
    ffn_mats = 3 if config.get("model_type") == "modernbert" else 2
    return 2.0 * layers * (4 * h * h + ffn_mats * h * ffn)


def matmul_tflops(device: str) -> float:
    """The device's measured dense rate: bf16 8192³ products on CUDA, fp32 2048³ on the CPU."""
    import torch

    cuda = device.startswith("cuda")
    n, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    reps = 10 if cuda else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def sentence_transformers_rate(
    model_dir: Path, device: str, texts: list[str], tokens: int, batch: int
) -> Rate:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device=device)
    if device.startswith("cuda"):
        st = st.half()
    st.encode(texts[:2000], batch_size=batch)
    start = time.perf_counter()
    st.encode(texts, batch_size=batch)
    elapsed = time.perf_counter() - start
    precision = "fp16" if device.startswith("cuda") else "fp32"
    return Rate(
        f"sentence-transformers {precision} encode, batch {batch}", len(texts) / elapsed, tokens / elapsed
    )


def plain_torch_rate(
    model_dir: Path, device: str, texts: list[str], lengths: list[int], *, token_budget: int = 32768
) -> Rate:
    """Hugging Face `BertModel` (fp16 on CUDA), SDPA attention, texts sorted by length and cut into
    batches of at most `token_budget` padded tokens, tokenized beforehand: what a user gets from
    plain PyTorch with one evening's care."""
    import numpy as np
    import torch
    from transformers import AutoModel

    from vecq.engines.spec import read_spec
    from vecq.engines.tokenizer import TextTokenizer

    cuda = device.startswith("cuda")
    model = AutoModel.from_pretrained(
        str(model_dir), attn_implementation="sdpa", dtype=torch.float16 if cuda else torch.float32
    )
    model = model.to(device).eval()
    tokenizer = TextTokenizer.from_dir(model_dir, max_seq_len=read_spec(model_dir).max_seq_len)
    ids = tokenizer.encode(texts).ids
    order = np.argsort([len(x) for x in ids], kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * len(ids[order[end]]) <= token_budget:
            end += 1
        rows = [ids[i] for i in order[start:end]]
        batch = tokenizer.make_batch(rows, _shape(len(rows), max(len(r) for r in rows)))
        batches.append((torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)))
        start = end
    batches = [(i.to(device), m.to(device)) for i, m in batches]  # pre-tokenized, on the device

    def once() -> None:
        with torch.inference_mode():
            for input_ids, mask in batches:
                model(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, 0].float()
        if cuda:
            torch.cuda.synchronize()

    once()
    begin = time.perf_counter()
    once()
    elapsed = time.perf_counter() - begin
    label = (
        f"plain PyTorch BertModel {'fp16' if cuda else 'fp32'} SDPA, sorted, ≤{token_budget:,} tokens/batch"
    )
    return Rate(label, len(texts) / elapsed, sum(lengths) / elapsed)


def _shape(rows: int, seq_len: int):  # type: ignore[no-untyped-def]
    from vecq.engines.shapes import Shape

    return Shape(rows, seq_len)
