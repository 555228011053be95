"""Files shaped like real HIS exports (healthbook_dev.generate.his_export) through the validator.

A corpus as large as the measured sample (1,152 visits, so every counted shape occurs as often as it did there),
with every shape of shared/spec/real-world-shapes.md: at least 97 % of its visits reach the health book, nothing
blocks a visit but a planted defect, every planted defect is reported where it was planted, the harmless shapes
stay harmless, and every shape really occurs (so no assertion passes on an empty set). Run with ``-s`` to see the
corpus summary.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from healthbook.validation import FileResult, VisitResult, validate_bytes
from healthbook.validation.issues import Issue
from healthbook_dev.cli import main
from healthbook_dev.generate import Defect, HisExport, his_export_batch
from healthbook_dev.generate.his_export import BOM, INLINE, REFERRAL_REASON, WRAPPED, XSI_WITH_SPACE
from healthbook_dev.generate.vocab import PROVINCES_2025
from lxml import etree

pytestmark = pytest.mark.slow  # the 1,152-visit HIS-export corpus

CORPUS_VISITS = 1152  # the sample's size: about 5 s to build and validate on 2 cores
SEED = 2026
MIN_ADMISSION_RATE = 0.97
BLOCKING_DEFECTS = {"H601", "H603"}  # the planted defects that keep a visit out; every other one is a finding


@dataclass(frozen=True)
class Checked:
    export: HisExport
    result: FileResult

    def issues(self) -> list[Issue]:
        return self.result.errors + [i for v in self.result.visits for i in v.issues]


@pytest.fixture(scope="module")
def corpus() -> list[Checked]:
    return [Checked(e, validate_bytes(e.body, path=e.file)) for e in his_export_batch(SEED, CORPUS_VISITS)]


def _summary(corpus: list[Checked]) -> tuple[float, str]:
    visits = [(c.result, v) for c in corpus for v in c.result.visits]
    admitted = sum(result.admitted(v) for result, v in visits)
    rate = admitted / len(visits)
    kept_out = Counter(i.code for c in corpus for i in c.issues() if i.blocks != "none")
    findings = Counter(i.code for c in corpus for i in c.result.findings)
    where = Counter(f"{i.code} {i.table}.{i.field or ''}" for c in corpus for i in c.result.findings)
    lines = [f"HIS export corpus: {len(corpus)} files, {len(visits)} visits",
             f"admitted to the health book: {admitted}/{len(visits)} = {rate:.2%}",
             f"files rejected: {sum(c.result.rejected for c in corpus)}",
             f"visits not admitted, by code: {dict(sorted(kept_out.items()))}",
             "top 15 finding codes:", *(f"  {code:<6}{count:>7}" for code, count in findings.most_common(15)),
             "top 15 findings by field:", *(f"  {key:<28}{count:>7}" for key, count in where.most_common(15))]
    return rate, "\n".join(lines)


def test_at_least_97_percent_of_visits_reach_the_health_book(corpus: list[Checked]) -> None:
    rate, report = _summary(corpus)
    print("\n" + report)
    assert len(corpus) == CORPUS_VISITS and all(len(c.result.visits) == 1 for c in corpus), report
    assert rate >= MIN_ADMISSION_RATE, report


def test_every_issue_has_a_basis_and_a_class(corpus: list[Checked]) -> None:
    bad = [(c.export.file, i.code) for c in corpus for i in c.issues()
           if not i.basis or i.blocks not in ("file", "visit", "none")]
    assert not bad


def test_nothing_blocks_but_a_planted_defect(corpus: list[Checked]) -> None:
    unexplained = []
    for c in corpus:
        planted = {(d.code, d.table, d.field) for d in c.export.defects}
        unexplained += [(c.export.file, i.code, i.table, i.field, i.value) for i in c.issues()
                        if i.blocks != "none" and (i.code, i.table, i.field) not in planted]
    assert not unexplained
    for c in corpus:
        blocked = bool({d.code for d in c.export.defects} & BLOCKING_DEFECTS)
        assert not c.result.rejected, c.export.file
        assert [c.result.admitted(v) for v in c.result.visits] == [not blocked], c.export.label()


def _planted(corpus: list[Checked], code: str, field: str | None) -> list[tuple[Checked, Defect]]:
    return [(c, d) for c in corpus for d in c.export.defects if (d.code, d.field) == (code, field)]


def _reported(c: Checked, defect: Defect) -> list[Issue]:
    return [i for i in c.issues() if (i.code, i.table, i.field) == (defect.code, defect.table, defect.field)
            and (defect.value is None or i.value == defect.value)]


@pytest.mark.parametrize(("code", "field", "blocks"), [
    ("V203", "THANH_TIEN_BV", "none"),  # decimal comma, named in the report
    ("H601", None, "visit"),  # neither SO_CCCD nor MA_THE_BHYT
    ("H603", "MA_BENH_CHINH", "visit"),  # main diagnosis empty
])
def test_planted_defect_is_reported_where_it_was_planted(corpus: list[Checked], code: str, field: str | None,
                                                         blocks: str) -> None:
    planted = _planted(corpus, code, field)
    assert planted
    for c, defect in planted:
        found = _reported(c, defect)
        assert found and all(i.blocks == blocks for i in found), (defect.label(), [i.to_dict() for i in c.issues()])


# A code that is not in its list is V208 naming the value, whatever its length ("undefined" is not "too long").
@pytest.mark.parametrize(("table", "field"), [("XML2", "MA_NHOM"), ("XML13", "MA_LYDO_CT")])
def test_code_written_as_text_is_reported_as_unknown_code(corpus: list[Checked], table: str, field: str) -> None:
    planted = _planted(corpus, "V208", field)
    assert planted and all(d.table == table for _, d in planted)
    missed = [(c.export.file, d.value, [(i.code, i.field, i.value) for i in c.issues() if i.field == field])
              for c, d in planted if not _reported(c, d)]
    assert not missed


def test_code_written_as_text_is_a_finding_naming_its_value(corpus: list[Checked]) -> None:
    """Whatever code it gets, a code written as text is named at its table and field and keeps nothing out."""
    planted = _planted(corpus, "V208", "MA_NHOM") + _planted(corpus, "V208", "MA_LYDO_CT")
    assert {d.value for _, d in planted} == {"undefined", "Nhóm 1", REFERRAL_REASON}
    for c, defect in planted:
        found = [i for i in c.issues() if (i.table, i.field, i.value) == (defect.table, defect.field, defect.value)]
        assert found and all(i.blocks == "none" for i in found), defect.label()


def test_inline_files_are_read_and_admitted(corpus: list[Checked]) -> None:
    inline = [c for c in corpus if c.export.style == INLINE]
    assert inline
    for c in inline:
        (visit,) = c.result.visits
        assert {i.table for i in visit.findings if i.code == "S107"} == set(c.export.tables)
        assert set(visit.tables) == set(c.export.tables)
        assert c.result.admitted(visit), [i.to_dict() for i in visit.errors]


def _without_quirk(body: bytes) -> bytes:
    root = etree.fromstring(body)
    for content in root.iter("NOIDUNGFILE"):
        document = base64.b64decode(content.text or "")
        content.text = base64.b64encode(document.replace(b" " + XSI_WITH_SPACE, b"")).decode()
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def _keys(result: FileResult) -> list[tuple[str | None, ...]]:
    return sorted((i.code, i.table, i.field, i.value, i.blocks) for i in result.errors + result.findings
                  + [i for v in result.visits for i in v.errors])


def test_the_namespace_quirk_changes_nothing(corpus: list[Checked]) -> None:
    quirky = [c for c in corpus if any(s.startswith("xsi_with_space:") for s in c.export.shapes)]
    assert len(quirky) > CORPUS_VISITS // 4
    for c in quirky[:40]:
        plain = _without_quirk(c.export.body)
        assert XSI_WITH_SPACE not in base64.b64decode(re.findall(rb"<NOIDUNGFILE>([^<]*)<", plain)[0])
        assert _keys(validate_bytes(plain)) == _keys(c.result), c.export.file
        assert set(c.result.visits[0].tables) == set(c.export.tables)


def test_an_eight_digit_reexam_day_is_a_warning_and_nothing_more(corpus: list[Checked]) -> None:
    papers = [c for c in corpus if "XML14" in c.export.tables]
    assert papers
    for c in papers:
        on_paper = [i for i in c.issues() if i.table == "XML14"]
        assert [i.code for i in on_paper if i.field == "NGAY_HEN_KL"] == ["V217"], c.export.file
        assert all(i.blocks == "none" for i in on_paper)


def _documents(export: HisExport) -> list[bytes]:
    root = etree.fromstring(export.body)
    return [base64.b64decode(content.text or "") for content in root.iter("NOIDUNGFILE") if len(content) == 0]


def test_the_shapes_really_occur(corpus: list[Checked]) -> None:
    shapes = Counter(shape.split(":")[0] for c in corpus for shape in c.export.shapes)
    for shape in ("bom", "uninsured", "no_so_cccd", "card_10", "card_14", "t_thuoc_differs", "xml1_t_bncct",
                  "xml2_t_bncct", "integer_amounts", "declaration", "xsi_with_space", "crlf", "cdata"):
        assert shapes[shape] >= 1, shape
    assert (shapes["bom"], shapes["no_so_cccd"], shapes["card_10"], shapes["card_14"]) == (4, 237, 1, 1)
    assert Counter(d.code for c in corpus for d in c.export.defects) == {"H603": 26, "H601": 1, "V203": 14,
                                                                         "V208": 12 + 1 + 6}
    styles = Counter(c.export.style for c in corpus)
    assert styles[INLINE] >= 5 and styles[WRAPPED] >= 5
    mixes = Counter(c.export.tables for c in corpus)
    assert mixes[("XML1", "XML2", "XML3")] > mixes[("XML1", "XML3")] > 0
    assert mixes[("XML1", "XML8")] == shapes["uninsured"]
    assert sum("XML9" in tables for tables in mixes.elements()) >= 20

    # In the bytes, not only in the labels.
    assert sum(c.export.body.startswith(BOM + b"<?xml") for c in corpus) == shapes["bom"]
    assert all(c.export.body.lstrip(BOM).startswith(b"<?xml") for c in corpus)
    documents = [d for c in corpus for d in _documents(c.export)]
    assert sum(d.startswith(b"<?xml") for d in documents) == shapes["declaration"]
    assert sum(b"\r\n" in d for d in documents) == shapes["crlf"]
    assert sum(b"<![CDATA[" in d for d in documents) == shapes["cdata"]
    assert sum(XSI_WITH_SPACE in d for d in documents) == shapes["xsi_with_space"]
    wrapped = next(c for c in corpus if c.export.style == WRAPPED)
    lines = re.search(rb"<NOIDUNGFILE>([^<]*)<", wrapped.export.body)[1].split(b"\n")  # type: ignore[index]
    assert {len(line) for line in lines[:-2]} == {76}
    assert all(b"<SOLUONGHOSO>1</SOLUONGHOSO>" in c.export.body and b"<CHUKYDONVI/>" in c.export.body
               and re.search(rb"<NGAYLAP>\d{8}</NGAYLAP>", c.export.body) for c in corpus)


def _rows(visit: VisitResult, table: str) -> list[dict[str, str]]:
    rows = visit.tables.get(table)
    return rows.raw if rows is not None else []


def test_values_look_like_2026_exports(corpus: list[Checked]) -> None:
    """Read back by the validator: what every real file holds."""
    provinces = {p[0] for p in PROVINCES_2025}
    certificate = re.compile(r"^\d{6}/[A-Z]{2,3}-CCHN(;\d{6}/[A-Z]{2,3}-CCHN)?$")
    joined = 0
    for c in corpus:
        (visit,) = c.result.visits
        summary = visit.tables["XML1"].raw[0]
        assert "MAHUYEN_CU_TRU" not in summary and summary["MATINH_CU_TRU"] in provinces
        assert re.fullmatch(r"\d{5}", summary["MAXA_CU_TRU"]) and summary["T_BHTT_GDV"] == "0"
        assert certificate.match(summary["MA_TTDV"])
        assert len(summary.get("MA_THE_BHYT", "")) in (0, 10, 14, 15)
        assert summary["NGAY_VAO"][:6] in {"202512", "202601", "202602", "202603"}
        assert all(len(row["NGAY_HEN_KL"]) == 8 for row in _rows(visit, "XML14"))
        assert all(certificate.match(row["MA_BAC_SI"]) for row in _rows(visit, "XML3"))
        joined += sum(";" in row.get("NGUOI_THUC_HIEN", "") for row in _rows(visit, "XML3"))
    assert joined


def test_the_same_seed_writes_the_same_files() -> None:
    one, two = his_export_batch(7, 25), his_export_batch(7, 25)
    assert [e.body for e in one] == [e.body for e in two]
    assert [e.label() for e in one] == [e.label() for e in two]


def test_cli_writes_the_files_and_their_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus"
    assert main(["generate", "--his-export", "--visits", "20", "--seed", "3", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["mode"] == "his-export" and len(manifest["files"]) == 20
    expected = [e.label() for e in his_export_batch(3, 20)]
    assert manifest["files"] == expected
    for entry in manifest["files"]:
        assert validate_bytes((out / entry["file"]).read_bytes()).visits[0].ma_lk == entry["ma_lk"]
    assert "wrote 20 file(s)" in capsys.readouterr().out
    assert main(["generate", "--his-export", "--visits", "2", "--rows", "5", "--out", str(out)]) == 2
