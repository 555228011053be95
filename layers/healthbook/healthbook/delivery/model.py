"""Delivery to VNeID as plain values: statuses, the visit as the delivery stage sees it, and the timing rules.

Pure: no AWS. docs/delivery.md tells the whole flow; docs/cost.md why it has this shape.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from healthbook.ingest.model import DELIVERY_BATCH
from healthbook.ingest.model import VisitRef as VisitRef  # re-exported: the workflow passes these around
from healthbook.kernel import DEADLINE, LEASE, Outcome, VisitStatus

# The statuses and outcomes by their short names (kernel.VisitStatus, kernel.Outcome: one enum each).
DELIVERED = VisitStatus.DELIVERED
NEEDS_RECONCILIATION = VisitStatus.NEEDS_RECONCILIATION
DEADLINE_BREACHED = VisitStatus.DEADLINE_BREACHED
STATUSES = tuple(VisitStatus)

DEFERRED = Outcome.DEFERRED
SKIPPED = Outcome.SKIPPED
UNSETTLED = Outcome.UNSETTLED

MAX_BATCH = DELIVERY_BATCH  # visits per Express execution (docs/cost.md)


@dataclass(frozen=True)
class StoredVisit:
    """A visit version item, as far as delivery needs it. ``records`` and ``previous_version`` only when asked for
    (read together, for the delivery)."""

    ref: VisitRef
    status: str
    received_at: datetime
    deadline_at: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None
    citizen_key: str | None = None
    reconciled: bool = False  # the population matched it (an earlier attempt): citizen_key is the matched one
    records: bytes | None = None
    previous_version: str | None = None  # the version key just before this one of the same visit, if any
    province: str | None = None  # the facility's, stamped at ingest (older items: None)
    district: str | None = None
    commune: str | None = None


@dataclass(frozen=True)
class DeliveredEntry:
    """Which entry VNeID received, as the delivered item records it instead of a copy: the entry follows from the
    stored records and the mapping, so its id and two digests let an auditor rebuild it and prove it is the same
    (docs/delivery.md, "Auditing a delivery"). Hashes and an id: no personal data."""

    projection_id: str
    sha256: str  # of dumps(entry) in UTF-8: the entry's one byte form
    mapping_sha256: str  # of the mapping.json that built it


@dataclass(frozen=True)
class Timing:
    """The deadline rules. Production: 24 h deadline (QĐ 2733 Appendix 01 Art. 5), escalate 1 h before it.

    ``lease`` keeps the sweep away from a visit while an execution holds it; it must outlast an Express
    execution (5 minutes at most). Retries between executions back off exponentially with full jitter from
    ``retry_base`` to ``retry_max``, and never past the cutoff (deadline − safety margin), so the last attempt
    happens at the cutoff and a failure there escalates while there is still time to act.
    """

    deadline: timedelta = DEADLINE
    safety_margin: timedelta = timedelta(hours=1)
    lease: timedelta = LEASE
    retry_base: timedelta = timedelta(minutes=1)
    retry_max: timedelta = timedelta(minutes=30)

    def __post_init__(self) -> None:
        if not timedelta(0) <= self.safety_margin < self.deadline:
            raise ValueError("the safety margin must be at least 0 and shorter than the deadline")
        if self.lease <= timedelta(0) or self.retry_base <= timedelta(0) or self.retry_max < self.retry_base:
            raise ValueError("lease and retry_base must be positive, retry_max at least retry_base")

    def deadline_for(self, received_at: datetime) -> datetime:
        return received_at.astimezone(UTC) + self.deadline

    def cutoff(self, deadline_at: datetime) -> datetime:
        """From here on, a failed attempt escalates instead of waiting for another."""
        return deadline_at - self.safety_margin

    def next_attempt(self, now: datetime, attempts: int, deadline_at: datetime, rng: random.Random) -> datetime:
        """When to try again after ``attempts`` failed executions: full jitter, capped at the cutoff."""
        doublings = min(max(0, attempts - 1), 60)  # 2**60 bases exceed any retry_max; more would overflow
        ceiling = min(self.retry_max.total_seconds(), self.retry_base.total_seconds() * 2**doublings)
        delay = timedelta(seconds=rng.uniform(self.retry_base.total_seconds() / 2, max(ceiling, 1e-3)))
        return min(now + delay, self.cutoff(deadline_at))
