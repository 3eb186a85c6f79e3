"""``stratus context``: named connections in the user's config dir, and which setting wins
(flags > environment > current context > defaults)."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from cli import contexts
from cli.main import main

ENV = ("STRATUS_NATS", "STRATUS_NATS_CREDS", "STRATUS_NATS_NKEY_SEED", "STRATUS_NATS_TLS_CA",
       "STRATUS_CONTEXT", "STRATUS_API_TOKEN", "STRATUS_HTTP")  # fmt: skip


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "stratus"


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{sock.getsockname()[1]}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_add_use_list_show_remove(
    config_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = tmp_path / "user.nk"
    seed.write_text("SUA...")
    status, _, err = run(
        capsys, "context", "add", "prod", "--nats", "tls://nats.example:4222",
        "--nkey-seed", str(seed), "--http", "https://stratus.example", "--token", "s3cret",
    )  # fmt: skip
    assert status == 0 and "prod" in err
    assert run(capsys, "context", "add", "lab", "--nats", "nats://lab:4222")[0] == 0
    path = config_home / "contexts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status, out, _ = run(capsys, "context", "list")
    assert [line.split() for line in out.splitlines()] == [
        ["CURRENT", "NAME", "NATS", "HTTP"],
        ["lab", "nats://lab:4222", "-"],
        ["*", "prod", "tls://nats.example:4222", "https://stratus.example"],
    ]  # the first context added is the current one
    assert run(capsys, "context", "use", "lab")[0] == 0
    status, out, _ = run(capsys, "context", "show", "-o", "json")
    assert json.loads(out)["name"] == "lab"
    status, out, _ = run(capsys, "context", "show", "prod")
    assert str(seed.resolve()) in out and "s3cret" not in out  # the token is never shown
    assert run(capsys, "context", "remove", "lab")[0] == 0
    status, out, _ = run(capsys, "context", "list")
    assert "lab" not in out
    status, _, err = run(capsys, "context", "use", "nope")
    assert status == 1 and err.startswith("error: not_found: no context 'nope'")


def test_creds_and_nkey_seed_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["context", "add", "x", "--nats", "nats://h:1", "--creds", "a", "--nkey-seed", "b"])
    assert exc.value.code == 2


def test_flags_beat_environment_beat_context_beat_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from_context, from_env, from_flag = closed_url(), closed_url(), closed_url()

    def tried() -> str:
        status, _, err = run(capsys, *argv)
        assert status == 1
        return err.rsplit(" at ", 1)[1].strip()

    argv: list[str] = ["vm", "list"]
    assert run(capsys, "context", "add", "c", "--nats", from_context)[0] == 0
    assert tried() == from_context
    monkeypatch.setenv("STRATUS_NATS", from_env)
    assert tried() == from_env
    argv = ["vm", "list", "--nats", from_flag]
    assert tried() == from_flag


def test_a_context_is_chosen_per_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = closed_url(), closed_url()
    run(capsys, "context", "add", "one", "--nats", one)
    run(capsys, "context", "add", "two", "--nats", two)
    assert main(["--context", "two", "host", "list"]) == 1
    assert capsys.readouterr().err.strip().endswith(two)
    monkeypatch.setenv("STRATUS_CONTEXT", "two")
    assert main(["host", "list"]) == 1
    assert capsys.readouterr().err.strip().endswith(two)


def test_the_config_dir_follows_xdg(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert contexts.config_dir() == config_home
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert contexts.config_dir() == Path.home() / ".config" / "stratus"
