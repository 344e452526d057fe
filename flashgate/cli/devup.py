"""``flashgate dev up``: the whole system on this machine, in the foreground.

1. the key ceremony into ``HOME/fleet`` when the home has no fleet yet;
2. a nats-server (from ``NATS_SERVER_BIN``, beside the interpreter, or ``PATH``; >= 2.10)
   with JetStream, a password user for the admin and the backend and an NKey user per
   active Bridge Node (the seed sealed in its bundle, the public key in
   ``HOME/fleet/nats-nodes.json``), each with subject permissions
   (:mod:`flashgate.broker.permissions`). When ``HOME/fleet/roster.json`` changes
   (``flashgate node revoke`` writes it), the users are written again and every server
   reloaded (SIGHUP): the revoked node's NATS user is gone. ``--nats-cluster 3`` runs three
   such servers joined by routes instead (a JetStream cluster on loopback, stores in
   ``HOME/nats-cluster/``): the streams and buckets then get three replicas, and any one
   server can be killed (``HOME/run/nats-server.pid`` has one pid per line);
3. the backend on SQLite (``HOME/backend.db``, migrated first);
4. one process per Bridge Node.

Logs go to ``HOME/logs/``; process ids to ``HOME/run/`` (``backend.pid``, ``<node>.pid``,
``nats-server.pid``). A process that dies is restarted (after a short, growing delay),
like a restart policy. Scripts run it in the background and wait with
``flashgate fleet status --wait``.

Stopping: Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed) stops everything: the
bridges purge their vaults, then the backend drains its outbox, then NATS stops; only then
is anything printed, and a failed print (the reader of stderr is gone, as with ``| tee``
after Ctrl-C) is ignored. Every child runs in a session of its own (a terminal's Ctrl-C
reaches ``dev up`` only, which stops them in that order) and gets SIGTERM from the kernel
when ``dev up`` dies, even by SIGKILL (:mod:`flashgate.lifetime`).

One ``dev up`` per home: it holds ``HOME/run/dev-up.lock`` (an ``flock``, with its pid
inside) for its lifetime and takes it before writing anything, so a second one says
"already running (pid N)" and touches nothing. On a home that has a fleet, explicit
``--nodes``/``--threshold``/``--key-bits`` that differ from it are refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from flashgate import environment
from flashgate.broker.permissions import ROLES, RoleCredentials, authorization_config
from flashgate.cli.bridge import EXIT_REVOKED
from flashgate.cli.ceremony_progress import search_primes
from flashgate.cli.hardening import harden_process
from flashgate.cli.home import (
    HomeConfig,
    RoleLogin,
    fleet_dir,
    load_config,
    resolve_home,
    save_config,
)
from flashgate.cli.passphrase import FleetPassphrases, dev_passphrases, passphrase_lines
from flashgate.crypto.threshold.dealing import DEFAULT_BITS
from flashgate.environment import (
    ADMIN_PASSPHRASE_ENV,
    HOME_ENV,
    NATS_PASSWORD_ENV,
    NATS_USER_ENV,
    NODE_PASSPHRASE_ENV,
    NOT_INHERITED_BY_DEV_CHILDREN,
)
from flashgate.errors import AlreadyRunning, ConfigurationError, FlashgateError
from flashgate.events.subjects import FleetNames
from flashgate.fleet.ceremony import default_node_ids, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.files import DESCRIPTOR_FILE, NODES_DIR, ROSTER_FILE, load_descriptor
from flashgate.fleet.nats_identity import active_identities
from flashgate.lifetime import die_with_parent
from flashgate.runnable import flashgate_command

if TYPE_CHECKING:
    from flashgate.devcluster.nats_server import NatsServerProcess

LOCK_FILE = "dev-up.lock"
NATS_PIDFILE = "nats-server.pid"
#: How long a service has to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    pidfile: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    retired: bool = False

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own CLI
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,  # a terminal's signals reach dev up only
                preexec_fn=die_with_parent(),  # SIGTERM when dev up dies
            )
        # Atomic: a reader (a script, a test) never sees the truncated, still empty file.
        partial = self.pidfile.with_name(self.pidfile.name + ".tmp")
        partial.write_text(f"{self.process.pid}\n")
        partial.replace(self.pidfile)
        self.started_at = time.monotonic()

    def dead(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _say(message: str) -> None:
    """Print to stderr, best effort: a reader that went away (EPIPE) is not an error.

    After a failed write stderr is pointed at /dev/null, so nothing tries again (not even
    the interpreter's final flush)."""
    try:
        click.echo(message, err=True)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def _stop_all(children: list[Child], servers: list[NatsServerProcess], run_dir: Path) -> None:
    """The bridges (together), then the backend, then NATS; each step runs even if one
    before it failed."""
    bridges = [c for c in children if c.name != "backend"]
    backend = [c for c in children if c.name == "backend"]
    for group in (bridges, backend):
        for child in group:
            with contextlib.suppress(Exception):
                child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in group:
            with contextlib.suppress(Exception):
                child.wait_or_kill(deadline)
            child.pidfile.unlink(missing_ok=True)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(STOP_TIMEOUT)
    (run_dir / NATS_PIDFILE).unlink(missing_ok=True)


def _flashgate() -> list[str]:
    return [sys.executable, "-m", "flashgate.cli.main"]


def acquire_lock(root: Path) -> int:
    """Take ``HOME/run/dev-up.lock`` for this process's lifetime (the returned fd), and
    write this pid into it; :class:`AlreadyRunning` if another ``dev up`` holds it."""
    run_dir = root / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"flashgate dev up is already running (pid {holder}) on {root}; "
            "stop it first (Ctrl-C in its terminal)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the last descriptor releases the flock


def check_existing_fleet(root: Path, wanted: dict[str, int], explicit: set[str]) -> None:
    """Refuse explicit --nodes/--threshold/--key-bits that differ from the home's fleet."""
    descriptor = load_descriptor(fleet_dir(root))
    bits = fleet_public_key(descriptor).bits
    existing = {"nodes": len(descriptor.nodes), "threshold": descriptor.threshold, "key_bits": bits}
    differ = [name for name in sorted(explicit) if wanted[name] != existing[name]]
    if differ:
        given = ", ".join(f"--{n.replace('_', '-')} {wanted[n]}" for n in differ)
        raise ConfigurationError(
            f"{given}: fleet {descriptor.fleet!r} in {root} is "
            f"{descriptor.threshold}-of-{len(descriptor.nodes)} with a {bits}-bit key; "
            f"use another --home or remove {fleet_dir(root)} for a new one"
        )


def ensure_fleet(
    home: Path,
    *,
    nodes: int,
    threshold: int,
    key_bits: int,
    passphrases: FleetPassphrases,
    insecure: bool,
) -> None:
    if (fleet_dir(home) / DESCRIPTOR_FILE).exists():
        return
    harden_process()  # the ceremony: no core dump or ptrace of the primes and shares
    click.echo(f"key ceremony: fleet 'dev', {threshold}-of-{nodes}, {key_bits}-bit key", err=True)
    primes = search_primes(key_bits, quiet=False)
    ceremony = run_ceremony(
        fleet="dev",
        node_ids=list(passphrases.nodes),
        threshold=threshold,
        bits=key_bits,
        primes=primes,
        allow_insecure=insecure,
    )
    write_fleet_dir(
        fleet_dir(home), ceremony, passphrases.admin, node_passphrases=passphrases.nodes
    )


def ensure_config(home: Path, servers: int = 1) -> HomeConfig:
    """Connection settings (one URL per NATS server) and per-role NATS logins, made once
    per home; the URLs are made again when the number of servers changes."""
    logins: dict[str, RoleLogin] = {}
    with contextlib.suppress(FlashgateError):  # no or unusable config: make a new one
        config = load_config(home)
        if set(config.logins) >= set(ROLES):
            if len(config.nats) == servers:
                return config
            logins = config.logins
    from flashgate.devcluster.nats_server import free_ports  # see _run

    config = HomeConfig(
        nats=[f"nats://127.0.0.1:{port}" for port in free_ports(servers)],
        logins=logins
        or {role: RoleLogin(user=role, password=secrets.token_urlsafe(24)) for role in ROLES},
    )
    save_config(home, config)
    return config


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@click.command("up")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Home directory (default $FLASHGATE_HOME or ./.flashgate).",
)
@click.option("--nodes", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--threshold", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--key-bits", type=int, default=DEFAULT_BITS, show_default=True)
@click.option("--insecure-test-key", is_flag=True, help="Allow key sizes under 2048 (tests).")
@click.option(
    "--nats-cluster",
    "nats_servers",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="NATS servers to run, joined as one JetStream cluster (3: replicated streams, "
    "any one server can be killed).",
)
@click.option(
    "--gateway/--no-gateway",
    default=True,
    show_default=True,
    help="Each bridge serves the gateway (S3 and OpenAI-compatible) on a port of its own.",
)
def up(
    home: Path | None,
    nodes: int,
    threshold: int,
    key_bits: int,
    insecure_test_key: bool,
    nats_servers: int,
    gateway: bool,
) -> None:
    """Run NATS, the backend and every bridge on this machine until Ctrl-C."""
    ctx = click.get_current_context()
    explicit = {
        name
        for name in ("nodes", "threshold", "key_bits")
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    }
    root = resolve_home(home).resolve()
    root.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(root)  # before anything else is written
    try:
        _run(root, nodes, threshold, key_bits, insecure_test_key, explicit, nats_servers, gateway)
    finally:
        release_lock(lock)


def _run(
    root: Path,
    nodes: int,
    threshold: int,
    key_bits: int,
    insecure: bool,
    explicit: set[str],
    nats_servers: int = 1,
    gateway: bool = True,
) -> None:
    has_fleet = (fleet_dir(root) / DESCRIPTOR_FILE).exists()
    if has_fleet:
        check_existing_fleet(
            root, {"nodes": nodes, "threshold": threshold, "key_bits": key_bits}, explicit
        )
    # The bridges dev up starts: one per bundle of the home (or of the ceremony to come).
    node_ids = (
        sorted(b.stem for b in (fleet_dir(root) / NODES_DIR).glob("*.bundle"))
        if has_fleet
        else default_node_ids(nodes)
    )
    passphrases = dev_passphrases(node_ids, sealing=not has_fleet)
    ensure_fleet(
        root,
        nodes=nodes,
        threshold=threshold,
        key_bits=key_bits,
        passphrases=passphrases,
        insecure=insecure,
    )
    descriptor = load_descriptor(fleet_dir(root))
    names = FleetNames(descriptor.fleet)
    config = ensure_config(root, nats_servers)
    creds = {
        role: RoleCredentials(login.user, login.password) for role, login in config.logins.items()
    }
    for sub in ("logs", "run"):
        (root / sub).mkdir(exist_ok=True)
    run_dir = root / "run"
    from flashgate.backend import db  # SQLAlchemy and Alembic: only the dev cluster needs them

    # The nats-server harness (and its atexit hook) stays out of every other command's
    # process: `flashgate backend`/`bridge` import this module through flashgate.cli.main.
    from flashgate.devcluster.nats_server import NatsCluster, NatsServerProcess, free_ports

    # One NKey user per active node (nats-nodes.json, roster.json); regenerated and the
    # servers reloaded whenever the admin's roster.json changes (`flashgate node revoke`).
    roster_path = fleet_dir(root) / ROSTER_FILE

    def auth() -> str:
        return authorization_config(names, creds, active_identities(fleet_dir(root)))

    def roster_stamp() -> tuple[int, int] | None:
        with contextlib.suppress(OSError):
            stat = roster_path.stat()
            return stat.st_mtime_ns, stat.st_size
        return None

    roster_seen = roster_stamp()
    servers: list[NatsServerProcess]
    cluster: NatsCluster | None = None
    if nats_servers == 1:
        servers = [
            NatsServerProcess(
                root / "nats",
                name="flashgate-dev",
                port=_port(config.nats[0]),
                extra_config=auth(),
                supervised=True,
            )
        ]
    else:
        cluster = NatsCluster(
            nats_servers,
            base_dir=root / "nats-cluster",
            name="flashgate-dev",
            extra_config=auth(),
            client_ports=[_port(url) for url in config.nats],
            supervised=True,
        )
        servers = cluster.servers
    db_url = f"sqlite:///{root / 'backend.db'}"
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    children: list[Child] = []

    def write_pids() -> None:
        pids = "".join(f"{server.pid}\n" for server in servers if server.pid is not None)
        (run_dir / NATS_PIDFILE).write_text(pids)

    def start_servers() -> None:
        for server in servers:
            server.start()
        write_pids()
        if cluster is not None:
            cluster.wait_ready(60)
        else:
            servers[0].wait_ready(30)

    try:
        start_servers()
        db.migrate(db_url)
        # No passphrase is passed on: the backend gets none, each bridge its own only.
        base_env = environment.inherited(without_prefixes=NOT_INHERITED_BY_DEV_CHILDREN)
        url = ",".join(config.nats)
        children.append(
            Child(
                "backend",
                [
                    *_flashgate(),
                    "backend",
                    "--nats",
                    url,
                    "--db",
                    db_url,
                    "--fleet-dir",
                    str(fleet_dir(root)),
                    "--log-json",
                ],
                {
                    **base_env,
                    NATS_USER_ENV: creds["backend"].user,
                    NATS_PASSWORD_ENV: creds["backend"].password,
                },
                root / "logs" / "backend.log",
                run_dir / "backend.pid",
            )
        )
        bundles = sorted((fleet_dir(root) / NODES_DIR).glob("*.bundle"))
        # One gateway port per bridge, kept across its restarts.
        gateways = dict(zip((b.stem for b in bundles), free_ports(len(bundles)), strict=True))
        for bundle in bundles:
            node_id = bundle.stem
            gateway_args = ["--gateway-listen", f"127.0.0.1:{gateways[node_id]}"] if gateway else []
            children.append(
                Child(
                    node_id,
                    [
                        *_flashgate(),
                        "bridge",
                        "--bundle",
                        str(bundle),
                        "--nats",
                        url,
                        "--log-json",
                        *gateway_args,
                    ],
                    {
                        **base_env,
                        NODE_PASSPHRASE_ENV: passphrases.nodes[node_id],
                        # No NATS login: the node logs in with the NKey in its bundle.
                    },
                    root / "logs" / f"{node_id}.log",
                    run_dir / f"{node_id}.pid",
                )
            )
        for child in children:
            if stop_requested:
                break
            child.start()
        if not stop_requested:
            shown = gateways if gateway else {}
            _say(_summary(root, url, descriptor.fleet, descriptor.threshold, children, shown))
        while not stop_requested:
            time.sleep(0.2)
            stamp = roster_stamp()
            if stamp != roster_seen:
                roster_seen = stamp
                reload_identities(servers, auth)
            for child in children:
                if child.dead() and not stop_requested and not child.retired:
                    now = time.monotonic()
                    code = child.process.returncode if child.process else None
                    if code == EXIT_REVOKED:
                        child.retired = True
                        _say(f"{child.name} is revoked; not restarting it")
                        continue
                    if child.next_start == 0.0:
                        delay = min(1.0 * 2 ** min(child.restarts, 4), 15.0)
                        if now - child.started_at > 60:
                            delay, child.restarts = 1.0, 0
                        child.next_start = now + delay
                        _say(f"{child.name} exited ({code}); restarting in {delay:.0f}s")
                    elif now >= child.next_start:
                        child.restarts += 1
                        child.next_start = 0.0
                        child.start()
            for server in servers:
                if not server.running and not stop_requested:
                    _say(f"nats-server {server.name} exited; restarting it")
                    server.start()
                    write_pids()
                    server.wait_ready(30)
    finally:
        # Stop first, print last: stderr may be a pipe whose reader is gone.
        _stop_all(children, servers, run_dir)
        _say("stopped")


def reload_identities(servers: list[NatsServerProcess], auth: Callable[[], str]) -> None:
    """The roster changed (a node revoked): write the servers' users again and reload
    them, so a revoked node's NATS user is gone (its connections closed, refused after)."""
    try:
        text = auth()
    except FlashgateError as exc:  # a half-written or foreign roster.json: keep the users
        _say(f"roster.json changed but cannot be read ({exc.message}); NATS users unchanged")
        return
    for server in servers:
        if server.running:
            server.reload(text)
    _say("roster changed: NATS users rewritten and the server reloaded")


def _summary(
    root: Path,
    url: str,
    fleet: str,
    threshold: int,
    children: list[Child],
    gateways: dict[str, int] | None = None,
) -> str:
    bridges = [c.name for c in children if c.name != "backend"]
    gateway_lines = [
        f"  gateway   {node} http://127.0.0.1:{port} (S3; OpenAI at /v1)"
        for node, port in (gateways or {}).items()
    ]
    fg = flashgate_command()
    lines = [
        f"flashgate dev cluster: fleet {fleet!r}, {threshold}-of-{len(bridges)}",
        f"  home      {root}",
        f"  nats      {url} (users per role in {root / 'config.json'})",
        f"  backend   SQLite {root / 'backend.db'}",
        f"  bridges   {', '.join(bridges)}",
        *gateway_lines,
        f"  logs      {root / 'logs'}",
        "",
        "try (in another shell):",
        f"  export {HOME_ENV}={shlex.quote(str(root))}",
        *(f"  {line}" for line in passphrase_lines(ADMIN_PASSPHRASE_ENV)),
        f"  {fg} fleet status --wait",
        f"  printf %s s3cr3t | {fg} secret put demo/db-password --kind generic",
        f"  {fg} secret list",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)
