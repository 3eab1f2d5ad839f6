"""The deliberate breaks `gpu_breaks.py` applies to an installed vecq, one at a time (issue 19),
and the CPU check that each still applies to the repo's own sources.

Each is one exact-string substitution in one installed file that keeps the module importable and
breaks only the behaviour its tests claim to check; its tests must then FAIL.  Names are
`area.what`, so `--only kernels,packed` selects whole areas.  Patterns are checked against the
repo's own sources by `gpu_breaks.py --check` (and tests/test_gpu_breaks.py on the CPU), so a
refactor that makes one stale fails CI instead of the next GPU session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKED = "tests/engines/test_gpu_packed.py::"
GPU = "tests/engines/test_gpu.py::"
RERANK = "tests/engines/test_gpu_rerank.py::"
SUPERVISOR = (
    "tests/worker/test_gpu_supervisor.py::test_each_gpu_has_its_worker_and_each_serves_and_is_restarted"
)


@dataclass(frozen=True)
class Break:
    """One substitution (`old` must occur exactly once in `path`) and the tests that must fail."""

    name: str
    #: The file relative to the site dir vecq is installed in (`vecq/engines/kernels.py`).
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    #: Its tests need onnxruntime-gpu: reported SKIPPED, not failed, where ORT has no CUDA EP.
    needs_ort: bool = False
    #: Seconds its pytest run may take (model loads, Triton compiles, graph captures included).
    timeout: float = 240.0
    #: A reason the break cannot show on this machine (None: it can).
    skip_when: Callable[[], str | None] | None = None
    #: What is known beforehand (a CPU estimate of its effect), printed beside the verdict.
    note: str = ""

    @property
    def area(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def repo_path(self) -> str:
        """The same file in the checkout: vecq/engines/x.py is engines/x.py (pyproject's package-dir)."""
        return self.path.removeprefix("vecq/")

    def change(self) -> str:
        """The substitution in one line."""
        first = [s.strip().splitlines()[0] if s.strip() else "" for s in (self.old, self.new)]
        return f"{self.repo_path}: `{first[0]}` -> `{first[1]}`"

    def describe(self) -> str:
        lines = [f"== {self.name}", f"   change: {self.change()}", f"   tests:  {' '.join(self.tests)}"]
        lines += [f"   note:   {self.note}"] * bool(self.note)
        lines += ["   needs:  onnxruntime-gpu"] * self.needs_ort
        return "\n".join(lines)

    def why_skipped(self, ort: bool) -> str | None:
        """Why this break cannot show on this machine (reported SKIPPED, not counted as a failure)."""
        if self.needs_ort and not ort:
            return "SKIPPED: no onnxruntime-gpu (onnxruntime has no CUDAExecutionProvider)"
        why = self.skip_when() if self.skip_when is not None else None
        return f"SKIPPED: {why}" if why else None


class PatternMissing(Exception):
    """`old` does not occur exactly once in the file."""


def substitute(text: str, brk: Break) -> str:
    """`text` with `brk.old` replaced by `brk.new`; `PatternMissing` unless `old` occurs exactly once."""
    count = text.count(brk.old)
    if count != 1:
        raise PatternMissing(
            f"PATTERN MISSING: {brk.old.strip().splitlines()[0]!r} occurs {count}x in {brk.path}"
        )
    return text.replace(brk.old, brk.new)


def _inherited_single_pin() -> str | None:
    """With CUDA_VISIBLE_DEVICES already naming one GPU, a child the supervisor forgot to pin
    inherits the right pin: the break cannot show, and unsetting the variable here could expose
    GPUs this machine was not lent."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and len([g for g in env.split(",") if g.strip()]) == 1:
        return (
            f"CUDA_VISIBLE_DEVICES={env} already pins this process's one GPU: an unpinned child inherits it"
        )
    return None


KERNELS = "vecq/engines/kernels.py"
TORCH_PACKED = "vecq/engines/backends/torch_packed.py"
GRAPH_TRACK = "vecq/engines/backends/graph_track.py"
PACKED_ENCODER = "vecq/engines/packed_encoder.py"
TORCH_GRAPHS = "vecq/engines/backends/torch_graphs.py"
ONNX_CUDA = "vecq/engines/backends/onnx_cuda.py"

BREAKS: tuple[Break, ...] = (
    Break(
        "kernels.attention-scale",
        KERNELS,
        "s = tl.dot(q, tl.trans(k)) * scale",
        "s = tl.dot(q, tl.trans(k)) * (scale * 0.5)",
        (PACKED + "test_triton_kernels_equal_their_references",),
    ),
    Break(
        "kernels.pool-mean-divisor",
        KERNELS,
        "v = tl.sum(acc, 0) / tl.maximum(e - a, 1).to(tl.float32)",
        "v = tl.sum(acc, 0) / tl.maximum(e - a + 1, 1).to(tl.float32)",
        (PACKED + "test_embed_and_pool_kernels_equal_their_references",),
    ),
    Break(
        "kernels.attention-window",
        KERNELS,
        "keep = keep & (tl.abs(rows[:, None] - cols[None, :]) <= WINDOW)",
        "keep = keep & (tl.abs(rows[:, None] - cols[None, :]) <= 2 * WINDOW)",
        (PACKED + "test_triton_kernels_equal_their_references[32-short-64]",),
    ),
    Break(
        "kernels.embed-position",
        KERNELS,
        "pos = tl.minimum(tl.maximum(t - tl.load(cu + lo), 0), max_pos) + first",
        "pos = tl.minimum(tl.maximum(t - tl.load(cu + lo), 0), max_pos) + first + 1",
        (PACKED + "test_packed_fp16_matches_fp32_for_every_text",),
        note="CPU estimate (torch reference, same shift): min cosine to fp32 0.43",
    ),
    Break(
        "packed.bucket-largest",
        TORCH_PACKED,
        "T = self.buckets[bisect.bisect_left(self.buckets, n)]",
        "T = self.buckets[-1]",
        (PACKED + "test_each_token_buffer_captured_once_and_batches_use_the_smallest",),
    ),
    Break(
        "packed.capture-every-run",
        TORCH_PACKED,
        "        if (T, long) not in track.graphs:\n            self._capture(track, T, long)  # only if",
        "        if True:  # break: the buffer is captured again on every run\n"
        "            self._capture(track, T, long)  # only if",
        (PACKED + "test_each_token_buffer_captured_once_and_batches_use_the_smallest",),
        timeout=300.0,
    ),
    Break(
        "packed.tracks-share-capture-stream",
        GRAPH_TRACK,
        "            with torch.cuda.graph(graph, pool=self._pool, stream=self.stream):\n"
        "                out = module(",
        "            with torch.cuda.graph(graph, pool=self._pool):  # break: torch's one capture stream\n"
        "                out = module(",
        (PACKED + "test_batches_side_by_side_on_tracks_get_one_tracks_vectors",),
        note="the thirteenth session's probe saw max |diff| 5.4 this way (BERT-base, 32k-token buffers)",
    ),
    Break(
        "packed.long-tile-never-replayed",
        TORCH_PACKED,
        "long = n >= LONG_TEXTS_FROM and T in self.long_buckets",
        "long = False and n >= LONG_TEXTS_FROM and T in self.long_buckets",
        (PACKED + "test_long_texts_replay_the_long_tile_graph",),
    ),
    Break(
        "packed.roberta-first-position",
        PACKED_ENCODER,
        "(config.pad_token_id + 1) if offset is None else offset",
        "0 if offset is None else offset",
        (PACKED + "test_every_architecture_on_cuda_fp16_matches_cpu_fp32[roberta-PackedGraphEngine]",),
        note="CPU estimate (torch reference, same offset): min cosine to fp32 0.86",
    ),
    Break(
        "packed.segments-lost",
        PACKED_ENCODER,
        "return (((before - before[start]) > 0) & live).to(torch.int32)",
        "return torch.zeros_like(token)  # break: every token is segment 0",
        (RERANK + "test_cuda_reranker_matches_cross_encoder[bert-packed]",),
        note="the test's models' scores spread (initializer_range 0.2): on the CPU the break moves them 0.25",
    ),
    Break(
        "packed.modernbert-window-lost",
        "vecq/engines/packed_modernbert.py",
        '"window": config.local_attention // 2 if local else 0,',
        '"window": 0,  # break: every layer attends globally',
        (PACKED + "test_every_architecture_on_cuda_fp16_matches_cpu_fp32[modernbert-PackedGraphEngine]",),
        note="the test's ModernBERT: a 16-token window, 10x weights; on the CPU the break gives cosine 0.97",
    ),
    Break(
        "graphs.eager-not-replayed",
        TORCH_GRAPHS,
        "        g.graph.replay()\n        self.replays += 1\n",
        "        with self._torch.inference_mode():  # break: run eagerly, the graph never replayed\n"
        "            g.out.copy_(self.module(g.ids, g.mask).float())\n",
        (GPU + "test_torch_graphs_fp16",),
    ),
    Break(
        "graphs.ids-from-mask",
        TORCH_GRAPHS,
        "g.ids.copy_(g.host_ids, non_blocking=True)",
        "g.ids.copy_(g.host_mask, non_blocking=True)",
        (GPU + "test_torch_graphs_fp16",),
    ),
    Break(
        "ort.graphs-off",
        ONNX_CUDA,
        "device_id=device_id, graphs=graphs)",
        "device_id=device_id, graphs=False)",
        (GPU + "test_onnx_graph_replay_equals_plain_run",),
        needs_ort=True,
        timeout=300.0,
    ),
    Break(
        "ort.warmup-short-of-capture",
        ONNX_CUDA,
        "while slot.runs < (CAPTURE_RUN if self.graphs else 1):",
        "while slot.runs < (CAPTURE_RUN - 1 if self.graphs else 1):",
        (GPU + "test_onnx_each_shape_captured_once",),
        needs_ort=True,
        timeout=300.0,
    ),
    Break(
        "ort.twin-threshold",
        ONNX_CUDA,
        "return self.packed if shape.batch >= self.packed_from_batch else self.graphs",
        "return self.packed if shape.batch > self.packed_from_batch else self.graphs",
        (GPU + "test_packed_twin_serves_the_large_shapes_and_matches_fp32",),
        needs_ort=True,
        timeout=300.0,
    ),
    Break(
        "ort.graph-output-stale",
        ONNX_CUDA,
        "        self._run(slot)\n        return slot.output.numpy()",
        "        if not self.graphs or slot.runs < CAPTURE_RUN:  # break: a captured shape never runs again\n"
        "            self._run(slot)\n        return slot.output.numpy()",
        (GPU + "test_onnx_fp16_matches_fp32_for_every_text", GPU + "test_onnx_graph_replay_equals_plain_run"),
        needs_ort=True,
        timeout=360.0,
    ),
    Break(
        "ort.no-session-per-shape",
        ONNX_CUDA,
        "            session = self._shape_session(first)\n",
        '            raise RuntimeError("break: graph capture refused per shape too")\n',
        (GPU + "test_every_architecture_on_ort_cuda_fp16_matches_cpu_fp32[modernbert]",),
        needs_ort=True,
        timeout=300.0,
    ),
    Break(
        "supervisor.unpinned",
        "vecq/worker/supervisor.py",
        'env = _env(model, {"CUDA_VISIBLE_DEVICES": gpu}, VECQ_TOKENIZE_THREADS=str(threads))',
        "env = _env(model, {}, VECQ_TOKENIZE_THREADS=str(threads))  # break: the child is not pinned",
        (SUPERVISOR,),
        timeout=300.0,
        skip_when=_inherited_single_pin,
    ),
    Break(
        "supervisor.no-restart",
        "vecq/worker/supervisor.py",
        "elif now >= child.restart_at:",
        "elif False:  # break: a dead child is never restarted",
        (SUPERVISOR,),
        # the test waits START_S (300 s; VECQ_GPU_START_S=120 in a break run) for the restart
        timeout=450.0,
        note="fails at the test's wait for the restart: with VECQ_GPU_START_S=120, ~3 min",
    ),
)


def check(root: Path = ROOT, breaks: Sequence[Break] = BREAKS) -> list[str]:
    """The problems `--check` finds: a pattern not found exactly once in the repo's own source, a
    patched copy that does not compile, a break that changes nothing, a name given twice."""
    problems = []
    names = [b.name for b in breaks]
    problems += [f"{n}: named twice" for n in sorted({n for n in names if names.count(n) > 1})]
    with tempfile.TemporaryDirectory(prefix="gpu-breaks-check-") as tmp:
        for brk in breaks:
            source = root / brk.repo_path
            copy = Path(tmp) / brk.name / brk.repo_path
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
            try:
                patched = substitute(copy.read_text(encoding="utf-8"), brk)
            except PatternMissing as exc:
                problems.append(f"{brk.name}: {exc}")
                continue
            if brk.old == brk.new:
                problems.append(f"{brk.name}: the substitution changes nothing")
            copy.write_text(patched, encoding="utf-8")
            try:
                compile(copy.read_text(encoding="utf-8"), str(copy), "exec")
            except SyntaxError as exc:
                problems.append(f"{brk.name}: the patched {brk.repo_path} does not compile: {exc}")
    return problems


def collected(root: Path = ROOT, breaks: Sequence[Break] = BREAKS) -> set[str]:
    """Every node id pytest collects from the breaks' test files (collection needs no GPU)."""
    files = sorted({t.split("::", 1)[0] for b in breaks for t in b.tests})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return {line.strip() for line in proc.stdout.splitlines() if "::" in line}


def unknown_tests(ids: set[str], breaks: Sequence[Break] = BREAKS) -> list[str]:
    """The breaks' test ids that name no collected test (a renamed test, a changed parametrize id)."""
    return [
        f"{b.name}: {t} is not a collected test"
        for b in breaks
        for t in b.tests
        if t not in ids and not any(i.startswith(t + "[") for i in ids)
    ]
