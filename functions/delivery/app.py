"""Delivery functions: the task states of the delivery workflow (infra/statemachine/delivery.asl.json) and the
sweep that restarts it. One module, three handlers, three functions in template.yaml, each with only the
permissions its step needs:

    deliver_handler     BatchInput                  -> BatchResult: for each visit DELIVERED | SUPERSEDED |
                                                       NEEDS_RECONCILIATION | SKIPPED (matches the citizen,
                                                       builds the entry itself; the batch's visits at once)
    settle_handler      SettleInput                 -> BatchResult: for each visit DEFERRED | DEADLINE_BREACHED |
                                                       SKIPPED
                        SummariseInput              -> Summary (once per execution)
    sweep_handler       (EventBridge schedule)      -> claimed, executions, breached

The contracts are healthbook.delivery.contracts; the use cases healthbook.delivery.service, built by
healthbook.aws.delivery_runtime from each function's settings. Logs carry visit ids and codes, never personal
data.
"""

from __future__ import annotations

import gc

gc.disable()  # while the modules load: collecting between them is a tenth of the cold start

import uuid
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.delivery_runtime import DeliveryRuntime, retried_without_frames, run_batch
from healthbook.aws.observability import PowertoolsMetrics, lean_lines, service
from healthbook.delivery.contracts import BatchInput, SettleInput, SummariseInput
from healthbook.delivery.service import summarise

SERVICE, NAMESPACE = service("healthbook-delivery")
# Lines a visit attempt, more during an outage: no "location", the context's implied keys removed (docs/cost.md).
logger, tracer = Logger(service=SERVICE, location=None), Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
port = PowertoolsMetrics(metrics, namespace=NAMESPACE, service=SERVICE)
_runtime: DeliveryRuntime | None = None
gc.freeze()  # what the cold start built lives as long as the process: collections need not walk it
gc.enable()


def runtime() -> DeliveryRuntime:
    global _runtime
    _runtime = _runtime or DeliveryRuntime(metrics=port)
    return _runtime


def reset() -> None:
    """Forget clients, settings and secrets (tests: a new moto account per test)."""
    global _runtime
    _runtime = None


def handler(function: Any) -> Any:
    return retried_without_frames(metrics.log_metrics(logger.inject_lambda_context(clear_state=True)(
        tracer.capture_lambda_handler(lean_lines(logger)(function)))))


@handler
def deliver_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    deliver = runtime().deliver()
    return run_batch(BatchInput, event, lambda _, visit: deliver(visit.ref), logger=logger, metrics=port)


@handler
def settle_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "results" in event:  # once per execution, after the Map
        summary = summarise(SummariseInput.model_validate(event).results)
        port.count("DeliveryExecutions")
        logger.info("delivery execution summary", extra={"counts": summary.counts,
                                                         "breached_count": summary.breached_count})
        return summary.to_event()
    settle = runtime().settle()
    return run_batch(SettleInput, event, lambda batch, visit: settle(visit.ref, batch.error), logger=logger,
                     metrics=port)


@handler
def sweep_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Claim due PENDING visits, start executions of 50, breach what is past its deadline (delivery.Sweeper)."""
    now = datetime.now(UTC)
    # Unique per run: two sweeps may start in the same second (a schedule and an operator).
    report = runtime().sweeper().sweep(now, run_name=f"sweep-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}",
                                       time_left_ms=context.get_remaining_time_in_millis)
    port.count("SweepClaimed", report.claimed)
    port.count("SweepExecutions", report.executions)
    result = report.to_dict()
    logger.info("sweep done", extra=result)
    return result
