"""The ingest RecordsRepository on DynamoDB: the `submissions` and `visits` tables of docs/data-model.md.

Every write is conditional (but a version's records item, the same bytes each time), so running the same
object twice adds nothing. Only the version the LATEST pointer names is ever PENDING: a visit's first version
takes the pointer (a conditional put), then is written (another); a later version, the move of the pointer and
the supersession of the version it replaces go in one TransactWriteItems. The content claim of an accepted file
(`content#{facility}#{sha256}` in `submissions`) is taken before its visits are stored; it is confirmed when its
holder's submission item exists (that item is written last, so nothing else needs writing to confirm it).

Transactions that touch an item another transaction holds are cancelled with ``TransactionConflict``: each is
tried again inside the call a bounded number of times, with jittered backoff (``ConflictRetry``), then raised as
``TransactionConflicts`` for the caller's own retry (SQS, Step Functions). The counter items they ADD to are
sharded so that such conflicts stay rare (docs/reports.md, docs/capacity.md).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from healthbook.aws.settings import error_code
from healthbook.ingest.model import (
    LATEST,
    LEAVES_STATUS_INDEX,
    PENDING,
    SUPERSEDED,
    ContentClaim,
    SubmissionRecord,
    VisitVersion,
    VisitWrite,
    content_claim_key,
    records_version,
)
from healthbook.reports.aggregates import COUNTER_SHARDS, MAX_COUNTER_SHARDS, CounterUpdate, shard_key

# DynamoDB items stop at 400 KB, names and all; leave room for the other attributes.
MAX_RECORDS_BYTES = 380 * 1024
_CONFLICTS = {"ConditionalCheckFailed", "TransactionConflict"}
CLAIM_CONFIRMED = "CONFIRMED"  # the claim_state of a claim confirmed in its own item (before 2026-12-06)
_HELD = "claimed_by = :by"  # the content claim is this submission's


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


class RecordsTooLarge(ValueError):
    """An accepted visit whose records do not fit in one item. Raised, not rejected: the receipt already
    accepted it, so the message goes to the DLQ for an operator (docs/ingest.md)."""


def counter_update(table: str, update: CounterUpdate, *, shard: int) -> dict[str, Any]:
    """The TransactWriteItems entry that ADDs a CounterUpdate's deltas to shard ``shard`` of its item (created on
    first use). Every counter write goes through here; ``ConflictRetry.shard()`` picks the shard."""
    names = {f"#c{i}": name for i, name in enumerate(sorted(update.deltas))}
    values = {f":c{i}": {"N": str(update.deltas[name])} for i, name in enumerate(sorted(update.deltas))}
    key = {"scope": _s(update.scope), "period": _s(shard_key(update.period, shard))}
    return {"Update": {"TableName": table, "Key": key,
                       "UpdateExpression": "ADD " + ", ".join(f"#c{i} :c{i}" for i in range(len(names))),
                       "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}}


def cancellation_reasons(error: BaseException) -> list[str]:
    """The per-item codes of a cancelled TransactWriteItems ("ConditionalCheckFailed", "None"...); [] for any
    other error."""
    if error_code(error) != "TransactionCanceledException":
        return []
    return [str(r.get("Code", "")) for r in getattr(error, "response", {}).get("CancellationReasons", [])]


def conflicted(error: BaseException) -> bool:
    """Another transaction held an item: a cancelled transaction with a TransactionConflict among its reasons, or
    a single-item write refused while a transaction holds its item (TransactionConflictException)."""
    return "TransactionConflict" in cancellation_reasons(error) or error_code(error) == "TransactionConflictException"


class TransactionConflicts(RuntimeError):
    """A transaction still cancelled by concurrent ones after its attempts inside the call. Nothing of it was
    written: raised for the caller's retry (SQS redelivers the object, Step Functions retries the step)."""


@dataclass
class ConflictRetry:
    """How a transaction cancelled by a TransactionConflict is tried again inside the call: ``attempts`` in all,
    full-jitter backoff from ``base_seconds`` doubling to ``max_seconds`` (at most about 0.4 s in all by default),
    each attempt ADDing to a counter shard drawn afresh from ``shards``. Counts what it did (``retried``:
    attempts made again; ``exhausted``: calls that gave up) and tells ``on_retry`` of each retry (the runtimes
    count the metric CounterConflictRetries there). Shared by threads."""

    attempts: int = 5
    base_seconds: float = 0.025
    max_seconds: float = 0.2
    shards: int = COUNTER_SHARDS
    retried: int = 0
    exhausted: int = 0
    on_retry: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_COUNTER_SHARDS or self.attempts < 1:
            raise ValueError(f"counter shards 1..{MAX_COUNTER_SHARDS} and at least one attempt, not "
                             f"{self.shards} and {self.attempts}")

    def shard(self) -> int:
        """Random per attempt, one for every counter item of the transaction: idempotence comes from the
        transaction's conditional write, not from the counter, and a retry moves away from the contended shard."""
        return random.randrange(self.shards)

    def after_conflict(self, attempt: int, what: str, error: BaseException) -> None:
        """Sleep before attempt ``attempt + 1`` (0-based); after the last, raise TransactionConflicts."""
        if attempt + 1 >= self.attempts:
            with self._lock:
                self.exhausted += 1
            raise TransactionConflicts(f"{what}: cancelled by concurrent transactions {self.attempts} times; "
                                       "nothing written, to be retried") from error
        with self._lock:
            self.retried += 1
        if self.on_retry is not None:
            self.on_retry()
        time.sleep(random.uniform(0, min(self.max_seconds, self.base_seconds * 2 ** attempt)))


def add_counters(dynamodb: Any, table: str, update: CounterUpdate, retry: ConflictRetry) -> None:
    """A count with no event item to commit with (one UpdateItem): refused while a transaction holds its shard
    (TransactionConflictException, which botocore does not retry), so tried again on another shard."""
    for attempt in range(retry.attempts):
        try:
            dynamodb.update_item(**counter_update(table, update, shard=retry.shard())["Update"])
        except Exception as exc:
            if not conflicted(exc):
                raise
            retry.after_conflict(attempt, f"counters of {update.scope}", exc)
            continue
        return


def conditional_write(dynamodb: Any, operation: Literal["Put", "Update"], request: dict[str, Any], *,
                      counters: str | None, count: CounterUpdate | None,
                      also: Sequence[dict[str, Any]] = (), retry: ConflictRetry | None = None) -> bool:
    """One conditional PutItem/UpdateItem; False when its condition fails. With a counters table and a count,
    the report counters commit in the same transaction or not at all, so a retry or a lost race counts
    nothing twice (docs/reports.md). ``also``: more TransactWriteItems entries committed with it (a content
    claim); when one of *their* conditions fails the transaction is cancelled and the error raised. A
    transaction cancelled by a conflict is tried again (``retry``), then TransactionConflicts raised."""
    retry = retry or ConflictRetry()
    if not also and (counters is None or count is None):
        write = dynamodb.put_item if operation == "Put" else dynamodb.update_item
        try:
            write(**request)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True
    for attempt in range(retry.attempts):
        extra = list(also)
        if counters is not None and count is not None:
            extra.append(counter_update(counters, count, shard=retry.shard()))
        try:
            dynamodb.transact_write_items(TransactItems=[{operation: request}, *extra])
        except Exception as exc:
            if cancellation_reasons(exc)[:1] == ["ConditionalCheckFailed"]:
                return False
            if not conflicted(exc):
                raise
            retry.after_conflict(attempt, f"{operation} on {request['TableName']}", exc)
            continue
        return True
    raise AssertionError("unreachable: the last attempt returns or raises")


class DynamoRecords:
    def __init__(self, dynamodb: Any, *, submissions_table: str, visits_table: str, max_attempts: int = 5,
                 conflicts: ConflictRetry | None = None, visit_writers: int = 1) -> None:
        self._db = dynamodb
        self.submissions_table = submissions_table
        self.visits_table = visits_table
        self._max_attempts = max_attempts
        self.conflicts = conflicts or ConflictRetry(attempts=max_attempts)  # its counts: the retries made
        self.visit_writers = visit_writers  # a file's visits written this many at a time (save_visits)

    # --- submissions ------------------------------------------------------------------------------------

    def submission_exists(self, submission_id: str) -> bool:
        response = self._db.get_item(TableName=self.submissions_table, Key={"submission_id": _s(submission_id)},
                                     ConsistentRead=True, ProjectionExpression="submission_id")
        return "Item" in response

    def put_submission(self, record: SubmissionRecord, *, release: ContentClaim | None = None) -> bool:
        """The "done" marker, conditional on the id being new, and, in one transaction with it, ``release`` emptied
        (a file that claimed its content on an earlier attempt and is REJECTED now, on condition the claim is this
        submission's; another holder cancels the whole transaction: the error is raised, the message retried). A
        claim this submission holds is confirmed by this item existing. The item is what the reports count for the
        file (``facility_month`` puts it in the ``by-facility-month`` index): no counter, so without a claim to
        release it is one plain conditional PutItem (since 2026-12-07; docs/reports.md). It has no ``facility_day``
        (since 2026-12-08): the sparse ``by-facility-day`` index, which nothing reads, takes no entry, and so no
        write unit, until the next release removes it."""
        item: dict[str, Any] = {
            "submission_id": _s(record.submission_id), "facility": _s(record.facility),
            "facility_month": _s(record.facility_month),
            "received_at": _s(record.received),
            "object_key": _s(record.object_key), "size": _n(record.size), "status": _s(record.status),
            "visits_total": _n(record.visits_total), "visits_accepted": _n(record.visits_accepted),
            "receipt_key": _s(record.receipt_key), "signing_key_id": _s(record.signing_key_id),
        }
        optional = {"version_id": record.version_id, "content_sha256": record.content_sha256,
                    "quarantine_key": record.quarantine_key, "merkle_root": record.merkle_root,
                    "transaction_id": record.transaction_id}
        item.update({name: _s(value) for name, value in optional.items() if value})
        # String sets cannot be empty: an accepted file simply has no error_codes attribute.
        if record.error_codes:
            item["error_codes"] = {"SS": sorted(set(record.error_codes))}
        if record.finding_codes:
            item["finding_codes"] = {"SS": sorted(set(record.finding_codes))}
        if record.standards:
            item["standards"] = {"SS": sorted(set(record.standards))}
        put = {"TableName": self.submissions_table, "Item": item,
               "ConditionExpression": "attribute_not_exists(submission_id)"}
        also: list[dict[str, Any]] = []
        if release is not None:
            # Emptied rather than deleted (UpdateItem, which the function may do anyway): only the key remains.
            also.append({"Update": {"TableName": self.submissions_table, "Key": {"submission_id": _s(release.key)},
                                    "UpdateExpression": "REMOVE claimed_by, claim_state, received_at, receipt_key",
                                    "ConditionExpression": _HELD,
                                    "ExpressionAttributeValues": {":by": _s(release.submission_id)}}})
        return conditional_write(self._db, "Put", put, counters=None, count=None, also=also, retry=self.conflicts)

    # --- content claims (docs/ingest.md, Replays) -------------------------------------------------------

    def content_claim(self, facility: str, content_sha256: str) -> ContentClaim | None:
        """Which submission holds this content of this facility, if any, and whether its submission item exists
        yet (consistent reads; a claim confirmed in the item itself is one written before that rule)."""
        response = self._db.get_item(TableName=self.submissions_table,
                                     Key={"submission_id": _s(content_claim_key(facility, content_sha256))},
                                     ConsistentRead=True)
        item = response.get("Item")
        if item is None or "claimed_by" not in item:  # never claimed, or released
            return None
        holder = item["claimed_by"]["S"]
        confirmed = item.get("claim_state", {}).get("S") == CLAIM_CONFIRMED or self.submission_exists(holder)
        return ContentClaim(facility=facility, content_sha256=content_sha256, submission_id=holder,
                            received_at=item["received_at"]["S"], receipt_key=item["receipt_key"]["S"],
                            confirmed=confirmed)

    def claim_content(self, claim: ContentClaim) -> ContentClaim:
        """Take the claim unless another submission holds it. Returns the holder: ``claim`` when it is now this
        submission's (again, on a retry), else the other."""
        for _ in range(self._max_attempts):
            try:
                self._db.update_item(
                    TableName=self.submissions_table, Key={"submission_id": _s(claim.key)},
                    UpdateExpression="SET claimed_by = :by, received_at = :at, receipt_key = :receipt",
                    ConditionExpression=f"attribute_not_exists(claimed_by) OR {_HELD}",
                    ExpressionAttributeValues={":by": _s(claim.submission_id), ":at": _s(claim.received_at),
                                               ":receipt": _s(claim.receipt_key)})
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                holder = self.content_claim(claim.facility, claim.content_sha256)
                if holder is not None:
                    return holder
                continue  # released between the two calls: try again
            return claim
        raise RuntimeError(f"content claim {claim.key}: kept changing; giving up for this attempt")

    # --- visits -----------------------------------------------------------------------------------------

    def latest(self, visit_id: str) -> str | None:
        """The version key in force (the LATEST pointer's ``current``), None for an unknown visit."""
        response = self._db.get_item(TableName=self.visits_table, Key={"visit_id": _s(visit_id), "version": _s(LATEST)},
                                     ConsistentRead=True, ProjectionExpression="#c",
                                     ExpressionAttributeNames={"#c": "current"})
        current = response.get("Item", {}).get("current", {}).get("S")
        return str(current) if current is not None else None

    def save_visits(self, visits: Sequence[VisitVersion]) -> list[VisitWrite]:
        """A file's visits, ``visit_writers`` at a time: each is a few round trips of waiting, and a hospital's
        file holds hundreds. Different visits have different items, and every write is conditional as it is between
        two invocations; a file naming one visit twice is written one visit after the other, as the records of two
        versions of a visit in one file share a key."""
        if self.visit_writers <= 1 or len(visits) <= 1 or len({v.visit_id for v in visits}) < len(visits):
            return [self.save_visit(visit) for visit in visits]
        with ThreadPoolExecutor(max_workers=min(self.visit_writers, len(visits))) as pool:  # clients: thread-safe
            return list(pool.map(self.save_visit, visits))

    def save_visit(self, visit: VisitVersion) -> VisitWrite:
        """Read the pointer, then write conditionally on what was read; a concurrent move of the pointer
        fails the write and the decision is taken again on the new state."""
        if len(visit.records) > MAX_RECORDS_BYTES:
            raise RecordsTooLarge(f"visit {visit.visit_id}: {len(visit.records)} bytes of compressed records "
                                  f"exceed the {MAX_RECORDS_BYTES} a DynamoDB item can hold")
        records_written = False
        for attempt in range(self.conflicts.attempts):
            current = self.latest(visit.visit_id)
            if current == visit.version:  # the pointer is this version's: an earlier run may have stopped before
                return self._put_first(visit)  # writing the version item itself (its records are written)
            if not records_written:
                self._put_records(visit)
                records_written = True
            if current is not None and current > visit.version:
                return self._put_late(visit, current)
            if current is None:
                if self._take_pointer(visit):
                    return self._put_first(visit)
                continue  # another version of the visit took it first: decide again
            try:
                self._transact(visit, current)
            except Exception as exc:
                reasons = cancellation_reasons(exc)
                if not reasons:
                    raise
                if reasons[0] == "ConditionalCheckFailed":
                    return VisitWrite.PRESENT  # the version item exists: an earlier run wrote all of it
                if not _CONFLICTS.intersection(reasons):
                    raise
                if "TransactionConflict" in reasons:  # another transaction holds an item: back off first
                    self.conflicts.after_conflict(attempt, "a new visit version", exc)
                elif reasons[2:3] == ["ConditionalCheckFailed"]:  # the version it supersedes is not written yet
                    time.sleep(random.uniform(0, 0.05 * 2 ** attempt))
                continue  # the pointer moved under us: decide again
            return VisitWrite.SUPERSEDING
        raise RuntimeError(f"visit {visit.visit_id}: the LATEST pointer kept changing; giving up for this attempt")

    def _version_item(self, visit: VisitVersion, status: str, superseded_by: str | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "visit_id": _s(visit.visit_id), "version": _s(visit.version), "submission_id": _s(visit.submission_id),
            "received_at": _s(visit.received_at), "digest": _s(visit.digest), "status": _s(status),
            "deadline_at": _s(visit.deadline_at),
        }
        if status not in LEAVES_STATUS_INDEX and visit.indexed:
            item["status_shard"] = _s(visit.status_shard(status))
        if visit.standard:
            item["standard"] = _s(visit.standard)
        if visit.province:
            item["province"] = _s(visit.province)
        for place in ("district", "commune"):
            if getattr(visit, place):
                item[place] = _s(getattr(visit, place))
        if visit.citizen_key:  # no attribute, no entry in the sparse by-citizen index
            item["citizen_key"] = _s(visit.citizen_key)
        if superseded_by:
            item["superseded_by"] = _s(superseded_by)
        elif visit.next_attempt_at:
            item["next_attempt_at"] = _s(visit.next_attempt_at)
        return item

    def _put_records(self, visit: VisitVersion) -> None:
        """The records, in their own item, before the version item that refers to them: a version item never
        exists without its records. Unconditional: a retry writes the same bytes (the version key is the object's)."""
        self._db.put_item(TableName=self.visits_table, Item={
            "visit_id": _s(visit.visit_id), "version": _s(records_version(visit.version)),
            "records": {"B": visit.records}})

    def _take_pointer(self, visit: VisitVersion) -> bool:
        """A visit's first version takes the pointer before its version item exists: two plain conditional
        writes (2 write units) instead of a transaction (4), and still only the pointer's version is PENDING.
        False when another version took it first."""
        return conditional_write(self._db, "Put", {
            "TableName": self.visits_table, "ConditionExpression": "attribute_not_exists(visit_id)",
            "Item": {"visit_id": _s(visit.visit_id), "version": _s(LATEST), "current": _s(visit.version)}},
            counters=None, count=None)

    def _put_first(self, visit: VisitVersion) -> VisitWrite:
        """The version item the pointer names: CREATED, or PRESENT when an earlier run wrote it. Until it exists
        a later version's transaction, which supersedes it on condition it exists, is cancelled and retried."""
        return self._put_version(self._version_item(visit, PENDING), VisitWrite.CREATED)

    def _put_version(self, item: dict[str, Any], written: VisitWrite) -> VisitWrite:
        """A version item put unless it exists: ``written``, or PRESENT (a later status is never overwritten)."""
        put = {"TableName": self.visits_table, "Item": item, "ConditionExpression": "attribute_not_exists(visit_id)"}
        return written if conditional_write(self._db, "Put", put, counters=None, count=None) else VisitWrite.PRESENT

    def _transact(self, visit: VisitVersion, current: str) -> None:
        put_version = {"Put": {"TableName": self.visits_table, "Item": self._version_item(visit, PENDING),
                               "ConditionExpression": "attribute_not_exists(visit_id)"}}
        pointer_key = {"visit_id": _s(visit.visit_id), "version": _s(LATEST)}
        # "current = :old" (not merely "< :new") guarantees the version superseded below is the one the
        # pointer leaves; it is still a forward move, since current < new was checked.
        items = [put_version, {"Update": {
                "TableName": self.visits_table, "Key": pointer_key, "UpdateExpression": "SET #c = :new",
                "ConditionExpression": "#c = :old", "ExpressionAttributeNames": {"#c": "current"},
                "ExpressionAttributeValues": {":new": _s(visit.version), ":old": _s(current)}}}, {"Update": {
                "TableName": self.visits_table, "Key": {"visit_id": _s(visit.visit_id), "version": _s(current)},
                "UpdateExpression": "SET #s = :s, superseded_by = :new REMOVE status_shard",
                "ConditionExpression": "attribute_exists(visit_id)", "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":s": _s(SUPERSEDED), ":new": _s(visit.version)}}}]
        self._db.transact_write_items(TransactItems=items)

    def _put_late(self, visit: VisitVersion, current: str) -> VisitWrite:
        """An older object processed after a newer one (SQS does not keep order): keep it as history."""
        return self._put_version(self._version_item(visit, SUPERSEDED, current), VisitWrite.LATE)
