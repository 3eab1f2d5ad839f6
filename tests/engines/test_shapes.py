"""ShapeSet: grid caps, token budget, planning covers every row once, fit."""

from __future__ import annotations

import numpy as np
import pytest

from vecq.engines import Shape, ShapeSet


def test_grid_caps_seq_len_at_model_max_and_always_includes_it() -> None:
    shapes = ShapeSet.grid([1, 4], [16, 64, 512], max_seq_len=200)
    assert shapes.seq_lens == (16, 64, 200)
    assert Shape(4, 200) in shapes
    assert shapes.max_seq_len == 200


def test_token_budget_drops_big_shapes_but_keeps_the_smallest_batch() -> None:
    shapes = ShapeSet.grid([1, 8, 32], [16, 128, 512], max_seq_len=512, max_batch_tokens=2048)
    assert Shape(32, 16) in shapes and Shape(8, 128) in shapes
    assert Shape(32, 128) not in shapes and Shape(8, 512) not in shapes
    assert Shape(1, 512) in shapes  # every length keeps at least one shape
    assert all(s.tokens <= 2048 or s.batch == 1 for s in shapes)


def test_plan_covers_every_row_exactly_once_with_declared_shapes() -> None:
    shapes = ShapeSet.grid([1, 2, 4, 8], [16, 32, 64], max_seq_len=64)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, size=203)
    plan = shapes.plan(lengths)
    seen = np.concatenate([p.indices for p in plan])
    assert sorted(seen.tolist()) == list(range(203))
    for p in plan:
        assert p.shape in shapes
        assert len(p.indices) <= p.shape.batch
        assert lengths[p.indices].max() <= p.shape.seq_len
        assert shapes.seq_len_for(int(lengths[p.indices].max())) == p.shape.seq_len


def test_plan_of_nothing_is_empty_and_over_long_is_refused() -> None:
    shapes = ShapeSet.grid([1, 2], [16], max_seq_len=16)
    assert shapes.plan([]) == []
    with pytest.raises(ValueError, match="length 17 is over the largest declared seq_len"):
        shapes.plan([3, 17])


def test_fit_picks_smallest_holding_shape_capped_at_largest() -> None:
    shapes = ShapeSet.grid([1, 2, 4, 8], [32], max_seq_len=32)
    assert shapes.fit(3, 32) == Shape(4, 32)
    assert shapes.fit(1, 32) == Shape(1, 32)
    assert shapes.fit(50, 32) == Shape(8, 32)
    assert shapes.seq_len_for(17) == 32


def test_cpu_shapes_are_fine_grained_and_round_trip_through_the_manifest_form() -> None:
    shapes = ShapeSet.for_cpu(max_seq_len=256, step=8)
    assert shapes.seq_lens[:3] == (8, 16, 24) and shapes.max_seq_len == 256
    assert shapes.batch_sizes(64) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert ShapeSet.from_list(shapes.to_list()) == shapes


def test_invalid_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one shape"):
        ShapeSet([])
    with pytest.raises(ValueError, match="must be >= 1"):
        ShapeSet([Shape(0, 16)])


def test_long_models_get_bounded_shapes_and_planners_accept_them() -> None:
    """A model of 8,192 tokens: shapes reach its max, batches stay within a token budget (CPU:
    8,192 tokens; GPU: the 128 × 512 of the largest default batch), and both planners cut a
    mix of short and 8,192-token texts into declared shapes."""
    from vecq.engines.shapes import CPU_MAX_BATCH_TOKENS, default_shapes
    from vecq.engines.tokenizer import flatten
    from vecq.worker.packing import TokenPlanner
    from vecq.worker.planner import NewJob, Planner, encode_jobs

    for short in (128, 256, 512):  # models of up to 512 tokens keep exactly their old shapes
        old = ShapeSet.grid((1, 2, 3, 4, 5, 6, 7, 8), list(range(2, short, 2)), max_seq_len=short)
        assert default_shapes(short, "cpu") == old
        assert len(default_shapes(short, "cuda")) == 8 * len(
            {min(L, short) for L in (16, 32, 64, 128, 256, 512)}
        )
    cpu, gpu = default_shapes(8192, "cpu"), default_shapes(8192, "cuda")
    assert cpu.max_seq_len == gpu.max_seq_len == 8192 and len(cpu) < 3500
    assert max(s.tokens for s in cpu) == CPU_MAX_BATCH_TOKENS and cpu.max_batch(8192) == 1
    assert max(s.tokens for s in gpu) == 128 * 512 and gpu.max_batch(8192) == 8
    assert {1024, 2048, 4096} <= set(gpu.seq_lens)
    assert all(b - a <= max(2, a // 64) for a, b in zip(cpu.seq_lens, cpu.seq_lens[1:], strict=False))

    class Encoder:
        def encode(self, texts, *, truncate=True):
            return flatten([np.arange(min(int(t), 8192), dtype=np.int64) + 5 for t in texts])

    lengths = ["8192", "9000", "700", "3", "5000", "512"]
    p = Planner(cpu, Encoder(), max_wait_s=0.0)
    p.add([NewJob("a", lengths)], now=0.0)
    planned = []
    while (b := p.next_batch(1.0, flush=True)) is not None:
        assert b.shape in cpu and all(len(r.ids) <= b.shape.seq_len for r in b.rows)
        planned += [len(r.ids) for r in b.rows]
    assert sorted(planned) == sorted([8192, 8192, 700, 3, 5000, 512])
    packer = TokenPlanner(budget=16384, max_rows=64, max_wait_s=0.0)
    packer.add_encoded(encode_jobs(Encoder(), [NewJob("a", lengths)], now=0.0))
    packed = []
    while (b := packer.next_batch(1.0, flush=True)) is not None:
        assert b.tokens <= 16384
        packed += [int(n) for part in b.parts for n in part.tokens.lengths]
    assert sorted(packed) == sorted(planned)
