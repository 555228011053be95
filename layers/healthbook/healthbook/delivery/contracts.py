"""The delivery workflow's contracts: what each step receives and returns, as pydantic models that match
infra/statemachine/delivery.asl.json (tests/test_delivery_contracts.py reads the ASL and checks every path it
uses against them). Workflow state carries keys and codes only: visit ids, versions, outcomes, reason codes;
never a name, an ID or card number, nor the citizen key.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from healthbook.ingest.model import VisitRef
from healthbook.kernel import FACILITY_CODE, Outcome

# Visits one Deliver (or Settle) invocation works on together: their waits on VNeID, the population service and
# DynamoDB overlap, where one invocation a visit was billed for each wait (docs/cost.md, row 22). The ASL's
# States.ArrayPartition size (tests/test_delivery_contracts.py holds them equal).
TASK_BATCH = 10

VisitId = Annotated[str, StringConstraints(pattern=rf"^{FACILITY_CODE.pattern}#.+$", max_length=200)]
Version = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    def to_event(self) -> dict[str, Any]:
        """The JSON object the state machine passes on (unset optional fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class StepInput(_Contract):
    """One visit version: an item of the execution's ``visits`` and of a task's batch."""

    visit_id: VisitId
    version: Version

    @property
    def ref(self) -> VisitRef:
        return VisitRef(self.visit_id, self.version)


class ExecutionInput(_Contract):
    """One execution (ingest or the sweep starts it): the visits of its Map."""

    visits: list[StepInput] = Field(min_length=1)


class BatchInput(_Contract):
    """Deliver: one item of the Map, up to TASK_BATCH visits of the execution (``States.ArrayPartition``), which one
    invocation works on together (docs/delivery.md, *One task, ten visits*)."""

    visits: list[StepInput] = Field(min_length=1, max_length=TASK_BATCH)


class SettleInput(BatchInput):
    """The Catch path, for the batch whose Deliver failed beyond its retries: the error's name (``$.error.Error``),
    absent when the state machine had none."""

    error: str | None = None


class StepResult(_Contract):
    """What every step returns for its visit; the ASL reads ``outcome`` (``$.Payload.outcome``)."""

    visit_id: VisitId
    outcome: Outcome


class DeliverResult(StepResult):
    latency_ms: int | None = None  # DELIVERED only
    reasons: list[str] | None = None  # NEEDS_RECONCILIATION only


class SettleResult(StepResult):
    next_attempt_at: str | None = None  # DEFERRED only
    error: str | None = None


class BatchResult(_Contract):
    """What a task returns for its batch: one result per visit, in the batch's order (``$.Payload.results``)."""

    results: list[dict[str, Any]]


class ItemResult(_Contract):
    """One visit's result in a batch of the Map's results: what Summarise counts."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    visit_id: str | None = None
    outcome: str = "UNKNOWN"


class SummariseInput(_Contract):
    """The Map's results, one per batch (the Pass states' output): ``{"results": [...]}`` once a task answered for
    it, ``{"visits": [...], "outcome": "UNSETTLED"}`` when even the Catch path failed."""

    results: list[Any]


class Summary(_Contract):
    """The execution's outcome counts and the visits it escalated (the SNS message when any)."""

    counts: dict[str, int]
    breached_count: int
    breached: list[str]
