"""What a report run reports and where its files go. Pure: the adapters read the counters and write the files."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, get_args

from healthbook.kernel import PORTAL_TZ
from healthbook.reports.model import Period, PeriodKind


def period_for(event: Mapping[str, Any], now: datetime) -> Period:
    """``{"period": "2025-03"}`` (a re-run, by hand) or ``{"kind": "day"|"month"|"half"}`` (the schedules: the
    last complete period on Vietnam's calendar at ``now``). ValueError for anything else."""
    if isinstance(event.get("period"), str):
        return Period.parse(event["period"])
    kind = event.get("kind")
    for known in get_args(PeriodKind):
        if kind == known:
            return Period.last_complete(known, now.astimezone(PORTAL_TZ).date())
    raise ValueError('expected {"period": "YYYY-MM[-DD]" | "YYYY-H1|H2"} or {"kind": "day" | "month" | "half"}')


def report_prefix(period: Period) -> str:
    """One folder per period: re-running a period replaces its files (same keys), nothing else."""
    return f"reports/{period.kind}/{period.label}/"
