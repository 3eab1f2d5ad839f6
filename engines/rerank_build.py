"""`vecq build` of a cross-encoder: a reranker's bundle, checked against its own fp32 scores.

`build.build_bundle` hands a `*ForSequenceClassification` model dir here.  The bundle is the
embedders' (manifest, checksums, tokenizer files, shapes; `model.onnx`, or the safetensors
weights for torch) with `task: "rerank"` and the activation `CrossEncoder.predict` applies.  Its
parity is of scores, not vectors: every parity text paired with three queries (Chinese, emoji,
one far over the model's length, so that longest-first truncation cuts both sides), scored by the
engine that will serve the bundle, against the torch fp32 model one pair at a time, unpadded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .batching import run_padded
from .bundle import TOKENIZER_FILES, Manifest, copy_files, copy_torch_files, write_manifest
from .errors import UnknownBackend
from .parity import compare_scores, parity_texts, require
from .shapes import ShapeSet
from .spec import ModelSpec
from .tokenizer import TextTokenizer

PARITY_QUERIES = (
    "北京的天气怎么样？",
    "best pizza 🍕 near me",
    "what does the long query say about 长文本 and truncation? " * 40,
)


def assemble_rerank(
    model_dir: Path, tmp: Path, spec: ModelSpec, shapes: ShapeSet, *, backend: str, device: str,
    precision: str, say,  # type: ignore[no-untyped-def]
) -> Manifest:  # fmt: skip
    """The reranker bundle's files into `tmp`, its parity checked, its manifest written."""
    from .cross_encoder import load_scoring, read_rerank_spec
    from .export import export_onnx
    from .rerank_engine import check_choice, make_engine

    if backend == "onnx" and device != "cpu":
        raise UnknownBackend(
            "a reranker's onnx bundle runs on the CPU for now (build --backend torch for CUDA)"
        )
    check_choice(backend, device, precision)
    _, activation = read_rerank_spec(model_dir, name=spec.name)
    tokenizer = TextTokenizer.from_dir(model_dir, max_seq_len=spec.max_seq_len)
    sep_id = int(tokenizer.filler[1])
    say(f"loading the cross-encoder {spec.name} from {model_dir}")
    module = load_scoring(model_dir, activation=activation, sep_id=sep_id, attn_implementation="eager")
    documents = parity_texts()
    say(f"computing torch fp32 reference scores of {len(documents) * len(PARITY_QUERIES)} parity pairs")
    reference = reference_scores(module, tokenizer, documents)
    files = copy_files(model_dir, tmp, TOKENIZER_FILES)
    if backend == "onnx":
        export_onnx(module, tmp / "model.onnx")
        files.append("model.onnx")
        graph = "exported (unfused)"
    else:
        files += copy_torch_files(model_dir, tmp)
        graph = f"torch {precision} (sdpa)"
    engine = make_engine(
        tmp, spec, activation, sep_id, backend=backend, device=device, precision=precision, shapes=shapes,
        threads=None, packed=True, onnx_path=tmp / "model.onnx" if backend == "onnx" else None,
    )  # fmt: skip
    try:
        engine.warmup()
        report = compare_scores(served_scores(tokenizer, engine, documents), reference, precision=precision)
    finally:
        engine.close()
    require(report, what=f"{spec.name} reranker {backend} {precision}")
    say(report.summary())
    return write_manifest(
        tmp, files, name=spec.name, dim=1, pooling="cls", normalize=False, max_seq_len=spec.max_seq_len,
        precision=precision, backend=backend, device=device, graph=graph, fp32_nodes=[],
        shapes=shapes.to_list(), parity=report, task="rerank", activation=activation,
    )  # fmt: skip


def reference_scores(module, tokenizer: TextTokenizer, documents: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The torch module's score of each (query, document) pair alone (no padding), query-major."""
    import torch

    out = []
    with torch.inference_mode():
        for query in PARITY_QUERIES:
            for ids in tokenizer.encode_pairs(query, documents).ids:
                t = torch.from_numpy(ids)[None]
                out.append(float(module(t, torch.ones_like(t)).float().reshape(-1)[0]))
    return np.asarray(out, dtype=np.float32)


def served_scores(tokenizer: TextTokenizer, engine, documents: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The same pairs through `engine` in batches, as `Reranker.score` runs them."""
    parts = []
    for query in PARITY_QUERIES:
        tokens = tokenizer.encode_pairs(query, documents)
        parts.append(
            run_padded(tokenizer, engine, tokens, np.empty((len(documents), 1), dtype=np.float32))[:, 0]
        )
    return np.concatenate(parts)
