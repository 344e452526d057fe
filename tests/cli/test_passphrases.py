"""A passphrase per bundle: ``recover --passphrase-env BUNDLE=VAR`` (compose seals every
bundle with its node's own passphrase), and ``fleet reseal`` to change the passphrase of a
bundle or of admin.key. Real sealed files; the command in process (tests.support.cli.run_cli),
except at a prompt, where it runs as a process of its own on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import stat
import subprocess
import termios
from pathlib import Path

import pytest

from flashgate.errors import UnsealError
from flashgate.fleet.bundle import open_admin_key
from flashgate.fleet.files import load_descriptor
from tests.support.cli import BINARY_SECRET, UNSET, Fleet, Result, flashgate_argv, run_cli
from tests.support.material import TEST_PASSPHRASE

P2 = "node-two-passphrase"
P3 = "node-three-passphrase"


def one_error_line(result: Result, *words: str) -> str:
    assert result.returncode == 1, str(result)
    assert "Traceback" not in result.err, str(result)
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flashgate: error: "), str(result)
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def reseal(path: Path, old: str, new: str, **kwargs: object) -> Result:
    return run_cli(
        "fleet",
        "reseal",
        path,
        "--old-passphrase-env",
        "OLD_PASS",
        "--new-passphrase-env",
        "NEW_PASS",
        passphrase=UNSET,
        env={"OLD_PASS": old, "NEW_PASS": new},
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def sealed_apart(demo: Fleet, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Copies of node-1..3's bundles, node-2's and node-3's resealed with their own
    passphrases (as compose's init does); node-1's keeps the fleet's."""
    base = tmp_path_factory.mktemp("apart")
    copies = []
    for i in (1, 2, 3):
        copy = base / f"node-{i}.bundle"
        shutil.copyfile(demo.bundle(i), copy)
        copies.append(copy)
    for copy, new in ((copies[1], P2), (copies[2], P3)):
        result = reseal(copy, TEST_PASSPHRASE, new)
        assert result.returncode == 0, str(result)
        assert "resealed" in result.stdout.decode() and "node-" in result.stdout.decode()
    return copies


def test_recover_with_one_passphrase_names_the_bundle_it_cannot_open(
    demo: Fleet, demo_token: bytes, sealed_apart: list[Path]
) -> None:
    result = demo.recover(demo_token, sealed_apart)
    line = one_error_line(result, str(sealed_apart[1]), "wrong passphrase", "--passphrase-env")
    assert "node-2=VAR" in line
    assert TEST_PASSPHRASE not in result.err


def test_recover_with_a_passphrase_per_bundle(
    demo: Fleet, demo_token: bytes, sealed_apart: list[Path]
) -> None:
    options = ["--passphrase-env", "node-2=PASS_TWO", "--passphrase-env", "node-3.bundle=PASS_3"]
    env = {"PASS_TWO": P2, "PASS_3": P3}
    # node-1's from FLASHGATE_PASSPHRASE
    result = run_cli(
        "recover",
        "--fleet-dir",
        demo.dir,
        *(a for p in sealed_apart for a in ("--bundle", p)),
        *options,
        input=demo_token,
        env=env,
    )
    assert result.returncode == 0, str(result)
    assert result.stdout == BINARY_SECRET
    # every one named, no FLASHGATE_PASSPHRASE at all
    result = run_cli(
        "recover",
        "--fleet-dir",
        demo.dir,
        *(a for p in sealed_apart for a in ("--bundle", p)),
        *options,
        "--passphrase-env",
        f"{sealed_apart[0]}=PASS_ONE",
        input=demo_token,
        passphrase=UNSET,
        env={**env, "PASS_ONE": TEST_PASSPHRASE},
    )
    assert result.returncode == 0, str(result)
    assert result.stdout == BINARY_SECRET


@pytest.mark.parametrize(
    ("option", "env", "words"),
    [
        ("node-9=X", {}, ("node-9", "no --bundle")),
        ("node-2", {}, ("BUNDLE=VAR",)),
        ("node-2=MISSING_VAR", {}, ("MISSING_VAR", "not set")),
        ("node-2=EMPTY_VAR", {"EMPTY_VAR": ""}, ("EMPTY_VAR", "empty")),
    ],
)
def test_recover_refuses_bad_passphrase_env(
    demo: Fleet,
    demo_token: bytes,
    sealed_apart: list[Path],
    option: str,
    env: dict[str, str],
    words: tuple[str, ...],
) -> None:
    result = run_cli(
        "recover",
        "--fleet-dir",
        demo.dir,
        *(a for p in sealed_apart for a in ("--bundle", p)),
        "--passphrase-env",
        option,
        input=demo_token,
        env=env,
    )
    one_error_line(result, *words)


def test_recover_without_any_passphrase_and_no_terminal(
    demo: Fleet, demo_token: bytes, sealed_apart: list[Path]
) -> None:
    result = demo.recover(demo_token, sealed_apart, passphrase=UNSET)
    one_error_line(result, "FLASHGATE_PASSPHRASE", "--passphrase-env node-1=VAR", "terminal")


def test_reseal_bundle_opens_with_the_new_passphrase_only(
    demo: Fleet, demo_token: bytes, tmp_path: Path
) -> None:
    copy = tmp_path / "node-4.bundle"
    shutil.copyfile(demo.bundle(4), copy)
    before = copy.read_bytes()
    result = reseal(copy, TEST_PASSPHRASE, "a-brand-new-passphrase")
    assert result.returncode == 0, str(result)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-4.bundle"]  # no temp file
    assert copy.read_bytes() != before
    bundles = [demo.bundle(1), demo.bundle(2), copy]
    old = demo.recover(demo_token, bundles, env={"P4": TEST_PASSPHRASE}, passphrase=TEST_PASSPHRASE)
    one_error_line(old, str(copy), "wrong passphrase")
    new = run_cli(
        "recover",
        "--fleet-dir",
        demo.dir,
        *(a for p in bundles for a in ("--bundle", p)),
        "--passphrase-env",
        "node-4=P4",
        input=demo_token,
        env={"P4": "a-brand-new-passphrase"},
    )
    assert new.returncode == 0, str(new)
    assert new.stdout == BINARY_SECRET


def test_reseal_admin_key(demo: Fleet, tmp_path: Path) -> None:
    copy = tmp_path / "admin.key"
    shutil.copyfile(demo.dir / "admin.key", copy)
    result = reseal(copy, TEST_PASSPHRASE, "new-admin-passphrase")
    assert result.returncode == 0, str(result)
    assert "admin key" in result.stdout.decode()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    descriptor = load_descriptor(demo.dir)
    open_admin_key(copy.read_bytes(), "new-admin-passphrase", descriptor)
    with pytest.raises(UnsealError):
        open_admin_key(copy.read_bytes(), TEST_PASSPHRASE, descriptor)


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("not-the-passphrase", "whatever-new-one", ("wrong passphrase",)),
        (TEST_PASSPHRASE, "short", ("at least 8",)),
        (TEST_PASSPHRASE, TEST_PASSPHRASE, ("current one",)),
    ],
)
def test_reseal_refusals_leave_the_file_alone(
    demo: Fleet, tmp_path: Path, old: str, new: str, words: tuple[str, ...]
) -> None:
    copy = tmp_path / "node-5.bundle"
    shutil.copyfile(demo.bundle(5), copy)
    before = copy.read_bytes()
    one_error_line(reseal(copy, old, new), *words)
    assert copy.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-5.bundle"]


def test_reseal_refuses_other_files(demo: Fleet, tmp_path: Path) -> None:
    one_error_line(reseal(demo.dir / "fleet.json", "x" * 8, "y" * 8), "fleet.json", "sealed")
    one_error_line(reseal(tmp_path / "nope.bundle", "x" * 8, "y" * 8), "nope.bundle", "exist")


def test_reseal_without_a_new_passphrase_and_no_terminal(demo: Fleet, tmp_path: Path) -> None:
    copy = tmp_path / "node-5.bundle"
    shutil.copyfile(demo.bundle(5), copy)
    result = run_cli("fleet", "reseal", copy)  # old: FLASHGATE_PASSPHRASE
    one_error_line(result, "--new-passphrase-env", "terminal")


# --- prompts on a terminal (a real pseudo-terminal as the command's controlling tty) -----

PROMPT = re.compile(r"(passphrase (?:of|for) [^\r\n]*?|again): ")


def run_on_terminal(
    *args: str | Path, answers: list[str], stdin: bytes = b""
) -> tuple[int, bytes, list[str]]:
    """Run the command with stderr and the controlling terminal on a pty (stdin and stdout
    stay pipes, as in `recover < jwe > value`); answer each prompt in turn. Returns the exit
    status, stdout and the prompts seen."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k != "FLASHGATE_PASSPHRASE"}

    def controlling_tty() -> None:  # in the child, after setsid: the pty becomes its tty
        fcntl.ioctl(2, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        flashgate_argv(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=controlling_tty,
    )
    os.close(slave)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    transcript, prompts = "", []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"no output from the command; so far: {transcript!r}"
            try:
                chunk = os.read(master, 4096).decode(errors="replace")
            except OSError:  # EIO: the command closed the terminal (it ended)
                break
            if not chunk:
                break
            transcript += chunk
            found = PROMPT.findall(transcript)
            while len(prompts) < len(found):
                prompts.append(found[len(prompts)])
                assert len(prompts) <= len(answers), f"unexpected prompt: {transcript!r}"
                os.write(master, (answers[len(prompts) - 1] + "\n").encode())
        out = proc.stdout.read()
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert "Traceback" not in transcript, transcript
    return status, out, prompts


@pytest.mark.processes
def test_recover_prompts_for_each_bundle_on_the_terminal(
    demo: Fleet, demo_token: bytes, sealed_apart: list[Path]
) -> None:
    status, out, prompts = run_on_terminal(
        "recover",
        "--fleet-dir",
        demo.dir,
        *(a for p in sealed_apart for a in ("--bundle", p)),
        answers=[TEST_PASSPHRASE, P2, P3],
        stdin=demo_token,
    )
    assert prompts == [f"passphrase of {p}" for p in sealed_apart]
    assert status == 0
    assert out == BINARY_SECRET


@pytest.mark.processes
def test_reseal_prompts_for_the_current_and_new_passphrase(demo: Fleet, tmp_path: Path) -> None:
    copy = tmp_path / "node-5.bundle"
    shutil.copyfile(demo.bundle(5), copy)
    status, _, prompts = run_on_terminal(
        "fleet", "reseal", copy, answers=[TEST_PASSPHRASE, "typed-new-passphrase", "nope"]
    )
    assert prompts == [f"passphrase of {copy}", f"passphrase for {copy}", "again"]
    assert status == 1  # typed twice, differently
    status, _, _ = run_on_terminal(
        "fleet",
        "reseal",
        copy,
        answers=[TEST_PASSPHRASE, "typed-new-passphrase", "typed-new-passphrase"],
    )
    assert status == 0
    reopened = reseal(copy, "typed-new-passphrase", TEST_PASSPHRASE)
    assert reopened.returncode == 0, str(reopened)
