"""Typed, immutable view of one version of the standard, built from the JSON data files."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

FieldType = Literal["string", "number"]
Format = Literal["timestamp", "date", "birth", "date_or_timestamp", "multi_date", "timestamp_or_day"]
CheckKind = Literal["codes", "icd10", "pattern", "person_id", "insurance_card"]
PiiClass = Literal["name", "id", "card", "phone", "address", "birthdate"]


def code_key(code: str) -> str:
    """How codes compare: as written, except that leading zeros do not count ("07" is cost group 7)."""
    return code.lstrip("0") or code[:1]


@dataclass(frozen=True, slots=True)
class Condition:
    """One clause of a conditional requirement; a field is required when all clauses hold."""

    field: str
    op: Literal["in", "not_in", "empty", "not_empty"]
    values: tuple[str, ...] = ()

    def holds(self, row: dict[str, str]) -> bool:
        return self.compile()(row)

    def compile(self) -> Callable[[dict[str, str]], bool]:
        """The test as one closure: the engine runs it for every empty conditional field of every row."""
        name = self.field
        if self.op == "empty":
            return lambda row: not row.get(name)
        if self.op == "not_empty":
            return lambda row: bool(row.get(name))
        accepted = frozenset(code_key(v) for v in self.values)
        if self.op == "in":
            return lambda row: code_key(row.get(name, "")) in accepted
        return lambda row: code_key(row.get(name, "")) not in accepted

    def describe(self) -> str:
        if self.op in ("empty", "not_empty"):
            return f"{self.field} {'trống' if self.op == 'empty' else 'có dữ liệu'}"
        return f"{self.field} {'∈' if self.op == 'in' else '∉'} {{{', '.join(self.values)}}}"


@dataclass(frozen=True, slots=True)
class ValueCheck:
    kind: CheckKind
    codelist: str | None = None
    pattern: re.Pattern[str] | None = None
    example: str | None = None
    about_vi: str | None = None
    about_en: str | None = None


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: FieldType
    max_length: int | None
    required: bool
    required_when: tuple[Condition, ...] = ()
    format: Format | None = None
    decimals: int = 0
    multi: bool = False
    max_items: int | None = None
    check: ValueCheck | None = None
    pii: PiiClass | None = None
    description_vi: str = ""
    note_vi: str = ""
    portal_check_vi: str = ""
    annex_stt: str | None = None

    @property
    def conditional(self) -> bool:
        return bool(self.required_when)

    def is_required(self, row: dict[str, str]) -> bool:
        if self.required:
            return True
        return bool(self.required_when) and all(c.holds(row) for c in self.required_when)


@dataclass(frozen=True, slots=True, eq=False)
class TableSpec:
    id: str
    title_vi: str
    title_en: str
    root: str
    list: str | None
    row: str | None
    fields: tuple[FieldSpec, ...]
    standalone: bool = False
    sensitive: bool = False
    no_visit_key: bool = False
    by_name: dict[str, FieldSpec] = field(default_factory=dict, compare=False, repr=False)

    @property
    def flat(self) -> bool:
        """True when the document root is itself the single row (XML1, XML7, XML8 ...)."""
        return self.row is None

    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


@dataclass(frozen=True, slots=True, eq=False)
class Standard:
    id: str
    title: str
    effective_from: date
    tables: dict[str, TableSpec]
    codelists: dict[str, dict[str, str]]
    # Lists replaced by a decision whose list we do not hold: name -> that decision (an unknown code is V218).
    partial_codelists: dict[str, str] = field(default_factory=dict)

    def table(self, table_id: str) -> TableSpec | None:
        return self.tables.get(table_id)

    def codes(self, name: str) -> dict[str, str]:
        return self.codelists[name]
