"""``stratus nats-config``: keys per role and host, permissions, file modes (no server needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cli.main import main
from cli.natsconfig import generate, public_key, role_permissions
from common import subjects
from common.errors import ConfigError
from scheduler.shell.api import MUTATIONS, is_read
from tests.unit.test_api_parity import api_subjects


def test_writes_a_seed_per_role_and_host_readable_only_by_the_owner(tmp_path: Path) -> None:
    config = generate(tmp_path, ["h1", "h2"])
    seeds = sorted(p.name for p in (tmp_path / "nkeys").iterdir())
    assert seeds == [
        "admin.nk",
        "dashboard.nk",
        "host-h1.nk",
        "host-h2.nk",
        "publisher.nk",
        "scheduler.nk",
    ]
    text = config.read_text()
    for path in (tmp_path / "nkeys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        seed = path.read_bytes().strip()
        assert seed.startswith(b"SU")
        assert seed.decode() not in text  # the config holds public keys only
        assert public_key(seed) in text


def test_existing_keys_are_kept_when_a_host_is_added(tmp_path: Path) -> None:
    generate(tmp_path, ["h1"])
    before = (tmp_path / "nkeys" / "host-h1.nk").read_bytes()
    generate(tmp_path, ["h1", "h2"])
    assert (tmp_path / "nkeys" / "host-h1.nk").read_bytes() == before
    assert (tmp_path / "nkeys" / "host-h2.nk").exists()


def test_an_agent_may_use_only_its_own_host_subjects() -> None:
    perms = role_permissions("host-h1")
    stratus = [s for s in perms.publish + perms.subscribe if s.startswith("stratus.")]
    assert sorted(stratus) == [
        "stratus.console.h1.*.in",
        "stratus.console.h1.*.out",
        "stratus.console.h1.*.tail",
        "stratus.host.h1.captured",
        "stratus.host.h1.cmd",
        "stratus.host.h1.hb",
    ]
    assert perms.subscribe == [
        "stratus.host.h1.cmd",
        "_INBOX_h1.>",
        "stratus.console.h1.*.tail",
        "stratus.console.h1.*.in",
    ]
    assert perms.publish[2] == "stratus.console.h1.*.out"  # output of its own VMs only
    assert perms.allow_responses  # answers console requests, in the requester's inbox only
    assert all(s != ">" for s in perms.publish + perms.subscribe)


def test_dashboard_and_publisher_never_touch_hosts_or_publish_events() -> None:
    for role in ("dashboard", "publisher"):
        perms = role_permissions(role)
        assert not [s for s in perms.publish if s.startswith(("stratus.host", "stratus.events"))]
    assert "stratus.api.vm.create" not in role_permissions("dashboard").publish


def test_dashboards_read_every_read_only_subject_and_change_nothing() -> None:
    """Every read-only API subject (those the scheduler answers at once from its read view) is
    a dashboard's, and no mutation is (networks included)."""
    allowed = set(role_permissions("dashboard").publish)
    reads = {s for s in api_subjects() if is_read(s)} | {subjects.USAGE_GET}
    assert reads <= allowed, reads - allowed
    assert not set(MUTATIONS) & allowed


def test_bad_host_ids_and_unknown_roles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate(tmp_path, ["bad.host"])
    with pytest.raises(ConfigError):
        role_permissions("root")


def test_the_command_writes_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nats-config", "--out", str(tmp_path), "--host", "h1"]) == 0
    assert (tmp_path / "nats-server.conf").exists()
    assert "nats-server -js -c" in capsys.readouterr().out


def test_only_the_scheduler_writes_the_lease_the_state_log_and_its_snapshots() -> None:
    writes = ["$KV.STRATUS_LEADER.>", "stratus.state.log", "$O.STRATUS_STATE_SNAP.>"]
    admin = role_permissions("admin")
    assert set(writes) <= set(admin.deny_publish)
    assert "$JS.API.STREAM.PURGE.STRATUS_STATE" in admin.deny_publish
    assert "$JS.API.STREAM.INFO.STRATUS_STATE" not in admin.deny_publish  # reading is fine
    assert role_permissions("scheduler").deny_publish == ()
    for role in ("publisher", "dashboard", "host-h1"):
        allowed = role_permissions(role).publish
        assert ">" not in allowed and not set(writes) & set(allowed)


def test_the_admin_deny_list_is_in_the_rendered_config(tmp_path: Path) -> None:
    text = generate(tmp_path, []).read_text()
    assert 'deny: ["$KV.STRATUS_LEADER.>", "stratus.state.log"' in text
