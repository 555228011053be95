"""Match the citizen named in a claim against the national population database (CSDLQG về dân cư).

Pure domain code: no I/O, no AWS, no network. The database is reached through the
:class:`PopulationRegistry` protocol; ``healthbook_dev.fakes.population.FakePopulation`` is the
in-memory implementation used by tests and the demo. The rules are documented in
``docs/reconciliation.md``.

A claim is looked up by its citizen ID (XML1 SO_CCCD) and, when that does not match, by each
social-insurance number of its insurance card (the last 10 characters of MA_THE_BHYT, the number
citizens link in VNeID): either path can match.

Personal data (ID number, social-insurance number, name, birth date, sex) never appears in a
reason, a ``repr``/``str`` or an exception message produced here: results are logged and counted,
and logs are not a place for personal data.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

from healthbook.standard.cards import social_insurance_numbers

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
    "social_insurance_number_ok",
]

Status = Literal["MATCHED", "NEEDS_RECONCILIATION"]
MATCHED: Final = "MATCHED"
NEEDS_RECONCILIATION: Final = "NEEDS_RECONCILIATION"

# Stable reason codes (stored in DynamoDB and counted in reports: never rename, only add).
NO_ID: Final = "NO_ID"                     # nothing to look up: SO_CCCD empty and no card number in MA_THE_BHYT
ID_FORMAT: Final = "ID_FORMAT"             # not 12 digits, 9 digits or a passport (A1234567)
UNKNOWN_ID: Final = "UNKNOWN_ID"           # the population database has no such ID
NAME_MISMATCH: Final = "NAME_MISMATCH"     # HO_TEN differs from the registered name
BIRTH_MISMATCH: Final = "BIRTH_MISMATCH"   # NGAY_SINH differs (or is unreadable) on a part both sides know
SEX_MISMATCH: Final = "SEX_MISMATCH"       # GIOI_TINH differs (3 = undetermined never mismatches)
UNKNOWN_SOCIAL_INSURANCE: Final = "UNKNOWN_SOCIAL_INSURANCE"  # no citizen has the card's social-insurance number
REASONS: Final = (NO_ID, ID_FORMAT, UNKNOWN_ID, NAME_MISMATCH, BIRTH_MISMATCH, SEX_MISMATCH,
                  UNKNOWN_SOCIAL_INSURANCE)

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
    """A record of the population database. ``birth`` is yyyyMMdd where unknown month/day are 00;
    ``social_insurance_number`` is 10 digits, or ``""`` when the registry has none."""

    social_insurance_number: str = field(default="", repr=False)


@dataclass(frozen=True)
class ClaimIdentity(Identity):
    """Who the claim says the patient is (XML1 SO_CCCD, HO_TEN, NGAY_SINH, GIOI_TINH), as sent, and the
    social-insurance numbers of its cards (MA_THE_BHYT), in card order."""

    social_insurance_numbers: tuple[str, ...] = field(default=(), repr=False)


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
    NEEDS_RECONCILIATION. Adapters must not put the looked-up number into the message.
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
    * ``lookup_by_social_insurance(number)`` receives a number that passed
      :func:`social_insurance_number_ok` (10 digits) and returns the citizen it belongs to, or ``None``
      when the database positively has no such number; the citizen's ``id_number`` is still what the
      citizen key is derived from, so it must be a valid ID number.
    * ``full_name`` as registered (any Unicode normalisation form), ``birth`` as yyyyMMdd with 00
      for unknown month/day, ``sex`` "1", "2" or "3", ``social_insurance_number`` 10 digits or "".
    * Transient failures raise :class:`PopulationUnavailable`; they are never reported as ``None``.
    * No personal data in logs or exception messages; the adapter is read-only and idempotent.
    """

    def lookup(self, id_number: str) -> Citizen | None: ...

    def lookup_by_social_insurance(self, number: str) -> Citizen | None: ...


def identity_from_summary(row: Mapping[str, str]) -> ClaimIdentity:
    """The identity of an XML1 (summary) row; missing fields become empty strings (and no card, no numbers)."""

    def text(name: str) -> str:
        value = row.get(name)
        return value if isinstance(value, str) else ""

    return ClaimIdentity(id_number=text("SO_CCCD"), full_name=text("HO_TEN"),
                         birth=text("NGAY_SINH"), sex=text("GIOI_TINH"),
                         social_insurance_numbers=tuple(social_insurance_numbers(text("MA_THE_BHYT"))))


def id_format_ok(id_number: str) -> bool:
    """12 digits (chip ID / personal ID number), 9 digits (old ID) or a passport (1 capital + 7 digits)."""
    return _ID.fullmatch(id_number) is not None


def social_insurance_number_ok(number: str) -> bool:
    """10 ASCII digits: exactly what :func:`healthbook.standard.cards.social_insurance_numbers` takes from a card
    (asked of it, so that the shape is defined in one place)."""
    return social_insurance_numbers(number) == [number]


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


def _differences(identity: ClaimIdentity, citizen: Citizen) -> list[str]:
    """The reasons why ``citizen`` (found by one of the claim's numbers) is not the person the claim describes."""
    reasons: list[str] = []
    claimed_name = normalise_name(identity.full_name)
    if not claimed_name or claimed_name != normalise_name(citizen.full_name):
        reasons.append(NAME_MISMATCH)
    if not birth_matches(identity.birth.strip(), citizen.birth.strip()):
        reasons.append(BIRTH_MISMATCH)
    if not sex_matches(identity.sex.strip(), citizen.sex.strip()):
        reasons.append(SEX_MISMATCH)
    return reasons


def reconcile(identity: ClaimIdentity, registry: PopulationRegistry) -> Reconciliation:
    """Match one claim identity against the registry: by SO_CCCD first, then by each social-insurance
    number of the card; MATCHED as soon as one citizen found agrees with the claim on name, birth date and
    sex. Otherwise NEEDS_RECONCILIATION with the reasons of every path tried, each once, in the order of
    :data:`REASONS`. Never raises on any input strings; :class:`PopulationUnavailable` from the registry
    propagates (retry, not a mismatch)."""
    id_number = identity.id_number.strip()
    # identity_from_summary gives only well-formed numbers; a hand-built identity's malformed ones are skipped
    # (the adapters refuse them).
    numbers = [n for n in identity.social_insurance_numbers if social_insurance_number_ok(n)]
    if not id_number and not numbers:
        return Reconciliation(NEEDS_RECONCILIATION, (NO_ID,))
    reasons: set[str] = set()
    paths: list[tuple[Callable[[str], Citizen | None], str, str]] = []  # (lookup, its argument, its "unknown")
    if id_number and not id_format_ok(id_number):
        reasons.add(ID_FORMAT)
    elif id_number:
        paths.append((registry.lookup, id_number, UNKNOWN_ID))
    paths += [(registry.lookup_by_social_insurance, n, UNKNOWN_SOCIAL_INSURANCE) for n in numbers]
    for lookup, number, unknown in paths:  # in order: a later path is asked only when the earlier ones did not match
        citizen = lookup(number)
        if citizen is None:
            reasons.add(unknown)
            continue
        differences = _differences(identity, citizen)
        if not differences:
            return Reconciliation(MATCHED, (), citizen_key_material=citizen.id_number)
        reasons.update(differences)
    return Reconciliation(NEEDS_RECONCILIATION, tuple(r for r in REASONS if r in reasons))


def count_by_reason(results: Iterable[Reconciliation]) -> dict[str, int]:
    """How often each reason occurs, in the order of :data:`REASONS`; reasons that never occur are left out.

    A result may carry several reasons, so the total can exceed the number of unmatched results.
    """
    counts = dict.fromkeys(REASONS, 0)
    for result in results:
        for reason in result.reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return {reason: n for reason, n in counts.items() if n}
