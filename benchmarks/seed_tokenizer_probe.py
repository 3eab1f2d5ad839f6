"""Does the tokenizer's thread pool cost the seed workload its 20× (issue 4)?  Calls/s of
`Embedder.embed` on the write-up's queries (ORT graphs, the `--seed-workload` engine) with
`tokenizers` parallel (default), with `TOKENIZERS_PARALLELISM=false`, and the tokenizer call
alone in the same process.

    python benchmarks/seed_tokenizer_probe.py --json $OUT/seed-tokenizer.json
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from vecq.worker.gpubench import SEED_BATCHES, SEED_QUERIES, per_second


@click.command()
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(json_out: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_profile import seed_embedder

    from vecq.engines.build import build_bundle
    from vecq.engines.random_model import write_random_bert

    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        model_dir = write_random_bert(tmp / "bert")
        bundle = tmp / "bundle"
        build_bundle(model_dir, bundle, device="cuda", precision="fp16", progress=lambda s: None)
        emb = seed_embedder(model_dir, bundle)
        emb.warmup()
        raw = emb.tokenizer._tok
        for mode in ("parallel", "sequential", "parallel again"):
            # tokenizers reads TOKENIZERS_PARALLELISM on every batch call
            os.environ["TOKENIZERS_PARALLELISM"] = "false" if mode == "sequential" else "true"
            row = {}
            for b in SEED_BATCHES:
                texts = [SEED_QUERIES[i % 3] for i in range(b)]
                row[f"embed B={b} calls/s"] = per_second(lambda t=texts: emb.embed(t))
                row[f"tokenizer B={b} us"] = 1e6 / per_second(lambda t=texts: raw.encode_batch_fast(t))
            report[mode] = row
            click.echo(f"{mode}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()))
        emb.close()
    json_out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
