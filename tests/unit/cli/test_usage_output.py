"""``stratus usage`` output: csv for spreadsheets, json, and the table."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

from cli.main import build_parser
from cli.usage import CSV_COLUMNS, render, to_csv
from common.usage_messages import SizeUsage, UsageReport, VmUsage

REPORT = UsageReport(
    since=datetime(2026, 3, 1, tzinfo=UTC),
    until=datetime(2026, 3, 1, 2, tzinfo=UTC),
    vms=[
        VmUsage(name="web-2", size="Large", held_s=5400, hours=2, price_per_hour=0.24, cost=0.48),
        VmUsage(name="web-1", size="Small", held_s=60, hours=1, price_per_hour=0.06, cost=0.06),
    ],
    sizes=[
        SizeUsage(size="Large", vms=1, held_s=5400, hours=2, price_per_hour=0.24, cost=0.48),
        SizeUsage(size="Small", vms=1, held_s=60, hours=1, price_per_hour=0.06, cost=0.06),
    ],
    hours=3,
    cost=0.54,
)


def test_csv_has_a_header_and_one_row_per_vm_sorted() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(REPORT))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row[2:5] for row in rows[1:]] == [["web-1", "Small", "1"], ["web-2", "Large", "2"]]
    assert rows[1][0] == "2026-03-01T00:00:00+00:00" and rows[2][-1] == "0.48"


def test_json_and_table_formats() -> None:
    assert json.loads(render(REPORT, "json"))["cost"] == 0.54
    table = render(REPORT, "table")
    assert "web-2" in table and "total: 3 hours" in table


def test_usage_accepts_csv_while_other_commands_keep_table_and_json() -> None:
    parser = build_parser()
    args = parser.parse_args(["usage", "--output", "csv", "--since", "2026-03-01T00:00Z"])
    assert args.output == "csv" and args.since == datetime(2026, 3, 1, tzinfo=UTC)
    assert parser.parse_args(["usage"]).output == "table"
