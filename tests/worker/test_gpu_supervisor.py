"""`vecq worker --gpus all` on real GPUs (skipped without CUDA; run on the GPU machine).

One supervised worker per visible GPU serves the default model with torch on CUDA:

- each worker runs on its own GPU: its `CUDA_VISIBLE_DEVICES` (read from /proc) names one GPU,
  no two the same, together every visible one, and each GPU's memory in use rose once the
  workers were up (a CUDA context and a model on it);
- every worker serves jobs (each writes results), within cosine 0.999 of the CPU reference;
- a killed worker is restarted under its name, pinned to the same GPU, and serves again;
- the other workers serve while one is down and write the jobs it held (two workers per GPU
  with one GPU, one per GPU with two or more: the recovery is the same either way);
- SIGTERM drains every worker and the supervisor exits 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from rq import Worker

from vecq.engines import Embedder
from vecq.producer import Client
from vecq.producer.keys import job_key, result_key
from vecq.worker.supervisor import visible_gpus

from .servers import VECQ, stop_process, until


def _gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() and shutil.which("nvidia-smi") else 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpus() == 0, reason="needs CUDA GPUs and nvidia-smi")]
#: Seconds a worker start may take (model load, Triton compiles, graph captures); the break run
#: of benchmarks/gpu_breaks.py shortens it (VECQ_GPU_START_S) so a never-restarted worker fails sooner.
START_S = float(os.environ.get("VECQ_GPU_START_S", "300"))


def _memory_used_mib() -> dict[str, int]:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return {i.strip(): int(m) for i, m in (line.split(",") for line in out.splitlines() if line.strip())}


def _workers(conn: redis.Redis) -> dict[str, int]:
    """Live `gpu-sup.*` workers → pids."""
    return {w.name: int(w.pid or 0) for w in Worker.all(connection=conn) if w.name.startswith("gpu-sup.")}


def _pinned_gpu(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"CUDA_VISIBLE_DEVICES=")]
    assert len(found) == 1, f"worker {pid} has no CUDA_VISIBLE_DEVICES"
    return found[0]


def _writer(conn: redis.Redis, job_id: str) -> str:
    entries = conn.xrange(result_key(job_id))
    assert len(entries) == 1, f"job {job_id}: {len(entries)} results"
    return entries[0][1][b"worker_name"].decode()


def _written_ms(conn: redis.Redis, job_id: str) -> int:
    """When the job's result entry was written (Redis time, ms: the stream entry's id)."""
    (entry_id, _), *_ = conn.xrange(result_key(job_id))
    return int(entry_id.split(b"-")[0])


class Served:
    """Jobs sent one at a time (idle workers take in turn) and who wrote each."""

    def __init__(self, client: Client, conn: redis.Redis) -> None:
        self.client, self.conn = client, conn
        self.texts: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.writers: list[str] = []

    def one(self, tag: str) -> str:
        texts = [f"{tag}: a sentence about GPUs, number {len(self.texts) + i}" for i in range(24)]
        job = self.client.submit(texts)
        self.vectors.append(self.client.result(job, timeout=120))
        self.texts += texts
        self.writers.append(_writer(self.conn, job.id))
        return self.writers[-1]

    def until_each_wrote(self, names: set[str], tag: str, jobs: int) -> None:
        wrote: set[str] = set()
        for _ in range(jobs):
            wrote.add(self.one(tag))
            if names <= wrote:
                return
        pytest.fail(f"after {jobs} jobs only {sorted(wrote)} of {sorted(names)} served ({tag})")

    def check_vectors(self) -> None:
        want = Embedder.load(backend="torch").embed(self.texts)
        got = np.concatenate(self.vectors)
        assert float(np.min(np.sum(got * want, axis=1))) > 0.999


def _holders(conn: redis.Redis, job_ids: list[str]) -> dict[str, list[str]]:
    """Worker name → the jobs it holds (started, not finished)."""
    out: dict[str, list[str]] = {}
    for job_id in job_ids:
        status, worker = conn.hmget(job_key(job_id), "status", "worker_name")
        if status == b"started" and worker:
            out.setdefault(worker.decode(), []).append(job_id)
    return out


def _start(redis_url: str, tmp_path: Path, per_gpu: int = 1) -> subprocess.Popen[bytes]:
    log = (tmp_path / "gpus.log").open("ab")
    cmd = [*VECQ, "worker", "--gpus", "all", "--workers-per-gpu", str(per_gpu), "--backend", "torch"]
    cmd += ["--redis", redis_url, "--worker-name", "gpu-sup"]
    cmd += ["--heartbeat-ttl", "3", "--cleanup-interval", "1"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _names(per_gpu: int = 1) -> set[str]:
    return {f"gpu-sup.gpu{g}.{i}" for g in visible_gpus() for i in range(per_gpu)}


def test_each_gpu_has_its_worker_and_each_serves_and_is_restarted(redis_url: str, tmp_path: Path) -> None:
    conn = redis.Redis.from_url(redis_url)
    gpus, names = visible_gpus(), _names()
    before = _memory_used_mib()
    sup = _start(redis_url, tmp_path)
    try:
        until(lambda: set(_workers(conn)) == names, START_S, "one worker per GPU")
        pids = _workers(conn)
        pinned = {name: _pinned_gpu(pid) for name, pid in pids.items()}
        assert pinned == {f"gpu-sup.gpu{g}.0": g for g in gpus}  # one GPU each, every GPU once
        after = _memory_used_mib()
        rose = {g: after[g] - before.get(g, 0) for g in gpus if g in after}
        assert rose and all(mib >= 200 for mib in rose.values()), f"GPU memory rose by (MiB) {rose}"

        served = Served(Client(redis_url), conn)
        served.until_each_wrote(names, "first", jobs=20 * len(names))

        victim = f"gpu-sup.gpu{gpus[-1]}.0"
        os.kill(pids[victim], signal.SIGKILL)
        until(lambda: _workers(conn).get(victim, pids[victim]) not in (pids[victim], 0), START_S, "restart")
        assert _pinned_gpu(_workers(conn)[victim]) == gpus[-1]  # back on its own GPU
        served.until_each_wrote({victim}, "restarted", jobs=20 * len(names))
        served.check_vectors()
        assert "restarting in" in (tmp_path / "gpus.log").read_text()
    finally:
        code = stop_process(sup, timeout=120)
    assert code == 0, (tmp_path / "gpus.log").read_text()[-3000:]
    until(lambda: not _workers(conn), 30, "every worker deregistered")


def test_the_other_workers_serve_and_recover_while_one_restarts(redis_url: str, tmp_path: Path) -> None:
    conn = redis.Redis.from_url(redis_url)
    gpus = visible_gpus()
    per_gpu = 2 if len(gpus) == 1 else 1  # someone must be left to serve while the victim restarts
    names = _names(per_gpu)
    sup = _start(redis_url, tmp_path, per_gpu)
    try:
        until(lambda: set(_workers(conn)) == names, START_S, "every worker up")
        client = Client(redis_url)
        # ~200-token texts: ~3 s of work, so that jobs are still held when the victim is chosen
        filler = " and a sentence about recovery on GPUs" * 25
        texts = [[f"in flight {j} {i}{filler}" for i in range(64)] for j in range(200)]
        jobs = [client.submit(t) for t in texts]
        # The victim is whichever worker holds the most jobs once one is held: its kill strands them.
        holders: dict[str, list[str]] = {}
        for _ in range(500):
            holders = _holders(conn, [j.id for j in jobs])
            if holders:
                break
            time.sleep(0.01)
        assert holders, "no worker took a job within 5 s"
        victim, held = max(holders.items(), key=lambda kv: len(kv[1]))
        pid = _workers(conn)[victim]
        seconds, micros = conn.time()
        os.kill(pid, signal.SIGKILL)
        killed_ms = seconds * 1000 + micros // 1000
        got = [client.result(job, timeout=120) for job in jobs]
        # Served while the victim restarts: if it is still down once a new job is written, someone
        # else wrote it.  (Asked after the write: a restarted victim registers before it serves.)
        writer = Served(client, conn).one("while down")
        if _workers(conn).get(victim) in (None, pid):
            assert writer != victim
        # A held job the victim wrote before its kill is fine; one written under its name after
        # the kill waited for the restart instead of being recovered by the others.
        late = [j for j in held if _writer(conn, j) == victim and _written_ms(conn, j) >= killed_ms]
        assert not late, f"{len(late)} of the victim's {len(held)} jobs waited for its restart"
        want = Embedder.load(backend="torch")
        checked = {j.id for j in jobs[::20]} | set(held)  # a sample and every recovered job (CPU time)
        for job, vectors, job_texts in zip(jobs, got, texts, strict=True):
            if job.id in checked:
                assert float(np.min(np.sum(vectors * want.embed(job_texts), axis=1))) > 0.999
        until(lambda: _workers(conn).get(victim, pid) not in (pid, 0), START_S, "the victim restarted")
        print(f"{len(held)} jobs held by the killed worker, recovered by the others")
    finally:
        code = stop_process(sup, timeout=120)
    assert code == 0, (tmp_path / "gpus.log").read_text()[-3000:]
