"""What ingestion reads and writes, as plain values: the S3 object, the items of docs/data-model.md, the outcome.

Pure: no AWS. The adapters in healthbook.aws turn these into DynamoDB items and S3 calls.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from healthbook.kernel import DEADLINE, FACILITY_CODE, PORTAL_TZ, SubmissionStatus, VisitStatus, iso_utc

# Visit statuses (kernel.VisitStatus); the delivery stage adds DELIVERED, NEEDS_RECONCILIATION, DEADLINE_BREACHED.
PENDING = VisitStatus.PENDING
SUPERSEDED = VisitStatus.SUPERSEDED
# Submission statuses.
ACCEPTED = SubmissionStatus.ACCEPTED
PARTIAL = SubmissionStatus.PARTIAL
REJECTED = SubmissionStatus.REJECTED

STATUS_SHARDS = 8
# A delivered or superseded visit leaves the by-status-deadline index (its status_shard removed): the index
# answers what is still to do (pending, awaiting reconciliation, breached); leaving it costs one index write where
# moving to another shard costs two, and no entry stays in it for ever (docs/cost.md).
LEAVES_STATUS_INDEX = frozenset({VisitStatus.DELIVERED, VisitStatus.SUPERSEDED})
DELIVERY_BATCH = 50  # visits per delivery execution (docs/cost.md)
LATEST = "LATEST"  # the sort key of a visit's pointer item
# A version's records live in their own item, written once before the version item: each status change then
# rewrites a few hundred bytes, not the records' kilobytes (docs/cost.md). Its sort key sorts after "LATEST", which
# sorts after every ISO version key, so a query for versions never returns either.
RECORDS_PREFIX = "RECORDS#"
# The sweep's lease shares the table under a key no visit has (a visit id is "{facility}#{MA_LK}"): docs/delivery.md.
SWEEP_LEASE_KEY = ("#sweep", "LEASE")


def records_version(version: str) -> str:
    """The sort key of the item holding ``version``'s records."""
    return RECORDS_PREFIX + version


def is_version_key(sort_key: str) -> bool:
    """Whether a ``visits`` item with this sort key is a version: ``{received_at}#…``, which begins with the year
    (not the pointer, a version's records or the sweep's lease)."""
    return sort_key[:1].isdigit()
UNKNOWN_FACILITY = "unknown"  # receipts folder for a key that names no folder at all

_INBOX_KEY = re.compile(rf"^inbox/({FACILITY_CODE.pattern})/(?:.+/)?[^/]+$")
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ObjectRef:
    """One object from an S3 event notification (key already URL-decoded)."""

    bucket: str
    key: str
    version_id: str | None
    received_at: datetime  # the event time: when S3 received the object
    size: int | None = None  # as the event reports it; the store's HEAD is what counts
    sequencer: str | None = None

    @property
    def version_token(self) -> str:
        # Without bucket versioning S3 sends no versionId; the event's sequencer then tells two uploads of the
        # same key apart (a redelivered event keeps its sequencer, so retries still collapse).
        if self.version_id:
            return self.version_id
        return f"seq:{self.sequencer}" if self.sequencer else ""

    @property
    def submission_id(self) -> str:
        """hex SHA-256 of ``bucket/key#versionId``: the idempotency key of the object, not of the message."""
        return hashlib.sha256(f"{self.bucket}/{self.key}#{self.version_token}".encode()).hexdigest()


@dataclass(frozen=True)
class Location:
    """Where an object sits: its facility folder, or why it sits nowhere acceptable (I502)."""

    facility: str | None  # the 5-digit MACSKCB of inbox/{MACSKCB}/..., None outside it
    folder: str  # the receipts folder: the facility, else the prefix segment if usable, else "unknown"
    basename: str

    @property
    def receipt_key(self) -> str:
        return f"receipts/{self.folder}/{self.basename}.receipt.json"


def locate(key: str) -> Location:
    basename = key.rsplit("/", 1)[-1]
    match = _INBOX_KEY.match(key)
    if match:
        return Location(facility=match.group(1), folder=match.group(1), basename=basename)
    parts = key.split("/")
    # "inbox/abc/x.xml" -> "abc"; a segment unfit for a key prefix (or "..") goes to "unknown".
    segment = parts[1] if len(parts) >= 3 and parts[0] == "inbox" else ""
    folder = segment if _SAFE_SEGMENT.match(segment) and segment.strip(".") else UNKNOWN_FACILITY
    return Location(facility=None, folder=folder, basename=basename or "unnamed")


def status_shard(status: str, visit_id: str) -> str:
    """``{status}#{n}``, n = first byte of SHA-256(visit_id) mod 8: spreads one status over 8 GSI partitions."""
    return f"{status}#{hashlib.sha256(visit_id.encode()).digest()[0] % STATUS_SHARDS}"


def facility_month(facility: str, moment: datetime) -> str:
    """``{facility}#{YYYY-MM}`` in Vietnam time: the partition of a facility's files, or deliveries, in a month (the
    ``by-facility-month`` and ``by-facility-delivered`` indexes the reports count them from)."""
    return f"{facility}#{moment.astimezone(PORTAL_TZ):%Y-%m}"


# The reports roll a facility's closed day up into one item (docs/reports.md, *Daily rollups*), so an item must be
# written soon after the time it is counted at. One written more than LATE_AFTER after it (a file that waited in a
# backlog, or was redriven from the dead-letter queue) goes to its month's late partition instead, which the
# reports always read item by item. A day is closed, and rolled up, ROLL_UP_AFTER after it ends: on-time items are
# written within LATE_AFTER plus a function's timeout and index propagation, well inside the margin.
LATE = "#late"
LATE_AFTER = timedelta(hours=1)
ROLL_UP_AFTER = LATE_AFTER + timedelta(minutes=15)


def counted_month(facility: str, at: datetime, written_at: datetime) -> str:
    """The index partition of an item counted at ``at`` and written at ``written_at``: its facility's month, or that
    month's late partition (``{facility}#{YYYY-MM}#late``) when written more than LATE_AFTER after ``at``."""
    month = facility_month(facility, at)
    return month + LATE if written_at - at > LATE_AFTER else month


def version_key(received_at: datetime, submission_id: str) -> str:
    """Sortable by time, and the same object processed twice gives the same key."""
    return f"{iso_utc(received_at)}#{submission_id[:16]}"


@dataclass(frozen=True)
class VisitRef:
    """One visit version, as the workflow passes it around: keys only, never personal data."""

    visit_id: str
    version: str

    @property
    def facility(self) -> str:
        return self.visit_id.split("#", 1)[0]

    def to_dict(self) -> dict[str, str]:
        return {"visit_id": self.visit_id, "version": self.version}

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> VisitRef:
        visit_id, version = event.get("visit_id"), event.get("version")
        if not isinstance(visit_id, str) or "#" not in visit_id or not isinstance(version, str) or not version:
            raise ValueError("a visit reference needs visit_id ({facility}#{MA_LK}) and version")
        return cls(visit_id, version)


@dataclass(frozen=True)
class VisitVersion:
    """One accepted visit as stored: a new version item of ``visit_id``."""

    visit_id: str  # {facility}#{MA_LK}
    version: str
    submission_id: str
    received_at: str
    standard: str | None
    digest: str
    deadline_at: str
    citizen_key: str | None  # HMAC of SO_CCCD; None when the visit names no ID number
    records: bytes = field(repr=False)  # gzip(canonical JSON): personal data, never logged
    # When the delivery sweep may take the visit: ingest starts its execution at once and leases it until
    # then, so the sweep only catches visits whose start failed (docs/delivery.md).
    next_attempt_at: str | None = None
    # Where the facility sits, from the registry at ingest: delivery counts distinct citizens per district or
    # commune and province (docs/reports.md) without reading the registry.
    province: str | None = None
    district: str | None = None
    commune: str | None = None
    # Whether the version enters the by-status-deadline index when stored. False when the outbox lists it: the
    # fast path then delivers it without an index write, and only a delivery that failed or was lost puts it
    # there (Settle's deferral, or the sweep reading the outbox: docs/delivery.md, *The outbox*).
    indexed: bool = True

    def status_shard(self, status: str) -> str:
        return status_shard(status, self.visit_id)

    @property
    def ref(self) -> VisitRef:
        return VisitRef(self.visit_id, self.version)


@dataclass(frozen=True)
class SubmissionRecord:
    submission_id: str
    facility: str
    received_at: datetime
    object_key: str
    version_id: str | None
    content_sha256: str | None  # None when the object was never read (too large, wrong place)
    size: int
    status: str
    visits_total: int
    visits_accepted: int
    error_codes: tuple[str, ...]
    standards: tuple[str, ...]
    receipt_key: str
    quarantine_key: str | None
    merkle_root: str | None
    signing_key_id: str
    finding_codes: tuple[str, ...] = ()  # what the admitted visits carry back to the facility (never values)
    transaction_id: str | None = None  # maGiaoDich, for a file received by the portal API
    written_at: datetime | None = None  # when the item is written (None: on time); a late one is counted apart

    @property
    def received(self) -> str:
        return iso_utc(self.received_at)

    @property
    def facility_month(self) -> str:
        return counted_month(self.facility, self.received_at, self.written_at or self.received_at)


def content_claim_key(facility: str, content_sha256: str) -> str:
    """The ``submission_id`` of a content claim item: never a real submission id (those are 64 hex digits)."""
    return f"content#{facility}#{content_sha256}"


@dataclass(frozen=True)
class ContentClaim:
    """Which submission holds a facility's file content (its SHA-256): the one whose visits are stored.

    Claimed (unconfirmed) after validation and before anything of an ACCEPTED or PARTIAL file is stored;
    confirmed once its holder's submission item, written last, exists. A byte-identical file of the same facility
    is then refused with I503 instead of being stored again (docs/ingest.md, *Replays*)."""

    facility: str
    content_sha256: str
    submission_id: str  # the holder
    received_at: str  # when S3 received the holder (ISO 8601 UTC)
    receipt_key: str  # the holder's receipt; never quoted in a message (file names are the facility's free text)
    confirmed: bool = False  # the holder's submission item exists

    @property
    def key(self) -> str:
        return content_claim_key(self.facility, self.content_sha256)


class ContentClaimPending(RuntimeError):
    """The same content is being ingested by another submission whose claim is not confirmed yet (in progress,
    or failing and retried): this object's message fails and SQS retries it later, when that one has ended.
    ``holder`` is that submission: when it is in the same batch, the batch runtime retries this object after it
    instead (docs/ingest.md)."""

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def deadline(received_at: datetime, within: timedelta = DEADLINE) -> str:
    return iso_utc(received_at.astimezone(UTC) + within)


@dataclass
class Outcome:
    """What happened to one object, for logs and metrics: codes and counts, never values or names."""

    submission_id: str
    facility: str  # the receipts folder (a facility code, or the segment / "unknown" for I502)
    object_key: str
    status: str  # a SubmissionStatus
    visits_total: int = 0
    visits_accepted: int = 0
    visits_stored: int = 0  # versions written now (0 on a replay)
    visits_superseding: int = 0  # of those, how many replaced an earlier version
    error_codes: list[str] = field(default_factory=list)  # what rejected the file or kept visits out
    finding_codes: list[str] = field(default_factory=list)  # reported, never blocking
    rejected_by_family: dict[str, int] = field(default_factory=dict)  # rejected visits by error family
    file_error_family: str | None = None  # the family of the first file-level error, if any
    receipt_key: str | None = None
    quarantine_key: str | None = None
    size: int | None = None
    delivery_executions: int = 0  # delivery workflows started that hold some of its accepted visits
    delivery_start_failures: int = 0
    replay_of: str | None = None  # I503: the submission that holds the same content
    # The versions stored (or found stored) that the delivery workflow takes, once the window's files are recorded.
    to_deliver: list[VisitRef] = field(default_factory=list, repr=False)

    @property
    def visits_rejected(self) -> int:
        return self.visits_total - self.visits_accepted

    @property
    def rejection_family(self) -> str | None:
        """Why a rejected file was rejected, as one family: its file-level error, else its visits' commonest."""
        if self.file_error_family:
            return self.file_error_family
        if self.rejected_by_family:
            return max(sorted(self.rejected_by_family), key=lambda family: self.rejected_by_family[family])
        return None

    @property
    def processed(self) -> bool:
        """A file that got a receipt in this run (not a replay, not a vanished object)."""
        return self.status in (ACCEPTED, PARTIAL, REJECTED)

    def to_dict(self) -> dict[str, Any]:
        return {"submission_id": self.submission_id, "facility": self.facility, "object_key": self.object_key,
                "status": self.status, "visits_total": self.visits_total, "visits_accepted": self.visits_accepted,
                "visits_rejected": self.visits_rejected, "visits_stored": self.visits_stored,
                "visits_superseding": self.visits_superseding, "error_codes": list(self.error_codes),
                "finding_codes": list(self.finding_codes),
                "rejected_by_family": dict(self.rejected_by_family), "file_error_family": self.file_error_family,
                "receipt_key": self.receipt_key, "quarantine_key": self.quarantine_key, "size": self.size,
                "delivery_executions": self.delivery_executions,
                "delivery_start_failures": self.delivery_start_failures, "replay_of": self.replay_of}


def error_family(code: str) -> str:
    """V, R, K, E, I... : the first letter of a catalogue code."""
    return code[:1] or "?"


@dataclass(frozen=True)
class StoredObject:
    size: int
    data: bytes | None  # None: larger than the limit, so never read


class ObjectGone(Exception):
    """The object (or that version of it) no longer exists: nothing to process, nothing to retry."""


class VisitWrite(StrEnum):
    """What storing one visit version did (see RecordsRepository.save_visit)."""

    CREATED = "CREATED"  # the first version of this visit
    SUPERSEDING = "SUPERSEDING"  # the new latest; the previous latest is now SUPERSEDED
    LATE = "LATE"  # an older version arriving after a newer one: stored as SUPERSEDED, pointer untouched
    PRESENT = "PRESENT"  # already stored by an earlier run of the same object


class DeliveryStarter(Protocol):
    """The port ingest starts delivery through (a Step Functions execution in production)."""

    def start(self, name: str, visits: Sequence[VisitRef]) -> None:
        """Start one delivery execution for these visit versions (healthbook.delivery)."""
        ...


class Outbox(Protocol):
    """Where ingest lists the visit versions it is about to store outside the status index (an SQS queue whose
    messages stay invisible for the visits' lease, in production): each list comes back to the delivery sweep once
    their lease is over, and the sweep indexes those still PENDING and not indexed, whose delivery was lost
    (docs/delivery.md, *The outbox*)."""

    def hold(self, visits: Sequence[VisitRef], *, back_after: timedelta, stored_by: datetime) -> None:
        """List these versions, to come back after ``back_after``; ``stored_by``: when the invocation storing them
        ends, so that none of them can be stored later. Raises when they could not be listed (they are then stored
        indexed)."""
        ...


@dataclass(frozen=True)
class HeldVisits:
    """One list of the outbox, back after the lease: ``handle`` lets it go once its visits are looked after.
    ``stored_by``: the end of the invocation that stored them (None in lists written before 2026-12-07)."""

    handle: str
    visits: tuple[VisitRef, ...]
    stored_by: datetime | None = None


class OutboxReader(Protocol):
    """The outbox as the delivery sweep reads it."""

    def due(self, limit: int) -> list[HeldVisits]:
        """Up to ``limit`` lists whose lease is over; none when there are no more. A list taken and not let go
        comes back later (and, after a few times, goes to a dead-letter queue)."""
        ...

    def let_go(self, held: Sequence[HeldVisits]) -> None:
        """These lists are looked after: remove them."""
        ...

    def look_again(self, held: HeldVisits, after: timedelta) -> None:
        """This list is to come back once more, ``after`` from now (its invocation may still store a visit)."""
        ...
