"""compose.yaml and the deployment NATS config: what can be checked without Docker.

Docker does not run on these machines; these tests check the file's structure and
dependencies, that every service command is a valid `flashgate` invocation, that the
NATS configuration passes `nats-server -t` and matches what the permissions module makes,
who mounts which volume and gets which passphrase (admin.key with init/admin only, each
bundle with its own bridge only, nothing secret for the backend), and they run the init
service's script (deploy/fleet-init.py) on directories standing in for its volumes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from flashgate.broker.permissions import server_config
from flashgate.cli.main import cli
from flashgate.devcluster.nats_server import find_nats_server
from flashgate.events.subjects import FleetNames

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
FLASHGATE_SERVICES = ["init", "backend", "bridge-1", "bridge-2", "bridge-3"]


def test_services_and_dependencies() -> None:
    assert {"nats", "postgres", *FLASHGATE_SERVICES} <= set(SERVICES)
    assert SERVICES["backend"]["depends_on"] == {
        "nats": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "init": {"condition": "service_completed_successfully"},
    }
    for bridge in ("bridge-1", "bridge-2", "bridge-3"):
        deps = SERVICES[bridge]["depends_on"]
        assert deps["init"] == {"condition": "service_completed_successfully"}
        assert deps["nats"] == {"condition": "service_healthy"}
        assert SERVICES[bridge]["restart"] == "unless-stopped"
        assert "IPC_LOCK" in SERVICES[bridge]["cap_add"]
        # No shared bridge login: each node logs in with the NKey sealed in its bundle.
        assert not {
            k for k in SERVICES[bridge]["environment"] if k.startswith("FLASHGATE_NATS_")
        } - {"FLASHGATE_NATS_URL"}, bridge
    assert SERVICES["nats"]["depends_on"] == {
        "init": {"condition": "service_completed_successfully"}
    }
    assert "nats-auth:/etc/nats/auth:ro" in SERVICES["nats"]["volumes"]
    assert _volumes("init")["nats-auth"] == "/nats-auth"
    assert "--nats-auth=/nats-auth" in SERVICES["init"]["command"]
    assert "FG_BRIDGE_PASSWORD" not in (ROOT / "compose.yaml").read_text()
    assert SERVICES["init"]["restart"] == "no"
    for name in ("nats", "postgres", "backend", "bridge-1"):
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["backend"]["environment"]["FLASHGATE_NATS_USER"] == "backend"
    assert SERVICES["backend"]["environment"]["FLASHGATE_DB_URL"].startswith("postgresql://")


BRIDGES = ["bridge-1", "bridge-2", "bridge-3"]
SECRET_FILES = {"admin.key", "nodes"}


def _volumes(service: str) -> dict[str, str]:
    """Named volume -> mount point (bind mounts left out)."""
    mounts = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if not source.startswith((".", "/")):
            mounts[source] = target
    return mounts


def _init_script_args() -> list[str]:
    return list(SERVICES["init"]["command"])


def _flashgate_args(service: str) -> list[str]:
    if service == "init":
        args = _init_script_args()
        return ["fleet", "init", "--out", "/ceremony", *args[args.index("--") + 1 :]]
    return list(SERVICES[service]["command"])


def _run_init(tmp_path: Path, **env: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run deploy/fleet-init.py as the init service does, with the service's arguments
    (volumes mapped to directories under tmp_path) and a small insecure test key."""
    mounts = {target: tmp_path / source for source, target in _volumes("init").items()}
    for path in mounts.values():
        path.mkdir(exist_ok=True)
    (tmp_path / "nodes").mkdir(exist_ok=True)
    for n in (1, 2, 3):  # the per-node mount points under --nodes-root
        target = tmp_path / "nodes" / f"node-{n}"
        if not target.exists():
            target.symlink_to(mounts[f"/nodes/node-{n}"])
    args = [
        a.replace("=/ceremony", f"={mounts['/ceremony']}")
        .replace("=/public", f"={mounts['/public']}")
        .replace("=/nodes", f"={tmp_path / 'nodes'}")
        .replace("=/nats-auth", f"={mounts['/nats-auth']}")
        for a in _init_script_args()
    ]
    full_env = {
        **os.environ,
        "FLASHGATE_ADMIN_PASSPHRASE": "ceremony-passphrase",
        "FLASHGATE_PASSPHRASE_NODE_1": "node-1-passphrase",
        "FLASHGATE_PASSPHRASE_NODE_2": "node-2-passphrase",
        "FLASHGATE_PASSPHRASE_NODE_3": "node-3-passphrase",
        **env,
    }
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "fleet-init.py"),
            *args,
            "--key-bits=1024",
            "--insecure-test-key",
        ],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    return tmp_path, result


def test_admin_key_and_bundles_only_in_init_and_admin() -> None:
    """The ceremony volume (admin.key) is mounted by init and admin only; each node volume
    by init and its own bridge only; the backend gets the public volume, read-only."""
    ceremony = _volumes("init")
    assert ceremony["ceremony"] == "/ceremony"
    assert _volumes("admin") == {"ceremony": "/home-fg/fleet"}
    for name in SERVICES:
        if name not in ("init", "admin"):
            assert "ceremony" not in _volumes(name), name
    for n, bridge in enumerate(BRIDGES, 1):
        assert _volumes(bridge) == {f"node-{n}": "/node"}, bridge
        args = SERVICES[bridge]["command"]
        assert args[args.index("--bundle") + 1] == f"/node/node-{n}.bundle"
        holders = {s for s in SERVICES if f"node-{n}" in _volumes(s)}
        assert holders == {"init", bridge}
        assert ceremony[f"node-{n}"] == f"/nodes/node-{n}"
    assert SERVICES["backend"]["volumes"] == ["fleet-public:/fleet:ro"]
    assert "x-flashgate" not in COMPOSE or "volumes" not in COMPOSE["x-flashgate"]


def test_passphrases_per_node_and_none_for_the_backend() -> None:
    assert "FLASHGATE_PASSPHRASE" not in COMPOSE["x-flashgate"]["environment"]
    backend_env = SERVICES["backend"]["environment"]
    assert not [k for k in backend_env if "PASSPHRASE" in k]
    assert not [k for k in SERVICES["nats"]["environment"] if "PASSPHRASE" in k]
    seen = set()
    for n, bridge in enumerate(BRIDGES, 1):
        env = SERVICES[bridge]["environment"]
        assert [k for k in env if "PASSPHRASE" in k] == ["FLASHGATE_NODE_PASSPHRASE"], bridge
        assert f"FLASHGATE_PASSPHRASE_NODE_{n}" in env["FLASHGATE_NODE_PASSPHRASE"]
        seen.add(env["FLASHGATE_NODE_PASSPHRASE"])
    assert len(seen) == 3
    admin = SERVICES["admin"]["environment"]
    assert [k for k in admin if "PASSPHRASE" in k] == ["FLASHGATE_ADMIN_PASSPHRASE"]
    assert "${FLASHGATE_ADMIN_PASSPHRASE:" in admin["FLASHGATE_ADMIN_PASSPHRASE"]
    init = SERVICES["init"]["environment"]
    assert sorted(k for k in init if "PASSPHRASE" in k) == [
        "FLASHGATE_ADMIN_PASSPHRASE",
        *(f"FLASHGATE_PASSPHRASE_NODE_{n}" for n in (1, 2, 3)),
    ]


def _interpolate(value: object, env: dict[str, str]) -> str:
    """compose's ``${NAME:-default}`` / ``${NAME}`` interpolation (the forms this file uses)."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default or "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", one, str(value))


#: RLIMIT_MEMLOCK that every Linux runtime allows without CAP_SYS_RESOURCE: the kernel
#: default before 5.16 (64 KiB); since then it is 8 MiB. Lowering a limit needs no privilege.
SMALLEST_DEFAULT_MEMLOCK = 64 * 1024


def test_bridge_memlock_is_configurable_and_starts_without_cap_sys_resource() -> None:
    """``memlock: -1`` fails container creation where the runtime lacks CAP_SYS_RESOURCE; the
    default must be one any runtime accepts, FG_MEMLOCK raises it (docs: -1 for mlockall)."""
    for bridge in BRIDGES:
        memlock = SERVICES[bridge]["ulimits"]["memlock"]
        limits = [memlock] if not isinstance(memlock, dict) else [memlock["soft"], memlock["hard"]]
        for limit in limits:
            assert "FG_MEMLOCK" in str(limit), bridge
            default = int(_interpolate(limit, {}))
            assert 0 <= default <= SMALLEST_DEFAULT_MEMLOCK, (bridge, default)
            assert int(_interpolate(limit, {"FG_MEMLOCK": "-1"})) == -1
        assert SERVICES[bridge]["ulimits"]["core"] == 0
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert "FG_MEMLOCK=-1" in docs


def test_bridge_health_is_its_readiness() -> None:
    """Healthy = buckets bound and loaded (/healthz), not merely the process answering."""
    for bridge in BRIDGES:
        args = SERVICES[bridge]["command"]
        port = args[args.index("--metrics-port") + 1]
        test = SERVICES[bridge]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert f"http://127.0.0.1:{port}/healthz" in test[3]
        assert "os.kill" not in test[3]


def test_each_bridge_serves_the_gateway_on_a_port_of_its_own() -> None:
    published = set()
    for n, bridge in enumerate(BRIDGES, start=1):
        args = SERVICES[bridge]["command"]
        assert args[args.index("--gateway-listen") + 1] == "0.0.0.0:8080"
        (port,) = SERVICES[bridge]["ports"]
        assert port == f"127.0.0.1:808{n}:8080", bridge  # loopback only, one per node
        published.add(port)
        # the drain (5 s) and the purge fit in the time Docker gives before SIGKILL
        assert SERVICES[bridge]["stop_grace_period"] == "15s"
    assert len(published) == len(BRIDGES)


def test_compose_test_leaves_out_ports_where_the_sandbox_shares_a_namespace(
    tmp_path: Path,
) -> None:
    """Docker refuses to publish ports of a container in another's network namespace (the
    compose sandbox's), and compose v1 cannot remove them in an override: compose-test runs
    a copy of compose.yaml without them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compose_run", ROOT / "tests/compose/run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    override = tmp_path / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "netns": {"network_mode": "none"},
                    **{b: {"network_mode": "service:netns"} for b in ("bridge-1", "bridge-2")},
                }
            }
        )
    )
    base = yaml.safe_load(run.without_published_ports(override, tmp_path / "base.yaml").read_text())
    assert "ports" not in base["services"]["bridge-1"]
    assert "ports" not in base["services"]["bridge-2"]
    assert base["services"]["bridge-3"]["ports"] == SERVICES["bridge-3"]["ports"]
    assert base["services"]["bridge-1"]["command"] == SERVICES["bridge-1"]["command"]
    assert base["services"]["init"]["restart"] == "no"


HA = yaml.safe_load((ROOT / "compose.ha.yaml").read_text())
HA_SERVERS = {
    "nats": ("nats-1", 4222, 6222),
    "nats-2": ("nats-2", 4223, 6223),
    "nats-3": ("nats-3", 4224, 6224),
}


def _flag(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def test_the_ha_file_runs_three_routed_servers_with_the_same_permissions() -> None:
    """compose.ha.yaml: three servers of one cluster, each on the one generated nats.conf
    (the same per-role users), each routed to the two others, each with its own store."""
    services = HA["services"]
    stores = set()
    for service, (name, port, route) in HA_SERVERS.items():
        args = services[service]["command"]
        assert args[:2] == ["-c", "/etc/nats/nats.conf"]
        assert _flag(args, "--name", "") == name
        assert int(_flag(args, "-p", "4222")) == port
        assert _flag(args, "--cluster_name", "") == "flashgate"
        assert _flag(args, "--cluster", "").endswith(f":{route}")
        others = {f"nats://{s}:{r}" for s, (_, _, r) in HA_SERVERS.items() if s != service}
        assert set(_flag(args, "--routes", "").split(",")) == others
        volumes = services[service].get("volumes") or SERVICES[service]["volumes"]
        assert "./deploy/nats.conf:/etc/nats/nats.conf:ro" in volumes
        stores |= {v for v in volumes if v.endswith(":/data")}
    assert len(stores) == 3
    urls = {f"nats://{s}:{port}" for s, (_, port, _) in HA_SERVERS.items()}
    for service in ("backend", "admin", *BRIDGES):
        assert set(services[service]["environment"]["FLASHGATE_NATS_URL"].split(",")) == urls
    assert services["backend"]["environment"]["FLASHGATE_STREAM_REPLICAS"] == "3"


def test_image_mount_points_belong_to_the_service_user() -> None:
    """A fresh named volume takes its owner from the image directory it is mounted on."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    chown = dockerfile.split("chown flashgate", 1)[1].split("\nUSER", 1)[0]
    owned = set(chown.replace("\\", " ").split())
    for name, spec in SERVICES.items():
        if "build" not in spec:
            continue
        for target in _volumes(name).values():
            assert target in owned, (name, target)
    assert "COPY deploy/fleet-init.py /usr/local/share/flashgate/fleet-init.py" in dockerfile
    assert SERVICES["init"]["entrypoint"] == [
        "python",
        "/usr/local/share/flashgate/fleet-init.py",
    ]


@pytest.mark.processes
def test_init_hands_out_one_bundle_per_node(tmp_path: Path) -> None:
    from flashgate.errors import FlashgateError
    from flashgate.fleet.directory import read_bundle

    root, result = _run_init(tmp_path)
    assert result.returncode == 0, result.stderr
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {
        "ceremony/admin.key",
        "ceremony/backend.json",
        "ceremony/backend.key",
        "ceremony/fleet.json",
        "ceremony/nats-nodes.json",
        "ceremony/roster.json",
        "fleet-public/backend.json",
        "fleet-public/backend.key",
        "nats-auth/authorization.conf",
        "fleet-public/fleet.json",
        "fleet-public/roster.json",
        "node-1/node-1.bundle",
        "node-2/node-2.bundle",
        "node-3/node-3.bundle",
    }
    bundle = read_bundle(root / "node-2" / "node-2.bundle", "node-2-passphrase")
    assert bundle.node_id == "node-2"
    # One NATS user per node, by its public NKey (the seed stays in the bundle).
    users = (root / "nats-auth" / "authorization.conf").read_text()
    identities = json.loads((root / "ceremony" / "nats-nodes.json").read_text())
    assert sorted(identities) == ["node-1", "node-2", "node-3"]
    assert all(f'"nkey": "{key}"' in users for key in identities.values())
    assert bundle.nats_seed is not None and bundle.nats_seed not in users
    assert "$FG_ADMIN_PASSWORD" in users and "FG_BRIDGE_PASSWORD" not in users
    with pytest.raises(FlashgateError):  # sealed with the node's passphrase, not the ceremony's
        read_bundle(root / "node-2" / "node-2.bundle", "ceremony-passphrase")

    # A second run (every `docker compose up`) keeps a bundle a bridge has re-sealed.
    (root / "node-1" / "node-1.bundle").write_bytes(b"re-sealed by the bridge")
    _, again = _run_init(tmp_path)
    assert again.returncode == 0, again.stderr
    assert (root / "node-1" / "node-1.bundle").read_bytes() == b"re-sealed by the bridge"


@pytest.mark.processes
def test_init_refuses_without_a_node_passphrase(tmp_path: Path) -> None:
    """Refused before the ceremony: nothing is dealt, nothing handed out."""
    root, result = _run_init(tmp_path, FLASHGATE_PASSPHRASE_NODE_3="")
    assert result.returncode != 0
    assert "FLASHGATE_PASSPHRASE_NODE_3" in result.stderr
    assert not (root / "node-3" / "node-3.bundle").exists()
    assert not (root / "ceremony" / "fleet.json").exists()


@pytest.mark.parametrize("service", FLASHGATE_SERVICES)
def test_service_commands_are_valid_flashgate_invocations(service: str) -> None:
    args = _flashgate_args(service)
    ctx = cli.make_context("flashgate", list(args), resilient_parsing=False)
    sub = cli.get_command(ctx, args[0])
    assert sub is not None, args
    sub_args = args[1:]
    target = sub
    if isinstance(sub, click.Group) and sub_args and sub_args[0] in sub.commands:
        target = sub.commands[sub_args[0]]
        sub_args = sub_args[1:]
    target.make_context(f"flashgate {args[0]}", list(sub_args), resilient_parsing=False)


@pytest.mark.processes
def test_nats_config_is_generated_and_valid(tmp_path: Path) -> None:
    path = ROOT / "deploy" / "nats.conf"
    assert path.read_text() == server_config(FleetNames("demo")), (
        "regenerate: flashgate dev nats-config --fleet demo > deploy/nats.conf"
    )
    copy = _with_users(tmp_path, path.read_text())
    env = {
        **os.environ,
        "FG_ADMIN_PASSWORD": "a",
        "FG_BACKEND_PASSWORD": "b",
    }
    result = subprocess.run(
        [str(find_nats_server().path), "-t", "-c", str(copy)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout + result.stderr


def test_no_secret_in_compose_or_example() -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert "change-me" not in text  # values come from .env
    for n in (1, 2, 3):
        assert f"${{FLASHGATE_PASSPHRASE_NODE_{n}:?" in text
    example = (ROOT / "deploy" / "example.env").read_text()
    assert all(
        line.split("=", 1)[1].startswith("change-me")
        for line in example.splitlines()
        if line and not line.startswith("#")
    )


#: Each set gives the three roles a password; the first four are the ones the issue names
#: (nats-server read them as a number, a boolean, a size and two tokens).
PASSWORD_SETS = [
    ("123456", "true", "1e4f9a"),
    ("pa ss", "no", "-12.5"),
    ('quo"te\\back', "# not a comment", "$FG_ADMIN_PASSWORD"),
    ("ünïcødé €😀", "it's", "tab\there, {x: [1]}; //"),
]


def _with_users(directory: Path, config: str) -> Path:
    """``config`` as ``directory/nats.conf`` beside the users it includes, as init writes
    them (the role logins; no node: no fleet here)."""
    from flashgate.broker.permissions import AUTHORIZATION_INCLUDE, authorization_config

    users = directory / AUTHORIZATION_INCLUDE
    users.parent.mkdir(parents=True, exist_ok=True)
    users.write_text(authorization_config(FleetNames("demo"), None, {}))
    copy = directory / "nats.conf"
    copy.write_text(config)
    return copy


def _nats_service_argv(tmp_path: Path) -> list[str]:
    """The nats service's entrypoint and command as compose runs them, with the files it
    bind-mounts from the project mapped back to the project."""
    service = SERVICES["nats"]
    mounts = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = str(ROOT / source[2:])
    # The nats-data volume's mount point mapped to tmp_path/data in store_dir (nats-server
    # refuses -sd next to a store_dir in the file).
    config = Path(mounts["/etc/nats/nats.conf"]).read_text()
    store = re.search(r'store_dir: ("[^"]*")', config)
    assert store is not None
    volume = _volumes("nats")["nats-data"]
    store_dir = json.loads(store.group(1))
    assert store_dir == volume or store_dir.startswith(volume + "/"), store_dir
    mapped = str(tmp_path / "data") + store_dir[len(volume) :]
    copy = _with_users(tmp_path, config.replace(store.group(1), json.dumps(mapped)))
    mounts["/etc/nats/nats.conf"] = str(copy)
    entrypoint = service.get("entrypoint", ["nats-server"])
    argv = [mounts.get(arg, arg) for arg in [*entrypoint, *service["command"]]]
    return argv


@pytest.mark.processes
@pytest.mark.parametrize("shell", ["sh", "busybox"])
@pytest.mark.parametrize("passwords", PASSWORD_SETS, ids=range(len(PASSWORD_SETS)))
def test_nats_service_accepts_any_password(
    tmp_path: Path, passwords: tuple[str, ...], shell: str
) -> None:
    """The nats service, run as compose runs it (entrypoint, command, deploy/nats.conf),
    starts with any password and lets each role in with exactly its password; also with
    busybox's sh and tools only, as in the Alpine image."""
    import asyncio
    import shutil

    import nats

    from flashgate.broker.permissions import ROLES, password_env
    from flashgate.devcluster.nats_server import free_ports

    binary = find_nats_server().path
    path = f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    argv = _nats_service_argv(tmp_path)
    if shell == "busybox":
        busybox = shutil.which("busybox")
        if busybox is None:
            pytest.skip("busybox not installed: the Alpine-like run is SKIPPED")
        tools = tmp_path / "bin"
        tools.mkdir()
        for applet in ("sh", "od", "tr", "sed", "printf"):
            (tools / applet).symlink_to(busybox)
        (tools / "nats-server").symlink_to(binary)
        path = str(tools)
        assert argv[0] == "/bin/sh"
        argv[0] = str(tools / "sh")
    port, http_port = free_ports(2)
    env = {
        **os.environ,
        "PATH": path,
        **{password_env(role): pw for role, pw in zip(ROLES, passwords[: len(ROLES)], strict=True)},
    }
    argv += ["-a", "127.0.0.1", "-p", str(port), "-m", str(http_port)]  # flags override the file
    log = tmp_path / "nats.log"
    with log.open("wb") as out:
        server = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    async def login(user: str, password: str) -> bool:
        try:
            nc = await nats.connect(
                f"nats://127.0.0.1:{port}",
                user=user,
                password=password,
                allow_reconnect=False,
                connect_timeout=2,
                max_reconnect_attempts=0,
            )
        except Exception:
            return False
        await nc.close()
        return True

    async def wait_and_check() -> None:
        for _ in range(100):
            if server.poll() is not None:
                raise AssertionError(f"nats-server exited: {log.read_text()[-2000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
        for role, pw in zip(ROLES, passwords[: len(ROLES)], strict=True):
            assert await login(role, pw), (role, log.read_text()[-2000:])
            assert not await login(role, pw + "x"), role

    try:
        asyncio.run(wait_and_check())
    finally:
        server.terminate()
        server.wait(timeout=10)
    # nats-server puts JetStream in STORE_DIR/jetstream: that must be the volume's
    # /jetstream, not /jetstream/jetstream.
    assert (tmp_path / "data" / "jetstream").is_dir()
    assert not (tmp_path / "data" / "jetstream" / "jetstream").exists()


@pytest.mark.processes
def test_nats_entrypoint_passes_every_role_and_refuses_a_missing_one(tmp_path: Path) -> None:
    from flashgate.broker.permissions import ROLES, password_env

    script = (ROOT / "deploy" / "nats-entrypoint.sh").read_text()
    for role in ROLES:
        assert password_env(role) in script, role
    env = {k: v for k, v in os.environ.items() if not k.startswith("FG_")}
    env.update(FG_ADMIN_PASSWORD="a")
    result = subprocess.run(
        ["/bin/sh", str(ROOT / "deploy" / "nats-entrypoint.sh"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode != 0
    assert "FG_BACKEND_PASSWORD is not set" in result.stderr


@pytest.mark.processes
def test_backend_reaches_postgresql_with_any_password() -> None:
    """The backend's database settings, as compose gives them, with a password full of URL
    delimiters: `flashgate backend migrate` reaches PostgreSQL (at 127.0.0.1, trust auth
    here: the URL must parse to the right host, user and database)."""
    from tests.support.databases import PG_AVAILABLE, PG_SKIP_REASON, postgres_database

    if not PG_AVAILABLE:
        pytest.skip(PG_SKIP_REASON)
    compose_env = SERVICES["backend"]["environment"]
    values = {"POSTGRES_PASSWORD": "p@ss/w:rd"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    for name, value in compose_env.items():
        if name.startswith("FLASHGATE_DB_"):
            env[name] = _interpolate(value, values)
    with postgres_database() as test_url:
        database = test_url.rsplit("/", 1)[1]
        env["FLASHGATE_DB_URL"] = (
            env["FLASHGATE_DB_URL"]
            .replace("@postgres:5432/flashgate", f"@127.0.0.1:5432/{database}")
            .replace("postgresql://flashgate", "postgresql://postgres")
        )
        result = subprocess.run(
            [sys.executable, "-m", "flashgate.cli.main", "backend", "migrate"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "database at revision" in result.stderr
    assert "p@ss" not in result.stderr


@pytest.mark.processes
def test_env_file_is_kept_out_of_git_and_build_contexts(tmp_path: Path) -> None:
    """.env holds every passphrase: git ignores it and it is not sent to `docker build`
    (make compose-test checks the real build context)."""
    if (ROOT / ".git").exists():
        for path in (".env", "deploy/.env", ".env.local"):
            ignored = subprocess.run(
                ["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", path],
                capture_output=True,
                timeout=30,
            )
            assert ignored.returncode == 0, f"git does not ignore {path}"
        kept = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", "deploy/example.env"],
            capture_output=True,
            timeout=30,
        )
        assert kept.returncode == 1, "deploy/example.env must stay tracked"
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("**/.env", "**/.env.*", ".git", "**/.venv", "**/.flashgate*", "**/.*_cache"):
        assert needed in patterns, needed


def test_backend_health_is_its_own_health_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not `os.kill(1, 0)` (which cannot fail): `flashgate backend health`, reading the file
    the backend rewrites while NATS, the database and the relay are fine
    (tests/backend/test_health.py)."""
    backend = SERVICES["backend"]
    test = backend["healthcheck"]["test"]
    assert test[:4] == ["CMD", "flashgate", "backend", "health"], test
    assert not any("os.kill" in part for part in test)
    health_file = backend["environment"]["FLASHGATE_HEALTH_FILE"]
    assert health_file.startswith("/tmp/")  # noqa: S108 - the container's own /tmp
    from flashgate.cli.backend import backend as backend_group

    monkeypatch.setenv("FLASHGATE_HEALTH_FILE", health_file)
    ctx = backend_group.commands["health"].make_context("health", list(test[4:]))
    assert ctx.params["health_file"] == Path(health_file)


def test_image_installs_the_tested_versions() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copy = next(line for line in dockerfile.splitlines() if line.startswith("COPY pyproject"))
    assert "constraints.txt" in copy.split()
    install = next(line for line in dockerfile.splitlines() if "pip install" in line)
    assert "-c constraints.txt" in install
