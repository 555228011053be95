"""The Ministry of Health output standard (QĐ 130/QĐ-BYT, amended by QĐ 4750/QĐ-BYT) as data.

``load(version)`` layers the annex-derived files (``data/qd130.json`` then ``data/qd4750.json``) and
merges the curated ``data/semantics.json``; ``select(visit_date)`` picks the version for a visit.
"""

from __future__ import annotations

import json
import re
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

from healthbook.standard.model import (
    Condition,
    FieldSpec,
    FieldType,
    Format,
    PiiClass,
    Standard,
    TableSpec,
    ValueCheck,
)

__all__ = [
    "Condition",
    "FieldSpec",
    "Standard",
    "TableSpec",
    "ValueCheck",
    "document_root",
    "in_force",
    "load",
    "pii_classes",
    "select",
    "semantics",
    "version_ids",
]

DATA_DIR = Path(__file__).parent / "data"


@cache
def _read(name: str) -> Any:
    """A data file, parsed once (a version's layers each read their base's file): read-only to every caller."""
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


@cache
def semantics() -> dict[str, Any]:
    data: dict[str, Any] = _read("semantics.json")
    return data


@cache
def _versions() -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = _read("versions.json")["versions"]
    return versions


def version_ids() -> tuple[str, ...]:
    return tuple(v["id"] for v in _versions())


@cache
def pii_classes() -> dict[str, PiiClass]:
    """Field name -> personal-data class, the same in every table and version."""
    out: dict[str, PiiClass] = {}
    for klass, names in semantics()["pii"].items():
        if klass.startswith("_"):
            continue
        for name in names:
            out[name] = klass
    return out


def _layered_fields(version_id: str) -> dict[str, list[dict[str, Any]]]:
    """Apply a version's layer on top of its base, recursively, giving raw field dicts per table."""
    entry = next(v for v in _versions() if v["id"] == version_id)
    document = _read(entry["file"])
    if "base" not in entry:
        return {t: [dict(f) for f in body["fields"]] for t, body in document["tables"].items()}
    tables = _layered_fields(entry["base"])
    for table_id, body in document["tables"].items():
        if body.get("new"):
            tables[table_id] = [dict(f) for f in body["fields"]]
            continue
        fields = tables[table_id]
        by_name = {f["name"]: f for f in fields}
        for name, change in body.get("modify", {}).items():
            target = by_name[name]
            for key, value in change.items():
                if key == "note_vi":
                    target["note_vi"] = value
                else:
                    target[key] = value
        for added in body.get("add", []):
            added = dict(added)
            after = added.pop("after", None)
            position = next((i + 1 for i, f in enumerate(fields) if f["name"] == after), 0)
            fields.insert(position, added)
    return tables


def _format_of(table_id: str, name: str) -> Format | None:
    formats = semantics()["formats"]
    by_table = formats.get("by_table", {}).get(table_id, {})
    if name in by_table:
        fmt: Format = by_table[name]
        return fmt
    for kind in ("timestamp", "date", "birth", "date_or_timestamp", "multi_date", "timestamp_or_day"):
        if name in formats[kind]:
            found: Format = kind
            return found
    return None


def _decimals_of(name: str) -> int:
    for places, names in semantics()["decimals"].items():
        if places.isdigit() and name in names:
            return int(places)
    return 0


def _check_of(table_id: str, name: str) -> ValueCheck | None:
    spec = semantics()["value_checks"].get(name)
    if not spec or (spec.get("tables") and table_id not in spec["tables"]):
        return None
    pattern = re.compile(spec["pattern"]) if "pattern" in spec else None
    return ValueCheck(kind=spec["kind"], codelist=spec.get("list"), pattern=pattern,
                      example=spec.get("example"), about_vi=spec.get("about_vi"), about_en=spec.get("about_en"))


def _required_of(raw: Any) -> tuple[bool, tuple[Condition, ...]]:
    if isinstance(raw, bool):
        return raw, ()
    clauses = tuple(Condition(field=c["field"], op=c["op"], values=tuple(c.get("values", ())))
                    for c in raw["when"])
    return False, clauses


def _field_spec(table_id: str, raw: dict[str, Any]) -> FieldSpec:
    name = raw["name"]
    multi_spec = semantics()["multi_value"].get(name)
    multi = multi_spec is not None and (not multi_spec.get("tables") or table_id in multi_spec["tables"])
    required, when = _required_of(raw["required"])
    ftype: FieldType = raw["type"]
    return FieldSpec(
        name=name, type=ftype, max_length=raw["max_length"], required=required, required_when=when,
        format=_format_of(table_id, name), decimals=raw.get("decimals", _decimals_of(name)), multi=multi,
        max_items=(multi_spec or {}).get("max_items") if multi else None,
        check=_check_of(table_id, name), pii=pii_classes().get(name),
        description_vi=raw.get("description_vi", ""), note_vi=raw.get("note_vi", ""),
        portal_check_vi=raw.get("portal_check_vi", ""), annex_stt=raw.get("annex_stt"),
    )


def _codelists(version_id: str) -> dict[str, dict[str, str]]:
    order = version_ids()
    rank = order.index(version_id)
    out: dict[str, dict[str, str]] = {}
    for name, spec in semantics()["codelists"].items():
        since = spec.get("since", {})
        out[name] = {code: label for code, label in spec["codes"].items()
                     if code not in since or order.index(since[code]) <= rank}
    return out


def document_root(table_id: str) -> str:
    """The root element of a table's document: the same in every version (``load`` names it so), and known without
    loading one."""
    root: str = semantics()["documents"][table_id]["root"]
    return root


@cache
def load(version_id: str) -> Standard:
    """The standard as in force under ``version_id`` ("130" or "4750")."""
    if version_id not in version_ids():
        raise KeyError(f"unknown standard version {version_id!r}; known: {', '.join(version_ids())}")
    entry = next(v for v in _versions() if v["id"] == version_id)
    documents = semantics()["documents"]
    tables: dict[str, TableSpec] = {}
    for table_id, raw_fields in _layered_fields(version_id).items():
        doc = documents[table_id]
        fields = tuple(_field_spec(table_id, f) for f in raw_fields)
        tables[table_id] = TableSpec(
            id=table_id, title_vi=doc["title_vi"], title_en=doc["title_en"], root=document_root(table_id),
            list=doc.get("list"), row=doc.get("row"), fields=fields,
            standalone=doc.get("standalone", False), sensitive=doc.get("sensitive", False),
            no_visit_key=doc.get("no_visit_key", False), by_name={f.name: f for f in fields},
        )
    return Standard(id=version_id, title=entry["title"], effective_from=date.fromisoformat(entry["effective_from"]),
                    tables=tables, codelists=_codelists(version_id), partial_codelists=_partial_codelists(version_id))


def _partial_codelists(version_id: str) -> dict[str, str]:
    """Code lists whose list in force under ``version_id`` we do not hold, with the decision that replaced it: a
    layer's "codelists": {name: {"partial": decision}}, inherited by the versions after it."""
    entry = next(v for v in _versions() if v["id"] == version_id)
    inherited = _partial_codelists(entry["base"]) if "base" in entry else {}
    declared = _read(entry["file"]).get("codelists", {})
    return {**inherited, **{name: str(spec["partial"]) for name, spec in declared.items() if "partial" in spec}}


def in_force(version_id: str) -> tuple[date, date | None]:
    """From when ``version_id`` applies, and until when (the next version's first day), None for the newest."""
    versions = _versions()
    index = version_ids().index(version_id)
    until = date.fromisoformat(versions[index + 1]["effective_from"]) if index + 1 < len(versions) else None
    return date.fromisoformat(versions[index]["effective_from"]), until


def select(visit_date: date | None) -> Standard:
    """The newest version in force on ``visit_date``; the newest overall when the date is unknown."""
    versions = _versions()
    if visit_date is None:
        return load(versions[-1]["id"])
    chosen = versions[0]["id"]
    for entry in versions:
        if date.fromisoformat(entry["effective_from"]) <= visit_date:
            chosen = entry["id"]
    return load(chosen)
