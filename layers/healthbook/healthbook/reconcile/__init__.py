"""Reconciliation of claim identities with the national population database (docs/reconciliation.md)."""

from healthbook.reconcile.matching import (
    BIRTH_MISMATCH,
    ID_FORMAT,
    MATCHED,
    NAME_MISMATCH,
    NEEDS_RECONCILIATION,
    NO_ID,
    REASONS,
    SEX_MISMATCH,
    UNKNOWN_ID,
    Citizen,
    ClaimIdentity,
    PopulationRegistry,
    PopulationUnavailable,
    Reconciliation,
    count_by_reason,
    identity_from_summary,
    reconcile,
)
from healthbook.reconcile.population import FakePopulation, Perturbation

__all__ = [
    "BIRTH_MISMATCH",
    "ID_FORMAT",
    "MATCHED",
    "NAME_MISMATCH",
    "NEEDS_RECONCILIATION",
    "NO_ID",
    "REASONS",
    "SEX_MISMATCH",
    "UNKNOWN_ID",
    "Citizen",
    "ClaimIdentity",
    "FakePopulation",
    "Perturbation",
    "PopulationRegistry",
    "PopulationUnavailable",
    "Reconciliation",
    "count_by_reason",
    "identity_from_summary",
    "reconcile",
]
