"""Match the citizen named in a claim against the national population database (CSDLQG về dân cư).

Pure domain code: no I/O, no AWS, no network. The database is reached through the
:class:`PopulationRegistry` protocol; ``healthbook.reconcile.population.FakePopulation`` is the
in-memory implementation used by tests and the demo. The rules are documented in
``docs/reconciliation.md``.

Personal data (ID number, name, birth date, sex) never appears in a reason, a ``repr``/``str``
or an exception message produced here: results are logged and counted, and logs are not a
place for personal data.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

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
    "PopulationRegistry",
    "PopulationUnavailable",
    "Reconciliation",
    "Status",
    "birth_matches",
    "count_by_reason",
    "id_format_ok",
    "identity_from_summary",
    "normalise_name",
    "reconcile",
    "sex_matches",
]

Status = Literal["MATCHED", "NEEDS_RECONCILIATION"]
MATCHED: Final = "MATCHED"
NEEDS_RECONCILIATION: Final = "NEEDS_RECONCILIATION"

# Stable reason codes (stored in DynamoDB and counted in reports: never rename, only add).
NO_ID: Final = "NO_ID"                     # SO_CCCD empty
ID_FORMAT: Final = "ID_FORMAT"             # not 12 digits, 9 digits or a passport (A1234567)
UNKNOWN_ID: Final = "UNKNOWN_ID"           # the population database has no such ID
NAME_MISMATCH: Final = "NAME_MISMATCH"     # HO_TEN differs from the registered name
BIRTH_MISMATCH: Final = "BIRTH_MISMATCH"   # NGAY_SINH differs (or is unreadable) on a part both sides know
SEX_MISMATCH: Final = "SEX_MISMATCH"       # GIOI_TINH differs (3 = undetermined never mismatches)
REASONS: Final = (NO_ID, ID_FORMAT, UNKNOWN_ID, NAME_MISMATCH, BIRTH_MISMATCH, SEX_MISMATCH)

_ID = re.compile(r"[0-9]{12}|[0-9]{9}|[A-Z][0-9]{7}")
_DIGITS = re.compile(r"[0-9]+")
_SEXES = ("1", "2", "3")
UNDETERMINED_SEX: Final = "3"


@dataclass(frozen=True)
class Identity:
    """ID number, full name, birth date and sex: personal data, so hidden from ``repr``."""

    id_number: str = field(repr=False)
    full_name: str = field(repr=False)
    birth: str = field(repr=False)
    sex: str = field(repr=False)


@dataclass(frozen=True)
class Citizen(Identity):
    """A record of the population database. ``birth`` is yyyyMMdd where unknown month/day are 00."""


@dataclass(frozen=True)
class ClaimIdentity(Identity):
    """Who the claim says the patient is (XML1 SO_CCCD, HO_TEN, NGAY_SINH, GIOI_TINH), as sent."""


@dataclass(frozen=True)
class Reconciliation:
    """The outcome. ``citizen_key_material`` is the registry's ID number of a MATCHED citizen (the
    input of the citizen key; personal data, hence hidden from ``repr``), ``None`` otherwise."""

    status: Status
    reasons: tuple[str, ...]
    citizen_key_material: str | None = field(default=None, repr=False)

    @property
    def matched(self) -> bool:
        return self.status == MATCHED


class PopulationUnavailable(Exception):
    """The population database could not answer (timeout, 5xx, throttling): retry later.

    Raised by adapters, never by :func:`reconcile`; it is not a mismatch and must not become
    NEEDS_RECONCILIATION. Adapters must not put the looked-up ID into the message.
    """


@runtime_checkable
class PopulationRegistry(Protocol):
    """Adapter to the national population database.

    Contract:

    * ``lookup(id_number)`` receives an ID that passed :func:`id_format_ok` (12 digits, 9 digits
      or a passport number) and returns the citizen it identifies, or ``None`` when the database
      positively has no such ID.
    * The returned ``Citizen.id_number`` is the database's current personal ID number; it may
      differ from the argument (an old 9-digit ID answered with the 12-digit number that replaced
      it), and it is what the citizen key is derived from.
    * ``full_name`` as registered (any Unicode normalisation form), ``birth`` as yyyyMMdd with 00
      for unknown month/day, ``sex`` "1", "2" or "3".
    * Transient failures raise :class:`PopulationUnavailable`; they are never reported as ``None``.
    * No personal data in logs or exception messages; the adapter is read-only and idempotent.
    """

    def lookup(self, id_number: str) -> Citizen | None: ...


def identity_from_summary(row: Mapping[str, str]) -> ClaimIdentity:
    """The identity of an XML1 (summary) row; missing fields become empty strings."""

    def text(name: str) -> str:
        value = row.get(name)
        return value if isinstance(value, str) else ""

    return ClaimIdentity(id_number=text("SO_CCCD"), full_name=text("HO_TEN"),
                         birth=text("NGAY_SINH"), sex=text("GIOI_TINH"))


def id_format_ok(id_number: str) -> bool:
    """12 digits (chip ID / personal ID number), 9 digits (old ID) or a passport (1 capital + 7 digits)."""
    return _ID.fullmatch(id_number) is not None


def normalise_name(name: str) -> str:
    """NFC, whitespace runs collapsed to one space (and trimmed), case folded. Diacritics are kept."""
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


def _birth_parts(value: str) -> tuple[int, int, int] | None:
    """(year, month, day) with 0 for unknown month/day; ``None`` when unreadable or the year is unknown.

    Accepts yyyyMMdd and yyyyMMddHHmm (the hour and minute are not compared: the registry has none).
    """
    if len(value) not in (8, 12) or not _DIGITS.fullmatch(value):
        return None
    year, month, day = int(value[:4]), int(value[4:6]), int(value[6:8])
    if year == 0 or month > 12 or day > 31 or (month == 0 and day != 0):
        return None
    if month and day:
        try:
            datetime.date(year, month, day)
        except ValueError:
            return None
    return year, month, day


def birth_matches(claimed: str, registered: str) -> bool:
    """Years equal, and month/day equal wherever both sides know them (00 = unknown)."""
    ours, theirs = _birth_parts(claimed), _birth_parts(registered)
    if ours is None or theirs is None:
        return False
    if ours[0] != theirs[0]:
        return False
    for a, b in zip(ours[1:], theirs[1:], strict=True):
        if a == 0 or b == 0:
            return True  # a day is only meaningful with its month: stop at the first unknown part
        if a != b:
            return False
    return True


def sex_matches(claimed: str, registered: str) -> bool:
    """Equal, or "3" (undetermined) on either side; anything outside 1/2/3 cannot be confirmed."""
    if claimed not in _SEXES or registered not in _SEXES:
        return False
    return claimed == registered or UNDETERMINED_SEX in (claimed, registered)


def _needs(*reasons: str) -> Reconciliation:
    return Reconciliation(NEEDS_RECONCILIATION, reasons)


def reconcile(identity: ClaimIdentity, registry: PopulationRegistry) -> Reconciliation:
    """Match one claim identity against the registry. Never raises on any input strings;
    :class:`PopulationUnavailable` from the registry propagates (retry, not a mismatch)."""
    id_number = identity.id_number.strip()
    if not id_number:
        return _needs(NO_ID)
    if not id_format_ok(id_number):
        return _needs(ID_FORMAT)
    citizen = registry.lookup(id_number)
    if citizen is None:
        return _needs(UNKNOWN_ID)
    reasons: list[str] = []
    claimed_name = normalise_name(identity.full_name)
    if not claimed_name or claimed_name != normalise_name(citizen.full_name):
        reasons.append(NAME_MISMATCH)
    if not birth_matches(identity.birth.strip(), citizen.birth.strip()):
        reasons.append(BIRTH_MISMATCH)
    if not sex_matches(identity.sex.strip(), citizen.sex.strip()):
        reasons.append(SEX_MISMATCH)
    if reasons:
        return _needs(*reasons)
    return Reconciliation(MATCHED, (), citizen_key_material=citizen.id_number)


def count_by_reason(results: Iterable[Reconciliation]) -> dict[str, int]:
    """How often each reason occurs, in the order of :data:`REASONS`; reasons that never occur are left out.

    A result may carry several reasons, so the total can exceed the number of unmatched results.
    """
    counts = dict.fromkeys(REASONS, 0)
    for result in results:
        for reason in result.reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return {reason: n for reason, n in counts.items() if n}
