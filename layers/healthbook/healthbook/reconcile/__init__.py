"""Reconciliation of claim identities with the national population database (docs/reconciliation.md).

The HTTP adapter (``PopulationClient``, ``PopulationError``; needs ``requests``, the
``aws`` extra) is imported on first use, so importing this package stays pure. The fakes standing in for the
population database are in the development package (``healthbook_dev.fakes.population``).
"""

from typing import TYPE_CHECKING, Any

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
    UNKNOWN_SOCIAL_INSURANCE,
    Citizen,
    ClaimIdentity,
    PopulationRegistry,
    PopulationUnavailable,
    Reconciliation,
    count_by_reason,
    identity_from_summary,
    reconcile,
)

if TYPE_CHECKING:
    from healthbook.reconcile.http import PopulationClient, PopulationError

_LAZY = {
    "PopulationClient": "healthbook.reconcile.http",
    "PopulationError": "healthbook.reconcile.http",
}

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
    "UNKNOWN_SOCIAL_INSURANCE",
    "Citizen",
    "ClaimIdentity",
    "PopulationClient",
    "PopulationError",
    "PopulationRegistry",
    "PopulationUnavailable",
    "Reconciliation",
    "count_by_reason",
    "identity_from_summary",
    "reconcile",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
