"""An ack renews the lease only for a heartbeat sent within the last interval: any of those
(not only the latest) is matched by its seq; one sent longer ago, or a seq never sent, is not."""

from __future__ import annotations

from msgspec.structs import replace

from hostagent.report import SentReports
from tests.unit.hostagent.conftest import TEMPLATE, ack_for

WINDOW_S = 1.0


def sent_at(reports: SentReports, *times_s: float) -> None:
    for at_s in times_s:
        reports.seq += 1
        reports.sent(replace(TEMPLATE, seq=reports.seq), at_s, WINDOW_S)


def matched(reports: SentReports, seq: int, now_s: float) -> float | None:
    sent = reports.match(ack_for(replace(TEMPLATE, seq=seq)), now_s, WINDOW_S)
    return None if sent is None else sent.sent_at_s


def test_acks_match_the_heartbeats_sent_within_the_interval() -> None:
    reports = SentReports()
    sent_at(reports, 10.0, 10.3, 10.6, 11.2)  # seq 1 is out of the window once seq 4 goes
    assert matched(reports, 4, 11.3) == 11.2
    assert matched(reports, 2, 11.25) == 10.3  # an older one still in the window
    assert matched(reports, 1, 11.3) is None  # sent too long before the last one
    assert matched(reports, 3, 11.7) is None  # its ack comes too late
    assert matched(reports, 9, 11.3) is None  # never sent
