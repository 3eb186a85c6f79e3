"""``stratus vm migrate NAME [--to HOST] [--wait]``, ``vm migrate-cancel`` and ``host drain
--cold``: parsing, progress lines, how a wait ends, and how ``vm list`` shows a move."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from cli import migrate, output, verbs
from cli.main import build_parser
from cli.waiting import Progress
from common import messages as m
from common.errors import ApiError
from common.migration_messages import MigrationCause, MigrationInfo, MigrationPhase

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def moving(phase: MigrationPhase, done_mib: int = 0, total_mib: int = 0) -> MigrationInfo:
    return MigrationInfo(
        source="h1",
        target="h2",
        attempt=2,
        cause=MigrationCause.REQUEST,
        phase=phase,
        started_at=T0,
        transferred_mib=done_mib,
        total_mib=total_mib,
    )


def vm(host: str, generation: int, migration: MigrationInfo | None, reason: str = "") -> m.VmInfo:
    return m.VmInfo(
        name="web-1",
        size="Small",
        cpu_milli=1000,
        mem_mib=1792,
        image="tiny",
        region=None,
        availability_set=None,
        state=m.VmState.RUNNING,
        host=host,
        generation=generation,
        reason=reason,
        created_at=T0,
        updated_at=T0,
        migration=migration,
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Vms:
    """Answers each get_vm with the next report (the last one over and over)."""

    def __init__(self, *reports: m.VmInfo) -> None:
        self.reports = list(reports)

    async def get_vm(self, name: str) -> m.VmInfo:
        return self.reports.pop(0) if len(self.reports) > 1 else self.reports[0]


@pytest.mark.parametrize(
    ("argv", "handler", "to", "wait"),
    [
        (["vm", "migrate", "web-1"], verbs.vm_migrate, None, False),
        (["vm", "migrate", "web-1", "--to", "h2", "--wait"], verbs.vm_migrate, "h2", True),
        (["vm", "migrate-cancel", "web-1"], verbs.vm_migrate_cancel, None, None),
    ],
    ids=["migrate", "migrate-to-wait", "cancel"],
)
def test_migrate_verbs_parse(
    argv: list[str], handler: object, to: str | None, wait: object
) -> None:
    args = build_parser().parse_args(argv)
    assert args.handler is handler and args.name == "web-1"
    assert getattr(args, "to", None) == to
    assert getattr(args, "wait", None) is wait


def test_a_drain_is_live_unless_cold() -> None:
    assert build_parser().parse_args(["host", "drain", "h1"]).cold is False
    assert build_parser().parse_args(["host", "drain", "h1", "--cold"]).cold is True


def test_progress_lines_say_the_phase_and_the_bytes() -> None:
    assert migrate.progress_line("web-1", moving(MigrationPhase.PREPARING), 0.5) == (
        "web-1: preparing to h2 0.5s"
    )
    assert migrate.progress_line("web-1", moving(MigrationPhase.COPYING, 40, 128), 2.4) == (
        "web-1: copying to h2 40/128 MiB (31%) 2.4s"
    )


async def test_wait_migrated_shows_progress_until_the_vm_runs_on_its_new_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(migrate, "POLL_S", 0.0)
    out = Terminal()
    client = Vms(
        vm("h1", 1, moving(MigrationPhase.COPYING, 64, 128)),
        vm("h2", 2, moving(MigrationPhase.SWITCHING, 128, 128)),
        vm("h2", 2, None, "migrated from h1 to h2 (request)"),
    )
    started = vm("h1", 1, moving(MigrationPhase.PREPARING))
    done = await migrate.wait_migrated(client, started, timeout_s=10, progress=Progress(out))
    assert (done.host, done.generation) == ("h2", 2)
    frames = [f.strip() for f in out.getvalue().split("\r") if f.strip()]
    assert [f.rsplit(" ", 1)[0] for f in frames if f.startswith("web-1")] == [
        "web-1: preparing to h2",
        "web-1: copying to h2 64/128 MiB (50%)",
        "web-1: switching to h2 128/128 MiB (100%)",
    ]


async def test_a_failed_migration_ends_the_wait_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(migrate, "POLL_S", 0.0)
    why = "migration to h2 failed: connection reset; the vm stays on h1"
    client = Vms(vm("h1", 1, None, why))
    with pytest.raises(ApiError) as failed:
        await migrate.wait_migrated(
            client, vm("h1", 1, moving(MigrationPhase.COPYING)), 10, Progress(io.StringIO())
        )
    assert failed.value.code == "failed" and why in failed.value.detail


def test_vm_list_shows_a_migration_under_way() -> None:
    table = output.vm_table([vm("h1", 1, moving(MigrationPhase.COPYING))])
    assert "running,migrating(copying->h2)" in table
    assert "migrating" not in output.vm_table([vm("h2", 2, None)])
