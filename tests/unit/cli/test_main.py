"""Argument parsing and error handling of the ``stratus`` command line (no NATS needed)."""

from __future__ import annotations

import importlib.metadata
import json
import socket
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cli import contexts, main as cli_main, verbs
from cli.main import DISTRIBUTION, build_parser, main
from common.spec_messages import DiskStorage


def parse(*argv: str) -> dict[str, object]:
    args, extra = build_parser().parse_known_args(list(argv))
    assert extra == []
    return vars(args)


def test_global_options_default_to_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("STRATUS_NATS", "nats://example:4333")
    args = build_parser().parse_args(["vm", "list"])
    assert contexts.connection(args).nats == "nats://example:4333"
    assert args.output == "table"
    assert args.timeout_s is None


def test_global_options_default_without_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("STRATUS_NATS", raising=False)
    args = build_parser().parse_args(["host", "list"])
    assert contexts.connection(args).nats == "nats://127.0.0.1:4222"


@pytest.mark.parametrize(
    "argv",
    [
        ("--nats", "nats://h:1", "--output", "json", "--timeout", "3", "vm", "list"),
        ("vm", "list", "--nats", "nats://h:1", "-o", "json", "--timeout", "3"),
    ],
    ids=["before", "after"],
)
def test_global_options_before_or_after_the_command(argv: tuple[str, ...]) -> None:
    args = parse(*argv)
    assert (args["nats"], args["output"], args["timeout_s"]) == ("nats://h:1", "json", 3.0)


def test_vm_create_options() -> None:
    args = parse(
        "vm", "create", "web-1", "--size", "Small", "--region", "west",
        "--availability-set", "web", "--request-id", "r1", "--wait", "--timeout", "30",
    )  # fmt: skip
    assert args["name"] == "web-1"
    assert args["size"] == "Small"
    assert args["image"] == "tiny"
    assert args["region"] == "west"
    assert args["availability_set"] == "web"
    assert args["request_id"] == "r1"
    assert args["wait"] is True
    assert args["timeout_s"] == 30.0
    assert args["handler"] is verbs.vm_create


def test_vm_list_filters() -> None:
    args = parse("vm", "list", "--state", "running", "--host", "host-2", "--region", "r")
    assert (args["state"], args["host"], args["region"]) == ("running", "host-2", "r")


@pytest.mark.parametrize("verb", ["show", "stop", "start", "delete"])
def test_vm_verbs_take_a_name(verb: str) -> None:
    assert parse("vm", verb, "db-1")["name"] == "db-1"


@pytest.mark.parametrize("verb", ["cordon", "uncordon", "drain"])
def test_host_verbs_take_a_host(verb: str) -> None:
    assert parse("host", verb, "host-3")["host_id"] == "host-3"


def test_up_defaults() -> None:
    args = parse("up")
    assert args["hosts"] == 3
    assert args["driver"] == "fake"
    assert args["capacity"] == "16c/64g"
    assert args["nats_port"] is None


@pytest.mark.parametrize(
    "argv",
    [
        ["vm", "create", "web-1"],  # --size is required
        ["vm", "list", "--state", "sleeping"],
        ["vm"],
        ["vm", "list", "--bogus"],
        ["bogus"],
        [],
    ],
    ids=["no-size", "bad-state", "no-verb", "unknown-option", "unknown-command", "nothing"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["scheduler", "agent"])
def test_daemons_get_the_rest_of_argv(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str]]] = []

    def fake_delegate(name: str, argv: list[str]) -> int:
        seen.append((name, argv))
        return 7

    monkeypatch.setattr(cli_main, "_delegate", fake_delegate)
    argv = ["--nats", "nats://x:1", "--config", "f.toml", "--help", "pos"]
    assert main([command, *argv]) == 7
    assert seen == [(command, argv)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_nats_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    assert main(["--nats", url, "vm", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: unavailable: cannot connect to NATS at {url}\n"


def test_usage_times_are_zone_aware() -> None:
    args = parse("usage", "--since", "2025-01-01T00:00:00+02:00", "--until", "2025-01-02")
    since, until = args["since"], args["until"]
    assert isinstance(since, datetime) and isinstance(until, datetime)
    assert since.utcoffset() == timedelta(hours=2)
    assert until.tzinfo is not None


def test_usage_rejects_bad_times(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["usage", "--since", "yesterday"])
    assert exc.value.code == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err


def test_up_drivers_come_from_the_agent_config() -> None:
    assert "fake" in cli_main.DRIVERS
    assert parse("up", "--driver", "fake", "--agent-config", "a.toml")["agent_config"] == "a.toml"


def test_storage_commands(tmp_path: Path) -> None:
    image_file = tmp_path / "disk.qcow2"
    image_file.write_bytes(b"QFI\xfb")
    args = parse("image", "upload", str(image_file), "--name", "base", "--os", "linux")
    assert (args["file"], args["name"], args["os"]) == (image_file, "base", "linux")
    assert parse("image", "delete", "base")["name"] == "base"
    assert parse("vm", "capture", "web-1", "--image", "snap")["image"] == "snap"
    assert parse("disk", "attach", "web-1", "--size-mib", "512")["size_mib"] == 512
    assert parse("disk", "detach", "web-1", "web-1-d2")["disk_id"] == "web-1-d2"


def test_image_upload_needs_an_existing_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["image", "upload", "/no/such/file", "--name", "x"])
    assert exc.value.code == 2
    assert "no such file" in capsys.readouterr().err


def test_version_names_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"stratus {importlib.metadata.version(DISTRIBUTION)}"


@pytest.mark.parametrize(
    "argv",
    [
        ("disk", "attach", "web-1", "--size", "1G"),
        ("disk", "attach", "web-1", "--size", "1024M"),
        ("disk", "attach", "web-1", "--size", "1024"),
        ("disk", "attach", "web-1", "--size-mib", "1024"),
    ],
    ids=["G", "M", "plain", "size-mib-alias"],
)
def test_disk_attach_takes_the_same_size_syntax_as_create(argv: tuple[str, ...]) -> None:
    assert parse(*argv)["size_mib"] == 1024
    assert parse("vm", "create", "w", "--size", "Small", "--data-disk", argv[-1])["data_disk"] == [
        1024
    ]


def test_disk_attach_needs_a_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["disk", "attach", "web-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--size" in err and "--size-mib" not in err


def test_disk_attach_help_shows_one_size_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["disk", "attach", "--help"])
    out = capsys.readouterr().out
    assert "--size SIZE" in out and "--size-mib" not in out


@pytest.mark.parametrize(
    "argv", [("vm", "create", "Web_1", "--size", "Small"), ("vm", "show", "a.b")]
)
def test_bad_vm_names_are_explained_before_anything_is_sent(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lowercase letters, digits and '-'" in err and "^[a-z" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_errors_are_json_under_output_json(where: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    opts = ["-o", "json", "--nats", url]
    argv = [*opts, "vm", "list"] if where == "before" else ["vm", "list", *opts]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err) == {
        "error": {"code": "unavailable", "detail": f"cannot connect to NATS at {url}"}
    }


def test_usage_errors_are_json_under_output_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["vm", "create", "Web_1", "--size", "Small", "--output=json"])
    assert exc.value.code == 2
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["code"] == "usage" and "lowercase letters" in error["detail"]


@pytest.mark.parametrize(
    ("given", "storage"),
    [
        (["--storage", "replicated"], DiskStorage.REPLICATED),
        (["--storage", "host-local"], DiskStorage.HOST_LOCAL),
        ([], None),
    ],
    ids=["replicated", "host-local", "default"],
)
def test_vm_create_takes_a_storage_kind(given: list[str], storage: DiskStorage | None) -> None:
    assert parse("vm", "create", "w", "--size", "Small", *given)["storage"] == storage


def test_vm_create_refuses_an_unknown_storage_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["vm", "create", "w", "--size", "Small", "--storage", "ceph"])
    assert exc.value.code == 2
    assert "not a storage kind" in capsys.readouterr().err
