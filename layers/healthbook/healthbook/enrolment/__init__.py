"""Initial health books from a province's participant list, and vaccination history (docs/enrolment.md).

``schema`` (kinds, canonical columns, the per-row pydantic schema), ``reader`` (``prepare``: any accepted file
to the canonical CSV), ``vaccines`` (the vaccine code list), ``process`` (``process_batch``: rows to VNeID),
``outcome`` (the outcome file and its summary), ``codes`` (every problem code, as data). This module imports
nothing but :class:`Kind`'s enum, so a handler (or the CLI building its parser) loads only what it uses.
"""

from enum import StrEnum


class Kind(StrEnum):
    """What a province's file lists: residents (initial health books) or vaccinations."""

    ENROLMENT = "enrolment"
    VACCINATION = "vaccination"
