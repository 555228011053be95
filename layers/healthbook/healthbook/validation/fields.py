"""Field rules compiled from the standard's data: one small function per field, built once per version.

A checker takes the field's text (never empty: emptiness is the required rule's business) and returns
the typed value and, when the text is wrong, the catalogue code with its message parameters. The typed
values feed the cross-field rules and the typed records, so nothing is parsed twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from healthbook.standard import FieldSpec, Standard, icd10
from healthbook.standard.model import code_key

Problem = tuple[str, dict[str, Any]]
Checker = Callable[[str], tuple[Any, Problem | None]]

_CARD = re.compile(r"^[A-Z]{2}[1-5][0-9]{12}$")
_PASSPORT = re.compile(r"^[A-Z][0-9]{7}$")


def parse_timestamp(text: str) -> datetime | None:
    if len(text) != 12 or not text.isascii() or not text.isdigit():
        return None
    number = int(text)  # one conversion, then arithmetic: this runs for every order and result time
    try:
        return datetime(number // 100000000, number // 1000000 % 100, number // 10000 % 100, number // 100 % 100,
                        number % 100)
    except ValueError:
        return None


def parse_date(text: str) -> date | None:
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _birth_ok(text: str) -> bool:
    """yyyyMMddHHmm where unknown parts are 00 (annex XML1 NGAY_SINH)."""
    if len(text) != 12 or not text.isascii() or not text.isdigit():
        return False
    year, month, day, hour, minute = (int(text[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12)))
    if year < 1850 or month > 12 or hour > 23 or minute > 59:
        return False
    if month == 0:
        return day == 0
    if day == 0:
        return True
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def person_id_ok(text: str, provinces: dict[str, str]) -> bool:
    if not text.isascii():
        return False
    if len(text) == 12 and text.isdigit():
        return text[0] == "0" and text[1:3] in provinces
    if len(text) == 9 and text.isdigit():
        return True
    return bool(_PASSPORT.match(text))


def _values(spec: FieldSpec, text: str) -> list[str]:
    return [v.strip() for v in text.split(";")] if spec.multi else [text]


def _number(text: str, decimals: int) -> tuple[Any, Problem | None]:
    """An annex number: an optional '-', digits, at most one '.' and ``decimals`` digits after it. Its value (an
    int when the field has no decimals) and, when it is negative, V216 (kept: sums and the health book use the
    value as written); or None and why it is no number."""
    # str methods instead of a regex: an optional '-', digits, at most one '.', digits after it.
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    point = digits.find(".")
    typed: Any
    if point < 0:
        if not digits.isdigit() or not digits.isascii():
            return None, ("V203", {})
        typed = Decimal(digits) if decimals else int(digits)
    else:
        whole, places = digits[:point], digits[point + 1 :]
        if not (whole.isdigit() and places.isdigit() and digits.isascii()):
            return None, ("V203", {})
        if len(places) > decimals:
            return None, ("V204", {"decimals": decimals})
        typed = Decimal(digits)
    if negative:
        typed = -typed
        if typed != 0:  # '-0.00' is zero: a rounding artefact, not a finding
            return typed, ("V216", {})
    return typed, None


def _lean_checker(spec: FieldSpec) -> Checker | None:
    """The checker of the commonest fields, a number or a date or time and nothing else to check, without the
    general checker's tests of what they lack: the same answers, on every value a visit's memos have not seen."""
    if spec.check is not None or spec.max_items is not None:
        return None
    max_length, decimals = spec.max_length, spec.decimals
    if spec.type == "number" and spec.format is None:
        def number(text: str) -> tuple[Any, Problem | None]:
            if max_length is not None and len(text) > max_length:
                return None, ("V202", {"length": len(text), "max_length": max_length})
            return _number(text, decimals)
        return number
    if spec.type == "string" and spec.format in ("timestamp", "date"):
        parser, code = (parse_timestamp, "V205") if spec.format == "timestamp" else (parse_date, "V206")

        def moment(text: str) -> tuple[Any, Problem | None]:
            if max_length is not None and len(text) > max_length:
                return None, ("V202", {"length": len(text), "max_length": max_length})
            typed = parser(text)
            return (typed, None) if typed is not None else (None, (code, {}))
        return moment
    return None


def compile_checker(spec: FieldSpec, standard: Standard) -> Checker:
    return _lean_checker(spec) or _general_checker(spec, standard)


def _general_checker(spec: FieldSpec, standard: Standard) -> Checker:
    max_length, decimals = spec.max_length, spec.decimals
    is_number, fmt, check = spec.type == "number", spec.format, spec.check
    codes: frozenset[str] | None = None
    if check and check.kind == "codes" and check.codelist:
        # Numeric codes compare by value ("07" is group 7); string codes exactly as written.
        listed = standard.codes(check.codelist)
        codes = frozenset(code_key(c) for c in listed) if is_number else frozenset(listed)
    provinces = standard.codes("PROVINCE")
    replaced_by = standard.partial_codelists.get(check.codelist or "") if check else None

    single_code = check is not None and check.kind == "icd10" and not spec.multi

    def checker(text: str) -> tuple[Any, Problem | None]:
        if single_code and ";" in text:
            return None, ("V215", {})  # before the length check: "J18.9;I10" is one code too many, not too long
        if codes is not None and any((code_key(v) if is_number else v) not in codes for v in _values(spec, text)):
            # before the length and number checks: "undefined" or "1. Đủ điều kiện…" is not a code, whatever its length
            if replaced_by:
                return None, ("V218", {"codelist": check.codelist if check else "", "decision": replaced_by})
            return None, ("V208", {"codelist": check.codelist if check else "", "standard": standard.id})
        if max_length is not None and len(text) > max_length:
            return None, ("V202", {"length": len(text), "max_length": max_length})
        typed: Any = text
        negative = False
        if is_number:
            typed, problem = _number(text, decimals)
            if typed is None:
                return None, problem
            negative = problem is not None  # V216, once the format is checked
        if fmt is not None:
            if fmt == "timestamp":
                typed = parse_timestamp(text)
                if typed is None:
                    return None, ("V205", {})
            elif fmt == "date":
                typed = parse_date(text)
                if typed is None:
                    return None, ("V206", {})
            elif fmt == "multi_date":
                dates = [parse_date(v) for v in _values(spec, text)]
                if any(d is None for d in dates):
                    return None, ("V206", {})
                typed = tuple(dates)
            elif fmt == "date_or_timestamp":
                typed = parse_timestamp(text) if len(text) == 12 else parse_date(text)
                if typed is None:
                    return None, ("V206", {})
            elif fmt == "timestamp_or_day":
                typed = parse_timestamp(text)
                if typed is None:
                    day = parse_date(text)
                    return (day, ("V217", {})) if day is not None else (None, ("V205", {}))
            elif fmt == "birth" and not _birth_ok(text):
                return None, ("V207", {})
        if negative:
            return typed, ("V216", {})  # kept: sums and the health book use the value as written
        if check is None and spec.max_items is None:
            return typed, None
        values = _values(spec, text)
        if spec.max_items is not None and len(values) > spec.max_items:
            return None, ("V214", {"count": len(values), "max_items": spec.max_items})
        if check is None:
            return typed, None
        kind = check.kind
        if kind == "icd10":
            for value in values:
                found = icd10.lookup(value)
                if found == "unknown":
                    return None, ("V209", {"_value": value})
                if found == "category":
                    return typed, ("V210", {"_value": value})
        elif kind == "pattern" and check.pattern is not None:
            for value in values:
                if not check.pattern.match(value):
                    return None, ("V211", {"about_vi": check.about_vi, "about_en": check.about_en,
                                           "example": check.example})
        elif kind == "person_id":
            if not person_id_ok(text, provinces):
                return None, ("V212", {})
        elif kind == "insurance_card" and not all(_CARD.match(v) for v in values):
            return None, ("V213", {})
        return typed, None

    return checker


PLAIN_UNBOUNDED = 1 << 62  # "n" in the annex: no maximum length

class Memo(dict[str, Any]):
    """Valid values of one field and their typed form, carrying the field's checker for the misses.

    MA_LK, codes and "0" repeat on every line; one dict lookup answers them.
    """

    __slots__ = ("check",)

    def __init__(self, check: Checker) -> None:
        super().__init__()
        self.check = check


# A field's plan is an int (a plain string: only its maximum length is checked, inline) or a Memo.
Plan = int | Memo
MEMO_LIMIT = 4096


def _plain(spec: FieldSpec) -> bool:
    return spec.type == "string" and spec.format is None and spec.check is None and spec.max_items is None


@cache
def plan(standard: Standard, table_id: str) -> dict[str, Plan]:
    table = standard.tables[table_id]
    out: dict[str, Plan] = {}
    for spec in table.fields:
        if _plain(spec):
            out[spec.name] = spec.max_length if spec.max_length is not None else PLAIN_UNBOUNDED
        else:
            out[spec.name] = Memo(compile_checker(spec, standard))
    return out
