"""Report function: builds one period's report from the aggregates and writes its files to the reports bucket.

    {"kind": "day" | "month" | "half"}   the schedules: the last complete period, Vietnam calendar
    {"period": "2025-03"}                a re-run by hand (also "2025-03-14", "2025-H1"): replaces its files

Thin on purpose: the report is healthbook.reports, the data access healthbook.aws.reports. A failure counts
ReportFailures and raises, so Lambda's Errors and the alarm see it and the Scheduler retries.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws import reports
from healthbook.aws.settings import client, dynamodb_table
from healthbook.reports.job import period_for

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "healthbook-report")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Healthbook")

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    now = datetime.now(UTC)
    try:
        period = period_for(event, now)
        report = reports.build(period, dynamodb=client("dynamodb"), aggregates_table=os.environ["AGGREGATES_TABLE"],
                               facilities_table=dynamodb_table(os.environ["FACILITIES_TABLE"]), generated_at=now)
        keys = reports.publish(report, s3=client("s3"), bucket=os.environ["REPORTS_BUCKET"])
    except Exception:
        metrics.add_metric(name="ReportFailures", unit=MetricUnit.Count, value=1)
        logger.exception("report failed", extra={"event": {k: event.get(k) for k in ("kind", "period")}})
        raise
    metrics.add_metric(name="ReportsBuilt", unit=MetricUnit.Count, value=1)
    result = {"period": period.label, "kind": period.kind, "rows": len(report.rows), "objects": keys}
    logger.info("report written", extra=result)
    return result
