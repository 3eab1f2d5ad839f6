"""`vecq worker --gpus all` on real GPUs (skipped without CUDA; run on the GPU machine).

One supervised worker per visible GPU serves the default model with torch CUDA graphs; the
vectors match the CPU reference; SIGTERM drains every worker and the supervisor exits 0.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import redis
from rq import Worker

from vecq.producer import Client

from .servers import VECQ, stop_process, until


def _gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() and shutil.which("nvidia-smi") else 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpus() == 0, reason="needs CUDA GPUs and nvidia-smi")]


def test_gpus_all_serves_on_every_gpu_and_drains(redis_url: str, tmp_path) -> None:
    from vecq.engines import Embedder

    conn = redis.Redis.from_url(redis_url)
    log = (tmp_path / "gpus.log").open("ab")
    cmd = [*VECQ, "worker", "--gpus", "all", "--backend", "torch", "--redis", redis_url]
    cmd += ["--worker-name", "gpu-sup"]
    sup = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        until(
            lambda: sum(w.name.startswith("gpu-sup.") for w in Worker.all(connection=conn)) == _gpus(),
            300,
            "one worker per GPU",
        )
        texts = [f"a sentence about GPUs number {i}" for i in range(300)]
        client = Client(redis_url)
        got = np.concatenate([client.embed(texts[i : i + 30], timeout=120) for i in range(0, 300, 30)])
    finally:
        code = stop_process(sup, timeout=120)
    assert code == 0, (tmp_path / "gpus.log").read_text()[-3000:]
    want = Embedder.load(backend="torch").embed(texts)
    assert float(np.min(np.sum(got * want, axis=1))) > 0.999
