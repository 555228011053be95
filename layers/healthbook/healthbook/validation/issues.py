"""One reported problem, with its personal-data value masked before it ever leaves this module."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, SupportsIndex

from healthbook import standard as standards
from healthbook.standard import pii_classes
from healthbook.validation.catalogue import RULES, Blocks, Severity


@dataclass(slots=True)
class Issue:
    code: str
    severity: Severity
    table: str | None
    ma_lk: str | None
    field: str | None
    value: str | None
    message_vi: str
    message_en: str
    blocks: Blocks = "none"  # "file", "visit" or "none" (a finding): the rule's class (catalogue.py)
    basis: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "blocks": self.blocks, "table": self.table,
                "ma_lk": self.ma_lk, "field": self.field, "value": self.value, "message_vi": self.message_vi,
                "message_en": self.message_en, "basis": self.basis}


class _Params(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def mask(value: str, klass: str) -> str:
    """Hide personal data but keep enough shape to find the mistake (length, first/last characters)."""
    n = len(value)
    if klass in ("id", "card", "phone") and n >= 8:
        return value[:2] + "*" * (n - 4) + value[-2:]
    if klass == "birthdate" and n >= 4:
        return value[:4] + "*" * (n - 4)  # the year alone identifies nobody
    return f"*** ({n})"


def masked(field: str | None, value: str | None) -> str | None:
    if value is None or field is None:
        return value
    klass = pii_classes().get(field)
    return mask(value, klass) if klass else value


_MAX_VALUE = 200  # a 20 MB free-text value must not be copied into every receipt


@cache
def _where(table: str | None, field: str | None) -> str:
    """'XML1.HO_TEN, annex STT 6' (the row in the newest version's annex), for a rule's basis."""
    if not table:
        return "the envelope"
    if not field:
        return table
    spec = standards.load(standards.version_ids()[-1]).tables.get(table)
    found = spec.by_name.get(field) if spec is not None else None
    row = f", annex STT {found.annex_stt}" if found is not None and found.annex_stt else ""
    return f"{table}.{field}{row}"


def make_issue(code: str, *, table: str | None = None, ma_lk: str | None = None, field: str | None = None,
               value: str | None = None, **params: Any) -> Issue:
    rule = RULES[code]
    shown = masked(field, value)
    if shown is not None and len(shown) > _MAX_VALUE:
        shown = shown[:_MAX_VALUE] + f"… ({len(shown)})"
    # Messages see the masked value only; ma_lk is the facility's own visit key, not personal data.
    fill = _Params(table=table or "", field=field or "", value=shown or "", ma_lk=ma_lk or "", **params)
    basis = rule.basis.replace("{where}", _where(table, field)) if "{where}" in rule.basis else rule.basis
    return Issue(code=code, severity=rule.severity, table=table, ma_lk=ma_lk, field=field, value=shown,
                 message_vi=rule.message_vi.format_map(fill), message_en=rule.message_en.format_map(fill),
                 blocks=rule.blocks_for(table), basis=basis)


ISSUES_PER_KIND = 100  # issues of one code, table and field listed per visit; the rest are counted (V299)


class VisitIssues(list[Issue]):
    """A visit's issues, at most :data:`ISSUES_PER_KIND` of each (code, table, field); the rest are counted and
    summarised by one V299 each (:meth:`summarise`). A table of 300,000 rows missing a field then costs 100
    issues, not 300,000, in memory and in the receipt; the verdict is the same, since issues of one code and
    table share their class. Every way in goes through :meth:`append`."""

    __slots__ = ("_listed", "_omitted")

    def __init__(self, issues: Iterable[Issue] = ()) -> None:
        super().__init__()
        self._listed: dict[tuple[str, str | None, str | None], int] = {}
        self._omitted: dict[tuple[str, str | None, str | None], tuple[int, str | None]] = {}
        self.extend(issues)

    def room(self, code: str, table: str | None, field: str | None, ma_lk: str | None = None) -> bool:
        """Whether an issue of this kind would be listed; if not, it is counted now (the caller need not make
        it: the hot loops ask first)."""
        key = (code, table, field)
        if self._listed.get(key, 0) < ISSUES_PER_KIND:
            return True
        count, _ = self._omitted.get(key, (0, ma_lk))
        self._omitted[key] = (count + 1, ma_lk)
        return False

    def append(self, issue: Issue) -> None:
        if self.room(issue.code, issue.table, issue.field, issue.ma_lk):
            key = (issue.code, issue.table, issue.field)
            self._listed[key] = self._listed.get(key, 0) + 1
            super().append(issue)

    def extend(self, issues: Iterable[Issue]) -> None:
        for issue in issues:
            self.append(issue)

    def __iadd__(self, issues: Iterable[Issue]) -> VisitIssues:  # type: ignore[override,misc]
        self.extend(issues)
        return self

    def insert(self, index: SupportsIndex, issue: Issue) -> None:
        raise TypeError("a visit's issues are appended, in the order they are found")

    def summarise(self) -> None:
        """One V299 per kind with issues left out, after the listed ones (call once, when the visit is read)."""
        for (code, table, field), (count, ma_lk) in self._omitted.items():
            super().append(make_issue("V299", table=table, ma_lk=ma_lk, field=field, count=count, same=code,
                                      limit=ISSUES_PER_KIND))
        self._omitted.clear()
