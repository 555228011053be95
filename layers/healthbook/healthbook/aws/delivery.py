"""Delivery-stage adapters: visit statuses in DynamoDB, Step Functions starts, SNS.

Every status change is one conditional UpdateItem on ``status = PENDING``: a lost race answers False, not an
error; with its report counters (a reconciliation, a breach) it is one TransactWriteItems, tried again inside the
call when a concurrent transaction holds one of its items (records.ConflictRetry), then raised for the workflow's
retry. A delivery has no counter: the reports count the delivered items (``delivered_month``, docs/reports.md). The
distinct-citizen markers are plain idempotent writes, no transaction (``count_citizen``). Times are written as
``iso_utc`` strings like the rest of docs/data-model.md, so text order is time order.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from healthbook.aws.records import ConflictRetry, conditional_write
from healthbook.aws.settings import error_code
from healthbook.delivery.contracts import ExecutionInput, StepInput
from healthbook.delivery.model import DEADLINE_BREACHED, DELIVERED, NEEDS_RECONCILIATION, DeliveredEntry, StoredVisit
from healthbook.ingest.model import (
    LEAVES_STATUS_INDEX,
    PENDING,
    STATUS_SHARDS,
    SUPERSEDED,
    SWEEP_LEASE_KEY,
    VisitRef,
    facility_month,
    is_version_key,
    records_version,
    status_shard,
)
from healthbook.kernel import iso_utc, parse_time
from healthbook.reports.aggregates import FIRST_DAY, CitizenMarker, CounterUpdate

STATUS_INDEX = "by-status-deadline"
# What that index projects besides the keys (template.yaml must agree; a test checks it).
STATUS_INDEX_ATTRIBUTES = ("received_at", "next_attempt_at", "attempts")
_LIGHT = ("visit_id, version, #s, received_at, deadline_at, attempts, next_attempt_at, citizen_key, reconciled_at, "
          "province, district, commune")


_BATCH_ROUNDS = 9  # BatchGetItem / BatchWriteItem rounds of unprocessed keys before the step gives up
_BATCH_WRITE = 25  # BatchWriteItem's limit of items per request
_BATCH_GET = 100  # BatchGetItem's limit of keys per request


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def batch_get(dynamodb: Any, table: str, keys_and_attributes: dict[str, Any], what: str, *,
              consistent: bool = True) -> list[dict[str, Any]]:
    """The items of one table the keys name, those that exist, in BatchGetItems of at most 100 keys (``consistent``:
    strongly consistent reads, at twice the read units); keys left unprocessed under throttling asked for again
    after a backoff, then RuntimeError (the step is retried)."""
    keys = keys_and_attributes["Keys"]
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), _BATCH_GET):
        chunk = {**keys_and_attributes, "Keys": keys[start:start + _BATCH_GET], "ConsistentRead": consistent}
        found.extend(_batch_get_all(dynamodb, table, chunk, what))
    return found


def _batch_get_all(dynamodb: Any, table: str, keys_and_attributes: dict[str, Any], what: str) -> list[dict[str, Any]]:
    request: dict[str, Any] = {table: keys_and_attributes}
    found: list[dict[str, Any]] = []
    for attempt in range(_BATCH_ROUNDS):
        page = dynamodb.batch_get_item(RequestItems=request)
        found.extend(page.get("Responses", {}).get(table, []))
        request = page.get("UnprocessedKeys") or {}
        if not request:
            return found
        time.sleep(0.05 * 2 ** attempt)  # keys left unread under throttling: back off, then ask for them
    raise RuntimeError(f"{what} could not be read (throttled); the step will be retried")


def query_items(dynamodb: Any, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The items of a Query, page after page, read as they are needed."""
    request = dict(request)
    while True:
        page = dynamodb.query(**request)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _key(ref: VisitRef) -> dict[str, Any]:
    return {"visit_id": _s(ref.visit_id), "version": _s(ref.version)}


def _visit(item: dict[str, Any], status: str | None = None) -> StoredVisit:
    def text(name: str) -> str | None:
        value = item.get(name, {}).get("S")
        return str(value) if value is not None else None

    next_attempt = text("next_attempt_at")
    records = item.get("records", {}).get("B")
    return StoredVisit(
        ref=VisitRef(str(text("visit_id")), str(text("version"))), status=status or str(text("status")),
        received_at=parse_time(str(text("received_at"))), deadline_at=parse_time(str(text("deadline_at"))),
        attempts=int(item.get("attempts", {}).get("N", "0")),
        next_attempt_at=parse_time(next_attempt) if next_attempt else None, citizen_key=text("citizen_key"),
        reconciled="reconciled_at" in item, records=bytes(records) if records is not None else None,
        province=text("province"), district=text("district"), commune=text("commune"))


class DynamoVisitStatus:
    """healthbook.delivery.VisitStatusStore on the ``visits`` table."""

    def __init__(self, dynamodb: Any, *, visits_table: str, aggregates_table: str | None = None,
                 conflicts: ConflictRetry | None = None) -> None:
        self._db = dynamodb
        self.table = visits_table
        self.aggregates_table = aggregates_table
        self.conflicts = conflicts or ConflictRetry()  # its counts: the retries made

    def load(self, ref: VisitRef, *, with_records: bool = False) -> StoredVisit | None:
        if not with_records:
            item = self._db.get_item(TableName=self.table, Key=_key(ref), ConsistentRead=True,
                                     ProjectionExpression=_LIGHT,
                                     ExpressionAttributeNames={"#s": "status"}).get("Item")
            return None if item is None else _visit(item)
        # One consistent Query of the visit's items up to its records item: the versions (the one before this
        # is the one a resubmission's entry supersedes), the pointer, and the records items up to this version's.
        # A visit sent once holds three items, about 3 KB: one read unit, where a BatchGetItem of the version and its
        # records and a Query of the version before cost three. Versions stored before the records had their own
        # item kept them on the version item: read there then.
        held = records_version(ref.version)
        found = {i["version"]["S"]: i for i in query_items(self._db, {
            "TableName": self.table, "KeyConditionExpression": "visit_id = :id AND version <= :held",
            "ExpressionAttributeValues": {":id": _s(ref.visit_id), ":held": _s(held)}, "ConsistentRead": True,
            "ProjectionExpression": _LIGHT + ", records", "ExpressionAttributeNames": {"#s": "status"}})}
        item = found.get(ref.version)
        if item is None:
            return None
        if "records" not in item and "records" in found.get(held, {}):
            item = {**item, "records": found[held]["records"]}
        earlier = [key for key in found if is_version_key(key) and key < ref.version]
        return replace(_visit(item), previous_version=max(earlier) if earlier else None)

    def _update(self, ref: VisitRef, expression: str, values: dict[str, Any], *,
                condition: str = "#s = :pending", count: CounterUpdate | None = None) -> bool:
        update = {"TableName": self.table, "Key": _key(ref), "UpdateExpression": expression,
                  "ConditionExpression": condition, "ExpressionAttributeNames": {"#s": "status"},
                  "ExpressionAttributeValues": {":pending": _s(PENDING), **values}}
        return conditional_write(self._db, "Update", update, counters=self.aggregates_table, count=count,
                                 retry=self.conflicts)

    def _move(self, ref: VisitRef, status: str, extra_set: str, values: dict[str, Any],
              count: CounterUpdate | None = None) -> bool:
        """PENDING → ``status``: the GSI shard moves with it (or the visit leaves the index) and the lease goes."""
        if status in LEAVES_STATUS_INDEX:
            return self._update(ref, f"SET #s = :status{extra_set} REMOVE next_attempt_at, status_shard",
                                {":status": _s(status), **values}, count=count)
        return self._update(ref, f"SET #s = :status, status_shard = :shard{extra_set} REMOVE next_attempt_at",
                            {":status": _s(status), ":shard": _s(status_shard(status, ref.visit_id)), **values},
                            count=count)

    def mark_matched(self, ref: VisitRef, citizen_key: str, now: datetime) -> bool:
        return self._update(ref, "SET citizen_key = :k, reconciled_at = :t",
                            {":k": _s(citizen_key), ":t": _s(iso_utc(now))})

    def mark_needs_reconciliation(self, ref: VisitRef, reasons: Sequence[str], now: datetime,
                                  count: CounterUpdate | None = None) -> bool:
        values: dict[str, Any] = {":t": _s(iso_utc(now))}
        extra = ", reconciled_at = :t"
        if reasons:  # a string set cannot be empty
            values[":r"] = {"SS": sorted(set(reasons))}
            extra += ", reconciliation_reasons = :r"
        return self._move(ref, NEEDS_RECONCILIATION, extra, values, count)

    def mark_delivered(self, ref: VisitRef, *, delivered_at: datetime, latency_ms: int, receipt_id: str | None,
                       entry: DeliveredEntry, citizen_key: str, referral: bool = False, reexam: bool = False) -> bool:
        # The citizen key ingest wrote is usually the matched one: the by-citizen index is then not written again.
        # delivered_month puts the item in the by-facility-delivered index, which the reports count (one write unit,
        # where a counter in a transaction with the status change cost four). Never in the late partition: the
        # time is stamped in the attempt that writes it (ingest.model.LATE_AFTER).
        values: dict[str, Any] = {":t": _s(iso_utc(delivered_at)), ":l": {"N": str(latency_ms)},
                                  ":pid": _s(entry.projection_id), ":psha": _s(entry.sha256),
                                  ":msha": _s(entry.mapping_sha256), ":k": _s(citizen_key),
                                  ":dm": _s(facility_month(ref.facility, delivered_at))}
        extra = (", delivered_at = :t, latency_ms = :l, projection_id = :pid, projection_sha256 = :psha,"
                 " mapping_sha256 = :msha, citizen_key = :k, reconciled_at = if_not_exists(reconciled_at, :t),"
                 " delivered_month = :dm")
        for paper, present in (("referral", referral), ("reexam", reexam)):
            if present:
                values[f":{paper}"] = {"BOOL": True}
                extra += f", {paper} = :{paper}"
        if receipt_id:
            values[":r"] = _s(receipt_id)
            extra += ", vneid_receipt_id = :r"
        return self._move(ref, DELIVERED, extra, values)

    def mark_superseded(self, ref: VisitRef, now: datetime) -> bool:
        return self._move(ref, SUPERSEDED, ", superseded_at = :t, superseded_by = :by",
                          {":t": _s(iso_utc(now)), ":by": _s("VNEID_NEWER_VERSION")})

    def count_citizen(self, markers: Sequence[CitizenMarker]) -> None:
        """Write the markers not written yet; a report counts a partition's items (docs/reports.md), so a marker
        written twice is still one citizen and nothing here needs a transaction, nor meets a TransactionConflict.
        Which exist: one BatchGetItem, eventually consistent (a returning citizen costs only that; half the read
        units of a consistent read, and a marker written a moment ago and not seen is only written again, as a racing
        delivery would). The missing period markers: one
        BatchWriteItem (the same item every time; a racing delivery rewrites it harmlessly). The missing kept ones:
        an UpdateItem each that sets ``first_day`` only if absent, so a retry or a racing delivery never moves it.
        A crash part-way leaves some written: the retry reads them and writes the rest."""
        table = self.aggregates_table
        if not table or not markers:
            return
        present = self._existing(table, markers)
        missing = {(m.scope, m.period): m for m in markers if (m.scope, m.period) not in present}
        self._put_markers(table, [m for m in missing.values() if m.first_day is None])
        for marker in missing.values():
            if marker.first_day is not None:
                self._keep_marker(table, marker)

    def _put_markers(self, table: str, markers: Sequence[CitizenMarker]) -> None:
        for start in range(0, len(markers), _BATCH_WRITE):
            request: dict[str, Any] = {table: [
                {"PutRequest": {"Item": {"scope": _s(m.scope), "period": _s(m.period),
                                         "expires_at": {"N": str(m.expires_at)}}}}
                for m in markers[start:start + _BATCH_WRITE]]}
            for attempt in range(_BATCH_ROUNDS):
                request = self._db.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
                if not request:
                    break
                time.sleep(0.05 * 2 ** attempt)  # items left unwritten under throttling: back off, then send them
            else:
                raise RuntimeError("distinct-citizen markers could not be written (throttled); the step will be "
                                   "retried")

    def _keep_marker(self, table: str, marker: CitizenMarker) -> None:
        # An item without first_day is a marker from before it existed: its citizen is in a counter item already
        # (LEGACY_COUNTERS), and a day given to it now would count the citizen twice. Only a delivery racing an old
        # writer during the upgrade can find one here: the read above saw none.
        try:
            self._db.update_item(
                TableName=table, Key={"scope": _s(marker.scope), "period": _s(marker.period)},
                UpdateExpression="SET #d = if_not_exists(#d, :day)",
                ConditionExpression="attribute_not_exists(#p) OR attribute_exists(#d)",
                ExpressionAttributeNames={"#d": FIRST_DAY, "#p": "period"},
                ExpressionAttributeValues={":day": _s(str(marker.first_day))})
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def _existing(self, table: str, markers: Sequence[CitizenMarker]) -> set[tuple[str, str]]:
        items = batch_get(self._db, table, {
            "Keys": [{"scope": _s(m.scope), "period": _s(m.period)} for m in markers],
            "ProjectionExpression": "#sc, #p", "ExpressionAttributeNames": {"#sc": "scope", "#p": "period"}},
            "distinct-citizen markers", consistent=False)
        return {(i["scope"]["S"], i["period"]["S"]) for i in items}

    def defer(self, ref: VisitRef, *, next_attempt_at: datetime, error: str, now: datetime) -> bool:
        # status_shard set: the same value for a visit in the index, its entry for one the outbox listed
        return self._update(ref, "SET next_attempt_at = :n, last_error = :e, last_attempt_at = :t, "
                                 "status_shard = :shard ADD attempts :one",
                            {":n": _s(iso_utc(next_attempt_at)), ":e": _s(error), ":t": _s(iso_utc(now)),
                             ":shard": _s(status_shard(PENDING, ref.visit_id)), ":one": {"N": "1"}})

    def index_stranded(self, refs: Sequence[VisitRef]) -> int:
        # Read first (half a read unit each, eventually consistent: the lists come back minutes after the writes):
        # a conditional write refused would cost a write unit, and most listed visits are delivered by then.
        listed = batch_get(self._db, self.table, {
            "Keys": [_key(ref) for ref in refs], "ProjectionExpression": "visit_id, version, #s, status_shard",
            "ExpressionAttributeNames": {"#s": "status"}}, "the outbox's visits", consistent=False)
        stranded = [VisitRef(item["visit_id"]["S"], item["version"]["S"]) for item in listed
                    if item["status"]["S"] == PENDING and "status_shard" not in item]
        return sum(self._update(ref, "SET status_shard = :shard", {":shard": _s(status_shard(PENDING, ref.visit_id))},
                                condition="#s = :pending AND attribute_not_exists(status_shard)")
                   for ref in stranded)

    def mark_breached(self, ref: VisitRef, *, error: str, now: datetime,
                      count: CounterUpdate | None = None) -> bool:
        return self._move(ref, DEADLINE_BREACHED, ", breached_at = :t, last_error = :e",
                          {":t": _s(iso_utc(now)), ":e": _s(error)}, count)

    def claim(self, ref: VisitRef, *, now: datetime, lease_until: datetime) -> bool:
        return self._update(ref, "SET next_attempt_at = :lease",
                            {":lease": _s(iso_utc(lease_until)), ":now": _s(iso_utc(now))},
                            condition="#s = :pending AND (attribute_not_exists(next_attempt_at) "
                                      "OR next_attempt_at <= :now)")

    def due(self, now: datetime, limit: int) -> Iterator[StoredVisit]:
        """Due PENDING visits, the earliest deadline first across the 8 shards of the by-status-deadline index
        (each shard is read in deadline order, page by page, and the shards merged): a sweep that stops at
        ``limit`` leaves the latest deadlines for the next one."""
        shards = [self._due_in(shard, now) for shard in range(STATUS_SHARDS)]
        merged = heapq.merge(*shards, key=lambda visit: (visit.deadline_at, visit.ref.visit_id))
        yield from itertools.islice(merged, max(0, limit))

    def _due_in(self, shard: int, now: datetime) -> Iterator[StoredVisit]:
        for item in query_items(self._db, {
            "TableName": self.table, "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "status_shard = :shard",
            "FilterExpression": "attribute_not_exists(next_attempt_at) OR next_attempt_at <= :now",
            "ExpressionAttributeValues": {":shard": _s(f"{PENDING}#{shard}"), ":now": _s(iso_utc(now))},
        }):
            yield _visit(item, PENDING)


class DynamoSweepLease:
    """healthbook.delivery.SweepLease: one item of the visits table, ``SWEEP_LEASE_KEY`` (no visit has its key; it
    has none of the indexes' keys). Two conditional UpdateItems a run: two write units every few minutes."""

    def __init__(self, dynamodb: Any, *, visits_table: str) -> None:
        self._db = dynamodb
        self.table = visits_table
        visit_id, version = SWEEP_LEASE_KEY
        self._key = {"visit_id": _s(visit_id), "version": _s(version)}

    def take(self, holder: str, *, now: datetime, until: datetime) -> bool:
        return conditional_write(self._db, "Update", {
            "TableName": self.table, "Key": self._key,
            "UpdateExpression": "SET holder = :holder, held_until = :until",
            "ConditionExpression": "attribute_not_exists(held_until) OR held_until <= :now",
            "ExpressionAttributeValues": {":holder": _s(holder), ":until": _s(iso_utc(until)),
                                          ":now": _s(iso_utc(now))}}, counters=None, count=None)

    def release(self, holder: str) -> None:
        conditional_write(self._db, "Update", {
            "TableName": self.table, "Key": self._key, "UpdateExpression": "REMOVE holder, held_until",
            "ConditionExpression": "holder = :holder", "ExpressionAttributeValues": {":holder": _s(holder)}},
            counters=None, count=None)


class StepFunctionsStarter:
    """healthbook.ingest.DeliveryStarter: one Express execution of the delivery state machine per batch."""

    def __init__(self, sfn: Any, *, state_machine_arn: str) -> None:
        self._sfn = sfn
        self.state_machine_arn = state_machine_arn

    def start(self, name: str, visits: Sequence[VisitRef]) -> None:
        # Express executions are not deduplicated by name; the states' conditions make a second run harmless.
        self._sfn.start_execution(stateMachineArn=self.state_machine_arn, name=_execution_name(name),
                                  input=execution_input(visits))


def execution_input(visits: Sequence[VisitRef]) -> str:
    """The execution's input, as the contract says (delivery.contracts.ExecutionInput)."""
    steps = [StepInput(visit_id=v.visit_id, version=v.version) for v in visits]
    return ExecutionInput(visits=steps).model_dump_json()


def _execution_name(name: str) -> str:
    """At most 80 characters of letters, digits, - and _ (the Step Functions rule)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
    return cleaned[:80]


class SnsNotifier:
    def __init__(self, sns: Any, *, topic_arn: str) -> None:
        self._sns = sns
        self.topic_arn = topic_arn

    def notify(self, subject: str, message: dict[str, Any]) -> None:
        self._sns.publish(TopicArn=self.topic_arn, Subject=subject[:100],
                          Message=json.dumps(message, ensure_ascii=False, indent=1))
