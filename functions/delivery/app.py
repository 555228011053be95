"""Delivery functions: the task states of the delivery workflow (infra/statemachine/delivery.asl.json) and
the sweep that restarts it.

One module, five handlers, five functions in template.yaml (each with only the permissions its step needs):

    reconcile_handler   {visit_id, version}                              -> MATCHED | NEEDS_RECONCILIATION | SKIPPED
    project_handler     {visit_id, version}                              -> PROJECTED (projection_key) | SKIPPED
    deliver_handler     {visit_id, version, citizen_key, projection_key} -> DELIVERED | SUPERSEDED | SKIPPED
    settle_handler      {visit_id, version, error}                       -> DEFERRED | DEADLINE_BREACHED | SKIPPED
                        {results: [...]}                                 -> the execution's summary
    sweep_handler       (EventBridge schedule, or invoked by hand)       -> claimed, executions, breached

Thin on purpose: the logic is healthbook.delivery, the data access healthbook.aws. An exception leaves the
handler with its class name as the Lambda errorType, which the state machine's Retry and Catch match
(RetryableDeliveryError, PopulationUnavailable). Logs carry visit ids and codes, never personal data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.delivery_runtime import DeliveryRuntime
from healthbook.aws.observability import PowertoolsMetrics
from healthbook.delivery import VisitRef, summarise

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "healthbook-delivery")
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
    """Forget clients and secrets (tests: a new moto account per test)."""
    global _runtime
    _runtime = None


@contextmanager
def _step() -> Iterator[None]:
    """Count a step that raises (the state machine retries or settles it), then let it raise."""
    try:
        yield
    except Exception as exc:
        metrics.add_metric(name="DeliveryStepFailures", unit=MetricUnit.Count, value=1)
        logger.warning("step failed", extra={"error": type(exc).__name__})
        raise


def _visit(event: dict[str, Any]) -> VisitRef:
    ref = VisitRef.from_event(event)
    logger.append_keys(visit_id=ref.visit_id, version=ref.version)
    return ref


# Outcomes the domain does not count itself (it counts deliveries, deferrals, breaches, reconciliations).
_STEP_METRICS = {"MATCHED": "VisitsMatched", "PROJECTED": "VisitsProjected", "SKIPPED": "DeliveryStepsSkipped",
                 "SUPERSEDED": "VisitsSupersededAtVneid", "NEEDS_RECONCILIATION": "VisitsNeedingReconciliation"}


def _done(result: dict[str, Any]) -> dict[str, Any]:
    name = _STEP_METRICS.get(str(result.get("outcome")))
    if name:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info(f"visit {str(result.get('outcome', '')).lower()}",
                extra={k: v for k, v in result.items() if k not in ("visit_id", "citizen_key")})
    return result


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def reconcile_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with _step():
        return _done(runtime().service(reconcile=True).reconcile(_visit(event)))


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def project_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with _step():
        return _done(runtime().service(project=True).project(_visit(event)))


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def deliver_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    ref = _visit(event)
    with _step():
        return _done(runtime().service(deliver=True).deliver(
            ref, citizen_key=str(event["citizen_key"]), projection_key=str(event["projection_key"])))


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def settle_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "results" in event:  # once per execution, after the Map
        summary = summarise(event.get("results") or [])
        metrics.add_metric(name="DeliveryExecutions", unit=MetricUnit.Count, value=1)
        logger.info("delivery execution summary", extra={"counts": summary["counts"],
                                                         "breached_count": summary["breached_count"]})
        return summary
    with _step():
        return _done(runtime().service().settle(_visit(event), event.get("error")))


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def sweep_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Claim due PENDING visits, start executions of 50, breach what is past its deadline (delivery.Sweeper)."""
    now = datetime.now(UTC)
    # Unique per run: two sweeps may start in the same second (a schedule and an operator).
    report = runtime().sweeper().sweep(now, run_name=f"sweep-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}")
    metrics.add_metric(name="SweepClaimed", unit=MetricUnit.Count, value=report.claimed)
    metrics.add_metric(name="SweepExecutions", unit=MetricUnit.Count, value=report.executions)
    result = report.to_dict()
    logger.info("sweep done", extra=result)
    return result
