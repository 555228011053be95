"""Report function: builds one period's report from the aggregates and writes its files to the reports bucket.

    {"kind": "day" | "month" | "half"}   the schedules: the last complete period, Vietnam calendar
    {"period": "2025-03"}                a re-run by hand (also "2025-03-14", "2025-H1"): replaces its files

The report is healthbook.reports, the run healthbook.aws.report_runtime. A failure counts ReportFailures and
raises, so Lambda's Errors and the alarm see it and the Scheduler retries.
"""

from __future__ import annotations

import gc

gc.disable()  # while the modules load: collecting between them is a tenth of the cold start

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.observability import PowertoolsMetrics, service
from healthbook.aws.report_runtime import ReportRuntime

SERVICE, NAMESPACE = service("healthbook-report")
logger, tracer = Logger(service=SERVICE), Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
port = PowertoolsMetrics(metrics, namespace=NAMESPACE, service=SERVICE)
runtime = ReportRuntime()
gc.freeze()  # what the cold start built lives as long as the process: collections need not walk it
gc.enable()


def reset() -> None:
    """Forget the settings (tests: a new environment per test)."""
    global runtime
    runtime = ReportRuntime()


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        result = runtime.run(event, datetime.now(UTC))
    except Exception:
        port.count("ReportFailures")
        logger.exception("report failed", extra={"event": {k: event.get(k) for k in ("kind", "period")}})
        raise
    port.count("ReportsBuilt")
    logger.info("report written", extra=result)
    return result
