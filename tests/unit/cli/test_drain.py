"""``stratus host cordon|uncordon|drain HOST [--wait]``: parsing and the progress bar."""

from __future__ import annotations

import io

import pytest

from cli import drain, verbs
from cli.main import build_parser
from cli.waiting import Progress
from common import messages as m
from common.errors import ApiError
from common.resources import Resources


def host(draining: bool, remaining: int) -> m.HostInfo:
    return m.HostInfo(
        host_id="h1",
        state=m.HostState.UP,
        cordoned=True,
        region="local",
        fault_domain="fd-0",
        labels={},
        capacity=Resources(8000, 16384),
        allocated=Resources(),
        vms=remaining,
        fenced=False,
        driver="fake",
        last_heartbeat_age_s=0.1,
        draining=draining,
        drain_remaining=remaining,
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_progress_bar_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress.show("draining h1")
    progress.clear()
    assert out.getvalue() == ""


class Hosts:
    """Answers each list_hosts with the next report."""

    def __init__(self, *reports: m.HostInfo) -> None:
        self.reports = list(reports)

    async def list_hosts(self) -> list[m.HostInfo]:
        return [self.reports.pop(0)] if len(self.reports) > 1 else self.reports[:]


@pytest.mark.parametrize(
    ("argv", "handler", "wait"),
    [
        (["host", "drain", "h1", "--wait", "--timeout", "90"], verbs.host_drain, True),
        (["host", "drain", "h1"], verbs.host_drain, False),
        (["host", "cordon", "h1", "--request-id", "r-1"], verbs.host_cordon, None),
        (["host", "uncordon", "h1"], verbs.host_uncordon, None),
    ],
    ids=["drain-wait", "drain", "cordon", "uncordon"],
)
def test_host_verbs_parse(argv: list[str], handler: object, wait: bool | None) -> None:
    args = build_parser().parse_args(argv)
    assert args.handler is handler and args.host_id == "h1"
    assert getattr(args, "wait", None) is wait
    if wait:
        assert args.timeout_s == 90.0


def test_only_drain_waits() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["host", "cordon", "h1", "--wait"])


def test_progress_bar() -> None:
    assert drain.progress_bar("h1", 0, 4, width=8) == "draining h1 [--------] 0/4 vms moved"
    assert drain.progress_bar("h1", 3, 4, width=8) == "draining h1 [######--] 3/4 vms moved"
    assert drain.progress_bar("h1", 0, 0, width=8) == "draining h1 [########] 0/0 vms moved"


async def test_wait_drained_redraws_until_the_drain_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drain, "POLL_S", 0.0)
    out = Terminal()
    client = Hosts(host(True, 3), host(True, 1), host(False, 0))
    done = await drain.wait_drained(client, host(True, 4), timeout_s=10, progress=Progress(out))
    assert not done.draining
    frames = [f for f in out.getvalue().split("\r") if f.strip()]
    assert [f.split("] ")[1].strip() for f in frames] == [
        "0/4 vms moved",
        "1/4 vms moved",
        "3/4 vms moved",
        "4/4 vms moved",
    ]


async def test_wait_drained_times_out_with_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drain, "POLL_S", 0.0)
    with pytest.raises(ApiError) as stuck:
        await drain.wait_drained(
            Hosts(host(True, 2)), host(True, 2), timeout_s=0, progress=Progress(io.StringIO())
        )
    assert stuck.value.code == "timeout" and "2 vms left" in stuck.value.detail
