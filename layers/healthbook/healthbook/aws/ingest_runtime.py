"""The ingest function's runtime: everything functions/ingest/app.py does that is not Powertools decoration.

- the composition root: ``IngestService`` built from ``IngestSettings`` (S3, DynamoDB, the facility registry,
  the CA bundle, the KMS signer, the pepper, the limits, the timing, the delivery starter);
- the SQS batch, in windows of at most WINDOW_BYTES of files (the time left permitting), each in phases so that
  ONE KMS Sign covers every receipt of it (docs/receipt.md): each message
  parsed into S3 notifications (Powertools data classes; the S3 test event and non-creation events skipped,
  anything else that is not an inbox notification refused as a ``PoisonMessage``), then every object examined
  (read, validated, verified, its content claimed), then the window's receipts signed at once, then each object
  recorded (visits, receipt, quarantine, submission item, delivery);
- Powertools idempotency on the object, ``[bucket, key, version_id || sequencer]``, taken before an object is
  examined; once it is recorded its submission item says it is done, and the record lapses (``ObjectIdempotency``);
- the logs and metrics of each outcome and of each signature, the per-family counts added up over the invocation.

Nothing is read at import and nothing before a message needs it (tests set the environment and start moto
first; a poison message or the S3 test event needs no settings). A defective *file* never raises: it gets a
receipt. What raises fails its SQS message alone: poison (retrying will not help, the DLQ keeps it) or
transient (throttling, KMS or S3 trouble: SQS retries it). A message that fails before the signature leaves the
window; a failed signature fails every message of its window. Logs carry correlation keys only (submission_id,
facility, s3_key, SQS message id), never a name, an ID or card number, or the records themselves.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes.s3_event import S3Event, S3EventRecord, S3Object
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyKeyError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from healthbook.aws.delivery import StepFunctionsStarter
from healthbook.aws.facilities import FacilitiesRepository
from healthbook.aws.kms_signer import KmsSigner
from healthbook.aws.outbox import SqsOutbox
from healthbook.aws.records import DynamoRecords
from healthbook.aws.runtime_cache import conflict_retry
from healthbook.aws.s3_store import S3Store
from healthbook.aws.settings import IngestSettings, client, dynamodb_table, load_pepper, load_trust_anchors
from healthbook.ingest.model import ContentClaimPending, ObjectRef, Outcome
from healthbook.ingest.service import Examined, IngestService
from healthbook.kernel import Metrics, NoMetrics, SubmissionStatus
from healthbook.parsing.safe_xml import Limits
from healthbook.validation import Options

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Tracer
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Keyed on the object, not the message: an S3 event delivered twice, or an SQS message redelivered after a
# timeout, is processed once. The sequencer stands in for versionId on an unversioned bucket.
IDEMPOTENCY_KEY = "[bucket, key, version_id || sequencer]"
IDEMPOTENCY_PREFIX = "healthbook-ingest-object"
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
# A window's files stay in memory until its one signature: at most this many bytes of them (the sizes S3's events
# give), so a batch of large files is signed in several windows and the batch size does not bound the memory. Two
# windows of the worst bounded file (20 MB, 348 MB at its peak: docs/performance.md) never share the function.
WINDOW_BYTES = 24 * 1024 * 1024
# A window is begun, a message of it examined (with, besides, the time recording what the window has examined will
# take: RECORD_PER_EXAMINE) or recorded, only with this much of the invocation left: the worst bounded file takes about
# 15 s at 768 MB, a file of 1,000 visits about as long to record. The messages left fail (nothing of them written),
# made visible again at once (not after the 12-minute visibility timeout); the next invocation takes the
# most-received first.
WINDOW_TIME_MARGIN_MS = 30_000
_NO_DEADLINE_MS = 2**31
_LONGEST_INVOCATION_MS = 900_000  # Lambda's: what an outbox list says its visits are stored by, at the latest
# How much longer recording a window takes than examining it, as this process last measured it: the time a window
# keeps for recording what it examined. A window's examined files that are not recorded in time are set aside and
# examined again later, so an estimate too low wastes the invocation: files of many visits record 3-4 times as long
# as they examine on a saturated emulator (docs/ingest.md). 1 until a window has shown; kept within these bounds.
RECORD_PER_EXAMINE = (1.0, 10.0)
_MEASURED_FROM_MS = 50.0  # a window that examined for less tells nothing (timer noise)
POSTPONED = "hb-postponed"  # the message attribute counting a message's postponements (SqsRequeue)
LOG_IMPLIED = frozenset({"object_key", "receipt_key"})  # an object's line: its s3_key context key says both


class PoisonMessage(ValueError):
    """A message that is not an S3 event notification of the inbox: retrying will not help, the DLQ keeps it."""


# --- the composition root --------------------------------------------------------------------------------

def build_service(settings: IngestSettings, metrics: Metrics | None = None) -> IngestService:
    # a connection for each thread that may call at once: the window's record writers, each file's visit writers
    s3 = client("s3", connections=max(10, settings.record_writers))
    dynamodb = client("dynamodb", connections=max(10, settings.record_writers * settings.visit_writers))
    timing = settings.timing()
    machine = settings.delivery_state_machine_arn
    return IngestService(
        store=S3Store(s3, receipts_bucket=settings.receipts_bucket, quarantine_bucket=settings.quarantine_bucket),
        records=DynamoRecords(dynamodb, submissions_table=settings.submissions_table,
                              visits_table=settings.visits_table,
                              conflicts=conflict_retry(metrics or NoMetrics()),
                              visit_writers=settings.visit_writers),
        registry=FacilitiesRepository(dynamodb_table(settings.facilities_table)),
        anchors=load_trust_anchors(client("ssm"), settings.trust_bundle_parameter),
        signer=KmsSigner(settings.receipt_key_id, client=client("kms")),
        pepper=load_pepper(client("secretsmanager"), settings.citizen_pepper_secret),
        options=Options(limits=Limits(max_file_bytes=settings.max_object_bytes,
                                      max_visits=settings.max_visits_per_file)),
        registry_ttl=settings.registry_ttl_seconds, deadline=timing.deadline, lease=timing.lease,
        delivery=StepFunctionsStarter(client("stepfunctions"), state_machine_arn=machine) if machine else None,
        outbox=SqsOutbox(client("sqs"), queue_url=settings.outbox_queue_url) if settings.outbox_queue_url else None)


# --- idempotency across the batch's phases --------------------------------------------------------------

class ObjectIdempotency:
    """Powertools idempotency on one object, held across the batch's phases: ``begin`` before the object is
    examined, ``release`` when its message fails. The same records, keys and rules as Powertools'
    ``idempotent_function`` (which wraps one call, and so cannot span the window's one signature), but a recorded
    object's record is not completed: its submission item, written last, already says it is done, and a second
    write per file cost a DynamoDB write unit (issue 17, docs/cost.md). The record lapses at the end of the
    invocation that took it and expires with the table's TTL.

    So an object whose record is in progress is done when ``recorded`` finds its submission item (answered, like a
    completed record of the previous version, through ``response_hook``); otherwise another invocation is on it and
    its message fails (``IdempotencyAlreadyInProgressError``, SQS retries it later). A failed attempt leaves no
    record behind, so its retry runs."""

    ATTEMPTS = 3  # as Powertools: a record that changes between the write and the read is tried again

    def __init__(self, persistence: BasePersistenceLayer, config: IdempotencyConfig,
                 recorded: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        persistence.configure(config=config, key_prefix=IDEMPOTENCY_PREFIX)
        self.persistence, self.config, self.recorded = persistence, config, recorded

    def begin(self, payload: dict[str, Any]) -> bool:
        """True: this run holds the object now. False: it was done before (its stored answer went to the
        response hook, which logs and counts it)."""
        for _ in range(self.ATTEMPTS):
            try:
                self.persistence.save_inprogress(data=payload, remaining_time_in_millis=self._remaining_ms())
                return True
            except (IdempotencyKeyError, IdempotencyValidationError):
                raise
            except IdempotencyItemAlreadyExistsError as exc:
                try:
                    record = exc.old_data_record or self.persistence.get_record(data=payload)
                except IdempotencyItemNotFoundError:
                    continue  # deleted between the write and the read: try again
                except Exception as error:
                    raise IdempotencyPersistenceLayerError("Failed to get record from idempotency store",
                                                           error) from error
                if record is not None and self._settled(record, payload):
                    return False
            except Exception as exc:
                raise IdempotencyPersistenceLayerError("Failed to save in progress record to idempotency store",
                                                       exc) from exc
        raise IdempotencyInconsistentStateError("save_inprogress and get_record return inconsistent results.")

    def _settled(self, record: DataRecord, payload: dict[str, Any]) -> bool:
        """True for a done object, its answer handed to the response hook; raises while another run holds it;
        False when the record lapsed in between (try again)."""
        status = record.status
        if status == "EXPIRED":
            return False
        response: dict[str, Any] | None
        if status == "INPROGRESS":
            expiry = record.in_progress_expiry_timestamp
            if expiry is not None and expiry < int(dt.datetime.now().timestamp() * 1000):
                return False
            response = self.recorded(payload)
            if response is None:
                raise IdempotencyAlreadyInProgressError(
                    f"Execution already in progress with idempotency key: {self.persistence.event_key_jmespath}="
                    f"{record.idempotency_key}")
        else:  # COMPLETED: written until 2026-12-07, kept IDEMPOTENCY_TTL_SECONDS
            response = record.response_json_as_dict()
        if self.config.response_hook is not None:
            self.config.response_hook(response, record)
        return True

    def release(self, payload: dict[str, Any], exception: Exception) -> None:
        self.persistence.delete_record(data=payload, exception=exception)

    def _remaining_ms(self) -> int | None:
        context = self.config.lambda_context
        return context.get_remaining_time_in_millis() if context is not None else None


class SqsRequeue:
    """Postponed messages (not begun: too little time left) sent again as new messages, the body unchanged and
    POSTPONED counting the postponements, so that they need not wait out the visibility timeout and do not use up
    the receives after which SQS moves a message to the dead-letter queue (``maxReceiveCount`` 5: under load a
    batch of 50 was postponed more often than that, and three files ended in the DLQ without a receipt). The
    original is then not reported failed, so the event source deletes it. Best effort: a message it cannot send
    again is made visible again at once (a receive used), or comes back after the timeout."""

    BATCH = 10  # SendMessageBatch and ChangeMessageVisibilityBatch take ten entries

    def __init__(self, queue_url: str, sqs: Any = None) -> None:
        self.queue_url, self._sqs = queue_url, sqs  # the client made when first needed: not on the cold start

    def _client(self) -> Any:
        if self._sqs is None:
            self._sqs = client("sqs")
        return self._sqs

    def send_again(self, messages: Sequence[tuple[str, str, int]]) -> set[str]:
        """(message id, body, postponements so far) for each: the ids of those sent again."""
        sent: set[str] = set()
        for start in range(0, len(messages), self.BATCH):
            chunk = messages[start:start + self.BATCH]
            entries = [{"Id": str(n), "MessageBody": body, "MessageAttributes": {
                POSTPONED: {"DataType": "Number", "StringValue": str(postponed + 1)}}}
                for n, (_, body, postponed) in enumerate(chunk)]
            response = self._client().send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            sent.update(chunk[int(entry["Id"])][0] for entry in response.get("Successful", []))
        return sent

    def visible_now(self, receipt_handles: Sequence[str]) -> int:
        """How many were made visible."""
        done = 0
        for start in range(0, len(receipt_handles), self.BATCH):
            entries = [{"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                       for n, handle in enumerate(receipt_handles[start:start + self.BATCH])]
            response = self._client().change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
            done += len(response.get("Successful", []))
        return done


@dataclass(frozen=True)
class Wiring:
    """What the first message that needs it builds: the settings, the service, the object idempotency, the
    requeue of postponed messages (when the queue's URL is set)."""

    settings: IngestSettings
    service: IngestService
    idempotency: ObjectIdempotency
    requeue: SqsRequeue | None = None


@dataclass
class _Object:
    """One object of a message in the current window."""

    payload: dict[str, Any]  # the S3 object as created_object gives it: the idempotency payload
    ref: ObjectRef
    held: bool = False  # this run holds its idempotency record (begun, neither completed nor released)
    examined: Examined | None = None
    outcome: Outcome | None = None  # once recorded
    elapsed_ms: float = 0.0  # its own work: examining and recording


@dataclass
class _Message:
    """One SQS message of the batch: the objects its notifications created, and what became of them."""

    record: SQSRecord
    index: int  # its place in the batch
    payloads: list[dict[str, Any]]
    objects: list[_Object] = field(default_factory=list)
    failed: bool = False
    deferred: bool = False  # already sent to a later window once
    examine_ms: float = 0.0  # examining its objects in its last window

    @property
    def record_units(self) -> int:
        """What recording it costs: a unit per examined file and one per visit it stores."""
        return sum(1 + item.examined.outcome.visits_accepted for item in self.objects if item.examined is not None)

    @property
    def message_id(self) -> str:
        return str(self.record.message_id)

    @property
    def postponed(self) -> int:
        """How many times it was postponed and sent again (SqsRequeue)."""
        attribute = (self.record.get("messageAttributes") or {}).get(POSTPONED) or {}
        try:
            return max(0, int(attribute.get("stringValue") or 0))
        except (TypeError, ValueError):
            return 0

    @property
    def order(self) -> tuple[int, int]:
        """The most-received first, postponements counted as receives (a message left over by a short invocation
        goes first next time), then the batch's order."""
        try:
            received = int(self.record.attributes.approximate_receive_count)
        except (KeyError, TypeError, ValueError):
            received = 1
        received += self.postponed
        return -received, self.index

    @property
    def size(self) -> int:
        return sum(int(payload.get("size") or 0) for payload in self.payloads)

    @property
    def keys(self) -> set[tuple[str, str, str]]:
        """The objects' idempotency keys (IDEMPOTENCY_KEY): one window holds each object once."""
        return {(p["bucket"], p["key"], p["version_id"] or p["sequencer"] or "") for p in self.payloads}


def _split_window(messages: Sequence[_Message], budget: int = WINDOW_BYTES) -> tuple[list[_Message], list[_Message]]:
    """(this window, the rest): the messages in order while their objects fit in ``budget`` bytes (the first
    always), except one that names an object an earlier message of the window already names (S3 and SQS may
    deliver an event twice): it waits for the next window, where the object is, typically, already done and
    answered from the idempotency table."""
    window: list[_Message] = []
    later: list[_Message] = []
    taken: set[tuple[str, str, str]] = set()
    held = 0
    for message in messages:
        keys = message.keys
        if keys & taken or (window and held + message.size > budget):
            later.append(message)
        else:
            window.append(message)
            taken |= keys
            held += message.size
    return window, later


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


def object_ref(payload: dict[str, Any]) -> ObjectRef:
    """The object of a ``created_object`` payload."""
    return ObjectRef(bucket=payload["bucket"], key=payload["key"], version_id=payload.get("version_id"),
                     received_at=datetime.fromisoformat(payload["event_time"]), size=payload.get("size"),
                     sequencer=payload.get("sequencer"))


# --- the runtime ----------------------------------------------------------------------------------------

class IngestRuntime:
    """One per process (the function module keeps it; ``reset`` forgets it): the handler's Logger and Tracer,
    the Metrics port, and the wiring, built from ``env`` on first use. ``invocation`` frames one batch;
    ``handle_batch`` processes it and names the messages that failed."""

    def __init__(self, *, logger: Logger, tracer: Tracer, metrics: Metrics,
                 env: Mapping[str, str] | None = None) -> None:
        self.logger, self.tracer, self.metrics = logger, tracer, metrics
        self.env = env  # None: os.environ, read when the wiring is built
        self.idempotency = IdempotencyConfig(event_key_jmespath=IDEMPOTENCY_KEY, raise_on_no_idempotency_key=True,
                                             expires_after_seconds=IDEMPOTENCY_TTL_SECONDS, hash_function="sha256",
                                             response_hook=self._replayed)
        self._wiring: Wiring | None = None
        self.record_per_examine = RECORD_PER_EXAMINE[0]  # measured by each window that recorded (per process)
        self.record_ms_per_unit = 0.0  # likewise: recording time per record_units
        # Likewise: the window's end (one StartExecution, each object's outcome logged) per object and per start. Under
        # load an AWS call took a second on the emulator, and windows overran their invocation.
        self.finish_ms_per_object = 0.0
        # (metric, family) -> count over the current invocation: one EMF document each, not one per file
        self._families: Counter[tuple[str, str]] = Counter()

    def wiring(self) -> Wiring:
        if self._wiring is None:
            settings = IngestSettings.from_env(self.env)
            persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table,
                                                   boto3_client=client("dynamodb"))
            requeue = SqsRequeue(settings.ingest_queue_url) if settings.ingest_queue_url else None
            service = build_service(settings, self.metrics)
            self._wiring = Wiring(settings=settings, service=service, requeue=requeue, idempotency=ObjectIdempotency(
                persistence, self.idempotency, lambda payload: service.recorded(object_ref(payload))))
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

    def handle_batch(self, records: Sequence[SQSRecord]) -> list[str]:
        """The SQS batch: the ids of the messages that failed (batchItemFailures), in batch order.

        Each window: every object examined, then ONE signature for all the receipts of the window, then every
        object recorded, then the delivery of the window's visits started, then each object's outcome logged and
        its idempotency record completed. Normally the whole batch is one window; a message naming an object an
        earlier message of the batch names, or holding a file whose identical copy an earlier message of the
        window is ingesting, goes to the next one (so both end as they would one after the other)."""
        failed: set[str] = set()
        pending: list[_Message] = []
        for index, record in enumerate(records):
            message = self._parse(record, index)
            if message is None:
                failed.add(str(record.message_id))
            elif message.payloads:
                pending.append(message)
        pending.sort(key=lambda message: message.order)
        windows = 0
        while pending:
            # A later window only with time to record and end at least a file of one visit (two units), at the
            # measured rates: a window that cannot would examine its first message for nothing, again and again.
            least_ms = 2 * self.record_ms_per_unit + 2 * self.finish_ms_per_object
            if windows and self._remaining_ms() < WINDOW_TIME_MARGIN_MS + least_ms:
                failed.update(message.message_id for message in self._postpone(pending))
                break
            window, later = _split_window(pending)
            pending = sorted(later + self._window(window, first=not windows), key=lambda message: message.order)
            failed.update(message.message_id for message in window if message.failed)
            windows += 1
        return [str(record.message_id) for record in records if str(record.message_id) in failed]

    def _postpone(self, messages: Sequence[_Message]) -> list[_Message]:
        """Nothing of these was begun. When the queue's URL is known each is sent again (SqsRequeue) and so does
        not fail; one that cannot be is made visible again at once. Returns those that fail."""
        requeue, sent, visible = self.wiring().requeue, set[str](), 0
        if requeue is not None:
            try:
                sent = requeue.send_again([(message.message_id, str(message.record.body), message.postponed)
                                           for message in messages])
            except Exception as exc:  # made visible again instead, below
                self.logger.warning("postponed messages not sent again", extra={"error": type(exc).__name__})
        left = [message for message in messages if message.message_id not in sent]
        if requeue is not None and left:
            try:
                visible = requeue.visible_now([str(message.record.receipt_handle) for message in left])
            except Exception as exc:  # they come back after the visibility timeout instead
                self.logger.warning("postponed messages not requeued", extra={"error": type(exc).__name__})
        self.logger.warning("too little time left for another window; messages left for SQS",
                            extra={"messages": len(messages), "sent_again": len(sent), "visible_now": visible})
        self.metrics.count("MessagesPostponed", len(messages))
        return left

    def _remaining_ms(self) -> int:
        """What is left of the invocation; without a Lambda context (a caller outside Lambda), no limit."""
        context = self.idempotency.lambda_context
        return context.get_remaining_time_in_millis() if context is not None else _NO_DEADLINE_MS

    # --- the phases -------------------------------------------------------------------------------------

    def _parse(self, record: SQSRecord, index: int) -> _Message | None:
        """The objects a message's notifications created; None (logged) for a message that fails here."""
        with self.logger.append_context_keys(sqs_message_id=record.message_id):
            try:
                event = s3_event(record)
                if event is None:
                    self.logger.info("S3 test event skipped")
                    return _Message(record, index, [])
                inbox = self.wiring().settings.inbox_bucket
                payloads = []
                for notification in event.records:
                    found = created_object(notification, inbox)
                    if found is None:
                        self.logger.info("not an object creation; skipped",
                                         extra={"event_name": notification.get("eventName")})
                        continue
                    payloads.append(found)
                return _Message(record, index, payloads)
            except PoisonMessage as exc:
                self.logger.error(f"poison message: {exc}")  # our own wording: no body content is quoted
            except Exception as exc:
                self._log_failure(exc, None)
            return None

    def _window(self, window: list[_Message], *, first: bool = True) -> list[_Message]:
        """Examine, sign, record, start the delivery of one window; returns the messages deferred to the next."""
        wiring = self.wiring()
        holders: dict[str, _Message] = {}  # submission id -> its message, for the objects of this window
        deferred: list[_Message] = []
        spent_ms = 0.0  # examining; recording what was examined takes record_per_examine times as long
        for message in window:
            if spent_ms and self._remaining_ms() < WINDOW_TIME_MARGIN_MS + spent_ms * self.record_per_examine:
                deferred.append(message)  # not begun: the next window, or SQS again (handle_batch)
                continue
            started = time.perf_counter()
            if self._examine(wiring, message, holders):
                deferred.append(message)
            message.examine_ms = (time.perf_counter() - started) * 1000
            spent_ms += message.examine_ms
        live = [message for message in window if not message.failed and message not in deferred]
        covered, signing_ms = 0, 0.0
        try:
            examined = [item.examined for message in live for item in message.objects if item.examined is not None]
            if any(item.body is not None for item in examined):
                with self.tracer.provider.in_subsegment("## sign_receipts"):
                    started = time.perf_counter()
                    covered = wiring.service.sign(examined)
                    signing_ms = (time.perf_counter() - started) * 1000
        except Exception as exc:  # one signature for the window: every message with a receipt in it fails
            for message in live:
                keys = [item.ref.key for item in message.objects if item.examined and item.examined.body is not None]
                if keys:
                    with self.logger.append_context_keys(sqs_message_id=message.record.message_id):
                        self._fail(wiring, message, exc, keys[0])
        if covered:
            # How many receipts one KMS Sign covered (docs/receipt.md): counts only, never a name or a key.
            self.metrics.count("ReceiptSignatures")
            self.metrics.count("ReceiptsSigned", covered)
            self.logger.info("receipts signed", extra={"receipts": covered, "signing_ms": round(signing_ms, 1)})
        # One outbox list for the window's visits, before any of them is stored (IngestService.hold).
        wiring.service.hold([item.examined for message in live if not message.failed for item in message.objects
                             if item.examined is not None],
                            storing_for=dt.timedelta(milliseconds=min(self._remaining_ms(), _LONGEST_INVOCATION_MS)))
        recorded: list[_Message] = []
        recording = time.perf_counter()
        waiting = [message for message in live if not message.failed]
        writers = max(1, wiring.settings.record_writers)
        while waiting:
            # A round of up to record_writers messages, recorded at once. Kept besides the margin: the time recording
            # the round will take, a unit per file and one per visit it stores, and the window's end for it and for
            # those recorded before it, at the last measured rates (measured as recorded: a round at a time). Only
            # the invocation's first window's first message goes ahead whatever the time: it has the whole
            # invocation.
            round_: list[_Message] = []
            units, ending = 0, 1 + sum(len(done.objects) for done in recorded)
            for message in waiting[:writers]:
                if (recorded or round_ or not first) and self._remaining_ms() < (
                        WINDOW_TIME_MARGIN_MS + (units + message.record_units) * self.record_ms_per_unit
                        + (ending + len(message.objects)) * self.finish_ms_per_object):
                    break
                round_.append(message)
                units, ending = units + message.record_units, ending + len(message.objects)
            if not round_:
                # Recording can take far longer than examining (a file of many visits): the rest are set aside,
                # signed but not written, and run again later; their retry signs their receipts again.
                for message in waiting:
                    self._release(wiring, message, TimeoutError("too little time left to record it"))
                    message.objects = []
                    deferred.append(message)
                break
            waiting = waiting[len(round_):]
            # a message it cannot record, it fails
            recorded += [message for message, done in zip(round_, self._record_all(wiring, round_), strict=True)
                         if done]
        record_ms = (time.perf_counter() - recording) * 1000
        finishing = time.perf_counter()
        # One start for the window's visits (not one per file), after every file's "done" marker.
        wiring.service.start_delivery([item.outcome for message in recorded for item in message.objects
                                       if item.outcome is not None])
        for message in recorded:
            self._complete(wiring, message, covered, signing_ms)
        self._measure(recorded, record_ms, (time.perf_counter() - finishing) * 1000)
        return deferred

    def _measure(self, recorded: Sequence[_Message], record_ms: float, finish_ms: float = 0.0) -> None:
        """How much longer recording and the window's end took than examining, for the next window's reserve
        (RECORD_PER_EXAMINE); the time per unit recorded, and the end's time per object."""
        examine_ms = sum(message.examine_ms for message in recorded)
        if examine_ms >= _MEASURED_FROM_MS:
            low, high = RECORD_PER_EXAMINE
            self.record_per_examine = min(high, max(low, (record_ms + finish_ms) / examine_ms))
        units = sum(message.record_units for message in recorded)
        if units and record_ms >= _MEASURED_FROM_MS:
            self.record_ms_per_unit = record_ms / units
        if finish_ms >= _MEASURED_FROM_MS:
            self.finish_ms_per_object = finish_ms / (1 + sum(len(message.objects) for message in recorded))

    def _examine(self, wiring: Wiring, message: _Message, holders: dict[str, _Message]) -> bool:
        """Phase 1 for one message: each object's idempotency begun and the object examined. A failure fails
        the message (its objects leave the window); True when the message waits for the next window."""
        key: str | None = None
        with self.logger.append_context_keys(sqs_message_id=message.record.message_id):
            try:
                for payload in message.payloads:
                    key = payload["key"]
                    ref = object_ref(payload)
                    if not wiring.idempotency.begin(payload):
                        continue  # done before: answered from the idempotency table (logged and counted there)
                    item = _Object(payload=payload, ref=ref, held=True)
                    message.objects.append(item)
                    holders[ref.submission_id] = message
                    with self.logger.append_context_keys(submission_id=ref.submission_id, s3_key=ref.key), \
                            self.tracer.provider.in_subsegment("## examine_object"):
                        started = time.perf_counter()
                        item.examined = wiring.service.examine(ref)
                        item.elapsed_ms += (time.perf_counter() - started) * 1000
            except ContentClaimPending as exc:
                holder = holders.get(exc.holder or "")
                if holder is not None and holder is not message and not holder.failed and not message.deferred:
                    # An identical copy of a file this window is ingesting: after it (then I503, or processed as
                    # new should that one fail), rather than failing the message and waiting out the visibility
                    # timeout.
                    self._release(wiring, message, exc)
                    message.objects, message.deferred = [], True
                    self.logger.info("the same content as another file of this batch; it waits for that one",
                                     extra={"s3_key": key})
                    return True
                self._fail(wiring, message, exc, key)
            except Exception as exc:
                self._fail(wiring, message, exc, key)
        return False

    def _record_all(self, wiring: Wiring, messages: Sequence[_Message]) -> list[bool]:
        """Phase 3: a round of at most ``record_writers`` messages, recorded at once (each file waits on S3 and
        DynamoDB most of its time, and Lambda bills the wait: docs/cost.md, row 24). Different messages name
        different objects (``_split_window``) and each write is conditional as it is between two invocations, so two
        files of one visit record as they would in two invocations. For each: recorded, or failed."""
        if len(messages) <= 1:
            return [self._record(wiring, message) for message in messages]
        with ThreadPoolExecutor(max_workers=len(messages)) as pool:  # clients: thread-safe; logs: thread-local keys
            return list(pool.map(lambda message: self._record(wiring, message), messages))

    @contextmanager
    def _thread_keys(self, **keys: Any) -> Iterator[None]:
        """Correlation keys for this thread's log lines only: ``append_context_keys`` changes the formatter that
        every thread shares."""
        self.logger.thread_safe_append_keys(**keys)
        try:
            yield
        finally:
            self.logger.thread_safe_remove_keys(list(keys))

    def _record(self, wiring: Wiring, message: _Message) -> bool:
        """Phase 3 for one message: each object recorded. False (the message failed) when one could not be. Runs
        on a record writer's thread."""
        key: str | None = None
        with self._thread_keys(sqs_message_id=message.record.message_id):
            try:
                for item in message.objects:
                    examined, ref = item.examined, item.ref
                    key = ref.key
                    if examined is None:
                        raise ValueError("an object of the window was not examined")
                    with self._thread_keys(submission_id=ref.submission_id, s3_key=ref.key), \
                            self.tracer.provider.in_subsegment("## ingest_object") as segment:
                        started = time.perf_counter()
                        item.outcome = wiring.service.record(examined)
                        item.elapsed_ms += (time.perf_counter() - started) * 1000
                        segment.put_annotation("facility", item.outcome.facility)  # codes only: searchable
                        segment.put_annotation("status", item.outcome.status)
            except Exception as exc:
                self._fail(wiring, message, exc, key)
                return False
        return True

    def _complete(self, wiring: Wiring, message: _Message, covered: int, signing_ms: float) -> None:
        """Phase 5 for one recorded message, once its visits' delivery has started: each object observed, and no
        longer released should the message fail (its submission item is written: it is done)."""
        key: str | None = None
        with self.logger.append_context_keys(sqs_message_id=message.record.message_id):
            try:
                for item in message.objects:
                    examined, outcome = item.examined, item.outcome
                    key = item.ref.key
                    if examined is None or outcome is None:
                        raise ValueError("an object of the window was not recorded")
                    signed = examined.receipt is not None
                    with self.logger.append_context_keys(submission_id=item.ref.submission_id, s3_key=key,
                                                         facility=outcome.facility):
                        self._observe(outcome, item.elapsed_ms + (signing_ms if signed else 0.0),
                                      covered if signed else 0)
                    item.held = False
            except Exception as exc:
                self._fail(wiring, message, exc, key)

    def _fail(self, wiring: Wiring, message: _Message, exc: Exception, key: str | None) -> None:
        """The message fails (SQS retries it, then the DLQ): the objects it still holds are released."""
        message.failed = True
        self._release(wiring, message, exc)
        self._log_failure(exc, key)

    def _log_failure(self, exc: Exception, key: str | None) -> None:
        # Transient: this message fails alone and SQS retries it. AWS errors name codes and keys, never file
        # content.
        self.logger.exception("processing failed; the message will be retried", exc_info=exc,
                              extra={"s3_key": key})

    def _release(self, wiring: Wiring, message: _Message, exc: Exception) -> None:
        for item in message.objects:
            if not item.held:
                continue
            try:
                wiring.idempotency.release(item.payload, exc)
                item.held = False
            except Exception as error:  # the record then lapses when its in-progress time ends
                self.logger.warning("idempotency record not released", extra={
                    "s3_key": item.ref.key, "error": type(error).__name__})

    def _observe(self, outcome: Outcome, elapsed_ms: float, covered: int) -> None:
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
        # Not what the line would repeat: the context's s3_key, the receipt's key (its object's, locate()), zero
        # counts and empty lists (a field left out is none): about 40 % of ingest's log bytes (docs/cost.md, row 23).
        summary = {name: value for name, value in outcome.to_dict().items()
                   if name not in LOG_IMPLIED and value not in (0, [], {})}
        summary["processing_ms"] = round(elapsed_ms, 1)
        if covered:
            summary["receipts_per_signature"] = covered  # its receipt was signed together with covered - 1 others
        troubled = outcome.status in (SubmissionStatus.REJECTED, SubmissionStatus.GONE)
        level = self.logger.warning if troubled else self.logger.info
        level(f"object {outcome.status.lower()}", extra=summary)

    def _replayed(self, response: Any, idempotent_data: DataRecord) -> Any:
        """Called when an object is answered from the idempotency table instead of being processed again."""
        if isinstance(response, dict):
            self.logger.info("object already ingested; idempotency record replayed",
                             extra={"submission_id": response.get("submission_id"),
                                    "s3_key": response.get("object_key")})
            self.metrics.count("FilesDuplicate")
        return response
