"""``flashgate dev up``: the whole system on this machine, in the foreground.

1. the key ceremony into ``HOME/fleet`` when the home has no fleet yet;
2. a nats-server (from ``NATS_SERVER_BIN``, beside the interpreter, or ``PATH``; >= 2.10)
   with JetStream and one user per role with subject permissions
   (:mod:`flashgate.broker.permissions`): the backend cannot subscribe to share subjects,
   a bridge cannot publish admin commands;
3. the backend on SQLite (``HOME/backend.db``, migrated first);
4. one process per Bridge Node.

Logs go to ``HOME/logs/``; process ids to ``HOME/run/``. A process that dies is restarted
(after a short, growing delay), like a restart policy. Ctrl-C (SIGINT) or SIGTERM stops
everything: the bridges purge their vaults, the backend drains its outbox, NATS stops.
Scripts run it in the background and wait with ``flashgate fleet status --wait``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from flashgate.broker.permissions import ROLES, RoleCredentials, authorization_config
from flashgate.broker.server import NatsServerProcess, free_port
from flashgate.cli.bridge import EXIT_REVOKED
from flashgate.cli.dev import dev, dev_passphrase
from flashgate.cli.home import (
    HomeConfig,
    RoleLogin,
    fleet_dir,
    load_config,
    resolve_home,
    save_config,
)
from flashgate.cli.passphrase import PASSPHRASE_ENV
from flashgate.crypto.threshold.dealing import DEFAULT_BITS
from flashgate.errors import FlashgateError
from flashgate.events.subjects import FleetNames
from flashgate.fleet.ceremony import default_node_ids, run_ceremony
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.files import DESCRIPTOR_FILE, NODES_DIR, load_descriptor


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
                start_new_session=True,
            )
        # Atomic: a reader (a script, a test) never sees the truncated, still empty file.
        partial = self.pidfile.with_name(self.pidfile.name + ".tmp")
        partial.write_text(f"{self.process.pid}\n")
        partial.replace(self.pidfile)
        self.started_at = time.monotonic()

    def dead(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _flashgate() -> list[str]:
    return [sys.executable, "-m", "flashgate.cli.main"]


def ensure_fleet(
    home: Path, *, nodes: int, threshold: int, key_bits: int, passphrase: str, insecure: bool
) -> None:
    if (fleet_dir(home) / DESCRIPTOR_FILE).exists():
        return
    from flashgate.cli.main import _search_primes

    click.echo(f"key ceremony: fleet 'dev', {threshold}-of-{nodes}, {key_bits}-bit key", err=True)
    primes = _search_primes(key_bits, quiet=False)
    ceremony = run_ceremony(
        fleet="dev",
        node_ids=default_node_ids(nodes),
        threshold=threshold,
        bits=key_bits,
        primes=primes,
        allow_insecure=insecure,
    )
    write_fleet_dir(fleet_dir(home), ceremony, passphrase)


def ensure_config(home: Path) -> HomeConfig:
    """Connection settings and per-role NATS logins, made once per home."""
    with contextlib.suppress(FlashgateError):  # no or unusable config: make a new one
        config = load_config(home)
        if set(config.logins) >= set(ROLES):
            return config
    config = HomeConfig(
        nats=[f"nats://127.0.0.1:{free_port()}"],
        logins={role: RoleLogin(user=role, password=secrets.token_urlsafe(24)) for role in ROLES},
    )
    save_config(home, config)
    return config


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@dev.command("up")
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
def up(
    home: Path | None, nodes: int, threshold: int, key_bits: int, insecure_test_key: bool
) -> None:
    """Run NATS, the backend and every bridge on this machine until Ctrl-C."""
    root = resolve_home(home).resolve()
    root.mkdir(parents=True, exist_ok=True)
    passphrase = dev_passphrase()
    ensure_fleet(
        root,
        nodes=nodes,
        threshold=threshold,
        key_bits=key_bits,
        passphrase=passphrase,
        insecure=insecure_test_key,
    )
    descriptor = load_descriptor(fleet_dir(root))
    names = FleetNames(descriptor.fleet)
    config = ensure_config(root)
    creds = {
        role: RoleCredentials(login.user, login.password) for role, login in config.logins.items()
    }
    for sub in ("logs", "run"):
        (root / sub).mkdir(exist_ok=True)
    from flashgate.backend import db  # SQLAlchemy and Alembic: only the dev cluster needs them

    server = NatsServerProcess(
        root / "nats",
        name="flashgate-dev",
        port=_port(config.nats[0]),
        extra_config=authorization_config(names, creds),
    )
    db_url = f"sqlite:///{root / 'backend.db'}"
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    try:
        server.start()
        server.wait_ready(30)
        db.migrate(db_url)
        base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FLASHGATE_NATS", "FLASHGATE_FAILPOINTS"))
        }
        url = config.nats[0]
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
                    "FLASHGATE_NATS_USER": creds["backend"].user,
                    "FLASHGATE_NATS_PASSWORD": creds["backend"].password,
                },
                root / "logs" / "backend.log",
                root / "run" / "backend.pid",
            )
        )
        bundles = sorted((fleet_dir(root) / NODES_DIR).glob("*.bundle"))
        for bundle in bundles:
            node_id = bundle.stem
            children.append(
                Child(
                    node_id,
                    [*_flashgate(), "bridge", "--bundle", str(bundle), "--nats", url, "--log-json"],
                    {
                        **base_env,
                        PASSPHRASE_ENV: passphrase,
                        "FLASHGATE_NATS_USER": creds["bridge"].user,
                        "FLASHGATE_NATS_PASSWORD": creds["bridge"].password,
                    },
                    root / "logs" / f"{node_id}.log",
                    root / "run" / f"{node_id}.pid",
                )
            )
        for child in children:
            child.start()
        _summary(root, url, descriptor.fleet, descriptor.threshold, children)
        while not stop_requested:
            time.sleep(0.2)
            for child in children:
                if child.dead() and not stop_requested and not child.retired:
                    now = time.monotonic()
                    code = child.process.returncode if child.process else None
                    if code == EXIT_REVOKED:
                        child.retired = True
                        click.echo(f"{child.name} is revoked; not restarting it", err=True)
                        continue
                    if child.next_start == 0.0:
                        delay = min(1.0 * 2 ** min(child.restarts, 4), 15.0)
                        if now - child.started_at > 60:
                            delay, child.restarts = 1.0, 0
                        child.next_start = now + delay
                        click.echo(
                            f"{child.name} exited ({code}); restarting in {delay:.0f}s", err=True
                        )
                    elif now >= child.next_start:
                        child.restarts += 1
                        child.next_start = 0.0
                        child.start()
            if not server.running and not stop_requested:
                click.echo("nats-server exited; restarting it", err=True)
                server.start()
                server.wait_ready(30)
    finally:
        click.echo("stopping ...", err=True)
        for child in reversed(children):  # bridges first, the backend last
            child.stop(10)
            child.pidfile.unlink(missing_ok=True)
        server.stop()
        click.echo("stopped", err=True)


def _summary(root: Path, url: str, fleet: str, threshold: int, children: list[Child]) -> None:
    bridges = [c.name for c in children if c.name != "backend"]
    lines = [
        f"flashgate dev cluster: fleet {fleet!r}, {threshold}-of-{len(bridges)}",
        f"  home      {root}",
        f"  nats      {url} (users per role in {root / 'config.json'})",
        f"  backend   SQLite {root / 'backend.db'}",
        f"  bridges   {', '.join(bridges)}",
        f"  logs      {root / 'logs'}",
        "",
        "try (in another shell):",
        f"  export FLASHGATE_HOME={root}",
        "  export FLASHGATE_PASSPHRASE=...   # the passphrase this dev up sealed with",
        "  flashgate fleet status --wait",
        "  echo -n s3cr3t | flashgate secret put demo/db-password --kind generic",
        "  flashgate secret list",
        "",
        "Ctrl-C stops everything.",
    ]
    click.echo("\n".join(lines), err=True)
