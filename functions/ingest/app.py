"""Ingest function: an SQS batch of S3 "object created" notifications, one healthbook ingest run per object.

Thin on purpose: this module adapts the event (Powertools batch, idempotency, logs, metrics, traces); the
logic is healthbook.ingest, the data access healthbook.aws. A record whose processing raises (a poison
message, throttling, KMS or S3 trouble) is reported in batchItemFailures, so SQS retries only that message
and, after maxReceiveCount, moves it to the DLQ. A defective *file* never raises: it gets a receipt.

Logs carry correlation keys only (submission_id, facility, s3_key, SQS message id) and never a name, an ID
or card number, or the records themselves. docs/ingest.md describes the flow, metrics and operations.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.delivery import StepFunctionsStarter
from healthbook.aws.facilities import FacilitiesRepository
from healthbook.aws.kms_signer import KmsSigner
from healthbook.aws.records import DynamoRecords
from healthbook.aws.s3_store import S3Store
from healthbook.aws.settings import Settings, client, dynamodb_table, load_pepper, load_trust_anchors
from healthbook.delivery import Timing
from healthbook.ingest import IngestService, ObjectRef, Outcome
from healthbook.parsing.safe_xml import Limits
from healthbook.validation import Options

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "healthbook-ingest")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Healthbook")

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
# Report every failed message rather than raising when the whole batch fails: same retries, cleaner logs.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


class PoisonMessage(ValueError):
    """A message that is not an S3 event notification: retrying will not help, the DLQ will keep it."""


def _replayed(response: Any, idempotent_data: DataRecord) -> Any:
    """Powertools calls this when it answers from the idempotency table instead of running the function."""
    if isinstance(response, dict):
        logger.info("object already ingested; idempotency record replayed",
                    extra={"submission_id": response.get("submission_id"), "s3_key": response.get("object_key")})
        metrics.add_metric(name="FilesDuplicate", unit=MetricUnit.Count, value=1)
    return response


# Keyed on the object, not the message: an S3 event delivered twice, or an SQS message redelivered after a
# timeout, is processed once. The sequencer stands in for versionId on an unversioned bucket.
IDEMPOTENCY = IdempotencyConfig(event_key_jmespath="[bucket, key, version_id || sequencer]",
                                raise_on_no_idempotency_key=True, expires_after_seconds=24 * 3600,
                                hash_function="sha256", response_hook=_replayed)


# --- wiring, built on first use (tests set the environment and start moto before it) ---------------------

@dataclass
class Runtime:
    settings: Settings
    service: IngestService
    ingest_object: Any  # _ingest_object wrapped by Powertools idempotency


def build_service(settings: Settings) -> IngestService:
    s3, dynamodb = client("s3"), client("dynamodb")
    timing = Timing.from_env(os.environ)
    machine = os.environ.get("DELIVERY_STATE_MACHINE_ARN")
    return IngestService(
        store=S3Store(s3, receipts_bucket=settings.receipts_bucket, quarantine_bucket=settings.quarantine_bucket),
        records=DynamoRecords(dynamodb, submissions_table=settings.submissions_table,
                              visits_table=settings.visits_table, aggregates_table=settings.aggregates_table),
        registry=FacilitiesRepository(dynamodb_table(settings.facilities_table)),
        anchors=load_trust_anchors(client("ssm"), settings.trust_bundle_parameter),
        signer=KmsSigner(settings.receipt_key_id, client=client("kms")),
        pepper=load_pepper(client("secretsmanager"), settings.citizen_pepper_secret),
        options=Options(limits=Limits(max_file_bytes=settings.max_object_bytes)),
        registry_ttl=settings.registry_ttl_seconds, deadline=timing.deadline, lease=timing.lease,
        delivery=StepFunctionsStarter(client("stepfunctions"), state_machine_arn=machine) if machine else None)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        settings = Settings.from_env()
        persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto3_client=client("dynamodb"))
        wrapped = idempotent_function(data_keyword_argument="s3_object", persistence_store=persistence,
                                      config=IDEMPOTENCY, key_prefix="healthbook-ingest-object")(_ingest_object)
        _runtime = Runtime(settings=settings, service=build_service(settings), ingest_object=wrapped)
    return _runtime


def reset() -> None:
    """Forget the clients, settings and caches (tests; a new moto account per test)."""
    global _runtime
    _runtime = None


# --- per object ------------------------------------------------------------------------------------------

_rejected_families: Counter[tuple[str, str]] = Counter()  # (metric, family) -> count, flushed once per batch


def _observe(outcome: Outcome, elapsed_ms: float) -> None:
    if outcome.processed:
        metrics.add_metric(name="FilesReceived", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="VisitsAccepted", unit=MetricUnit.Count, value=outcome.visits_accepted)
        metrics.add_metric(name="VisitsRejected", unit=MetricUnit.Count, value=outcome.visits_rejected)
        metrics.add_metric(name="ProcessingTime", unit=MetricUnit.Milliseconds, value=round(elapsed_ms, 1))
        if outcome.delivery_start_failures:
            metrics.add_metric(name="DeliveryStartFailures", unit=MetricUnit.Count,
                               value=outcome.delivery_start_failures)
        if outcome.status == "REJECTED":
            metrics.add_metric(name="FilesRejected", unit=MetricUnit.Count, value=1)
            _rejected_families["FilesRejected", outcome.rejection_family or "?"] += 1
        for family, count in outcome.rejected_by_family.items():
            _rejected_families["VisitsRejected", family] += count
    elif outcome.status == "DUPLICATE":
        metrics.add_metric(name="FilesDuplicate", unit=MetricUnit.Count, value=1)
    summary = outcome.to_dict()
    summary["processing_ms"] = round(elapsed_ms, 1)
    level = logger.warning if outcome.status in ("REJECTED", "GONE") else logger.info
    level(f"object {outcome.status.lower()}", extra=summary)


def _ingest_object(s3_object: dict[str, Any]) -> dict[str, Any]:
    ref = ObjectRef(bucket=s3_object["bucket"], key=s3_object["key"], version_id=s3_object.get("version_id"),
                    received_at=datetime.fromisoformat(s3_object["event_time"]), size=s3_object.get("size"),
                    sequencer=s3_object.get("sequencer"))
    location_keys = {"submission_id": ref.submission_id, "s3_key": ref.key}
    with logger.append_context_keys(**location_keys), tracer.provider.in_subsegment("## ingest_object") as segment:
        started = time.perf_counter()
        outcome = runtime().service.ingest(ref)
        elapsed_ms = (time.perf_counter() - started) * 1000
        segment.put_annotation("facility", outcome.facility)  # codes only: annotations are searchable
        segment.put_annotation("status", outcome.status)
        with logger.append_context_keys(facility=outcome.facility):
            _observe(outcome, elapsed_ms)
    return outcome.to_dict()


def _s3_object(record: Any, inbox_bucket: str) -> dict[str, Any] | None:
    """The object of one S3 notification record; None for an event that is not a creation."""
    if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
        raise PoisonMessage("a record of the message is not an S3 event")
    if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
        return None
    try:
        bucket, obj = record["s3"]["bucket"]["name"], record["s3"]["object"]
        found = {"bucket": str(bucket), "key": unquote_plus(str(obj["key"])),  # keys arrive URL-encoded
                 "version_id": obj.get("versionId") or None, "sequencer": obj.get("sequencer"),
                 "size": obj.get("size"), "event_time": str(record["eventTime"])}
        datetime.fromisoformat(found["event_time"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PoisonMessage(f"S3 event record without a usable {exc}") from None
    if found["bucket"] != inbox_bucket:
        raise PoisonMessage("S3 event from a bucket other than the inbox")  # a wiring mistake: keep it in the DLQ
    return found


def record_handler(record: SQSRecord) -> None:
    key: str | None = None  # the object being processed, for the failure log
    with logger.append_context_keys(sqs_message_id=record.message_id):
        try:
            try:
                message = json.loads(record.body)
            except (TypeError, ValueError):
                raise PoisonMessage("the message body is not JSON") from None
            if isinstance(message, dict) and message.get("Event") == "s3:TestEvent":
                logger.info("S3 test event skipped")  # S3 sends one when the notification is configured
                return
            notifications = message.get("Records") if isinstance(message, dict) else None
            if not isinstance(notifications, list) or not notifications:
                raise PoisonMessage("the message is not an S3 event notification")
            current = runtime()
            for notification in notifications:
                s3_object = _s3_object(notification, current.settings.inbox_bucket)
                if s3_object is None:
                    logger.info("not an object creation; skipped", extra={"event_name": notification.get("eventName")})
                    continue
                key = s3_object["key"]
                current.ingest_object(s3_object=s3_object)
        except PoisonMessage as exc:
            logger.error(f"poison message: {exc}")  # our own wording: no body content is quoted
            raise
        except Exception:
            # Transient: this message fails alone and SQS retries it. AWS errors name codes and keys, never
            # file content.
            logger.exception("processing failed; the message will be retried", extra={"s3_key": key})
            raise


def _flush_families() -> None:
    """Per-family counts need their own dimension, so one small EMF document per (metric, family) and
    batch, rather than one per file."""
    for (name, family), count in sorted(_rejected_families.items()):
        with single_metric(name=name, unit=MetricUnit.Count, value=count, namespace=NAMESPACE,
                           default_dimensions={"service": SERVICE}) as metric:
            metric.add_dimension(name="ErrorFamily", value=family)
    _rejected_families.clear()


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    IDEMPOTENCY.register_lambda_context(context)
    _rejected_families.clear()
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=len(event.get("Records") or []))
    try:
        response = process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                            context=context)
    finally:
        _flush_families()
    metrics.add_metric(name="MessagesFailed", unit=MetricUnit.Count, value=len(response["batchItemFailures"]))
    return response
