"""Where a small GPU call's host time goes (issue 4, batch 1 ≤ 0.5 ms), and what the copies in
and out cost through ORT's own `OrtValue.update_inplace` vs torch tensors bound to the same
IOBinding.  Also the tokenizer's batch call vs one call per text for small batches.

    python benchmarks/ort_copy_probe.py --json $OUT/copy-probe.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np


def median_us(fn, n: int = 300) -> float:
    for _ in range(20):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


@click.command()
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(json_out: Path) -> None:
    import torch

    from vecq.engines.backends.onnx_cuda import OnnxCudaEngine
    from vecq.engines.build import build_bundle
    from vecq.engines.random_model import write_random_bert
    from vecq.engines.shapes import Shape, ShapeSet
    from vecq.engines.tokenizer import TextTokenizer
    from vecq.worker.corpus import make_corpus

    report: dict = {"gpu": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        model_dir = write_random_bert(tmp / "bert")
        bundle = tmp / "bundle"
        build_bundle(model_dir, bundle, device="cuda", precision="fp16", progress=lambda s: None)
        shapes = [Shape(1, 16), Shape(8, 16), Shape(128, 128)]
        eng = OnnxCudaEngine(bundle / "model.onnx", shapes=ShapeSet(shapes), dim=768)
        eng.warmup()
        for shape in shapes:
            slot = eng._slot(shape)
            ids = np.full((shape.batch, shape.seq_len), 100, dtype=np.int64)
            mask = np.ones_like(ids)
            row: dict[str, float] = {}
            row["ort update_inplace ×2"] = median_us(
                lambda s=slot, a=ids, m=mask: (
                    s.inputs["input_ids"].update_inplace(a),
                    s.inputs["attention_mask"].update_inplace(m),
                )
            )
            row["run_with_iobinding (graph replay, synced)"] = median_us(lambda s=slot: eng._run(s))
            row["output.numpy()"] = median_us(lambda s=slot: s.output.numpy())
            # torch tensors at fixed device addresses, bound to a second IOBinding of the session
            t_ids = torch.empty(ids.shape, dtype=torch.int64, device="cuda")
            t_mask = torch.empty(ids.shape, dtype=torch.int64, device="cuda")
            t_out = torch.empty((shape.batch, 768), dtype=torch.float32, device="cuda")
            pin_in = torch.empty((2, *ids.shape), dtype=torch.int64).pin_memory()
            pin_out = torch.empty((shape.batch, 768), dtype=torch.float32).pin_memory()
            stream = torch.cuda.current_stream()

            def copy_in(a=ids, m=mask, ti=t_ids, tm=t_mask, p=pin_in, st=stream) -> None:
                pv = p.numpy()
                pv[0] = a
                pv[1] = m
                ti.copy_(p[0], non_blocking=True)
                tm.copy_(p[1], non_blocking=True)
                st.synchronize()

            def copy_out(to=t_out, p=pin_out, st=stream) -> np.ndarray:
                p.copy_(to, non_blocking=True)
                st.synchronize()
                return p.numpy()

            row["torch pinned copy in (both inputs)"] = median_us(copy_in)
            row["torch pinned copy out"] = median_us(copy_out)
            row["torch pageable copy in (both)"] = median_us(
                lambda a=ids, m=mask, ti=t_ids, tm=t_mask: (
                    ti.copy_(torch.from_numpy(a)),
                    tm.copy_(torch.from_numpy(m)),
                )
            )
            report[str(shape)] = row
            click.echo(f"{shape}: " + ", ".join(f"{k} {v:.1f} us" for k, v in row.items()))
        eng.close()
        tok = TextTokenizer.from_dir(model_dir, max_seq_len=512)
        raw = tok._tok
        q = ("你好啊", "今天天气怎么样", "我要暴富")
        toks: dict[str, dict[str, float]] = {}
        for b in (1, 8, 16):
            texts = [q[i % 3] for i in range(b)]
            toks[f"B={b}"] = {
                "encode_batch_fast": median_us(lambda t=texts: raw.encode_batch_fast(t)),
                "encode per text": median_us(lambda t=texts: [raw.encode(x) for x in t]),
                "vecq encode": median_us(lambda t=texts: tok.encode(t)),
            }
        corpus = make_corpus(4000, seed=1)
        toks["bulk 4000"] = {
            "encode_batch_fast": median_us(lambda: raw.encode_batch_fast(corpus), n=3),
            "vecq encode": median_us(lambda: tok.encode(corpus), n=3),
        }
        for k, v in toks.items():
            click.echo(f"tokenizer {k}: " + ", ".join(f"{a} {b:.1f} us" for a, b in v.items()))
        report["tokenizer"] = toks
    json_out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
