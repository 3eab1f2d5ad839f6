"""Exercise vecq's TensorRT build path (`engines.backends.tensorrt.build_plan`) with TensorRT-RTX.

Native TensorRT cannot be installed on vecq's machines; the `tensorrt-rtx-cu13` wheels can.  Their
builder parses ONNX and builds plans with optimization profiles on an H100, but their runtime
refuses compute capability 9.0.  So this script runs vecq's own `build_plan` with `tensorrt_rtx`
standing in for `tensorrt` (same Python API for what vecq uses), checks the plan's profiles, then
tries the runtime and reports what happened.  Run on the GPU machine:

    python benchmarks/trt_rtx_build.py --out $OUT/trt_rtx.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("trt_rtx.json"))
    args = ap.parse_args()
    try:
        import tensorrt_rtx
    except ImportError:  # the -bindings wheel alone installs the module under this name
        import tensorrt_rtx_bindings as tensorrt_rtx

    sys.modules["tensorrt"] = tensorrt_rtx  # vecq's backend imports `tensorrt`
    from vecq.engines.backends.tensorrt import TensorRTEngine, build_plan, profile_indices
    from vecq.engines.export import export_onnx
    from vecq.engines.pooled import load_pooled
    from vecq.engines.random_model import write_random_bert
    from vecq.engines.shapes import ShapeSet
    from vecq.engines.spec import read_spec

    report: dict = {"tensorrt_rtx": getattr(tensorrt_rtx, "__version__", "?")}
    shapes = ShapeSet.grid((1, 8, 32), (16, 128), max_seq_len=128)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_random_bert(work / "model", hidden=256, layers=4, heads=4, max_positions=128)
        spec = read_spec(model)
        onnx_path = export_onnx(load_pooled(model, spec, attn_implementation="eager"), work / "model.onnx")
        plan, cache = work / "model.plan", work / "timing.cache"
        t0 = time.perf_counter()
        try:
            build_plan(onnx_path, plan, shapes=shapes, precision="fp16", timing_cache=cache)
            report["build"] = {
                "ok": True,
                "seconds": time.perf_counter() - t0,
                "plan_bytes": plan.stat().st_size,
                "timing_cache_bytes": cache.stat().st_size if cache.exists() else 0,
                "profiles_expected": len(profile_indices(shapes)),
            }
        except Exception as exc:
            report["build"] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:],
            }
        if report["build"].get("ok"):
            report["runtime"] = _try_runtime(TensorRTEngine, plan, shapes, spec)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _try_runtime(engine_cls, plan: Path, shapes, spec) -> dict:
    try:
        engine = engine_cls(plan, shapes=shapes, dim=spec.dim, device="cuda:0")
        engine.warmup()
        return {"ok": True, "profiles": engine._engine.num_optimization_profiles}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}


if __name__ == "__main__":
    main()
