"""TensorRT logic that runs without TensorRT: profile selection, plan keys, ORT TRT EP options."""

from __future__ import annotations

from pathlib import Path

import pytest

from vecq.engines.backends.onnx import providers_for, trt_profile_options
from vecq.engines.backends.tensorrt import PlanKey, profile_indices
from vecq.engines.errors import UnknownBackend
from vecq.engines.shapes import Shape, ShapeSet

SHAPES = ShapeSet.grid((1, 8, 32), (16, 128), max_seq_len=128)


def test_one_profile_per_shape_in_a_stable_order() -> None:
    profiles = profile_indices(SHAPES)
    assert sorted(profiles.values()) == list(range(len(SHAPES)))
    assert list(profiles) == list(SHAPES)  # build and run enumerate the same sorted shapes
    assert profiles == profile_indices(ShapeSet(reversed(list(SHAPES))))
    assert Shape(4, 16) not in profiles


def _key(**changes: object) -> PlanKey:
    fields: dict = {
        "gpu": "NVIDIA H100",
        "compute_capability": "9.0",
        "tensorrt": "10.13",
        "shapes": SHAPES,
        "precision": "fp16",
        "onnx_sha256": "ab" * 32,
    }
    return PlanKey.of(**(fields | changes))


def test_plan_key_says_when_to_rebuild(tmp_path: Path) -> None:
    file = tmp_path / "plan_key.json"
    _key().write(file)
    assert _key().matches(file)
    assert not _key(gpu="NVIDIA H200").matches(file)
    assert not _key(tensorrt="10.14").matches(file)
    assert not _key(shapes=ShapeSet.grid((1, 8), (16, 128), max_seq_len=128)).matches(file)
    assert not _key().matches(tmp_path / "missing.json")


def test_ort_tensorrt_ep_gets_every_shape_as_a_profile_and_a_cache(tmp_path: Path) -> None:
    options = trt_profile_options(ShapeSet([Shape(1, 16), Shape(8, 32)]))
    want = "input_ids:1x16,attention_mask:1x16,input_ids:8x32,attention_mask:8x32"
    assert options == {
        "trt_profile_min_shapes": want,
        "trt_profile_opt_shapes": want,
        "trt_profile_max_shapes": want,
    }
    trt, cuda, cpu = providers_for("cuda:1", "tensorrt", shapes=SHAPES, cache_dir=tmp_path)
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["device_id"] == "1"
    assert trt[1]["trt_engine_cache_path"] == str(tmp_path) and trt[1]["trt_timing_cache_enable"] == "True"
    assert trt[1]["trt_profile_min_shapes"].count("input_ids:") == len(SHAPES)
    assert cuda == ("CUDAExecutionProvider", {"device_id": "1"}) and cpu == "CPUExecutionProvider"


def test_native_tensorrt_missing_is_one_clear_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    try:
        import tensorrt
    except ImportError:
        tensorrt = None
    if hasattr(tensorrt, "Builder"):
        pytest.skip("TensorRT is installed here")
    from vecq.engines.backends.tensorrt import build_plan

    with pytest.raises(UnknownBackend, match=r"needs NVIDIA TensorRT 10"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", shapes=SHAPES)
