"""The report function's runtime: its settings, its clients, and one run (build a period's report, publish it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from healthbook.aws import reports
from healthbook.aws.settings import ReportSettings, client, dynamodb_table
from healthbook.reports.job import period_for


@dataclass
class ReportRuntime:
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _settings: ReportSettings | None = None

    @property
    def settings(self) -> ReportSettings:
        self._settings = self._settings or ReportSettings.from_env(self.env)
        return self._settings

    def run(self, event: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """The period the event names (a schedule's kind, or a re-run's period), built and written; what was
        written. Re-running a period replaces its files."""
        period = period_for(event, now)
        settings = self.settings
        counters = reports.DynamoCounters(client("dynamodb", connections=reports.READERS), settings.aggregates_table,
                                          submissions_table=settings.submissions_table,
                                          visits_table=settings.visits_table, now=now)
        report = reports.build(period, counters=counters, facilities_table=dynamodb_table(settings.facilities_table),
                               generated_at=now)
        keys = reports.publish(report, s3=client("s3"), bucket=settings.reports_bucket)
        return {"period": period.label, "kind": period.kind, "rows": len(report.rows), "objects": keys,
                "days_read_by_item": counters.days_read_by_item, "days_rolled_up": counters.days_rolled_up}
