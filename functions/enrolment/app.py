"""Enrolment functions: the three Lambda steps of the enrolment workflow (infra/statemachine/enrolment.asl.json,
docs/enrolment.md "On AWS"), which turns a province's list of residents, or of vaccinations, uploaded under
imports/<province>/<kind>/, into health books in VNeID. One module, three handlers, three functions in
template.yaml, each with only the permissions its step needs:

    prepare_handler     {"bucket", "object"} (S3's event)   -> PREPARED (keys, counts, the Map's shape) | REFUSED
    batch_handler       {"Items", "BatchInput"} (ItemBatcher) -> row numbers, outcome codes, masked ids
    summarise_handler   Prepare's result + the Map's         -> the outcome files; personal data erased

The contracts and the wiring are healthbook.aws.enrolment_runtime; the use cases healthbook.enrolment. Logs carry
list ids, keys and counts, never a row.
"""

from __future__ import annotations

import gc

gc.disable()  # while the modules load: collecting between them is a tenth of the cold start

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.enrolment_runtime import EnrolmentRuntime
from healthbook.aws.observability import PowertoolsMetrics, service

SERVICE, NAMESPACE = service("healthbook-enrolment")
logger, tracer = Logger(service=SERVICE), Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
port = PowertoolsMetrics(metrics, namespace=NAMESPACE, service=SERVICE)
_runtime: EnrolmentRuntime | None = None
gc.freeze()  # what the cold start built lives as long as the process: collections need not walk it
gc.enable()


def runtime() -> EnrolmentRuntime:
    global _runtime
    _runtime = _runtime or EnrolmentRuntime(metrics=port)
    return _runtime


def reset() -> None:
    """Forget clients, settings, secrets and rate limits (tests: a new moto account per test)."""
    global _runtime
    _runtime = None


def handler(function: Any) -> Any:
    traced = tracer.capture_lambda_handler(capture_response=False)(function)  # results hold masked ids: not traced
    return metrics.log_metrics(logger.inject_lambda_context(clear_state=True, log_event=False)(traced))


@handler
def prepare_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = runtime().prepare(event).model_dump()
    logger.info(f"list {result['status'].lower()}", extra=result)
    return result


@handler
def batch_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = runtime().batch(event)
    logger.info("batch done", extra={"list_id": result.list_id, "counts": result.counts})
    return result.model_dump()


@handler
def summarise_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = runtime().summarise(event).model_dump()
    logger.info(f"list {result['status'].lower()}", extra=result)
    return result
