"""compose.yaml and the deployment NATS config: what can be checked without Docker.

Docker does not run on these machines; these tests check the file's structure and
dependencies, that every service command is a valid `flashgate` invocation, and that the
NATS configuration passes `nats-server -t` and matches what the permissions module makes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from flashgate.broker.permissions import server_config
from flashgate.broker.server import find_nats_server
from flashgate.cli.main import cli
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
        assert SERVICES[bridge]["environment"]["FLASHGATE_NATS_USER"] == "bridge"
    assert SERVICES["init"]["restart"] == "no"
    for name in ("nats", "postgres", "backend", "bridge-1"):
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["backend"]["environment"]["FLASHGATE_NATS_USER"] == "backend"
    assert SERVICES["backend"]["environment"]["FLASHGATE_DB_URL"].startswith("postgresql://")


def _flashgate_args(service: str) -> list[str]:
    spec = SERVICES[service]
    if spec.get("entrypoint") == ["sh", "-c"]:
        script = spec["command"][0]
        return script.split("||", 1)[1].split()[1:]  # after "flashgate"
    return list(spec["command"])


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


def test_nats_config_is_generated_and_valid() -> None:
    path = ROOT / "deploy" / "nats.conf"
    assert path.read_text() == server_config(FleetNames("demo")), (
        "regenerate: flashgate dev nats-config --fleet demo > deploy/nats.conf"
    )
    env = {
        **os.environ,
        "FG_ADMIN_PASSWORD": "a",
        "FG_BACKEND_PASSWORD": "b",
        "FG_BRIDGE_PASSWORD": "c",
    }
    result = subprocess.run(
        [str(find_nats_server().path), "-t", "-c", str(path)],
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
    example = (ROOT / "deploy" / "example.env").read_text()
    assert all(
        line.split("=", 1)[1].startswith("change-me")
        for line in example.splitlines()
        if line and not line.startswith("#")
    )
