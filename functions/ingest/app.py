"""Ingest function: an SQS batch of S3 "object created" notifications; every object examined, each window's
receipts signed with one KMS Sign, every object recorded (docs/ingest.md).

Thin on purpose: this module is the Powertools decoration (logs, metrics, traces), adapts the event and keeps
the runtime; healthbook.aws.ingest_runtime parses the messages, runs the batch's phases, wires the service from
the environment and logs and counts each outcome; healthbook.ingest is the logic. A record whose processing
raises (a poison message, throttling, KMS or S3 trouble) is reported in batchItemFailures, so SQS retries only
that message and, after maxReceiveCount, moves it to the DLQ. A defective *file* never raises: it gets a receipt.

Logs carry correlation keys only (submission_id, facility, s3_key, SQS message id) and never a name, an ID
or card number, or the records themselves. docs/ingest.md describes the flow, metrics and operations.
"""

from __future__ import annotations

import gc

gc.disable()  # while the modules load: collecting between them is a tenth of the cold start

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.ingest_runtime import IngestRuntime
from healthbook.aws.observability import PowertoolsMetrics, lean_lines, service

if TYPE_CHECKING:  # the response's type only: the batch utility itself is not used
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

SERVICE, NAMESPACE = service("healthbook-ingest")
# A line per file at national volume: no "location" (the line's message says where it comes from), and of the
# Lambda context only the request id and cold start (lean_lines): docs/cost.md, row 23.
logger, tracer = Logger(service=SERVICE, location=None), Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
port = PowertoolsMetrics(metrics, namespace=NAMESPACE, service=SERVICE)
_runtime: IngestRuntime | None = None
gc.freeze()  # what the cold start built lives as long as the process: collections need not walk it
gc.enable()


def runtime() -> IngestRuntime:
    global _runtime
    _runtime = _runtime or IngestRuntime(logger=logger, tracer=tracer, metrics=port)
    return _runtime


def reset() -> None:
    """Forget the clients, settings and caches (tests; a new moto account per test)."""
    global _runtime
    _runtime = None


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@lean_lines(logger)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    records = [SQSRecord(record) for record in event.get("Records") or []]
    port.count("MessagesReceived", len(records))
    with runtime().invocation(context):  # the batch's per-family counts are emitted when it ends
        failed = runtime().handle_batch(records)
    # Every failed message is reported, even when the whole batch fails (no exception): same retries, cleaner logs.
    port.count("MessagesFailed", len(failed))
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
