"""Sweep function: every few minutes (an EventBridge schedule), restart the delivery of due PENDING visits.

It claims visits whose ``next_attempt_at`` has come, starts one Express execution of the delivery workflow per
50 of them, and marks DEADLINE_BREACHED (with one SNS message) any visit still PENDING past its deadline. It
can also be invoked directly (the tests and ops do: ``aws lambda invoke``). Logic: healthbook.delivery.Sweeper.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.delivery_runtime import DeliveryRuntime
from healthbook.aws.observability import PowertoolsMetrics

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "healthbook-sweep")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Healthbook")

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)

_runtime: DeliveryRuntime | None = None


def runtime() -> DeliveryRuntime:
    global _runtime
    if _runtime is None:
        _runtime = DeliveryRuntime(metrics=PowertoolsMetrics(metrics, namespace=NAMESPACE, service=SERVICE))
    return _runtime


def reset() -> None:
    global _runtime
    _runtime = None


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    now = datetime.now(UTC)
    report = runtime().sweeper().sweep(now, run_name=f"sweep-{now:%Y%m%dT%H%M%S}-{context.aws_request_id[:8]}")
    metrics.add_metric(name="SweepClaimed", unit=MetricUnit.Count, value=report.claimed)
    metrics.add_metric(name="SweepExecutions", unit=MetricUnit.Count, value=report.executions)
    result = report.to_dict()
    logger.info("sweep done", extra=result)
    return result
