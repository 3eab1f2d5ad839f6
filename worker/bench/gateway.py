"""`vecq bench gateway`: N concurrent HTTP clients against a real gateway, Redis and worker.

Everything runs on this machine, as processes of their own: a private Valkey (embedded), one
`vecq worker` (the null engine by default, so the gateway and queue path is what is timed; or
`--backend onnx` for the real default model on CPU, `--backend torch --device cuda --precision
fp16` on a GPU), one `vecq gateway`, and here an asyncio
load of N clients, each sending its next request as soon as the last is answered, for a fixed
time per round.  Per round: goodput (200s/s), p50/p99 latency of the 200s, every other answer
by status or error kind, and the most Redis connections the gateway process held (read from
/proc).  After the last round, the texts still queued once the queues had `--drain` seconds to
empty (abandoned work that was not cancelled would be left there).  Traffic goes to 127.0.0.1
only; clients are capped at 4,096 and every round at its seconds plus the gateway's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

MAX_CLIENTS = 4096


def _servers(
    redis_url: str, port: int, gateway_flags: list[str], engine: list[str], tmp: Path
) -> tuple[subprocess.Popen, subprocess.Popen]:
    """A `vecq worker` with the `engine` flags and a `vecq gateway` on `port`, both on `redis_url`."""
    worker = _vecq("worker", *engine, "--redis", redis_url, "--log-level", "WARNING", log=tmp / "worker.log")
    gateway = _vecq("gateway", "--redis", redis_url, "--port", str(port), *gateway_flags,
                    "--log-level", "warning", log=tmp / "gateway.log")  # fmt: skip
    return worker, gateway


def _vecq(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vecq.worker", *args], stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def family(pid: int) -> list[int]:
    """`pid` and its children (`vecq gateway --processes N`'s), from Linux /proc."""
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds processes `pids` have used (Linux /proc)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def redis_connections(pid: int, redis_port: int) -> int:
    """Established TCP connections of process `pid` to `redis_port` (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                fields[3] == "01"
                and int(fields[2].rsplit(":", 1)[1], 16) == redis_port
                and fields[9] in inodes
            ):
                count += 1
    return count


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One request on a kept-alive HTTP/1.1 connection; the answer's status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        (int(v) for k, _, v in (h.partition(b":") for h in lines[1:]) if k.lower() == b"content-length"), 0
    )
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def _round(
    port: int, clients: int, seconds: float, texts: int, gateway_pid: int, redis_port: int, model: str
) -> dict:
    """`clients` connections, each posting its next request when the last is answered.  A few
    lines of asyncio streams, not httpx: on the 2-core sandbox httpx's client did 91 requests/s
    of a trivial route at 64 concurrent connections (653 at 4) while the gateway answered 1,366/s
    to 256 plain keep-alive connections -- the client, not the server, was being measured."""
    body = json.dumps({"model": model, "input": [f"a short query of the bench {i}" for i in range(texts)]})
    request = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        except OSError as exc:
            codes[type(exc).__name__] += 1
            return
        try:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    kind = str(await _post(reader, writer, request))
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    codes[type(exc).__name__] += 1
                    return
                codes[kind] += 1
                if kind == "200":
                    latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    most = 0

    async def sample() -> None:
        nonlocal most
        while time.monotonic() < deadline:
            most = max(most, sum(redis_connections(pid, redis_port) for pid in pids))
            await asyncio.sleep(0.5)

    pids = family(gateway_pid)
    started, cpu = time.monotonic(), cpu_seconds(pids)
    await asyncio.gather(sample(), *(client() for _ in range(clients)))
    elapsed, cpu = time.monotonic() - started, cpu_seconds(pids) - cpu
    lat = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    return {
        "clients": clients,
        "goodput": codes["200"] / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "codes": dict(codes),
        "connections": most,
        "cpu_ms": 1000 * cpu / max(1, sum(codes.values())),
    }


def _wait_until(check, timeout: float, what: str, procs: dict[str, subprocess.Popen], tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """Until `check()` holds; a process that exits, or the timeout, ends the bench with the
    last lines of every process's log (they live in a temporary folder that goes with it)."""
    deadline = time.monotonic() + timeout
    while not check():
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            for name in procs:
                lines = (tmp / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                click.echo(f"--- {name}.log (last lines)\n" + "\n".join(lines), err=True)
            why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:g} s"
            raise click.ClickException(f"waiting for {what}: {why}")
        time.sleep(0.2)


def _worker_flags(
    backend: str, device: str, precision: str | None, model: str, tmp: Path
) -> tuple[list[str], str]:
    """The worker's engine flags and the model name requests ask for."""
    flags = ["--backend", backend, "--device", device] + (["--precision", precision] if precision else [])
    if model == "default":
        return flags, "all-minilm-l6-v2"
    from .models import model_dir

    name = Path(model).name
    return [*flags, "--model", str(model_dir(model, tmp)), "--name", name], name


@click.command("gateway")
@click.option("--clients", default="16,256,1024", show_default=True, help="Concurrent clients, per round.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Length of each round.")
@click.option("--texts", type=int, default=1, show_default=True, help="Texts per request.")
@click.option("--backend", default="null", show_default=True, help="The worker's engine (null, onnx, torch).")
@click.option(
    "--device", default="cpu", show_default=True, help="The worker's device (cuda: the GPU machine)."
)
@click.option("--precision", default=None, help="The worker's precision (e.g. fp16 on cuda).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="The gateway's --timeout.")
@click.option("--drain", type=float, default=60.0, show_default=True, help="Seconds the queues get to empty.")
@click.option("--processes", type=int, default=1, show_default=True, help="The gateway's --processes.")
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="The worker's model: `default` (all-MiniLM-L6-v2), `random-bert-base-en` (BERT-base, random "
    "weights: a GPU's load without the default model's weights on the machine) or a model dir.",
)
def gateway_bench(
    clients: str, seconds: float, texts: int, backend: str, device: str, precision: str | None,
    timeout: float, drain: float, processes: int, model: str,
) -> None:  # fmt: skip
    """Goodput, p50/p99 and every non-200 of N concurrent clients through a real gateway."""
    import httpx
    import redis

    from vecq.producer.keys import queue_keys

    from ..embed.server import embedded_redis, free_port

    rounds = [int(c) for c in clients.split(",") if c.strip()]
    if not rounds or max(rounds) > MAX_CLIENTS or min(rounds) < 1:
        raise click.BadParameter(f"1 to {MAX_CLIENTS} clients per round", param_hint="--clients")
    with tempfile.TemporaryDirectory(prefix="vecq-gwbench-") as tmp, embedded_redis() as redis_url:
        port = free_port()
        engine, name = _worker_flags(backend, device, precision, model, Path(tmp))
        flags = ["--timeout", str(timeout), "--processes", str(processes)]
        worker, gateway = _servers(redis_url, port, flags, engine, Path(tmp))
        url = f"http://127.0.0.1:{port}"
        try:

            def served() -> bool:
                try:
                    return bool(httpx.get(f"{url}/v1/models", timeout=2).json()["data"])
                except (httpx.HTTPError, ValueError, KeyError):
                    return False

            _wait_until(
                served, 300, "the worker and the gateway", {"worker": worker, "gateway": gateway}, Path(tmp)
            )
            redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
            results = [
                asyncio.run(_round(port, n, seconds, texts, gateway.pid, redis_port, name)) for n in rounds
            ]
            conn = redis.Redis.from_url(redis_url)
            keys = queue_keys(name)
            start = time.monotonic()
            while sum(conn.llen(k) for k in keys) and time.monotonic() - start < drain:
                time.sleep(0.5)
            left = sum(conn.llen(k) for k in keys)
        finally:
            for proc in (gateway, worker):
                proc.terminate()
            for proc in (gateway, worker):
                proc.wait(timeout=60)
    what = f"{backend} worker of {name} on {device}" + (f" ({precision})" if precision else "")
    _print_results(f"{what}, {texts} text(s) per request, {seconds:g} s per round", results)
    click.echo(f"  jobs still queued after a {drain:g} s drain: {left}")


def _print_results(title: str, results: list[dict]) -> None:
    click.echo(f"\ngateway bench: {title}")
    click.echo(
        f"  {'clients':>8} {'goodput/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'Redis conns':>12} "
        f"{'gw CPU ms/req':>14}  answers"
    )
    for r in results:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items()))
        click.echo(
            f"  {r['clients']:>8} {r['goodput']:>10,.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
            f"{r['connections']:>12} {r['cpu_ms']:>14.2f}  {answers}"
        )
    base = results[0]
    for r in results[1:]:
        ratio = r["goodput"] / base["goodput"]
        click.echo(f"  goodput at {r['clients']} clients: {ratio:.2f}x that at {base['clients']}")
