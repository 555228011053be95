"""One batch of canonical rows into the citizens' health books: check, reconcile, write, one outcome per row.

Per row: the schema (:func:`healthbook.enrolment.schema.validate_row`; ``invalid`` with its codes), the
population database (``reconcile()`` by SO_CCCD, else by the social-insurance number, agreeing on name, birth
date and sex; ``not_matched`` with the reconciliation's reason codes), then the one citizen key
(``healthbook.kernel.citizen_key`` of the registry's ID number) and the sink's answer: ``created``, ``updated``
or ``unchanged``. A bad row never raises. The population service or VNeID being unavailable does
(``PopulationUnavailable``, ``RetryableDeliveryError``): the workflow retries the whole batch, which is safe
because every write is idempotent (the same row gives the same body, and the same body is ``unchanged``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Final, Protocol

from healthbook.enrolment import Kind
from healthbook.enrolment.codes import SEPARATOR, RowProblem, reason
from healthbook.enrolment.outcome import mask_id
from healthbook.enrolment.schema import (
    EnrolmentRow,
    VaccinationRow,
    iso_date,
    row_number,
    validate_row,
)
from healthbook.enrolment.vaccines import lookup
from healthbook.kernel import PORTAL_TZ, citizen_key, utc
from healthbook.reconcile.matching import PopulationRegistry, Reconciliation, identity_from_summary, reconcile
from healthbook.standard import places
from healthbook.vneid.client import PermanentDeliveryError, canonical_json

__all__ = ["OUTCOMES", "BatchResult", "HealthBookSink", "RowOutcome", "process_batch", "profile_of", "record_id",
           "vaccination_of"]

OUTCOMES: Final = ("created", "updated", "unchanged", "not_matched", "invalid")
WRITTEN: Final = frozenset({"created", "updated", "unchanged"})
PROFILE_SCHEMA: Final = "healthbook-profile/1"
VACCINATION_SCHEMA: Final = "healthbook-vaccination/1"
# VNeID refusing one row's body (a permanent answer about the record itself): that row is invalid (N301), the batch
# goes on. Any other permanent answer (401, 403, 415...) is about us, not the row: it propagates.
ROW_REFUSALS: Final = frozenset({400, 404, 409, 413, 422})


class HealthBookSink(Protocol):
    """Where the rows go: :class:`healthbook.vneid.client.VneidClient` in production, the fake VNeID's client in
    tests. Each call answers ``"created"``, ``"updated"`` or ``"unchanged"``, and is idempotent."""

    def put_profile(self, citizen_key: str, profile: Mapping[str, Any]) -> str: ...

    def put_vaccination(self, citizen_key: str, record_id: str, record: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True, slots=True)  # slots: a summarised list holds one per row
class RowOutcome:
    """What became of one row. ``code``: "+"-joined problem codes (invalid), reconciliation reasons (not_matched)
    or findings of a written row (N290); ``reason`` their English text, ``reason_vi`` the Vietnamese. No name,
    no full ID: ``masked_id`` only. ``province``/``commune``: a participant's residence, for the report counters
    (None for a vaccination row: the workflow counts it under the uploading province)."""

    row: int
    outcome: str
    code: str | None
    reason: str | None
    masked_id: str
    citizen_key: str | None
    province: str | None
    commune: str | None
    reason_vi: str | None = None


@dataclass
class BatchResult:
    outcomes: list[RowOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rows per outcome: every outcome of :data:`OUTCOMES` (0 when none), then any other seen."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for outcome in self.outcomes:
            counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        return counts


# ---------------------------------------------------------------------------------------------- the bodies

@cache
def _sex_labels() -> dict[str, str]:
    from healthbook.standard import load, version_ids

    return dict(load(version_ids()[-1]).codelists.get("GIOI_TINH", {}))


def _named(code: str, label: str | None) -> dict[str, str | None]:
    """A coded value as the health-book entry writes it (healthbook-entry/2): {code, label, label_en}."""
    vietnamese, _, english = (label or "").partition(" / ")
    return {"code": code, "label": vietnamese.strip() or None, "label_en": english.strip() or None}


def profile_of(record: EnrolmentRow, id_number: str) -> dict[str, Any]:
    """The administrative section: the fields of the health-book entry's ``citizen`` group that a participant
    list holds (projection/mapping.json names), plus the social-insurance number. ``id_number`` is the
    population database's. Nothing that changes between two imports of the same row (no time, no row number)."""
    return {
        "schema": PROFILE_SCHEMA,
        "name": record.HO_TEN,
        "birth_date": iso_date(record.NGAY_SINH),
        "sex": _named(record.GIOI_TINH, _sex_labels().get(record.GIOI_TINH)),
        "id_number": id_number,
        "social_insurance_number": record.social_insurance_number or None,
        "insurance_cards": [record.MA_THE_BHYT] if record.MA_THE_BHYT else [],
        "registered_facilities": [record.MA_DKBD] if record.MA_DKBD else [],
        "card_valid_from": [iso_date(record.GT_THE_TU)] if record.GT_THE_TU else [],
        "card_valid_to": [iso_date(record.GT_THE_DEN)] if record.GT_THE_DEN else [],
        "province": _named(record.MATINH_CU_TRU, places.provinces_on(None).get(record.MATINH_CU_TRU)),
        "commune": _named(record.MAXA_CU_TRU, places.commune_name(record.MAXA_CU_TRU)) if record.MAXA_CU_TRU else None,
    }


def vaccination_of(record: VaccinationRow) -> dict[str, Any]:
    """One entry of the vaccination history. A listed code is named by the code list; an unknown one keeps the
    code and the name the file gave (``listed`` false)."""
    vaccine = lookup(record.MA_VACCINE)
    if vaccine is not None:
        named = {"code": vaccine.code, "label": vaccine.name_vi, "label_en": vaccine.name_en,
                 "programme": vaccine.programme, "listed": True}
    else:
        named = {"code": record.MA_VACCINE, "label": record.TEN_VACCINE or None, "label_en": None,
                 "programme": None, "listed": False}
    return {
        "schema": VACCINATION_SCHEMA,
        "vaccine": named,
        "dose_number": record.MUI_THU,
        "date": iso_date(record.NGAY_TIEM),
        "facility": {"code": record.MA_CSKCB},
        "lot_number": record.SO_LO or None,
    }


def record_id(key: str, vaccine: str, dose: int, day: str) -> str:
    """The stable id of a vaccination entry: the person (their citizen key, however they were found), the vaccine,
    the dose and the day. The same dose imported again is the same entry; a corrected lot updates it."""
    return hashlib.sha256(f"{key}\n{vaccine}\n{dose}\n{day}".encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------- the batch

def _joined(problems: Sequence[RowProblem]) -> tuple[str, str, str]:
    return (SEPARATOR.join(p.code for p in problems), "; ".join(p.reason for p in problems),
            "; ".join(p.reason_vi for p in problems))


def _identity_row(record: EnrolmentRow | VaccinationRow) -> dict[str, str]:
    """The record as an XML1 summary row for ``identity_from_summary``: MA_SO_BHXH first and the card after it in
    MA_THE_BHYT (the social-insurance number of each is its last 10 digits); an absent sex is "3" (undetermined),
    which the rules never count as a mismatch."""
    cards = [record.MA_SO_BHXH, record.MA_THE_BHYT if isinstance(record, EnrolmentRow) else ""]
    return {"SO_CCCD": record.SO_CCCD, "HO_TEN": record.HO_TEN, "NGAY_SINH": record.NGAY_SINH,
            "GIOI_TINH": record.GIOI_TINH or "3", "MA_THE_BHYT": ";".join(c for c in cards if c)}


def process_batch(rows: Sequence[Mapping[str, str]], *, kind: Kind, population: PopulationRegistry,
                  books: HealthBookSink, pepper: bytes, now: datetime) -> BatchResult:
    """Each canonical row of ``rows`` (strings keyed by the canonical header) to one :class:`RowOutcome`."""
    kind = Kind(kind)
    today = utc(now).astimezone(PORTAL_TZ).date()
    matches: dict[tuple[str, ...], Reconciliation] = {}
    written: dict[tuple[str, str], tuple[str, str]] = {}  # (citizen key, record) -> (body hash, answer)
    result = BatchResult()
    for row in rows:
        checked = validate_row(row, kind, today=today)
        raw_id = _raw(row, "SO_CCCD") or _raw(row, "MA_SO_BHXH")
        record = checked.record
        if record is None:
            code, text, text_vi = _joined(checked.problems)
            result.outcomes.append(RowOutcome(checked.row or row_number(row), "invalid", code, text, mask_id(raw_id),
                                              None, None, None, text_vi))
            continue
        identity = _identity_row(record)
        memo = tuple(identity.values())
        match = matches.get(memo)
        if match is None:
            match = matches[memo] = reconcile(identity_from_summary(identity), population)
        masked = mask_id(record.id_number)
        if not match.matched or not match.citizen_key_material:
            code = SEPARATOR.join(match.reasons)
            result.outcomes.append(RowOutcome(
                checked.row, "not_matched", code, "; ".join(reason(r) for r in match.reasons), masked, None, None,
                None, "; ".join(reason(r, vietnamese=True) for r in match.reasons)))
            continue
        key = citizen_key(pepper, match.citizen_key_material)
        assert key is not None  # a matched citizen has an ID number
        if isinstance(record, EnrolmentRow):
            target, body = "profile", profile_of(record, match.citizen_key_material)
            province, commune = record.MATINH_CU_TRU, record.MAXA_CU_TRU or None
        else:
            target = record_id(key, record.MA_VACCINE, record.MUI_THU, record.NGAY_TIEM)
            body, province, commune = vaccination_of(record), None, None
        digest = hashlib.sha256(canonical_json(body)).hexdigest()
        earlier = written.get((key, target))
        try:
            if earlier is not None and earlier[0] == digest:
                answer = "unchanged"  # this batch already wrote exactly this: no second request
            elif isinstance(record, EnrolmentRow):
                answer = books.put_profile(key, body)
            else:
                answer = books.put_vaccination(key, target, body)
        except PermanentDeliveryError as exc:
            if exc.status not in ROW_REFUSALS:
                raise
            result.outcomes.append(RowOutcome(
                checked.row, "invalid", "N301", reason("N301", status=exc.status), masked, key, province, commune,
                reason("N301", vietnamese=True, status=exc.status)))
            continue
        written[(key, target)] = (digest, answer)
        found: tuple[str | None, str | None, str | None] = _joined(checked.findings) if checked.findings else (
            None, None, None)
        result.outcomes.append(RowOutcome(checked.row, answer, found[0], found[1], masked, key, province, commune,
                                          found[2]))
    return result


def _raw(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""
