"""What every stage shares, said once: Vietnam time and the stored spelling of an instant, the facility code, the
citizen key, the deadline and the policy defaults.

Standard library only, so any handler may import it without loading the validator, lxml or signxml.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Protocol

# Vietnam has kept UTC+7 without daylight saving since 1975; a fixed offset needs no tzdata in the Lambda image.
PORTAL_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")
PORTAL_FORMAT = "%Y%m%d%H%M%S"  # the portal's thoiGianTiepNhan

# QĐ 2733 Appendix 01 Art. 5: a received visit reaches the citizen's VNeID app within 24 hours.
DEADLINE = timedelta(hours=24)
# How long a started delivery holds a visit before the sweep may take it again (docs/delivery.md).
LEASE = timedelta(minutes=10)
# Largest submission read (bytes); checked before parsing (docs/hostile-inputs.md).
MAX_FILE_BYTES = 20 * 1024 * 1024
# Most visits (HOSO, or rows of a check-in document) one file may hold; counted before any is read, so a file
# within MAX_FILE_BYTES is bounded in memory and time whatever it holds (docs/hostile-inputs.md).
MAX_VISITS_PER_FILE = 1000


class VisitStatus(StrEnum):
    """The status of a stored visit version (docs/data-model.md)."""

    PENDING = "PENDING"  # stored, on its way to VNeID
    DELIVERED = "DELIVERED"
    NEEDS_RECONCILIATION = "NEEDS_RECONCILIATION"  # the population database did not confirm the citizen
    DEADLINE_BREACHED = "DEADLINE_BREACHED"  # escalated: not delivered by its deadline
    SUPERSEDED = "SUPERSEDED"  # a newer version of the visit replaced it


class SubmissionStatus(StrEnum):
    """What became of one uploaded object (docs/ingest.md)."""

    ACCEPTED = "ACCEPTED"  # every visit admitted to the health book
    PARTIAL = "PARTIAL"  # some visits admitted
    REJECTED = "REJECTED"  # the file, or every visit, refused
    DUPLICATE = "DUPLICATE"  # the same object version again: its receipt and items stand
    GONE = "GONE"  # deleted before it could be read
    SKIPPED = "SKIPPED"  # not a submission (a console "folder" placeholder)


def receipt_status(receipt: Mapping[str, Any]) -> SubmissionStatus:
    """ACCEPTED, PARTIAL or REJECTED: what a receipt (its JSON object) says became of its file."""
    if receipt.get("accepted") is True:
        return SubmissionStatus.ACCEPTED
    visits = receipt.get("visits")
    admitted = isinstance(visits, list) and any(isinstance(v, dict) and v.get("accepted") is True for v in visits)
    return SubmissionStatus.PARTIAL if admitted else SubmissionStatus.REJECTED


class Outcome(StrEnum):
    """What a step of the delivery workflow reports for one visit (infra/statemachine/delivery.asl.json)."""

    NEEDS_RECONCILIATION = "NEEDS_RECONCILIATION"
    DELIVERED = "DELIVERED"
    SUPERSEDED = "SUPERSEDED"  # VNeID already holds a newer version
    DEFERRED = "DEFERRED"
    DEADLINE_BREACHED = "DEADLINE_BREACHED"
    SKIPPED = "SKIPPED"  # the visit is no longer PENDING (delivered by a concurrent run, superseded...)
    UNSETTLED = "UNSETTLED"  # even the Catch path failed: the lease expires and the sweep takes the visit again


# MA_CSKCB / MACSKCB: the facility code, 5 digits.
FACILITY_CODE = re.compile(r"[0-9]{5}")


def is_facility_code(text: str) -> bool:
    return FACILITY_CODE.fullmatch(text) is not None


# MATINH / maTinh: the province code, 2 digits (63 before 1 July 2025, 34 since: healthbook.standard.places).
PROVINCE_CODE = re.compile(r"[0-9]{2}")


# A portal transaction (maGiaoDich): the facility, the Vietnam time of receipt, 12 random hex digits. The file
# it names sits at ``portal_inbox_key``; ingest reads the id back from that key, so it needs no other record.
TRANSACTION_ID = re.compile(rf"({FACILITY_CODE.pattern})-([0-9]{{14}})-([0-9a-f]{{12}})")
PORTAL_FOLDER = "portal"


def new_transaction_id(facility: str, received_at: datetime) -> str:
    if not is_facility_code(facility):
        raise ValueError("a transaction id names a facility code")
    return f"{facility}-{portal_time(received_at)}-{secrets.token_hex(6)}"


def is_transaction_id(text: str) -> bool:
    return TRANSACTION_ID.fullmatch(text) is not None


def portal_inbox_key(transaction_id: str) -> str:
    """Where a file received by the portal API lands: its facility's own inbox prefix, never anywhere else."""
    match = TRANSACTION_ID.fullmatch(transaction_id)
    if match is None:
        raise ValueError("not a transaction id")
    return f"inbox/{match.group(1)}/{PORTAL_FOLDER}/{transaction_id}.xml"


def transaction_of(key: str) -> str | None:
    """The transaction id of an inbox key the portal wrote, else None (a file uploaded to S3 directly)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "inbox" or parts[2] != PORTAL_FOLDER or not parts[3].endswith(".xml"):
        return None
    candidate = parts[3][:-4]
    match = TRANSACTION_ID.fullmatch(candidate)
    return candidate if match is not None and match.group(1) == parts[1] else None


def utc(moment: datetime) -> datetime:
    """Refuse naive datetimes: a time without a zone is a bug waiting for a 7-hour shift (UTC+7)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timezone-aware datetime required, got {moment.isoformat()}")
    return moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """Seconds precision, ``Z`` suffix: one spelling per instant, since the string itself is signed."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    """An ISO 8601 UTC string of docs/data-model.md (``2026-11-22T03:00:00Z``) as an aware datetime."""
    return utc(datetime.fromisoformat(value))


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def portal_time(moment: datetime) -> str:
    return moment.astimezone(PORTAL_TZ).strftime(PORTAL_FORMAT)


def visit_key(facility: str, ma_lk: str) -> str:
    """A visit's id: its facility's code and the facility's MA_LK, which names the visit only within it. The one
    place it is made: ingest stores a visit under it, the projection puts it in the entry VNeID keeps."""
    return f"{facility}#{ma_lk}"


def citizen_key(pepper: bytes, id_number: str) -> str | None:
    """HMAC-SHA256(pepper, citizen ID): joins a citizen's visits and deliveries without storing the number. The
    one place it is computed: ingest keys a visit by its SO_CCCD, reconciliation by the population database's
    number, and the two must agree. None when the number is empty."""
    number = id_number.strip()
    if not number:
        return None
    return hmac.new(pepper, number.encode("utf-8"), hashlib.sha256).hexdigest()


class Metrics(Protocol):
    """The one metrics port of every stage: counts and latencies for CloudWatch (EMF in the functions,
    healthbook.aws.observability); names are the docs' (ingest.md, delivery.md)."""

    def count(self, name: str, value: int = 1, **dimensions: str) -> None: ...

    def latency(self, name: str, milliseconds: float) -> None: ...


class NoMetrics:
    def count(self, name: str, value: int = 1, **dimensions: str) -> None:
        pass

    def latency(self, name: str, milliseconds: float) -> None:
        pass
