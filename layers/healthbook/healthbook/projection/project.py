"""Project a stored visit onto the health-book entry of QĐ 1332/QĐ-BYT, driven by ``mapping.json``.

Pure: no AWS, no I/O beyond reading ``mapping.json`` and the standard's data files (code lists, ICD-10 names,
administrative units). The input is the stored form of an accepted visit (``json.loads(canonical_visit(visit))``);
the output is a JSON-ready dict whose byte form, ``dumps(entry)``, is identical for identical inputs. Sensitive
tables (XML6 HIV, XML15) never enter an entry, nor do lines or diagnoses with an HIV-range ICD-10 code;
``_check_clean`` re-verifies that on every entry and raises ``SensitiveDataError`` (not ``assert``, so
``python -O`` cannot switch it off). See docs/health-book.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

from healthbook.kernel import PORTAL_TZ, visit_key
from healthbook.standard import icd10 as _icd10
from healthbook.standard import load, places, version_ids

SCHEMA = "healthbook-entry/2"
_MAPPING = Path(__file__).parent / "mapping.json"
# An ICD-10 code and nothing else: letter, two digits, then at most a dotted or undotted 1-2 digit
# subdivision (and the dagger/asterisk marks). Anchored, so a hex digest such as "b20f..." is no code.
_ICD = re.compile(r"^([A-Z])(\d\d)(?:\.?\d{1,2})?[*+†]?$")

Row = dict[str, str]
Tables = dict[str, list[Row]]


class SensitiveDataError(RuntimeError):
    """An entry would have carried data the sensitivity rules exclude; nothing is published."""


@dataclass(frozen=True)
class _Context:
    """What a transform may read beyond its own row: the visit's standard (its code lists) and the visit's day
    (which provinces were in force)."""

    standard: str
    visit_day: date | None


@cache
def mapping() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_MAPPING.read_text(encoding="utf-8"))
    sensitive = set(data["sensitive"]["tables"])
    for name, group in data["groups"].items():
        if group["source"] in sensitive:  # the declarative file itself must not route a sensitive table
            raise SensitiveDataError(f"mapping group {name} reads sensitive table {group['source']}")
    return data


@cache
def mapping_sha256() -> str:
    """SHA-256 (hex) of the mapping.json this layer ships: with the stored records it fixes every delivered entry,
    so the visit item keeps it instead of a copy of the entry (docs/delivery.md, "Auditing a delivery")."""
    return hashlib.sha256(_MAPPING.read_bytes()).hexdigest()


def dumps(entry: dict[str, Any]) -> str:
    """The entry's one byte form: sorted keys, no whitespace, UTF-8 text kept as is."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def projection_id(visit_id: str, version: int) -> str:
    return hashlib.sha256(f"{visit_id}\n{version}".encode()).hexdigest()


@cache
def _hiv_ranges() -> tuple[tuple[str, int, int], ...]:
    out = []
    for low, high in mapping()["sensitive"]["icd10_ranges"]:
        out.append((low[0], int(low[1:3]), int(high[1:3])))
    return tuple(out)


def is_hiv_code(code: str) -> bool:
    """True for an ICD-10 code in B20-B24 or Z21 (any subdivision, dotted or not)."""
    hit = _ICD.match(code.strip().upper())
    if not hit:
        return False
    letter, number = hit.group(1), int(hit.group(2))
    return any(letter == lo_letter and lo <= number <= hi for lo_letter, lo, hi in _hiv_ranges())


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(";") if v.strip()]


@cache
def _codelists(standard: str) -> dict[str, dict[str, str]]:
    version = standard if standard in version_ids() else version_ids()[-1]
    return load(version).codelists


def _day(value: str) -> date | None:
    digits = value.strip()
    if len(digits) < 8 or not digits[:8].isdigit():
        return None
    try:
        return datetime.strptime(digits[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _date(value: str) -> str | None:
    day = _day(value)
    return day.isoformat() if day else None


def _timestamp(value: str) -> str | None:
    digits = value.strip()
    try:
        if len(digits) == 12 and digits.isdigit():
            moment = datetime.strptime(digits, "%Y%m%d%H%M")
        elif len(digits) == 14 and digits.isdigit():
            moment = datetime.strptime(digits, "%Y%m%d%H%M%S")
        else:
            return None
    except ValueError:
        return None
    return moment.replace(tzinfo=PORTAL_TZ).isoformat()


def _decimal(value: str) -> int | float | None:
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return int(number) if number == number.to_integral_value() else float(number)


def _icd10_list(value: str) -> list[dict[str, str | None]]:
    return [{"code": _icd10.normalise(c), "name": _icd10.name(c)} for c in _split(value) if not is_hiv_code(c)]


def _named(code: str, label: str | None) -> dict[str, str | None]:
    """A coded value as the citizen reads it. Code-list labels are "Vietnamese / English"; a label without
    " / " has no English. An unknown code keeps the code, with null names."""
    vietnamese, _, english = (label or "").partition(" / ")
    return {"code": code, "label": vietnamese.strip() or None, "label_en": english.strip() or None}


def _code_label(code: str, labels: dict[str, str]) -> str | None:
    # real exports drop or add leading zeros ("1" for "01"): try the code as written first
    return labels.get(code) or labels.get(code.lstrip("0") or code) or labels.get(code.zfill(2)) or None


def _occupation_label(code: str, labels: dict[str, str]) -> str | None:
    """A 5-digit occupation code (QĐ 34/2020/QĐ-TTg) by its own entry ("00000") or its level-1 group."""
    if len(code) != 5 or not (code.isascii() and code.isdigit()):
        return None
    return labels.get(code) or labels.get(code[0]) or None


def _transform(spec: dict[str, Any], row: Row, context: _Context) -> Any:
    raw = row.get(spec["field"], "").strip()
    kind = spec["transform"]
    if kind.endswith("_list") and not raw:
        return []
    if not raw:
        return None
    if kind == "text":
        return raw
    if kind == "text_list":
        return _split(raw)
    if kind == "timestamp":
        return _timestamp(raw)
    if kind == "timestamp_or_date":
        return _date(raw) if len(raw) == 8 else _timestamp(raw)
    if kind == "date":
        return _date(raw)
    if kind == "date_list":
        return [d for d in (_date(v) for v in _split(raw)) if d is not None]
    if kind == "decimal":
        return _decimal(raw)
    if kind == "code":
        return _named(raw, _code_label(raw, _codelists(context.standard).get(spec["codelist"], {})))
    if kind == "occupation":
        return _named(raw, _occupation_label(raw, _codelists(context.standard).get(spec["codelist"], {})))
    if kind == "province":
        # a retired code on a later visit (93, Hậu Giang, in 2026) is named by the province that holds it now
        return _named(raw, places.provinces_on(context.visit_day).get(places.province_on(raw, context.visit_day)))
    if kind == "commune":
        return _named(raw, places.commune_name(raw))
    if kind == "icd10_list":
        return _icd10_list(raw)
    raise ValueError(f"mapping.json names an unknown transform {kind!r}")


def _rows(tables: Tables, table: str) -> list[Row]:
    rows = tables.get(table) or []
    return [row for row in rows if isinstance(row, dict)]


def _first(tables: Tables, table: str) -> Row:
    rows = tables.get(table) or []
    return rows[0] if rows else {}


def _has_hiv(tables: Tables) -> bool:
    sensitive = mapping()["sensitive"]
    if any(_rows(tables, t) for t in sensitive["redact_when_present"]):
        return True
    for table, fields in sensitive["visit_code_fields"].items():
        for row in _rows(tables, table):
            if any(is_hiv_code(c) for f in fields for c in _split(row.get(f, ""))):
                return True
    return False


def _line_filter(tables: Tables) -> Tables:
    """Drop XML3 lines coded to an HIV-range ICD-10, then XML4 results of the services those lines were."""
    sensitive = mapping()["sensitive"]
    out = {t: _rows(tables, t) for t in tables if t not in sensitive["tables"]}
    dropped: dict[str, list[Row]] = {}
    for table, fields in sensitive["line_code_fields"].items():
        keep: list[Row] = []
        drop: list[Row] = []
        for row in out.get(table, []):
            coded = any(is_hiv_code(c) for f in fields for c in _split(row.get(f, "")))
            (drop if coded else keep).append(row)
        out[table], dropped[table] = keep, drop
    for table, link in sensitive["linked_lines"].items():
        keys = {row.get(link["field"], "") for row in dropped.get(link["dropped_from"], [])} - {""}
        out[table] = [row for row in out.get(table, []) if row.get(link["field"], "") not in keys]
    return out


def _object(group: dict[str, Any], row: Row, context: _Context, redact: bool) -> dict[str, Any]:
    return {name: None if redact and spec.get("free_text") else _transform(spec, row, context)
            for name, spec in group["fields"].items()}


def _diagnoses(group: dict[str, Any], row: Row) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for main, field in ((True, group["main"]), (False, group["secondary"])):
        for item in _icd10_list(row.get(field, "")):
            code = str(item["code"])
            if code not in seen:
                seen.add(code)
                out.append({**item, "main": main})
    return out


def _check_clean(entry: dict[str, Any]) -> None:
    """Fail closed: no string anywhere in the entry may be an HIV-range ICD-10 code."""
    stack: list[Any] = [entry]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and is_hiv_code(value):
            raise SensitiveDataError("an HIV-range ICD-10 code reached a health-book entry")


def project(stored: dict[str, Any], *, facility: str, received_at: datetime, version: int,
            supersedes: str | None = None) -> dict[str, Any]:
    """The health-book entry of one stored visit; ``supersedes`` is the projection_id it replaces.

    ``version`` orders a visit's projections for VNeID: the receipt time of the visit version, in epoch
    milliseconds (monotonic across resubmissions, the same on every retry of one version).
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError("version must be a positive integer (epoch milliseconds of the visit version)")
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    ma_lk = str(stored["ma_lk"])
    standard = str(stored.get("standard", ""))
    raw_tables = stored.get("tables") or {}
    tables: Tables = {str(t): list(rows) for t, rows in raw_tables.items() if isinstance(rows, list)}
    redact = _has_hiv(tables)
    clean = _line_filter(tables)
    day = mapping()["visit_day"]
    context = _Context(standard, _day(_first(clean, day["source"]).get(day["field"], "")))
    visit_id = visit_key(facility, ma_lk)
    entry: dict[str, Any] = {
        "schema": SCHEMA,
        "projection_id": projection_id(visit_id, version),
        "visit_id": visit_id,
        "facility": facility,
        "ma_lk": ma_lk,
        "standard": standard,
        "version": version,
        "supersedes": supersedes,
        "received_at": received_at.astimezone(PORTAL_TZ).isoformat(),
    }
    for name, group in mapping()["groups"].items():
        rows = clean.get(group["source"], [])
        first = _first(clean, group["source"])
        kind = group["kind"]
        if kind == "object":
            entry[name] = _object(group, first, context, redact)
        elif kind == "object_or_null":
            entry[name] = _object(group, first, context, redact) if rows else None
        elif kind == "list":
            entry[name] = [_object(group, row, context, redact) for row in rows]
        elif kind == "diagnoses":
            entry[name] = _diagnoses(group, first)
        else:
            raise ValueError(f"mapping.json names an unknown group kind {kind!r}")
    _check_clean(entry)
    return entry
