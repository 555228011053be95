"""Typed records for later stages: one pydantic model per (standard version, table), generated from the data.

Validation has already typed every good value (Decimal amounts, int codes and counts, datetime/date
times), so records are assembled with ``model_construct`` and nothing is parsed twice.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from healthbook import standard as standards
from healthbook.standard import FieldSpec
from healthbook.validation.results import VisitResult


class Row(BaseModel):
    """Base of every generated table model; fields are the standard's element names."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _python_type(spec: FieldSpec) -> Any:
    if spec.format == "timestamp":
        return datetime
    if spec.format == "date":
        return date
    if spec.format == "multi_date":
        return tuple[date, ...]
    if spec.format in ("date_or_timestamp", "timestamp_or_day"):
        return datetime | date
    if spec.type == "number":
        return Decimal if spec.decimals else int
    return str


@cache
def model_for(version: str, table_id: str) -> type[Row]:
    table = standards.load(version).tables[table_id]
    fields: dict[str, Any] = {
        f.name: (_python_type(f) | None, Field(default=None, description=f.description_vi[:200]))
        for f in table.fields
    }
    model: type[Row] = create_model(f"QD{version}_{table_id}", __base__=Row, **fields)
    return model


class VisitRecord(BaseModel):
    """One accepted visit, as later stages (projection, receipts) consume it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    ma_lk: str
    standard: str
    facility: str | None
    tables: dict[str, tuple[Row, ...]]

    def one(self, table_id: str) -> Row | None:
        rows = self.tables.get(table_id, ())
        return rows[0] if rows else None


def visit_record(visit: VisitResult, facility: str | None) -> VisitRecord:
    """Typed view of a validated visit: converted values where the field has a type, text otherwise."""
    if visit.standard is None:
        raise ValueError("visit was never assigned a standard version (it failed before XML1 could be read)")
    tables: dict[str, tuple[Row, ...]] = {}
    for table_id, rows in visit.tables.items():
        model = model_for(visit.standard, table_id)
        known = model.model_fields
        tables[table_id] = tuple(
            model.model_construct(**{k: typed.get(k, v) for k, v in raw.items() if v and k in known})
            for raw, typed in zip(rows.raw, rows.typed, strict=True))
    return VisitRecord.model_construct(ma_lk=visit.ma_lk, standard=visit.standard, facility=facility, tables=tables)
