"""The delivery stage: stored visit → reconcile → project → VNeID, within the 24-hour deadline (docs/delivery.md)."""

from healthbook.delivery.model import (
    DEADLINE_BREACHED,
    DELIVERED,
    MAX_BATCH,
    NEEDS_RECONCILIATION,
    STATUSES,
    StoredVisit,
    Timing,
    VisitRef,
)
from healthbook.delivery.service import (
    DeliveryService,
    Metrics,
    Notifier,
    ProjectionStore,
    Sweeper,
    SweepReport,
    VisitStatusStore,
    WorkflowStarter,
    summarise,
)

__all__ = [
    "DEADLINE_BREACHED",
    "DELIVERED",
    "MAX_BATCH",
    "NEEDS_RECONCILIATION",
    "STATUSES",
    "DeliveryService",
    "Metrics",
    "Notifier",
    "ProjectionStore",
    "StoredVisit",
    "SweepReport",
    "Sweeper",
    "Timing",
    "VisitRef",
    "VisitStatusStore",
    "WorkflowStarter",
    "summarise",
]
