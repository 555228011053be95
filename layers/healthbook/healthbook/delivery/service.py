"""The delivery stage over ports: the steps the workflow runs for one visit, and the sweep that restarts it.

Pure: no AWS. The Express workflow (infra/statemachine/delivery.asl.json) calls one step per task state:

    deliver                              (fast path: match the citizen against the population database, build
                                          the entry in memory and PUT it; Retry on the retryable errors)
    settle                               (Catch path: try again later, or escalate at the cutoff)
    summarise                            (once per execution: what happened, and which visits breached)

Every status change is conditional on the visit still being PENDING, so two executions holding the same visit
(a duplicate start, a sweep racing a slow execution) change it once; VNeID's Idempotency-Key makes the second
PUT a no-op there too. Each step is a use case with the dependencies it needs (``Deliver``, ``Settle``) and
returns a contract of delivery/contracts.py: keys and codes only, so the workflow's state never holds personal
data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from healthbook.delivery.contracts import (
    DeliverResult,
    ItemResult,
    SettleResult,
    StepResult,
    Summary,
)
from healthbook.delivery.model import MAX_BATCH, DeliveredEntry, StoredVisit, Timing, VisitRef
from healthbook.ingest.model import PENDING, OutboxReader
from healthbook.ingest.model import DeliveryStarter as WorkflowStarter  # one port, two names
from healthbook.kernel import Metrics, NoMetrics, Outcome, citizen_key, epoch_ms, parse_time
from healthbook.kernel import iso_utc as iso  # one spelling of time: text order is time order
from healthbook.projection import dumps, mapping_sha256, project, projection_id
from healthbook.reconcile import PopulationRegistry, identity_from_summary, reconcile
from healthbook.reports.aggregates import (
    CitizenMarker,
    CounterUpdate,
    citizen_markers,
    for_breach,
    for_reconciliation,
)
from healthbook.vneid.client import RetryableDeliveryError

__all__ = [
    "Deliver",
    "Deliverer",
    "Notifier",
    "Settle",
    "SweepReport",
    "Sweeper",
    "VisitStatusStore",
    "WorkflowStarter",
    "summarise",
]

log = logging.getLogger(__name__)

# Kept on the item and in logs: an error's name, clipped; never its message (it could quote a value).
_MAX_ERROR_NAME = 80
# A sweep stops claiming with this much of its invocation left, for its last StartExecution and the notice. Under
# bench-load's backlog every sweep claimed one visit at a time until its 120 s timeout and was killed, twice retried.
SWEEP_TIME_MARGIN_MS = 20_000
OUTBOX_LISTS_A_READ = 10  # SQS gives at most ten messages a ReceiveMessage


# --- ports ----------------------------------------------------------------------------------------------

class VisitStatusStore(Protocol):
    """The visits table as the delivery stage uses it; every ``mark_*``/``defer``/``claim`` is conditional on
    the version still being PENDING and returns False when it no longer is."""

    def load(self, ref: VisitRef, *, with_records: bool = False) -> StoredVisit | None:
        """``with_records``: its records too, and the version key just before it (``previous_version``)."""
        ...

    def mark_matched(self, ref: VisitRef, citizen_key: str, now: datetime) -> bool:
        """The population matched the visit's citizen: ``citizen_key`` is kept, and a later attempt delivers
        without matching again (``StoredVisit.reconciled``)."""
        ...

    def mark_needs_reconciliation(self, ref: VisitRef, reasons: Sequence[str], now: datetime,
                                  count: CounterUpdate | None = None) -> bool:
        """``count``: report counters committed with the change, or not at all (docs/reports.md)."""
        ...

    def mark_delivered(self, ref: VisitRef, *, delivered_at: datetime, latency_ms: int, receipt_id: str | None,
                       entry: DeliveredEntry, citizen_key: str, referral: bool = False, reexam: bool = False) -> bool:
        """``entry``: which entry VNeID received (its id and digests), kept on the item for audit; ``citizen_key``:
        the matched citizen's, under which VNeID holds it (also the match's record when none was kept before).
        The item is what the reports count (``for_delivery`` of its latency, deadline and ``referral``/``reexam``
        papers, on its facility and Vietnam day): no counter is written, so the change needs no transaction."""
        ...

    def mark_superseded(self, ref: VisitRef, now: datetime) -> bool: ...

    def count_citizen(self, markers: Sequence[CitizenMarker]) -> None:
        """Write the markers not written yet: a report counts a partition's marker items, so a citizen is counted
        once per scope and period however often a delivery is retried; a kept marker's first day never moves
        (docs/reports.md)."""
        ...

    def defer(self, ref: VisitRef, *, next_attempt_at: datetime, error: str, now: datetime) -> bool:
        """Another attempt at ``next_attempt_at``; the visit enters the status index if it was not in it (a visit the
        outbox listed is stored outside it: only a delivery that failed puts it there)."""
        ...

    def index_stranded(self, refs: Sequence[VisitRef]) -> int:
        """Those of ``refs`` still PENDING outside the status index (listed in the outbox, and their delivery
        lost: never started, or never settled) enter it, so that ``due`` finds them; how many did. A version never
        stored, or indexed, settled or superseded meanwhile, is left alone."""
        ...

    def mark_breached(self, ref: VisitRef, *, error: str, now: datetime,
                      count: CounterUpdate | None = None) -> bool: ...

    def due(self, now: datetime, limit: int) -> Iterator[StoredVisit]:
        """PENDING versions whose ``next_attempt_at`` has come (or that have none), nearest deadline first
        within each shard; at most ``limit``."""
        ...

    def claim(self, ref: VisitRef, *, now: datetime, lease_until: datetime) -> bool:
        """Take a due visit for one execution: ``next_attempt_at`` moves to ``lease_until``."""
        ...


class Deliverer(Protocol):
    """healthbook.vneid.VneidClient: returns a Delivery or raises RetryableDeliveryError/PermanentDeliveryError."""

    def deliver(self, citizen_key: str, entry: Any) -> Any: ...


class Notifier(Protocol):
    def notify(self, subject: str, message: dict[str, Any]) -> None: ...


class SweepLease(Protocol):
    """One sweep at a time. Two runs would read the same due visits and each lose the claims the other took first:
    a refused conditional write is a write unit, and a run that only loses claims restarts nothing."""

    def take(self, holder: str, *, now: datetime, until: datetime) -> bool:
        """True when no run holds the lease, or its holder's time has ended (a run killed at its timeout)."""
        ...

    def release(self, holder: str) -> None:
        """Free it, if ``holder`` still holds it."""
        ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def error_name(error: object) -> str:
    text = str(error or "Unknown").strip() or "Unknown"
    return text[:_MAX_ERROR_NAME]


def version_ms(version_key: str) -> int:
    """The projection version of a visit version key ``{received_at}#{submission}``: epoch ms of receipt."""
    return epoch_ms(parse_time(version_key.split("#", 1)[0]))


def delivered_entry(entry: dict[str, Any]) -> DeliveredEntry:
    """What the delivered item keeps of ``entry``: its id, the SHA-256 of its one byte form (``dumps``) and of
    the mapping that built it. Rebuilding the entry from the stored records reproduces both digests."""
    return DeliveredEntry(projection_id=str(entry["projection_id"]),
                          sha256=hashlib.sha256(dumps(entry).encode("utf-8")).hexdigest(),
                          mapping_sha256=mapping_sha256())


# --- the steps ------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class _Step:
    """What every step shares: the visit's status, the metrics, the clock."""

    store: VisitStatusStore
    metrics: Metrics = field(default_factory=NoMetrics)
    now: Callable[[], datetime] = utc_now

    def _pending(self, ref: VisitRef, *, with_records: bool = False) -> StoredVisit | None:
        visit = self.store.load(ref, with_records=with_records)
        if visit is None or visit.status != PENDING:
            return None
        return visit


def _skipped(ref: VisitRef) -> StepResult:
    return StepResult(visit_id=ref.visit_id, outcome=Outcome.SKIPPED)


def _stored(visit: StoredVisit) -> dict[str, Any]:
    if visit.records is None:
        raise ValueError(f"visit {visit.ref.visit_id}: no records stored")
    stored: dict[str, Any] = json.loads(gzip.decompress(visit.records))
    return stored


@dataclass(frozen=True, kw_only=True)
class Deliver(_Step):
    """One visit, one read of it: match its citizen against the population database, build the health-book entry
    from the stored records and make one PUT of it to VNeID. Matching and delivering were two steps (two Lambda
    invocations, two reads, a write between them) until issue 17 (docs/cost.md).

    A mismatch parks the visit as NEEDS_RECONCILIATION with its reason codes. PopulationUnavailable propagates
    (the workflow retries it). A match is written down on its own only when the attempt fails after it (the
    projection, the PUT or recording it: ``mark_matched``), so the retry delivers without asking the population
    again; on success the delivered status records it. The entry is not
    kept anywhere: it follows from the records and the mapping, so the delivered item records its id and digests
    (``DeliveredEntry``). SensitiveDataError, like any projection error, propagates before anything is sent: the
    Catch path parks the visit. RetryableDeliveryError propagates (the workflow retries with backoff);
    PermanentDeliveryError too (the Catch path)."""

    population: PopulationRegistry
    pepper: bytes = field(repr=False)
    vneid: Deliverer

    def __call__(self, ref: VisitRef) -> StepResult:
        visit = self._pending(ref, with_records=True)
        if visit is None:
            return _skipped(ref)
        stored = _stored(visit)
        if visit.reconciled and visit.citizen_key:
            key = visit.citizen_key  # matched by an earlier attempt
        else:
            match = self._match(ref, stored)
            if isinstance(match, StepResult):
                return match
            key = match
        try:
            entry = self._project(ref, visit, stored)
            delivery = self.vneid.deliver(key, entry)
        except Exception:
            if not visit.reconciled:
                self._keep_match(ref, key)
            raise
        now = self.now()
        if delivery.outcome == "superseded":  # VNeID already holds a newer version of this visit
            if not self.store.mark_superseded(ref, now):
                return _skipped(ref)
            return StepResult(visit_id=ref.visit_id, outcome=Outcome.SUPERSEDED)
        latency_ms = max(0, epoch_ms(now) - epoch_ms(visit.received_at))
        delivered = delivered_entry(entry)
        try:
            # Markers before the status change: a crash in between leaves the visit PENDING, and the retry
            # finds the markers written and writes only what is missing (a count is the number of markers).
            self.store.count_citizen(citizen_markers(key, now, facility=ref.facility,
                                                     province=visit.province or ref.facility[:2],
                                                     district=visit.district, commune=visit.commune))
            recorded = self.store.mark_delivered(ref, delivered_at=now, latency_ms=latency_ms,
                                                 receipt_id=delivery.receipt_id, entry=delivered, citizen_key=key,
                                                 referral=bool(entry.get("referral")),
                                                 reexam=bool(entry.get("reexam")))
        except Exception as exc:
            # VNeID holds the entry; only our record of it failed (throttling, say). Retrying the step replays
            # the idempotent PUT and records it, instead of the Catch path settling a delivered visit as late.
            if not visit.reconciled:
                self._keep_match(ref, key)
            response = getattr(exc, "response", None)  # an AWS error's code, without importing botocore here
            code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
            raise RetryableDeliveryError(f"stored at VNeID, not yet recorded: {code or type(exc).__name__}",
                                         code=code) from exc
        if not recorded:
            return _skipped(ref)  # a concurrent execution recorded it first; VNeID stored it once
        self.metrics.count("VisitsDelivered")
        self.metrics.latency("DeliveryLatency", latency_ms)
        if now <= visit.deadline_at:
            self.metrics.count("VisitsDeliveredInTime")
        return DeliverResult(visit_id=ref.visit_id, outcome=Outcome.DELIVERED, latency_ms=latency_ms)

    def _match(self, ref: VisitRef, stored: dict[str, Any]) -> str | StepResult:
        """The matched citizen's key, or the step's result when there is none (NEEDS_RECONCILIATION, or SKIPPED
        when the visit left PENDING meanwhile)."""
        summary = (stored.get("tables", {}).get("XML1") or [{}])[0]
        match = reconcile(identity_from_summary(summary), self.population)
        if not match.matched or match.citizen_key_material is None:
            now = self.now()
            count = for_reconciliation(ref.facility, now, match.reasons)
            if not self.store.mark_needs_reconciliation(ref, match.reasons, now, count=count):
                return _skipped(ref)  # superseded or settled meanwhile: not ours to report
            for reason in match.reasons:
                self.metrics.count("ReconciliationNeeded", reason=reason)
            return DeliverResult(visit_id=ref.visit_id, outcome=Outcome.NEEDS_RECONCILIATION,
                                 reasons=list(match.reasons))
        key = citizen_key(self.pepper, match.citizen_key_material)
        if key is None:  # the registry matched a citizen without a number: a bug upstream, not a match
            raise RuntimeError("a matched citizen has no ID number")
        return key

    def _keep_match(self, ref: VisitRef, key: str) -> None:
        """Best effort, on the way out of a failed attempt: the error that failed it is what the workflow sees."""
        try:
            self.store.mark_matched(ref, key, self.now())
        except Exception as exc:  # the next attempt matches again: nothing is lost
            log.warning("match not kept", extra={"visit_id": ref.visit_id, "error": type(exc).__name__})

    def _project(self, ref: VisitRef, visit: StoredVisit, stored: dict[str, Any]) -> dict[str, Any]:
        """The entry of this version, the same on every retry; a resubmission's supersedes the previous version's."""
        previous = visit.previous_version
        supersedes = projection_id(ref.visit_id, version_ms(previous)) if previous else None
        return project(stored, facility=ref.facility, received_at=visit.received_at,
                       version=version_ms(ref.version), supersedes=supersedes)


@dataclass(frozen=True, kw_only=True)
class Settle(_Step):
    """The Catch path: a step failed beyond its retries. Before the cutoff, wait and try again (the sweep
    restarts the visit at ``next_attempt_at``); from the cutoff on, escalate: DEADLINE_BREACHED."""

    timing: Timing = field(default_factory=Timing)
    rng: random.Random = field(default_factory=random.Random)

    def __call__(self, ref: VisitRef, error: object) -> StepResult:
        visit = self._pending(ref)
        if visit is None:
            return _skipped(ref)
        name, now = error_name(error), self.now()
        if now >= self.timing.cutoff(visit.deadline_at):
            return self._breach(ref, name, now)
        when = self.timing.next_attempt(now, visit.attempts + 1, visit.deadline_at, self.rng)
        if not self.store.defer(ref, next_attempt_at=when, error=name, now=now):
            return _skipped(ref)
        self.metrics.count("DeliveryDeferred")
        log.info("delivery deferred", extra={"visit_id": ref.visit_id, "error": name,
                                             "next_attempt_at": iso(when), "attempts": visit.attempts + 1})
        return SettleResult(visit_id=ref.visit_id, outcome=Outcome.DEFERRED, next_attempt_at=iso(when), error=name)

    def _breach(self, ref: VisitRef, name: str, now: datetime) -> StepResult:
        if not self.store.mark_breached(ref, error=name, now=now, count=for_breach(ref.facility, now)):
            return _skipped(ref)
        self.metrics.count("DeadlineBreached")
        log.error("deadline breached", extra={"visit_id": ref.visit_id, "error": name})
        return SettleResult(visit_id=ref.visit_id, outcome=Outcome.DEADLINE_BREACHED, error=name)


def _visit_results(batch: Any) -> list[Any]:
    """A batch's item of the Map's results (``SummariseInput``) as one result per visit."""
    if not isinstance(batch, dict):
        return [None]
    if isinstance(batch.get("results"), list):
        return list(batch["results"])
    visits = batch.get("visits")
    return [{"visit_id": visit.get("visit_id") if isinstance(visit, dict) else None,
             "outcome": batch.get("outcome", "UNKNOWN")} for visit in (visits if isinstance(visits, list) else [None])]


def summarise(batches: Iterable[Any]) -> Summary:
    """One execution's outcome counts, a visit each, and the visits it escalated (for the SNS message)."""
    counts: Counter[str] = Counter()
    breached: list[str] = []
    for result in (result for batch in batches for result in _visit_results(batch)):
        item = ItemResult.model_validate(result) if isinstance(result, dict) else ItemResult()
        counts[item.outcome] += 1
        if item.outcome == Outcome.DEADLINE_BREACHED:
            breached.append(str(item.visit_id))
    return Summary(counts=dict(sorted(counts.items())), breached_count=len(breached), breached=breached[:MAX_BATCH])


# --- the sweep ------------------------------------------------------------------------------------------

@dataclass
class SweepReport:
    claimed: int = 0
    executions: int = 0
    breached: list[str] = field(default_factory=list)
    lost_claims: int = 0  # due visits an execution (or, before the lease, another sweep) took first
    stopped_early: bool = False  # too little of the invocation left: the rest wait for the next sweep
    held_elsewhere: bool = False  # another run holds the lease: this one did nothing
    outbox_lists: int = 0  # outbox lists looked after
    outbox_again: int = 0  # of those, lists read while their ingest invocation could still store: back after it
    stranded: int = 0  # visits of those lists still PENDING outside the status index, now in it
    outbox_failed: bool = False  # reading the outbox failed: its lists come back to a later run

    def to_dict(self) -> dict[str, Any]:
        return {"claimed": self.claimed, "executions": self.executions, "breached_count": len(self.breached),
                "breached": self.breached[:MAX_BATCH], "lost_claims": self.lost_claims,
                "stopped_early": self.stopped_early, "held_elsewhere": self.held_elsewhere,
                "outbox_lists": self.outbox_lists, "outbox_again": self.outbox_again, "stranded": self.stranded,
                "outbox_failed": self.outbox_failed}


@dataclass
class Sweeper:
    """Runs every few minutes: restarts due visits in batches, and is the backstop for the deadline itself.

    A visit still PENDING past its *deadline* (not merely the cutoff) had its chance: a workflow that never
    settled it (a failed start, a broken deployment) must not hide it, so the sweep marks it
    DEADLINE_BREACHED itself and notifies.

    With an ``outbox``, a run first looks after the outbox's lists whose lease is over: the visits ingest stored
    outside the status index whose delivery was lost enter it (``index_stranded``), for this run's claims or the
    next's (docs/delivery.md, *The outbox*).
    """

    store: VisitStatusStore
    starter: WorkflowStarter
    lease: SweepLease
    timing: Timing = field(default_factory=Timing)
    notifier: Notifier | None = None
    metrics: Metrics = field(default_factory=NoMetrics)
    batch_size: int = MAX_BATCH
    limit: int = 5000  # visits per sweep; the rest wait for the next one (the oldest deadlines come first)
    outbox: OutboxReader | None = None
    outbox_limit: int = 500  # outbox lists per sweep (one per ingest window: about 60 in 5 minutes nationally)

    def sweep(self, now: datetime, run_name: str, *, time_left_ms: Callable[[], int] | None = None) -> SweepReport:
        """``time_left_ms``: what is left of the invocation. The sweep stops claiming with SWEEP_TIME_MARGIN_MS left,
        starts what it claimed and notifies: one killed at its timeout leaves up to a batch claimed and not started
        (their lease must lapse first), and is retried from the start by the scheduler.

        A run first takes the sweep's lease, until its invocation ends (the visits' lease when it has no end), and
        frees it when done, or lets it lapse when it cannot: a run that meets the lease held does nothing
        (``held_elsewhere``)."""
        report = SweepReport()
        until = now + (timedelta(milliseconds=time_left_ms()) if time_left_ms is not None else self.timing.lease)
        if not self.lease.take(run_name, now=now, until=until):
            report.held_elsewhere = True
            return report
        try:
            self._sweep(now, run_name, report, time_left_ms)
        finally:
            try:
                self.lease.release(run_name)
            except Exception as exc:  # not to hide the run's own error: the lease lapses at ``until`` anyway
                log.warning("sweep lease not freed", extra={"error": type(exc).__name__})
        return report

    def _look_after_outbox(self, report: SweepReport, now: datetime,
                           time_left_ms: Callable[[], int] | None) -> None:
        """The outbox's due lists, ten at a time: their stranded visits indexed, then each list let go, or, when
        the ingest invocation that listed them may still be storing one (a lease shorter than an invocation),
        made to come back once it has ended. A failure stops here without stopping the sweep: the lists not let
        go come back to a later run (and after a few times to the dead-letter queue, whose alarm is ops')."""
        if self.outbox is None:
            return
        try:
            while report.outbox_lists < self.outbox_limit:
                if time_left_ms is not None and time_left_ms() < SWEEP_TIME_MARGIN_MS:
                    report.stopped_early = True
                    return
                held = self.outbox.due(min(OUTBOX_LISTS_A_READ, self.outbox_limit - report.outbox_lists))
                if not held:
                    return
                report.stranded += self.store.index_stranded([visit for listed in held for visit in listed.visits])
                # a list back before its invocation's end: a visit may yet be stored, so it is looked at again
                still_storing = {listed.handle: listed.stored_by - now for listed in held
                                 if listed.stored_by is not None and listed.stored_by > now}
                self.outbox.let_go([listed for listed in held if listed.handle not in still_storing])
                for listed in held:
                    if listed.handle in still_storing:
                        self.outbox.look_again(listed, still_storing[listed.handle])
                report.outbox_lists += len(held)
                report.outbox_again += len(still_storing)
        except Exception as exc:
            report.outbox_failed = True
            log.warning("outbox not looked after; its lists come back", extra={"error": type(exc).__name__})

    def _sweep(self, now: datetime, run_name: str, report: SweepReport,
               time_left_ms: Callable[[], int] | None) -> None:
        self._look_after_outbox(report, now, time_left_ms)
        if report.stopped_early:
            return
        batch: list[VisitRef] = []
        lease_until = now + self.timing.lease

        def flush() -> None:
            if batch:
                self.starter.start(f"{run_name}-{report.executions}", list(batch))
                report.executions += 1
                batch.clear()

        for visit in self.store.due(now, self.limit):
            if time_left_ms is not None and time_left_ms() < SWEEP_TIME_MARGIN_MS:
                report.stopped_early = True
                break
            if now >= visit.deadline_at:
                if self.store.mark_breached(visit.ref, error="NotDeliveredByDeadline", now=now,
                                            count=for_breach(visit.ref.facility, now)):
                    report.breached.append(visit.ref.visit_id)
                    self.metrics.count("DeadlineBreached")
                continue
            if not self.store.claim(visit.ref, now=now, lease_until=lease_until):
                report.lost_claims += 1
                continue
            report.claimed += 1
            batch.append(visit.ref)
            if len(batch) >= self.batch_size:
                flush()
        flush()
        if report.breached and self.notifier is not None:
            self.notifier.notify("Healthbook: visits not delivered to VNeID by their deadline",
                                 {"source": "sweep", "breached_count": len(report.breached),
                                  "breached": report.breached[:MAX_BATCH], "at": iso(now)})

