"""The ingest function's runtime: everything functions/ingest/app.py does that is not Powertools decoration.

- the composition root: ``IngestService`` built from ``IngestSettings`` (S3, DynamoDB, the facility registry,
  the CA bundle, the KMS signer, the pepper, the limits, the timing, the delivery starter);
- Powertools idempotency on the object, ``[bucket, key, version_id || sequencer]``;
- the SQS message: its body parsed into S3 notifications (Powertools data classes), the S3 test event and
  non-creation events skipped, anything else that is not an inbox notification refused as a ``PoisonMessage``;
- the logs and metrics of each outcome, the per-family counts added up over the invocation.

Nothing is read at import and nothing before a message needs it (tests set the environment and start moto
first; a poison message or the S3 test event needs no settings). A defective *file* never raises: it gets a
receipt. What raises fails its SQS message alone: poison (retrying will not help, the DLQ keeps it) or
transient (throttling, KMS or S3 trouble: SQS retries it). Logs carry correlation keys only (submission_id,
facility, s3_key, SQS message id), never a name, an ID or card number, or the records themselves.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes.s3_event import S3Event, S3EventRecord, S3Object
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from healthbook.aws.delivery import StepFunctionsStarter
from healthbook.aws.facilities import FacilitiesRepository
from healthbook.aws.kms_signer import KmsSigner
from healthbook.aws.records import DynamoRecords
from healthbook.aws.runtime_cache import conflict_retry
from healthbook.aws.s3_store import S3Store
from healthbook.aws.settings import IngestSettings, client, dynamodb_table, load_pepper, load_trust_anchors
from healthbook.ingest.model import ObjectRef, Outcome
from healthbook.ingest.service import IngestService
from healthbook.kernel import Metrics, NoMetrics, SubmissionStatus
from healthbook.parsing.safe_xml import Limits
from healthbook.validation import Options

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Tracer
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Keyed on the object, not the message: an S3 event delivered twice, or an SQS message redelivered after a
# timeout, is processed once. The sequencer stands in for versionId on an unversioned bucket.
IDEMPOTENCY_KEY = "[bucket, key, version_id || sequencer]"
IDEMPOTENCY_PREFIX = "healthbook-ingest-object"
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class PoisonMessage(ValueError):
    """A message that is not an S3 event notification of the inbox: retrying will not help, the DLQ keeps it."""


# --- the composition root --------------------------------------------------------------------------------

def build_service(settings: IngestSettings, metrics: Metrics | None = None) -> IngestService:
    s3, dynamodb = client("s3"), client("dynamodb")
    timing = settings.timing()
    machine = settings.delivery_state_machine_arn
    return IngestService(
        store=S3Store(s3, receipts_bucket=settings.receipts_bucket, quarantine_bucket=settings.quarantine_bucket),
        records=DynamoRecords(dynamodb, submissions_table=settings.submissions_table,
                              visits_table=settings.visits_table, aggregates_table=settings.aggregates_table,
                              conflicts=conflict_retry(metrics or NoMetrics())),
        registry=FacilitiesRepository(dynamodb_table(settings.facilities_table)),
        anchors=load_trust_anchors(client("ssm"), settings.trust_bundle_parameter),
        signer=KmsSigner(settings.receipt_key_id, client=client("kms")),
        pepper=load_pepper(client("secretsmanager"), settings.citizen_pepper_secret),
        options=Options(limits=Limits(max_file_bytes=settings.max_object_bytes,
                                      max_visits=settings.max_visits_per_file)),
        registry_ttl=settings.registry_ttl_seconds, deadline=timing.deadline, lease=timing.lease,
        delivery=StepFunctionsStarter(client("stepfunctions"), state_machine_arn=machine) if machine else None)


@dataclass(frozen=True)
class Wiring:
    """What the first message that needs it builds: the settings, the service, the idempotent ingest."""

    settings: IngestSettings
    service: IngestService
    ingest_object: Callable[..., dict[str, Any]]  # called with s3_object=...; Powertools idempotency around it


# --- the message ----------------------------------------------------------------------------------------

def s3_event(record: SQSRecord) -> S3Event | None:
    """The S3 notification an SQS message carries; None for the S3 test event (S3 sends one when the
    notification is configured). Raises PoisonMessage for anything else that is not a notification."""
    try:
        message = record.json_body
    except (TypeError, ValueError):
        raise PoisonMessage("the message body is not JSON") from None
    if isinstance(message, dict) and message.get("Event") == "s3:TestEvent":
        return None
    notifications = message.get("Records") if isinstance(message, dict) else None
    if not isinstance(notifications, list) or not notifications:
        raise PoisonMessage("the message is not an S3 event notification")
    return S3Event(message)


def created_object(notification: S3EventRecord, inbox_bucket: str) -> dict[str, Any] | None:
    """The object of one S3 notification record, as the idempotency payload; None for an event that is not a
    creation. The key is URL-decoded here, once: Powertools' ``S3Object.key`` is the key as S3 sent it."""
    if not isinstance(notification.raw_event, dict) or notification.get("eventSource") != "aws:s3":
        raise PoisonMessage("a record of the message is not an S3 event")
    if not str(notification.get("eventName", "")).startswith("ObjectCreated:"):
        return None
    try:
        # s3["object"] rather than S3Message.get_object, which would take an IntelligentTiering "get_object".
        bucket, obj = notification.s3.bucket.name, S3Object(notification.s3["object"])
        found: dict[str, Any] = {
            "bucket": str(bucket), "key": unquote_plus(str(obj.key)),  # keys arrive URL-encoded
            "version_id": obj.version_id or None, "sequencer": obj.get("sequencer"),  # both optional
            "size": obj.get("size"), "event_time": str(notification.event_time)}
        datetime.fromisoformat(found["event_time"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PoisonMessage(f"S3 event record without a usable {exc}") from None
    if found["bucket"] != inbox_bucket:
        raise PoisonMessage("S3 event from a bucket other than the inbox")  # a wiring mistake: keep it in the DLQ
    return found


# --- the runtime ----------------------------------------------------------------------------------------

class IngestRuntime:
    """One per process (the function module keeps it; ``reset`` forgets it): the handler's Logger and Tracer,
    the Metrics port, and the wiring, built from ``env`` on first use. ``invocation`` frames one batch;
    ``handle`` is one SQS message of it."""

    def __init__(self, *, logger: Logger, tracer: Tracer, metrics: Metrics,
                 env: Mapping[str, str] | None = None) -> None:
        self.logger, self.tracer, self.metrics = logger, tracer, metrics
        self.env = env  # None: os.environ, read when the wiring is built
        self.idempotency = IdempotencyConfig(event_key_jmespath=IDEMPOTENCY_KEY, raise_on_no_idempotency_key=True,
                                             expires_after_seconds=IDEMPOTENCY_TTL_SECONDS, hash_function="sha256",
                                             response_hook=self._replayed)
        self._wiring: Wiring | None = None
        # (metric, family) -> count over the current invocation: one EMF document each, not one per file
        self._families: Counter[tuple[str, str]] = Counter()

    def wiring(self) -> Wiring:
        if self._wiring is None:
            settings = IngestSettings.from_env(self.env)
            persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table,
                                                   boto3_client=client("dynamodb"))
            ingest_object = idempotent_function(data_keyword_argument="s3_object", persistence_store=persistence,
                                                config=self.idempotency,
                                                key_prefix=IDEMPOTENCY_PREFIX)(self._ingest_object)
            self._wiring = Wiring(settings=settings, service=build_service(settings, self.metrics),
                                  ingest_object=ingest_object)
        return self._wiring

    @contextmanager
    def invocation(self, context: LambdaContext) -> Iterator[None]:
        """One batch: the Lambda context for idempotency (how long an in-progress record lasts), and the
        per-family counts, emitted when the batch ends however it ends."""
        self.idempotency.register_lambda_context(context)
        self._families = Counter()
        try:
            yield
        finally:
            families, self._families = self._families, Counter()
            for (name, family), count in sorted(families.items()):
                self.metrics.count(name, count, ErrorFamily=family)

    def handle(self, record: SQSRecord) -> None:
        """One SQS message; raises to fail it alone (batchItemFailures)."""
        key: str | None = None  # the object being processed, for the failure log
        with self.logger.append_context_keys(sqs_message_id=record.message_id):
            try:
                event = s3_event(record)
                if event is None:
                    self.logger.info("S3 test event skipped")
                    return
                wiring = self.wiring()
                for notification in event.records:
                    found = created_object(notification, wiring.settings.inbox_bucket)
                    if found is None:
                        self.logger.info("not an object creation; skipped",
                                         extra={"event_name": notification.get("eventName")})
                        continue
                    key = found["key"]
                    wiring.ingest_object(s3_object=found)
            except PoisonMessage as exc:
                self.logger.error(f"poison message: {exc}")  # our own wording: no body content is quoted
                raise
            except Exception:
                # Transient: this message fails alone and SQS retries it. AWS errors name codes and keys, never
                # file content.
                self.logger.exception("processing failed; the message will be retried", extra={"s3_key": key})
                raise

    def _ingest_object(self, s3_object: dict[str, Any]) -> dict[str, Any]:
        ref = ObjectRef(bucket=s3_object["bucket"], key=s3_object["key"], version_id=s3_object.get("version_id"),
                        received_at=datetime.fromisoformat(s3_object["event_time"]), size=s3_object.get("size"),
                        sequencer=s3_object.get("sequencer"))
        location_keys = {"submission_id": ref.submission_id, "s3_key": ref.key}
        with self.logger.append_context_keys(**location_keys), \
                self.tracer.provider.in_subsegment("## ingest_object") as segment:
            started = time.perf_counter()
            outcome = self.wiring().service.ingest(ref)
            elapsed_ms = (time.perf_counter() - started) * 1000
            segment.put_annotation("facility", outcome.facility)  # codes only: annotations are searchable
            segment.put_annotation("status", outcome.status)
            with self.logger.append_context_keys(facility=outcome.facility):
                self._observe(outcome, elapsed_ms)
        return outcome.to_dict()

    def _observe(self, outcome: Outcome, elapsed_ms: float) -> None:
        families = self._families  # this invocation's, emitted when it ends
        if outcome.processed:
            self.metrics.count("FilesReceived")
            self.metrics.count("VisitsAccepted", outcome.visits_accepted)
            self.metrics.count("VisitsRejected", outcome.visits_rejected)
            self.metrics.latency("ProcessingTime", elapsed_ms)
            if outcome.delivery_start_failures:
                self.metrics.count("DeliveryStartFailures", outcome.delivery_start_failures)
            if outcome.status == SubmissionStatus.REJECTED:
                self.metrics.count("FilesRejected")
                families["FilesRejected", outcome.rejection_family or "?"] += 1
            for family, count in outcome.rejected_by_family.items():
                families["VisitsRejected", family] += count
        elif outcome.status == SubmissionStatus.DUPLICATE:
            self.metrics.count("FilesDuplicate")
        summary = outcome.to_dict()
        summary["processing_ms"] = round(elapsed_ms, 1)
        troubled = outcome.status in (SubmissionStatus.REJECTED, SubmissionStatus.GONE)
        level = self.logger.warning if troubled else self.logger.info
        level(f"object {outcome.status.lower()}", extra=summary)

    def _replayed(self, response: Any, idempotent_data: DataRecord) -> Any:
        """Powertools calls this when it answers from the idempotency table instead of running the function."""
        if isinstance(response, dict):
            self.logger.info("object already ingested; idempotency record replayed",
                             extra={"submission_id": response.get("submission_id"),
                                    "s3_key": response.get("object_key")})
            self.metrics.count("FilesDuplicate")
        return response
