"""End to end through `flashgate dev up` (a real process, and its children) and the
`flashgate` CLI (in process, and once as a process of its own).

One dev cluster (3 bridges, t = 2, an INSECURE 1024-bit test key) serves the whole module;
the tests run in order against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Result, run_cli, run_cli_process, subprocess_env
from tests.support.material import CANARY

pytestmark = [pytest.mark.nats, pytest.mark.processes, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "e2e-passphrase-not-secret"
NODES = ["node-1", "node-2", "node-3"]


class Cli:
    """The admin CLI against the dev cluster: in this process (tests.support.cli.run_cli),
    or with ``process=True`` as a process of its own."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env: dict[str, str | None] = {
            "FLASHGATE_HOME": str(home),
            "FLASHGATE_PASSPHRASE": PASSPHRASE,
            "FLASHGATE_NATS_URL": None,
        }

    def run(
        self,
        *args: str,
        stdin: bytes = b"",
        check: bool = True,
        timeout: float = 60,
        process: bool = False,
    ) -> Result:
        if process:
            result = run_cli_process(*args, input=stdin, env=self.env, cwd=ROOT, timeout=timeout)
        else:  # the command's own --timeout bounds it
            result = run_cli(*args, input=stdin, env=self.env, cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(
                f"flashgate {' '.join(args)} failed ({result.returncode}): {result.err[-2000:]}"
            )
        return result

    def json(
        self, *args: str, stdin: bytes = b"", timeout: float = 60, process: bool = False
    ) -> Any:
        result = self.run(*args, "--json", stdin=stdin, timeout=timeout, process=process)
        return json.loads(result.stdout)

    def status(self) -> dict[str, Any]:
        return self.json("fleet", "status")

    def wait(self, timeout: float = 90, *, process: bool = False) -> dict[str, Any]:
        return self.json("fleet", "status", "--wait", "--timeout", str(timeout), process=process)

    def held(self, node: str) -> dict[str, int]:
        """The (key -> version) a node holds, from its signed status answer."""
        status = self.json("fleet", "status", "--secrets")
        [row] = [r for r in status["nodes"] if r["node"] == node]
        assert row["status"] == "online", row
        return dict(row["secrets"])


def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    cli = Cli(home)
    log = (home.parent / "dev-up.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flashgate.cli.main",
            "dev",
            "up",
            "--home",
            str(home),
            "--nodes",
            "3",
            "--threshold",
            "2",
            "--key-bits",
            "1024",
            "--insecure-test-key",
        ],
        stdout=log,
        stderr=log,
        env=subprocess_env(PASSPHRASE, cli.env),
        cwd=ROOT,
    )
    try:
        eventually(
            lambda: (home / "config.json").exists() and (home / "fleet").exists(),
            120,
            "dev up to write its home",
        )
        cli.wait(120, process=True)  # the CLI as a process of its own once; then in process
        yield cli
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(10)
        log.close()
        assert code == 0, (home.parent / "dev-up.log").read_text()[-3000:]


def test_put_rotate_delete(cluster: Cli) -> None:
    put = cluster.json("secret", "put", "payments/db", "--kind", "generic", stdin=CANARY)
    assert put["version"] == 1
    eventually(
        lambda: all(cluster.held(n).get("payments.db") == 1 for n in NODES),
        60,
        "every bridge to hold v1",
    )
    rotated = cluster.json("secret", "rotate", "payments/db", stdin=CANARY + b"-v2")
    assert rotated["version"] == 2
    eventually(
        lambda: all(cluster.held(n).get("payments.db") == 2 for n in NODES),
        60,
        "every bridge to hold v2 and not v1",
    )
    listing = cluster.json("secret", "list")
    assert [(s["repo"], s["name"], s["version"]) for s in listing] == [("payments", "db", 2)]
    cluster.json("secret", "delete", "payments/db")
    eventually(
        lambda: all("payments.db" not in cluster.held(n) for n in NODES),
        60,
        "the secret purged everywhere",
    )
    again = cluster.run("secret", "rotate", "payments/db", stdin=b"x", check=False)
    assert again.returncode != 0 and b"does not exist" in again.stderr


def test_typed_storage_secret(cluster: Cli) -> None:
    out = cluster.json(
        "secret",
        "put",
        "media/s3",
        "--kind",
        "storage",
        "--provider",
        "s3",
        "--bucket",
        "media",
        "--region",
        "eu-west-1",
        "--access-key-id",
        "AKIA",
        "--secret-access-key",
        CANARY.decode(),
    )
    assert out["kind"] == "storage"
    eventually(
        lambda: all(cluster.held(n).get("media.s3") == 1 for n in NODES),
        60,
        "the storage secret everywhere",
    )
    # A rotation replaces the whole value: some typed flags alone are refused (the CLI
    # cannot read the old value to merge them) ...
    partial = cluster.run(
        "secret", "rotate", "media/s3", "--provider", "s3", "--secret-access-key", "x", check=False
    )
    assert partial.returncode == 1 and b"missing: --bucket" in partial.stderr
    # ... and typed flags take the secret's own kind when --kind is not given.
    rotated = cluster.json(
        "secret",
        "rotate",
        "media/s3",
        "--provider",
        "s3",
        "--bucket",
        "media",
        "--region",
        "eu-west-1",
        "--access-key-id",
        "AKIA",
        "--secret-access-key",
        "rotated",
    )
    assert (rotated["kind"], rotated["version"]) == ("storage", 2)
    # An empty value and an unreadable file are one-line errors, and nothing is written.
    empty = cluster.run("secret", "put", "media/empty", "--kind", "generic", check=False)
    assert empty.returncode != 0 and b"the value is empty" in empty.stderr
    missing = cluster.run(
        "secret",
        "put",
        "media/x",
        "--kind",
        "generic",
        "--value-file",
        "/nonexistent",
        check=False,
    )
    assert missing.returncode != 0 and b"cannot read --value-file" in missing.stderr
    assert b"Traceback" not in missing.stderr + empty.stderr


def test_api_key_lifecycle(cluster: Cli) -> None:
    created = cluster.run(
        "apikey",
        "create",
        "payments",
        "--scope",
        "storage",
        "--name",
        "ci reader",
        "--access",
        "read",
        "--json",
    )
    doc = json.loads(created.stdout)
    assert doc["secret"].startswith("fgs_") and b"only time" in created.stderr
    key = f"payments.{doc['key_id']}"
    eventually(
        lambda: all(cluster.held(n).get(key) == 1 for n in NODES), 60, "the API key on every bridge"
    )
    # verify_api_key on every bridge (the secret travels sealed to each node)
    verified = cluster.json("apikey", "verify", doc["key_id"], stdin=doc["secret"].encode())
    assert verified["nodes"] == {n: "valid" for n in NODES}
    wrong = cluster.run("apikey", "verify", doc["key_id"], stdin=b"fgs_wrong", check=False)
    assert wrong.returncode == 1 and b"not accepted by node-1, node-2, node-3" in wrong.stderr
    listed = cluster.json("apikey", "list")
    assert [k["key_id"] for k in listed] == [doc["key_id"]]
    assert "secret" not in listed[0]
    cluster.json("apikey", "revoke", doc["key_id"])
    eventually(
        lambda: all(key not in cluster.held(n) for n in NODES),
        60,
        "the revoked key forgotten everywhere",
    )
    assert cluster.json("apikey", "list") == []
    revoked = cluster.run(
        "apikey", "verify", doc["key_id"], "--json", stdin=doc["secret"].encode(), check=False
    )
    assert revoked.returncode == 1
    assert json.loads(revoked.stdout)["nodes"] == {n: "invalid" for n in NODES}


def test_ai_gateway_through_dev_up(cluster: Cli) -> None:
    """Each bridge serves the gateway on the port the banner names; the openai SDK with a
    repository AI key gets the upstream's answer, the upstream gets the stored key."""
    import re

    import openai

    from tests.support.ai_upstream import MODEL, upstream_in_thread

    banner = (cluster.home.parent / "dev-up.log").read_text()
    ports = dict(re.findall(r"gateway\s+(node-\d+) http://127\.0\.0\.1:(\d+)", banner))
    assert sorted(ports) == NODES and len(set(ports.values())) == len(NODES)
    with upstream_in_thread() as upstream:
        cluster.json(
            "secret", "put", "payments/llm", "--kind", "ai", "--provider", "openai",
            "--api-key", "sk-" + CANARY.decode(), "--base-url", upstream.base_url,
        )  # fmt: skip
        doc = cluster.json(
            "apikey", "create", "payments", "--scope", "ai", "--access", "openai",
            "--name", "gateway e2e",
        )  # fmt: skip
        key = f"payments.{doc['key_id']}"
        eventually(
            lambda: all(
                cluster.held(n).get(key) == 1 and cluster.held(n).get("payments.llm") == 1
                for n in NODES
            ),
            60,
            "the key and the AI secret on every bridge",
        )
        for node, port in sorted(ports.items()):
            client = openai.OpenAI(
                api_key=f"{doc['key_id']}.{doc['secret']}",
                base_url=f"http://127.0.0.1:{port}/v1",
                max_retries=0,
            )
            answer = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": node}]
            )
            assert answer.choices[0].message.content == "Hello from the upstream."
            assert upstream.seen[-1].credential() == "sk-" + CANARY.decode()
        cluster.json("apikey", "revoke", doc["key_id"])
        cluster.json("secret", "delete", "payments/llm")


def test_s3_gateway_through_dev_up(cluster: Cli, tmp_path: Path) -> None:
    """boto3 with a repository storage key against each bridge's gateway: the storage
    secret is a virtual bucket, the node re-signs for the real bucket of a real S3 server
    (rclone serve s3, which checks SigV4 itself); a read key may not write; a revoked key
    is refused from the next request on. The stored credential never reaches the client."""
    import re

    from botocore.exceptions import ClientError

    from tests.support.gateway import (
        REAL_BUCKET,
        UPSTREAM_ACCESS_KEY,
        UPSTREAM_SECRET_KEY,
        boto3_client,
        rclone_upstream,
    )

    banner = (cluster.home.parent / "dev-up.log").read_text()
    ports = dict(re.findall(r"gateway\s+(node-\d+) http://127\.0\.0\.1:(\d+)", banner))
    with rclone_upstream(tmp_path) as upstream:
        cluster.json(
            "secret", "put", "gw/archive", "--kind", "storage", "--provider", "s3",
            "--bucket", REAL_BUCKET, "--region", "us-east-1", "--endpoint", upstream.url,
            "--access-key-id", UPSTREAM_ACCESS_KEY, "--secret-access-key", UPSTREAM_SECRET_KEY,
        )  # fmt: skip
        writer = cluster.json(
            "apikey", "create", "gw", "--scope", "storage", "--access", "write",
            "--name", "s3 writer",
        )  # fmt: skip
        reader = cluster.json(
            "apikey", "create", "gw", "--scope", "storage", "--access", "read",
            "--name", "s3 reader",
        )  # fmt: skip
        keys = ["gw.archive", f"gw.{writer['key_id']}", f"gw.{reader['key_id']}"]
        eventually(
            lambda: all(cluster.held(n).get(k) == 1 for n in NODES for k in keys),
            60,
            "the keys and the storage secret on every bridge",
        )
        for node, port in sorted(ports.items()):
            endpoint = f"http://127.0.0.1:{port}"
            s3 = boto3_client(endpoint, writer["key_id"], writer["secret"])
            body = f"written through {node} ".encode() + CANARY
            s3.put_object(Bucket="archive", Key=f"{node}.txt", Body=body)
            assert (upstream.root / REAL_BUCKET / f"{node}.txt").read_bytes() == body
            got = s3.get_object(Bucket="archive", Key=f"{node}.txt", Range="bytes=0-6")
            assert got["Body"].read() == b"written"
            listed = s3.list_objects_v2(Bucket="archive")
            assert f"{node}.txt" in {o["Key"] for o in listed["Contents"]}
            assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["archive"]
            read_only = boto3_client(endpoint, reader["key_id"], reader["secret"])
            assert read_only.head_object(Bucket="archive", Key=f"{node}.txt")["ContentLength"]
            try:
                read_only.put_object(Bucket="archive", Key="nope.txt", Body=b"x")
                raise AssertionError("a read key wrote")
            except ClientError as refused:
                assert refused.response["Error"]["Code"] == "AccessDenied"
        cluster.json("apikey", "revoke", writer["key_id"])
        for node, port in sorted(ports.items()):
            s3 = boto3_client(f"http://127.0.0.1:{port}", writer["key_id"], writer["secret"])

            def refused(s3: Any = s3) -> bool:
                try:
                    s3.head_object(Bucket="archive", Key="node-1.txt")
                except ClientError as exc:
                    return exc.response["Error"]["Code"] in ("InvalidAccessKeyId", "403")
                return False

            eventually(refused, 30, f"the revoked key refused by {node}")
        cluster.json("apikey", "revoke", reader["key_id"])
        cluster.json("secret", "delete", "gw/archive")


def test_killed_bridge_others_continue_and_it_reloads(cluster: Cli) -> None:
    pid = int((cluster.home / "run" / "node-2.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    cluster.json("secret", "put", "ops/while-down", "--kind", "generic", stdin=b"v")
    eventually(
        lambda: all(cluster.held(n).get("ops.while-down") == 1 for n in ("node-1", "node-3")),
        60,
        "the others to load it",
    )
    # dev up restarts the killed bridge; it reloads everything
    eventually(
        lambda: int((cluster.home / "run" / "node-2.pid").read_text()) != pid,
        60,
        "node-2 restarted",
    )
    eventually(lambda: cluster.held("node-2").get("ops.while-down") == 1, 60, "node-2 to reload")
    cluster.wait(60)


def test_role_permissions_are_enforced(cluster: Cli) -> None:
    config = json.loads((cluster.home / "config.json").read_text())
    script = (
        "import asyncio, json, sys\n"
        "import nats\n"
        "async def main():\n"
        "    errors = []\n"
        "    async def on_error(e): errors.append(str(e))\n"
        "    url, user, password, action = sys.argv[1:5]\n"
        "    nc = await nats.connect(url, user=user, password=password, error_cb=on_error,\n"
        "                            inbox_prefix='_INBOX.' + user)\n"
        "    if action == 'subscribe-share':\n"
        "        await nc.subscribe('fg.dev.share.node-1')\n"
        "    else:\n"
        "        await nc.publish('fg.dev.cmd.secret.put', b'{}')\n"
        "    await nc.flush(); await asyncio.sleep(0.5); await nc.close()\n"
        "    print(json.dumps(errors))\n"
        "asyncio.run(main())\n"
    )
    url = config["nats"][0]

    def attempt(role: str, action: str) -> list[str]:
        login = config["logins"][role]
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                url,
                login["user"],
                login["password"],
                action,
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        return json.loads(out.stdout)

    assert any("permissions violation" in e.lower() for e in attempt("backend", "subscribe-share"))
    # No shared bridge login: each node logs in with its own NKey, within its own subjects.
    assert "bridge" not in config["logins"]
    for action in ("publish-command", "subscribe-other-share"):
        errors = json.loads(_nkey_login(cluster, "node-1", action))
        assert any("permissions violation" in e.lower() for e in errors), action


def test_fleet_key_rotation_with_a_node_down(cluster: Cli) -> None:
    for name in ("one", "two", "three"):
        cluster.json("secret", "put", f"rot/{name}", "--kind", "generic", stdin=name.encode())
    key = cluster.json(
        "apikey",
        "create",
        "rot",
        "--scope",
        "ai",
        "--access",
        "openai",
        "--name",
        "survives rotation",
    )
    cluster.wait(60)
    before = {r["node"]: r for r in cluster.status()["nodes"]}
    assert {r["epoch"] for r in before.values()} == {1}
    pid = int((cluster.home / "run" / "node-3.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # down: no heartbeats, no answers
    try:
        result = cluster.json("fleet", "rotate-key", "--timeout", "150", timeout=180)
    finally:
        os.kill(pid, signal.SIGKILL)  # dev up restarts it, with its epoch-1 bundle
    assert result["epoch"] == 2 and result["retired_epoch"] == 1
    assert result["nodes_verified"] == ["node-1", "node-2"]
    home_descriptor = json.loads((cluster.home / "fleet" / "fleet.json").read_text())
    assert home_descriptor["epoch"] == 2
    after = cluster.json("fleet", "status", "--secrets")
    for row in after["nodes"][:2]:
        assert row["epoch"] == 2 and set(row["epochs"].values()) == {2}, row
    # node-3 returns: reads the rotation's sealed share and the retirement from the fleet
    # bucket, loads everything under epoch 2 and re-seals its bundle.
    eventually(
        lambda: int((cluster.home / "run" / "node-3.pid").read_text()) != pid,
        60,
        "node-3 restarted",
    )
    status = cluster.wait(90)
    assert {r["epoch"] for r in status["nodes"]} == {2}

    def resealed() -> bool:
        from flashgate.fleet.directory import read_bundle

        return read_bundle(cluster.home / "fleet/nodes/node-3.bundle", PASSPHRASE).epoch == 2

    eventually(resealed, 30, "node-3 to re-seal its bundle for epoch 2")
    cluster.json("secret", "put", "rot/after", "--kind", "generic", stdin=b"after")
    eventually(
        lambda: all(cluster.held(n).get("rot.after") == 1 for n in NODES),
        60,
        "a secret written under epoch 2 on every bridge",
    )
    final = cluster.json("fleet", "status", "--secrets")
    assert all(set(r["epochs"].values()) == {2} for r in final["nodes"])
    # The re-wrapped API key still opens to the same secret on every node.
    verified = cluster.json("apikey", "verify", key["key_id"], stdin=key["secret"].encode())
    assert verified["nodes"] == {n: "valid" for n in NODES}


_NKEY_LOGIN = (
    "import asyncio, json, sys\n"
    "from pathlib import Path\n"
    "from flashgate import logs\n"
    "from flashgate.broker.connection import connect\n"
    "from flashgate.errors import BrokerError\n"
    "from flashgate.fleet.directory import read_bundle\n"
    "logs.configure(level='critical')\n"
    "async def main():\n"
    "    home, node, passphrase, action = sys.argv[1:5]\n"
    "    home = Path(home)\n"
    "    config = json.loads((home / 'config.json').read_text())\n"
    "    b = read_bundle(home / f'fleet/nodes/{node}.bundle', passphrase)\n"
    "    errors = []\n"
    "    async def on_error(e): errors.append(str(e))\n"
    "    try:\n"
    "        nc = await connect(config['nats'], role='bridge', identity=node, name='probe',\n"
    "                           nkey_seed=b.nats_seed, error_cb=on_error)\n"
    "    except BrokerError as exc:\n"
    "        print('refused' if 'refused the credentials' in exc.message else exc.message)\n"
    "        return\n"
    "    if action == 'publish-command':\n"
    "        await nc.publish('fg.dev.cmd.secret.put', b'{}')\n"
    "    elif action == 'subscribe-other-share':\n"
    "        await nc.subscribe('fg.dev.share.node-2')\n"
    "    await nc.flush(); await asyncio.sleep(0.5); await nc.close()\n"
    "    print(json.dumps(errors) if action != 'login' else 'connected')\n"
    "asyncio.run(main())\n"
)


def _nkey_login(cluster: Cli, node: str, action: str = "login") -> str:
    """Log in to the dev cluster's NATS as ``node`` with the NKey from its bundle."""
    out = subprocess.run(
        [sys.executable, "-c", _NKEY_LOGIN, str(cluster.home), node, PASSPHRASE, action],
        capture_output=True,
        env=subprocess_env(PASSPHRASE, cluster.env),
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return out.stdout.decode().strip().splitlines()[-1]


def test_revoked_node_is_refused(cluster: Cli) -> None:
    revoked = cluster.json("node", "revoke", "node-3")
    assert revoked["roster_serial"] == 2
    # node-3 stops itself (and dev up does not restart it); the others refuse it
    eventually(
        lambda: cluster.status()["nodes"][2]["status"] == "revoked",
        60,
        "the roster to show node-3 revoked",
    )
    # Its NATS identity is gone: dev up rewrote the users and reloaded the server, so
    # node-3's own NKey (sealed in its bundle) is refused; node-1's still logs in.
    eventually(
        lambda: _nkey_login(cluster, "node-3") == "refused",
        60,
        "NATS to refuse node-3's NKey",
    )
    assert _nkey_login(cluster, "node-1") == "connected"
    status = cluster.status()
    assert [n["status"] for n in status["nodes"]] == ["online", "online", "revoked"]
    # The runbook: a revocation is followed by a fleet key rotation; node-3 gets no share.
    rotated = cluster.json("fleet", "rotate-key", "--timeout", "150", timeout=180)
    assert rotated["epoch"] == 3 and rotated["nodes_verified"] == ["node-1", "node-2"]
    descriptor = json.loads((cluster.home / "fleet" / "fleet.json").read_text())
    assert [n["id"] for n in descriptor["nodes"]] == ["node-1", "node-2"]


def test_canary_appears_nowhere(cluster: Cli) -> None:
    cluster.json("secret", "put", "zz/canary", "--kind", "generic", stdin=CANARY)
    eventually(
        lambda: all(cluster.held(n).get("zz.canary") == 1 for n in ("node-1", "node-2")),
        60,
        "the canary loaded",
    )
    files = [p for p in cluster.home.parent.rglob("*") if p.is_file()]
    assert any(p.name == "backend.db" for p in files)
    assert any("jetstream" in str(p) for p in files)
    for path in files:
        assert CANARY not in path.read_bytes(), path
