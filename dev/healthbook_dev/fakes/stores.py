"""In-memory stand-ins for the delivery stage's storage ports: the visits' statuses (healthbook.delivery.service
.VisitStatusStore, with DynamoVisitStatus's conditions) and the sweep's lease (SweepLease, DynamoSweepLease's).
tests/test_contracts.py runs the same cases against each and its AWS adapter on moto, so a fake cannot drift from
what it stands in for."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from healthbook.delivery.model import (
    DEADLINE_BREACHED,
    DELIVERED,
    NEEDS_RECONCILIATION,
    DeliveredEntry,
    StoredVisit,
    Timing,
)
from healthbook.ingest.model import PENDING, SUPERSEDED, HeldVisits, VisitRef
from healthbook.reports.aggregates import CitizenMarker, CounterUpdate


@dataclass
class FakeOutbox:
    """healthbook.ingest.model.Outbox and OutboxReader in memory: each list invisible for its ``back_after``
    (the message's delivery delay) or, looked at again, for the time asked, then due until it is let go."""

    now: datetime | None = None  # the clock lists are held and read by; None: every list is due at once
    lists: dict[str, tuple[datetime | None, HeldVisits]] = field(default_factory=dict)  # each with when it is due
    held: int = 0  # lists ever held: each gets its own handle

    def hold(self, visits: Sequence[VisitRef], *, back_after: timedelta, stored_by: datetime) -> None:
        self.held += 1
        handle = f"list-{self.held}"
        self.lists[handle] = (self._after(back_after), HeldVisits(handle, tuple(visits), stored_by))

    def due(self, limit: int) -> list[HeldVisits]:
        ready = [listed for due_at, listed in self.lists.values()
                 if due_at is None or self.now is None or due_at <= self.now]
        return ready[:limit]

    def look_again(self, held: HeldVisits, after: timedelta) -> None:
        if held.handle in self.lists:
            self.lists[held.handle] = (self._after(after), self.lists[held.handle][1])

    def _after(self, wait: timedelta) -> datetime | None:
        return None if self.now is None else self.now + wait

    def let_go(self, held: Sequence[HeldVisits]) -> None:
        for listed in held:
            self.lists.pop(listed.handle, None)


@dataclass
class FakeSweepLease:
    """healthbook.delivery.SweepLease in memory: who holds it, until when."""

    holder: str | None = None
    held_until: datetime | None = None

    def take(self, holder: str, *, now: datetime, until: datetime) -> bool:
        if self.held_until is not None and self.held_until > now:
            return False
        self.holder, self.held_until = holder, until
        return True

    def release(self, holder: str) -> None:
        if self.holder == holder:
            self.holder = self.held_until = None


@dataclass
class Item:
    """One visit version as the fake table holds it (the attributes DynamoVisitStatus writes)."""

    ref: VisitRef
    status: str
    received_at: datetime
    deadline_at: datetime
    records: bytes | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    citizen_key: str | None = None
    reconciled_at: datetime | None = None
    reasons: tuple[str, ...] = ()
    delivered_at: datetime | None = None
    latency_ms: int | None = None
    receipt_id: str | None = None
    referral: bool = False  # the delivered entry carried a referral paper / a re-examination appointment
    reexam: bool = False
    projection_id: str | None = None  # which entry VNeID received: its id and digests (DeliveredEntry)
    projection_sha256: str | None = None
    mapping_sha256: str | None = None
    superseded_at: datetime | None = None
    breached_at: datetime | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    indexed: bool = True  # in the by-status-deadline index (a status that leaves it makes this moot)


class FakeStatusStore:
    """healthbook.delivery.VisitStatusStore in memory, with DynamoVisitStatus's conditions."""

    def __init__(self) -> None:
        self.items: dict[VisitRef, Item] = {}
        self.calls: list[str] = []
        self.race: dict[VisitRef, str] = {}  # status a concurrent writer sets just before the next write
        self.lease_race: dict[VisitRef, datetime] = {}  # a lease another sweep takes just before the next write
        # The report counters committed with each transition that has them (a delivery is counted from its item)
        self.counted: list[CounterUpdate | None] = []
        # distinct-citizen markers written: (scope, period) -> the kept marker's first day, None for a period's
        self.markers: dict[tuple[str, str], str | None] = {}

    def add(self, ref: VisitRef, *, received_at: datetime, records: bytes | None = None, status: str = PENDING,
            deadline_at: datetime | None = None, attempts: int = 0,
            next_attempt_at: datetime | None = None, indexed: bool = True) -> VisitRef:
        """A stored visit version, as ingest would have saved it (deadline: 24 h after receipt by default;
        ``indexed`` False: listed in the outbox and stored outside the status index)."""
        self.items[ref] = Item(ref=ref, status=status, received_at=received_at,
                               deadline_at=deadline_at or Timing().deadline_for(received_at), records=records,
                               attempts=attempts, next_attempt_at=next_attempt_at, indexed=indexed)
        return ref

    def status(self, ref: VisitRef) -> str:
        return self.items[ref].status

    def writes(self) -> list[str]:
        return [call for call in self.calls if call not in ("load", "due")]

    # the protocol

    def load(self, ref: VisitRef, *, with_records: bool = False) -> StoredVisit | None:
        self.calls.append("load")
        item = self.items.get(ref)
        if item is None:
            return None
        return StoredVisit(ref=item.ref, status=item.status, received_at=item.received_at,
                           deadline_at=item.deadline_at, attempts=item.attempts,
                           next_attempt_at=item.next_attempt_at, citizen_key=item.citizen_key,
                           reconciled=item.reconciled_at is not None,
                           records=item.records if with_records else None,
                           previous_version=self._previous(ref) if with_records else None)

    def _previous(self, ref: VisitRef) -> str | None:
        earlier = [r.version for r in self.items if r.visit_id == ref.visit_id and r.version < ref.version]
        return max(earlier) if earlier else None

    def _pending(self, name: str, ref: VisitRef) -> Item | None:
        self.calls.append(name)
        item = self.items.get(ref)
        if item is None:
            return None
        if ref in self.race:
            item.status = self.race.pop(ref)
        if ref in self.lease_race:
            item.next_attempt_at = self.lease_race.pop(ref)
        return item if item.status == PENDING else None

    def _move(self, item: Item, status: str) -> None:
        item.status = status
        item.next_attempt_at = None  # the lease goes with PENDING
        item.indexed = True  # NEEDS_RECONCILIATION and DEADLINE_BREACHED have entries; the others leave the index

    def mark_matched(self, ref: VisitRef, citizen_key: str, now: datetime) -> bool:
        item = self._pending("mark_matched", ref)
        if item is None:
            return False
        item.citizen_key, item.reconciled_at = citizen_key, now
        return True

    def mark_needs_reconciliation(self, ref: VisitRef, reasons: Sequence[str], now: datetime,
                                  count: CounterUpdate | None = None) -> bool:
        item = self._pending("mark_needs_reconciliation", ref)
        if item is None:
            return False
        self.counted.append(count)
        self._move(item, NEEDS_RECONCILIATION)
        item.reasons, item.reconciled_at = tuple(sorted(set(reasons))), now
        return True

    def mark_delivered(self, ref: VisitRef, *, delivered_at: datetime, latency_ms: int, receipt_id: str | None,
                       entry: DeliveredEntry, citizen_key: str, referral: bool = False, reexam: bool = False) -> bool:
        item = self._pending("mark_delivered", ref)
        if item is None:
            return False
        self._move(item, DELIVERED)
        item.referral, item.reexam = referral, reexam
        item.citizen_key, item.reconciled_at = citizen_key, item.reconciled_at or delivered_at
        item.delivered_at, item.latency_ms, item.receipt_id = delivered_at, latency_ms, receipt_id
        item.projection_id, item.projection_sha256, item.mapping_sha256 = (entry.projection_id, entry.sha256,
                                                                           entry.mapping_sha256)
        return True

    def mark_superseded(self, ref: VisitRef, now: datetime) -> bool:
        item = self._pending("mark_superseded", ref)
        if item is None:
            return False
        self._move(item, SUPERSEDED)
        item.superseded_at = now
        return True

    def count_citizen(self, markers: Sequence[CitizenMarker]) -> None:
        for marker in markers:
            self.markers.setdefault((marker.scope, marker.period), marker.first_day)  # a first day never moves

    def defer(self, ref: VisitRef, *, next_attempt_at: datetime, error: str, now: datetime) -> bool:
        item = self._pending("defer", ref)
        if item is None:
            return False
        item.next_attempt_at, item.last_error, item.last_attempt_at = next_attempt_at, error, now
        item.attempts += 1
        item.indexed = True
        return True

    def index_stranded(self, refs: Sequence[VisitRef]) -> int:
        self.calls.append("index_stranded")
        stranded = [self.items[ref] for ref in refs
                    if ref in self.items and self.items[ref].status == PENDING and not self.items[ref].indexed]
        for item in stranded:
            item.indexed = True
        return len(stranded)

    def mark_breached(self, ref: VisitRef, *, error: str, now: datetime,
                      count: CounterUpdate | None = None) -> bool:
        item = self._pending("mark_breached", ref)
        if item is None:
            return False
        self.counted.append(count)
        self._move(item, DEADLINE_BREACHED)
        item.breached_at, item.last_error = now, error
        return True

    def due(self, now: datetime, limit: int) -> Iterator[StoredVisit]:
        self.calls.append("due")
        ready = sorted((i for i in self.items.values() if i.status == PENDING and i.indexed
                        and (i.next_attempt_at is None or i.next_attempt_at <= now)),
                       key=lambda i: (i.deadline_at, i.ref.visit_id))
        for item in ready[:limit]:
            yield StoredVisit(ref=item.ref, status=PENDING, received_at=item.received_at,
                              deadline_at=item.deadline_at, attempts=item.attempts,
                              next_attempt_at=item.next_attempt_at)

    def claim(self, ref: VisitRef, *, now: datetime, lease_until: datetime) -> bool:
        item = self._pending("claim", ref)
        if item is None or (item.next_attempt_at is not None and item.next_attempt_at > now):
            return False
        item.next_attempt_at = lease_until
        return True
