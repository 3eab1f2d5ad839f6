"""Reliability (issue 5), access: a least-privilege ACL user and TLS (`rediss://`) end to end --
producer, worker and `vecq status` -- with the password in no log line, error or status output.

The ACL rule tested here is the one RELIABILITY.md documents (keep them the same)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import numpy as np
import pytest
import redis

from vecq.producer import Client, RedisUnavailable

from .conftest import MODEL
from .servers import VECQ, RedisServer, free_port, spawn_worker, stop_process, until

#: What vecq's producers, workers and `vecq status` need, and nothing else: rq's and vecq's keys,
#: rq's pub/sub channels, no admin commands (CONFIG, FLUSH*, KEYS, SHUTDOWN, DEBUG, ...).
VECQ_ACL = (
    "on >{password} resetkeys ~rq:* ~vecq:* resetchannels &rq:* -@all "
    "+@read +@write +@scripting +@transaction +@connection +@pubsub "
    "-@dangerous +client|setname +client|id +client|unblock +info +time"
)


def _end_to_end(url: str, secret: str, tmp_path: Path, null_embedder) -> None:  # type: ignore[no-untyped-def]
    """Producer + worker + `vecq status` through `url`; the secret never shows."""
    log = tmp_path / "worker.log"
    worker = spawn_worker(url, log, "--worker-name", "acl-worker")
    try:
        with Client(url) as client:
            texts = [f"secured {i}" for i in range(40)]
            vectors = client.embed(texts, model=MODEL, timeout=60)
            np.testing.assert_array_equal(vectors, null_embedder.embed(texts))
            waited = asyncio.run(_async_embeds(url, 20))  # through the ResultHub's one reader
            np.testing.assert_array_equal(waited[7], null_embedder.embed(["async 7"]))
            job = client.submit(["word " * 600], model=MODEL, truncate=False)
            with pytest.raises(Exception, match="TextTooLong") as failed:
                client.result(job, timeout=30)
        status = subprocess.run(
            [*VECQ, "status", "--redis", url, "--sample", "0.2"], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert "acl-worker" in status.stdout and f"vecq.{MODEL}.interactive" in status.stdout
        assert stop_process(worker) == 0
    finally:
        stop_process(worker)
    everything = log.read_text() + status.stdout + status.stderr + str(failed.value)
    assert secret not in everything
    text = log.read_text()
    assert "Traceback" not in text and "NOPERM" not in text and "WARNING" not in text, text[-3000:]


async def _async_embeds(url: str, n: int) -> list[np.ndarray]:
    from vecq.producer import AsyncClient

    async with AsyncClient(url) as client:
        waits = [client.embed([f"async {i}"], model=MODEL, timeout=60) for i in range(n)]
        return await asyncio.gather(*waits)


def test_acl_user_with_only_what_vecq_needs(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path, password="admin-pw-1").start()
    admin = server.admin()
    admin.execute_command("ACL", "SETUSER", "vecq", *VECQ_ACL.format(password="acl-pw-42").split())
    url = server.url(user="vecq", password="acl-pw-42")
    try:
        probe = redis.Redis.from_url(url)
        for forbidden in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("GET", "other:key")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                probe.execute_command(*forbidden)
        # the result hub wakes its reader with CLIENT UNBLOCK (without it: up to 250 ms a request)
        assert probe.execute_command("CLIENT", "UNBLOCK", probe.execute_command("CLIENT", "ID")) == 0
        _end_to_end(url, "acl-pw-42", tmp_path, null_embedder)
        assert admin.exists("other:key") == 0 and admin.dbsize() > 0
    finally:
        server.stop()


def test_wrong_password_is_one_masked_line_everywhere(tmp_path) -> None:
    server = RedisServer(tmp_path, password="right-pw").start()
    url = server.url(password="wrong-pw-77")
    try:
        status = subprocess.run([*VECQ, "status", "--redis", url], capture_output=True, text=True, timeout=60)
        worker = subprocess.run(
            [*VECQ, "worker", "--backend", "null", "--redis", url], capture_output=True, text=True, timeout=60
        )
        with pytest.raises(RedisUnavailable) as producer:
            Client(url).embed(["x"], model=MODEL)
    finally:
        server.stop()
    masked = f"redis://:***@127.0.0.1:{server.port}/0"
    for out in (status, worker):
        assert out.returncode != 0
        assert masked in out.stderr and "wrong-pw-77" not in out.stdout + out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert masked in str(producer.value) and "wrong-pw-77" not in str(producer.value)


def _certificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made by the test (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key, issuer: str, signer, *, ca: bool):  # type: ignore[no-untyped-def]
        b = x509.CertificateBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        )
        b = b.issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        b = b.public_key(key.public_key()).serial_number(x509.random_serial_number())
        b = b.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        if not ca:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("vecq test CA", ca_key, "vecq test CA", ca_key, ca=True)
    server_cert = cert("127.0.0.1", key, "vecq test CA", ca_key, ca=False)
    paths = where / "ca.pem", where / "server.pem", where / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    fmt = serialization.PrivateFormat.TraditionalOpenSSL
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    return paths


def _tls_ca(ca: Path) -> list[str]:
    return ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]


def test_tls_end_to_end(tmp_path, null_embedder) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    server = RedisServer(
        tmp_path,
        ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key), *_tls_ca(ca)],
        password="tls-pw-9",
    ).start()
    url = f"rediss://:tls-pw-9@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    try:
        assert redis.Redis.from_url(url).ping()
        with pytest.raises(redis.ConnectionError):  # plain text on the TLS port is refused
            redis.Redis(port=tls_port, password="tls-pw-9", socket_timeout=2).ping()
        untrusted = f"rediss://:tls-pw-9@127.0.0.1:{tls_port}/0?ssl_cert_reqs=required"
        with pytest.raises(RedisUnavailable, match=r"certificate verify failed"):
            Client(untrusted).ping()
        _end_to_end(url, "tls-pw-9", tmp_path, null_embedder)
        until(lambda: server.admin().dbsize() > 0, 5, "keys written over TLS")
    finally:
        server.stop()
