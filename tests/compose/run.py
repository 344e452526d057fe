"""`make compose-test`: run compose.yaml for real and drive it through its life.

Needs Docker (not part of `.ci/run` or the pytest suite; pytest does not collect this file).
Steps: build the image (`docker build`, layers cached between runs); check that .env is not
in the build context; start the stack with passwords nats-server and URLs used to choke on;
wait until every service is healthy; bridge-1's gateway answers; through the admin service
put, rotate and delete a secret; revoke a node and rotate the fleet key; restart PostgreSQL
and a bridge and check that the stack recovers; tear everything down (`down -v`), also after
a failure. Then the same again with compose.ha.yaml (a 3-node NATS cluster): every stream
and bucket is R3, and the server leading the command stream is SIGKILLed while the admin
writes secrets; every write comes back with its outcome, and every node holds them all
(--no-ha skips it).

On machines with the compose sandbox (../shared/compose-sandbox: no registry, loopback
only) it runs the sandbox's up.sh first and adds its override file, minus its memlock
settings, so the project's own FG_MEMLOCK default is what the runtime gets (and compose.yaml
without the gateway ports of the services the override puts into its shared network
namespace, where Docker refuses to publish ports); down.sh stops
the daemon afterwards if up.sh started it. Options: --sandbox DIR, --no-sandbox,
--skip-build (reuse flashgate:local), --keep-daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SANDBOX = ROOT.parent / "shared" / "compose-sandbox"
PROJECT = "fgtest"
IMAGE = "flashgate:local"
SERVICES = ["nats", "postgres", "backend", "bridge-1", "bridge-2", "bridge-3"]
HA_SERVICES = [*SERVICES, "nats-2", "nats-3"]
#: compose.ha.yaml: the service of each NATS server name, and its monitoring port.
HA_NATS = {"nats-1": ("nats", 8222), "nats-2": ("nats-2", 8223), "nats-3": ("nats-3", 8224)}
HA_WRITES = 12
T0 = time.monotonic()

#: The passwords the issue names (and worse): nats-server read them as a number, a
#: boolean, two tokens; a PostgreSQL URL split at '@', '/' and ':'.
STACK_ENV = {
    "FG_ADMIN_PASSWORD": "123456",
    "FG_BACKEND_PASSWORD": "true",
    "POSTGRES_PASSWORD": "p@ss/w:rd",
}


class Failed(Exception):
    pass


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


def sh(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 600,
    check: bool = True,
    quiet: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    if not quiet:
        say("$ " + " ".join(argv))
    result = subprocess.run(
        list(argv),
        env=env,
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    if check and result.returncode != 0:
        raise Failed(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"{result.stdout.decode(errors='replace')[-3000:]}"
            f"{result.stderr.decode(errors='replace')[-3000:]}"
        )
    return result


def without_published_ports(override: Path, dest: Path) -> Path:
    """compose.yaml without the ``ports`` of the services ``override`` puts into another
    container's network namespace (``network_mode: service:...``): Docker refuses to publish
    ports there, and compose v1 has no way for an override to remove them."""
    shared = {
        name
        for name, service in yaml.safe_load(override.read_text())["services"].items()
        if isinstance(service, dict) and str(service.get("network_mode", "")).startswith("service:")
    }
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in shared & set(data["services"]):
        data["services"][name].pop("ports", None)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


class Stack:
    def __init__(self, override: Path | None, *, ha: bool = False) -> None:
        base = ROOT / "compose.yaml"
        if override is not None:
            base = without_published_ports(override, override.with_suffix(".base.yaml"))
        files = [str(base)]
        self.ha = ha
        if ha:
            files.append(str(ROOT / "compose.ha.yaml"))
        if override is not None:
            files.append(str(override))
        self.env = {
            **os.environ,
            **STACK_ENV,
            "FLASHGATE_ADMIN_PASSPHRASE": secrets.token_urlsafe(24),
            "FLASHGATE_PASSPHRASE_NODE_1": secrets.token_urlsafe(24),
            "FLASHGATE_PASSPHRASE_NODE_2": secrets.token_urlsafe(24),
            "FLASHGATE_PASSPHRASE_NODE_3": secrets.token_urlsafe(24),
            "COMPOSE_FILE": os.pathsep.join(files),
            "COMPOSE_PROJECT_NAME": PROJECT,
        }
        self.env.pop("FG_MEMLOCK", None)  # the default is what is tested
        # The values come from this environment; an empty env file keeps a local .env
        # (an operator's real one) out of it.
        fd, name = tempfile.mkstemp(prefix="fg-compose-env-")
        os.close(fd)
        self.env_file = Path(name)
        compose = shutil.which("docker-compose")
        self.compose = [compose] if compose else ["docker", "compose"]

    def __call__(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        # Relative paths in the files are the project's (the base may be a copy elsewhere).
        return sh(
            [*self.compose, "--project-directory", str(ROOT), "--env-file", str(self.env_file),
             *args],
            env=self.env,
            **kwargs,
        )  # fmt: skip

    def admin(self, *args: str, input: bytes | None = None, timeout: float = 300) -> str:
        result = self("run", "--rm", "-T", "admin", *args, input=input, timeout=timeout)
        return result.stdout.decode()

    def admin_json(self, *args: str, input: bytes | None = None, timeout: float = 300) -> Any:
        out = self.admin(*args, "--json", input=input, timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def container(self, service: str) -> str:
        ids = self("ps", "-q", service, quiet=True).stdout.decode().split()
        if not ids:
            raise Failed(f"no container for {service}")
        return ids[0]

    def inspect(self, service: str, fmt: str) -> str:
        cid = self.container(service)
        return sh(["docker", "inspect", "-f", fmt, cid], quiet=True).stdout.decode().strip()

    def state(self, service: str) -> str:
        """The health status of a running container, else its state (exited, ...)."""
        return self.inspect(
            service,
            "{{if and .State.Running .State.Health}}{{.State.Health.Status}}"
            "{{else}}{{.State.Status}}{{end}}",
        )

    def wait_healthy(self, services: Sequence[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            states = {s: self.state(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                say("healthy: " + ", ".join(services))
                return
            if time.monotonic() > deadline:
                # each unhealthy service's own lines: the stack's tail is mostly NATS
                own = "".join(
                    f"\n--- {s} ---\n{self.logs(40, s)}{self.health_log(s)}"
                    for s, state in states.items()
                    if state != "healthy"
                )
                if self.ha:
                    own += "\n--- the NATS cluster, as each server sees it ---\n"
                    own += self.nats_report()
                raise Failed(f"not healthy after {timeout:.0f}s: {states}{own}\n{self.logs()}")
            time.sleep(2)

    def nats_report(self) -> str:
        """Each HA server's view: its JetStream meta group and its routes (diagnosis)."""
        lines = []
        for name, (service, port) in HA_NATS.items():
            seen = {}
            for path in ("jsz", "routez"):
                result = self(
                    "exec",
                    "-T",
                    service,
                    "wget",
                    "-qO-",
                    f"http://127.0.0.1:{port}/{path}",
                    check=False,
                    quiet=True,
                )
                try:
                    seen[path] = json.loads(result.stdout or b"{}")
                except ValueError:
                    seen[path] = {"unreadable": result.stdout[:200].decode(errors="replace")}
            routes = [
                (r.get("remote_name") or r.get("remote_id"), r.get("ip"), r.get("port"))
                for r in seen["routez"].get("routes") or []
            ]
            lines.append(
                f"{name}: meta {seen['jsz'].get('meta_cluster')}; "
                f"disabled={seen['jsz'].get('disabled')}; routes {routes}"
            )
        return "\n".join(lines) + "\n"

    def health_log(self, service: str) -> str:
        cid = self.container(service)
        fmt = "{{json .State.Health}}"
        return sh(["docker", "inspect", "-f", fmt, cid], quiet=True).stdout.decode()

    def logs(self, tail: int = 25, *services: str) -> str:
        result = self("logs", "--no-color", f"--tail={tail}", *services, check=False, quiet=True)
        return result.stdout.decode(errors="replace")[-8000:]

    def close(self) -> None:
        self.env_file.unlink(missing_ok=True)


def sandbox_override(sandbox: Path, dest: Path, *, ha: bool = False) -> Path:
    """The sandbox's override without its memlock settings (the project's own default is
    what must start here, where runc cannot raise RLIMIT_MEMLOCK), the bridges' health
    checks on /healthz as in compose.yaml, and with ``ha`` the two more NATS servers in
    its network namespace."""
    data = yaml.safe_load((sandbox / "compose.sandbox.yaml").read_text())
    for service in data["services"].values():
        if isinstance(service, dict):
            service.pop("ulimits", None)
            test = service.get("healthcheck", {}).get("test")
            if isinstance(test, list):
                service["healthcheck"]["test"] = [t.replace("/metrics'", "/healthz'") for t in test]
    if ha:
        services = data["services"]
        services["netns"]["extra_hosts"] += ["nats-2:127.0.0.1", "nats-3:127.0.0.1"]
        for name in ("nats-2", "nats-3"):
            services[name] = {"network_mode": "service:netns", "depends_on": ["netns"]}
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def check_build_context() -> None:
    """.env must not reach `docker build` (it holds every passphrase)."""
    probe = ROOT / ".env"
    made = not probe.exists()
    if made:
        probe.write_text("FG_PROBE=this file must not be in the build context\n")
    tag = f"{PROJECT}-context-probe:latest"
    try:
        sh(
            ["docker", "build", "-q", "--network", "none", "-t", tag, "-f", "-", "."],
            input=b"FROM python:3.11-slim\nCOPY . /ctx\n",
        )
        listing = sh(
            ["docker", "run", "--rm", "--network", "none", tag, "find", "/ctx", "-maxdepth", "2"],
            quiet=True,
        ).stdout.decode()
    finally:
        if made:
            probe.unlink()
        sh(["docker", "rmi", "-f", tag], check=False, quiet=True)
    names = {Path(p).name for p in listing.split()}
    leaked = names & {".env", ".git", ".venv", ".flashgate", ".mypy_cache", ".pytest_cache"}
    if leaked:
        raise Failed(f"in the build context: {sorted(leaked)}")
    if "pyproject.toml" not in names or "constraints.txt" not in names:
        raise Failed(f"the build context lacks what the image needs: {sorted(names)}")
    say("build context: no .env, .git, .venv, caches")


def runtime_refuses_unlimited_memlock() -> bool:
    """Whether this runtime refuses `memlock: -1` (no CAP_SYS_RESOURCE): the reason the
    bridges' default is FG_MEMLOCK=65536. Reported, not required."""
    result = sh(
        ["docker", "run", "--rm", "--network", "none", "--ulimit", "memlock=-1:-1", IMAGE],
        check=False,
        quiet=True,
    )
    return b"error setting rlimit type 8" in result.stderr


def exercise(stack: Stack) -> None:
    say(f"runtime refuses memlock -1: {runtime_refuses_unlimited_memlock()}")
    stack("up", "-d", timeout=600)
    stack.wait_healthy(SERVICES)
    init = stack.container("init")
    code = sh(["docker", "inspect", "-f", "{{.State.ExitCode}}", init], quiet=True)
    if code.stdout.decode().strip() != "0":
        raise Failed("init did not succeed")
    say(stack.admin("fleet", "status", "--wait").strip())
    store = stack("exec", "-T", "nats", "ls", "/data", "/data/jetstream", quiet=True)
    listing = store.stdout.decode()
    say("nats-data volume: " + " ".join(listing.split()))
    inside = listing.split("/data/jetstream:")[-1].split()
    if "/data/jetstream:" not in listing or "jetstream" in inside:
        raise Failed(f"JetStream is not in the volume's jetstream/: {listing}")
    for bridge in ("bridge-1", "bridge-2", "bridge-3"):
        hardening = stack("logs", "--no-color", bridge, quiet=True).stdout.decode()
        line = next((x for x in hardening.splitlines() if "process hardening" in x), "")
        say(f"{bridge}: {line.split('|', 1)[-1].strip()[:200]}")

    # The gateway listens (an OpenAI-compatible request without a key: 401, its own JSON).
    probe = (
        "import json, urllib.error, urllib.request\n"
        "try:\n"
        "    urllib.request.urlopen('http://127.0.0.1:8080/v1/models', timeout=5)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, json.load(e)['error']['code'])\n"
    )
    answer = stack("exec", "-T", "bridge-1", "python", "-c", probe, quiet=True)
    if answer.stdout.decode().split() != ["401", "invalid_api_key"]:
        raise Failed(f"bridge-1's gateway did not answer 401: {answer.stdout!r}")
    say("bridge-1's gateway answers 401 without a key")

    # A secret's life through the admin service.
    put = stack.admin_json("secret", "put", "demo-repo/db", "--kind", "generic", input=b"v1")
    assert put["version"] == 1, put
    stack.admin("fleet", "status", "--wait")
    rotated = stack.admin_json("secret", "rotate", "demo-repo/db", input=b"v2")
    assert rotated["version"] == 2, rotated
    status = stack.admin_json("fleet", "status", "--wait", "--secrets")
    assert status["ready"], status
    listed = stack.admin_json("secret", "list", "demo-repo")
    assert [(s["name"], s["version"]) for s in listed] == [("db", 2)], listed
    say("secret put (v1) and rotated (v2); every node holds v2")
    stack.admin_json("secret", "put", "demo-repo/keep", "--kind", "generic", input=b"kept")
    deleted = stack.admin_json("secret", "delete", "demo-repo/db")
    assert deleted["event"].endswith("deleted"), deleted
    listed = stack.admin_json("secret", "list", "demo-repo", "--all")
    assert {s["name"]: s["deleted"] for s in listed} == {"db": True, "keep": False}, listed
    stack.admin("fleet", "status", "--wait")
    say("secret deleted; demo-repo/keep stays")

    # Revoke node-3 (its bridge exits 3 and is stopped, as the docs say), rotate the key.
    say(stack.admin("node", "revoke", "node-3").strip())
    deadline = time.monotonic() + 120
    while True:  # it exits with status 3 (and Docker's restart policy runs it again)
        exit_code = stack.inspect("bridge-3", "{{.State.ExitCode}}")
        revoked = "this node is revoked" in stack("logs", "bridge-3", quiet=True).stdout.decode()
        if exit_code == "3" or (revoked and stack.inspect("bridge-3", "{{.RestartCount}}") != "0"):
            break
        if time.monotonic() > deadline:
            raise Failed(f"bridge-3 did not exit with status 3 after its revocation: {exit_code}")
        time.sleep(1)
    say("bridge-3 exited with status 3 (revoked); stopping it as the docs say")
    stack("stop", "bridge-3")
    # ... and taking its NATS user away: init writes the users again, nats reloads them.
    stack("run", "--rm", "-T", "init", timeout=300)
    stack("kill", "-s", "HUP", "nats")
    deadline = time.monotonic() + 60
    while "Reloaded server configuration" not in stack("logs", "nats", quiet=True).stdout.decode():
        if time.monotonic() > deadline:
            raise Failed("nats did not reload its users after the revocation")
        time.sleep(1)
    say("node-3's NATS user removed and the server reloaded")
    rotation = stack.admin_json("fleet", "rotate-key", "--timeout", "300", timeout=400)
    say(f"fleet key rotated: {json.dumps(rotation)[:300]}")
    status = stack.admin_json("fleet", "status", "--wait")
    nodes = {n["node"]: n["status"] for n in status["nodes"]}
    assert nodes == {"node-1": "online", "node-2": "online", "node-3": "revoked"}, nodes
    assert status["ready"], status
    live = [s for s in SERVICES if s != "bridge-3"]
    stack.wait_healthy(live)

    # PostgreSQL goes away: the backend's health check says so; it comes back: the backend
    # reconnects, is healthy again and a write goes through.
    stack("stop", "postgres", timeout=120)
    backend_health = ["exec", "-T", "backend", "flashgate", "backend", "health"]
    deadline = time.monotonic() + 60
    while True:
        result = stack(*backend_health, check=False, quiet=True)
        if result.returncode == 1 and b"database" in result.stderr:
            say("backend health with PostgreSQL stopped: " + result.stderr.decode().strip())
            break
        if time.monotonic() > deadline:
            raise Failed(f"backend health did not notice PostgreSQL stopped: {result.stderr!r}")
        time.sleep(1)
    stack("start", "postgres", timeout=120)
    stack.wait_healthy(live)
    say("backend health: " + stack(*backend_health, quiet=True).stdout.decode().strip())
    after = stack.admin_json("secret", "rotate", "demo-repo/keep", input=b"kept-2")
    assert after["version"] == 2, after
    stack.admin("fleet", "status", "--wait")
    say("PostgreSQL restarted; backend healthy, a write applied, every node holds it")

    # A bridge crashes (its process SIGKILLed; `docker kill` would count as a manual stop,
    # which restart policies leave alone): Docker restarts it, it re-reads its bundle
    # (re-sealed after the rotation) and rejoins.
    pid = stack.inspect("bridge-1", "{{.State.Pid}}")
    restarts = stack.inspect("bridge-1", "{{.RestartCount}}")
    sh(["kill", "-KILL", pid])
    deadline = time.monotonic() + 120
    while stack.inspect("bridge-1", "{{.RestartCount}}") == restarts:
        if time.monotonic() > deadline:
            raise Failed("bridge-1 was not restarted after it was killed")
        time.sleep(1)
    stack.wait_healthy(live)
    status = stack.admin_json("fleet", "status", "--wait")
    assert status["ready"], status
    say("bridge-1 killed and back: healthy, holds every secret under the new epoch")
    stack("restart", "bridge-2", timeout=120)
    stack.wait_healthy(live)
    stack.admin("fleet", "status", "--wait")
    say("bridge-2 restarted: healthy")
    for service in live:
        say(f"{service}: {stack.state(service)}")
    print(stack("ps", quiet=True).stdout.decode(), flush=True)


def stream_replicas(stack: Stack) -> dict[str, tuple[int, str]]:
    """Every stream of the fleet: (replicas, leader), from nats-1's monitoring endpoint."""
    url = "http://127.0.0.1:8222/jsz?accounts=true&streams=true&config=true"
    raw = stack("exec", "-T", "nats", "wget", "-qO-", url, quiet=True).stdout
    found: dict[str, tuple[int, str]] = {}
    for account in json.loads(raw).get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            config = stream.get("config") or {}
            leader = (stream.get("cluster") or {}).get("leader") or ""
            found[stream["name"]] = (int(config.get("num_replicas") or 1), leader)
    return found


def exercise_ha(stack: Stack) -> None:
    """compose.ha.yaml: R3 everywhere; SIGKILL the command stream's leader during writes."""
    stack("up", "-d", timeout=600)
    stack.wait_healthy(HA_SERVICES)
    say(stack.admin("fleet", "status", "--wait").strip())
    stack.admin_json("secret", "put", "ha/first", "--kind", "generic", input=b"v")
    streams = stream_replicas(stack)
    fleet = {name: value for name, value in streams.items() if "demo" in name}
    say(f"streams: {fleet}")
    # the command and event streams, the secrets and fleet buckets, the fast path's ring,
    # wraps and snapshots buckets
    if len(fleet) != 7 or {replicas for replicas, _ in fleet.values()} != {3}:
        raise Failed(f"not every stream and bucket is R3: {fleet}")
    leader = fleet["fg-demo-cmd"][1]
    service = HA_NATS[leader][0]
    # The writes: one admin container, one `secret put` after the other, each waiting for
    # its outcome (the CLI's publish retry and its event watch carry it over the kill).
    script = (
        f"for i in $(seq 1 {HA_WRITES}); do "
        'printf "value-$i" | flashgate secret put "ha/s$i" --kind generic '
        '|| exit 1; echo "written $i"; done'
    )
    writer = subprocess.Popen(
        [*stack.compose, "--project-directory", str(ROOT), "--env-file", str(stack.env_file),
         "run", "--rm", "-T",
         "--entrypoint", "sh", "admin", "-c", script],
        env=stack.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert writer.stdout is not None
    written = 0
    while written < HA_WRITES // 3:
        line = writer.stdout.readline()
        if not line:
            raise Failed(f"the writer stopped: {writer.wait()} {writer.stderr.read()!r}")
        written += line.startswith(b"written")
    pid = stack.inspect(service, "{{.State.Pid}}")
    t_kill = time.monotonic()
    sh(["kill", "-KILL", pid])
    say(f"SIGKILLed {service} ({leader}, the command stream's leader) after {written} writes")
    out, err = writer.communicate(timeout=600)
    if writer.returncode != 0:
        raise Failed(f"a write failed across the kill: {out[-2000:]!r} {err[-2000:]!r}")
    say(f"every write after the kill came back ({time.monotonic() - t_kill:.1f}s for the rest)")
    listed = stack.admin_json("secret", "list", "ha")
    names = sorted(s["name"] for s in listed)
    expected = sorted(["first", *(f"s{i}" for i in range(1, HA_WRITES + 1))])
    if names != expected or any(s["version"] != 1 for s in listed):
        raise Failed(f"secrets after the kill: {listed}")
    stack.wait_healthy(HA_SERVICES)
    status = stack.admin_json("fleet", "status", "--wait")
    if not status["ready"]:
        raise Failed(f"not every node holds every secret: {status}")
    after = {n: v for n, v in stream_replicas(stack).items() if "demo" in n}
    say(f"{service} back; streams: {after}; every node holds all {len(expected)} secrets")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sandbox", type=Path, default=None)
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--keep-daemon", action="store_true")
    parser.add_argument("--no-ha", action="store_true", help="skip the compose.ha.yaml run")
    parser.add_argument("--only-ha", action="store_true", help="only the compose.ha.yaml run")
    args = parser.parse_args(argv)
    sandbox: Path | None = None
    if not args.no_sandbox:
        sandbox = args.sandbox or (DEFAULT_SANDBOX if DEFAULT_SANDBOX.is_dir() else None)
    started_daemon = False
    workdir = Path(tempfile.mkdtemp(prefix="fg-compose-test-"))
    override = ha_override = None
    if sandbox is not None:
        was_up = sh(["docker", "info"], check=False, quiet=True).returncode == 0
        say(f"compose sandbox: {sandbox}")
        sh([str(sandbox / "up.sh")], timeout=1800)
        started_daemon = not was_up
        override = sandbox_override(sandbox, workdir / "compose.sandbox.yaml")
        ha_override = sandbox_override(sandbox, workdir / "compose.sandbox.ha.yaml", ha=True)
    runs = [] if args.only_ha else [(Stack(override), exercise)]
    if not args.no_ha:
        runs.append((Stack(ha_override, ha=True), exercise_ha))
    failed = False
    try:
        if not args.skip_build:
            sh(["docker", "build", "--network", "host", "-t", IMAGE, "."], timeout=1800)
        check_build_context()
        for stack, run in runs:
            try:
                run(stack)
            except (Failed, AssertionError):
                print(stack.logs(40), flush=True)
                raise
            finally:
                stack("down", "-v", "--remove-orphans", check=False, timeout=300)
    except (Failed, AssertionError) as exc:
        failed = True
        say(f"FAILED: {exc}")
    finally:
        for stack, _ in runs:
            stack.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if sandbox is not None and started_daemon and not args.keep_daemon:
            sh([str(sandbox / "down.sh")], check=False)
    say("compose-test: FAILED" if failed else "compose-test: passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
