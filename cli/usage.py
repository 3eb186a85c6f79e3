"""``stratus usage``: the report in the chosen format (table, json or csv). Pure."""

from __future__ import annotations

import csv
import io

from cli import output
from common.usage_messages import UsageReport

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = (
    "since",
    "until",
    "vm",
    "size",
    "hours",
    "held_s",
    "price_per_hour",
    "cost",
)


def to_csv(report: UsageReport) -> str:
    """One line per VM (and size), for a spreadsheet or an invoicing system."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    since, until = report.since.isoformat(), report.until.isoformat()
    for vm in sorted(report.vms, key=lambda vm: (vm.name, vm.size)):
        writer.writerow(
            (since, until, vm.name, vm.size, vm.hours, vm.held_s, vm.price_per_hour, vm.cost)
        )
    return buffer.getvalue().rstrip("\n")


def render(report: UsageReport, fmt: str) -> str:
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return output.to_json(report)
    return output.usage_report(report)
