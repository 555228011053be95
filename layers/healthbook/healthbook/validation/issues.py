"""One reported problem, with its personal-data value masked before it ever leaves this module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from healthbook.standard import pii_classes
from healthbook.validation.catalogue import RULES, Severity


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

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "table": self.table, "ma_lk": self.ma_lk,
                "field": self.field, "value": self.value, "message_vi": self.message_vi,
                "message_en": self.message_en}


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


def make_issue(code: str, *, table: str | None = None, ma_lk: str | None = None, field: str | None = None,
               value: str | None = None, **params: Any) -> Issue:
    rule = RULES[code]
    shown = masked(field, value)
    if shown is not None and len(shown) > _MAX_VALUE:
        shown = shown[:_MAX_VALUE] + f"… ({len(shown)})"
    # Messages see the masked value only; ma_lk is the facility's own visit key, not personal data.
    fill = _Params(table=table or "", field=field or "", value=shown or "", ma_lk=ma_lk or "", **params)
    return Issue(code=code, severity=rule.severity, table=table, ma_lk=ma_lk, field=field, value=shown,
                 message_vi=rule.message_vi.format_map(fill), message_en=rule.message_en.format_map(fill))
