"""`build_bundle`: model dir → verified bundle dir (export, optimize, quantize, parity, manifest).

The bundle is assembled in a temporary sibling directory and renamed into place only after
parity passed, so a failed or interrupted build never leaves a half-written bundle where a
worker could load it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from . import backends
from .batching import embed_texts
from .bundle import MANIFEST, TOKENIZER_FILES, Manifest, copy_files, copy_torch_files, write_manifest
from .errors import BundleError, UnknownBackend
from .parity import compare, parity_texts, reference_vectors, require
from .prompts import write_prompts
from .shapes import DEFAULT_BATCH_SIZES, DEFAULT_SEQ_LENS, ShapeSet, default_shapes
from .spec import ModelSpec, Pooling, check_model_dir, read_spec, resolve_model
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def build_bundle(
    model_dir: str | Path,
    out: str | Path,
    *,
    backend: str = "onnx",
    device: str = "cpu",
    precision: str = "fp32",
    batch_sizes: Sequence[int] | None = None,
    seq_lens: Sequence[int] | None = None,
    max_batch_tokens: int | None = None,
    shapes: ShapeSet | None = None,
    pooling: Pooling | None = None,
    normalize: bool | None = None,
    max_seq_len: int | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Build, check and write a bundle for `model_dir` at `out`; returns its manifest.

    Shapes: `shapes` as given, else a grid of `batch_sizes` × `seq_lens` (capped by the model's
    max length and `max_batch_tokens`), else fine CPU shapes or the GPU defaults for `device`.
    Raises `ParityError` (and writes nothing) when the engine does not match the torch model.
    A cross-encoder (`*ForSequenceClassification`) becomes a reranker's bundle (`rerank_build.py`).
    """
    from .rerank_engine import is_cross_encoder

    say = progress or (lambda msg: log.info("%s", msg))
    kind = _device_kind(device)
    resolved, cached_name = resolve_model(model_dir)
    root = check_model_dir(resolved)
    rerank = is_cross_encoder(root)
    if rerank:
        spec = _rerank_spec(root, name or cached_name, pooling, normalize, max_seq_len)
    else:
        _check_choice(backend, kind, precision)
        spec = read_spec(
            root, name=name or cached_name, pooling=pooling, normalize=normalize, max_seq_len=max_seq_len
        )
    shapes = shapes or _shapes(root, spec, backend, kind, batch_sizes, seq_lens, max_batch_tokens)
    out = Path(out)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if rerank:
            from .rerank_build import assemble_rerank

            manifest = assemble_rerank(
                root, tmp, spec, shapes, backend=backend, device=kind, precision=precision, say=say
            )
        else:
            manifest = _assemble(
                root, tmp, spec, shapes, backend=backend, device=kind, precision=precision, say=say
            )
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"bundle written to {out}")
    return manifest


def _assemble(
    model_dir: Path, tmp: Path, spec: ModelSpec, shapes: ShapeSet, *, backend: str, device: str,
    precision: str, say: Progress,
) -> Manifest:  # fmt: skip
    """Everything but the final rename: files into `tmp`, parity checked, manifest written."""
    from .pooled import load_pooled

    say(f"loading {spec.name} from {model_dir}")
    module = load_pooled(model_dir, spec, attn_implementation="eager")
    tokenizer = TextTokenizer.from_dir(model_dir, max_seq_len=spec.max_seq_len)
    texts = parity_texts()
    say(f"computing torch fp32 reference vectors of {len(texts)} parity texts")
    reference = reference_vectors(module, tokenizer, texts)
    files = copy_files(model_dir, tmp, TOKENIZER_FILES) + write_prompts(model_dir, tmp)
    if backend == "onnx":
        from .onnx_build import build_onnx

        onnx = build_onnx(
            module, tmp, spec=spec, shapes=shapes, tokenizer=tokenizer, device=device, precision=precision,
            texts=texts, reference=reference, say=say,
        )  # fmt: skip
        graph, fp32_nodes, report = onnx.graph, onnx.fp32_nodes, onnx.report
        files += ["model.onnx", *onnx.extra_files]
    else:
        files += copy_torch_files(model_dir, tmp)
        report = _torch_parity(tmp, spec, shapes, tokenizer, device, precision, texts, reference)
        graph, fp32_nodes = f"torch {precision} (sdpa)", []
    require(report, what=f"{spec.name} {backend} {precision}")
    say(f"parity: min cosine {report.min_cosine:.7f} over {report.n_texts} texts (≥ {report.threshold})")
    return write_manifest(
        tmp, files, name=spec.name, dim=spec.dim, pooling=spec.pooling, normalize=spec.normalize,
        max_seq_len=spec.max_seq_len, precision=precision, backend=backend, device=device, graph=graph,
        fp32_nodes=fp32_nodes, shapes=shapes.to_list(), parity=report,
    )  # fmt: skip


def _rerank_spec(root: Path, name: str | None, pooling, normalize, max_seq_len) -> ModelSpec:  # type: ignore[no-untyped-def]
    """A cross-encoder's spec: its head decides pooling and scores are not normalized (options
    that restate its own, as the model cache passes them, are let through)."""
    from .cross_encoder import read_rerank_spec

    spec = read_rerank_spec(root, name=name)[0]
    asked = {"pooling": pooling, "normalize": normalize, "max_seq_len": max_seq_len}
    if any(v is not None and v != getattr(spec, k) for k, v in asked.items()):
        raise BundleError(f"{root}: a cross-encoder's pooling, normalization and max length are its own")
    return spec


def _torch_parity(bundle, spec, shapes, tokenizer, device, precision, texts, reference):
    """A torch bundle's parity through the engine that will serve it (sdpa, or packed token
    buffers on CUDA; its shapes, padding, precision) against the reference."""
    from .backends.torch import for_model_dir

    engine = for_model_dir(bundle, spec=spec, shapes=shapes, device=device, precision=precision)
    engine.warmup()
    try:
        return compare(embed_texts(tokenizer, engine, texts), reference, precision=precision)
    finally:
        engine.close()


def _shapes(
    root: Path, spec: ModelSpec, backend: str, device: str, batch_sizes, seq_lens, max_batch_tokens
) -> ShapeSet:
    if batch_sizes is None and seq_lens is None and max_batch_tokens is None:
        if backend == "torch":
            from .backends.torch import served_shapes

            return served_shapes(root, spec, device)
        return default_shapes(spec.max_seq_len, device)
    return ShapeSet.grid(
        batch_sizes or DEFAULT_BATCH_SIZES,
        seq_lens or DEFAULT_SEQ_LENS,
        max_seq_len=spec.max_seq_len,
        max_batch_tokens=max_batch_tokens,
    )


def _device_kind(device: str) -> str:
    if device == "cpu" or device.startswith("cuda"):
        return "cpu" if device == "cpu" else "cuda"
    raise UnknownBackend(f"device {device!r} is not cpu, cuda or cuda:N")


def _check_choice(backend: str, device: str, precision: str) -> None:
    allowed = backends.precisions(backend, device)
    if precision not in allowed:
        raise UnknownBackend(
            f"precision {precision!r} is not available for {backend} on {device} "
            f"(choose {', '.join(allowed)})"
        )


def _check_target(out: Path) -> None:
    """Refuse to replace a directory that is neither empty nor an earlier bundle."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise BundleError(f"{out}: exists and is not a vecq bundle (refusing to overwrite it)")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished bundle into place; an earlier bundle there is swapped out, then removed."""
    os.chmod(tmp, 0o755)
    old: Path | None = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
