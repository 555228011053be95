"""The `healthbook validate` contract other parts and outside checks depend on (docs/conformance.md)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from healthbook_dev.cli import main
from healthbook_dev.cli_support import xml_files
from healthbook_dev.generate import build_visit, inject, submission

ERROR_KEYS = {"code", "severity", "blocks", "table", "ma_lk", "field", "value", "message_vi", "message_en", "basis"}


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_json_shape_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(1)
    good_visit = build_visit(rng, scenario="outpatient")
    good = _write(tmp_path, "good.xml", submission(good_visit))
    visit = build_visit(rng, scenario="outpatient")
    finding = _write(tmp_path, "finding.xml", submission(visit, inject(visit, rng, "person_id")))
    visit = build_visit(rng, scenario="outpatient")
    visit.tables["XML1"][0]["MA_BENH_CHINH"] = ""
    _write(tmp_path, "out.xml", submission(visit))

    assert main(["validate", "--json", str(good)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"files"}
    (entry,) = document["files"]
    assert set(entry) == {"path", "accepted", "rejected", "facility", "errors", "visits"}
    assert entry["accepted"] is True and entry["rejected"] is False and entry["facility"] == good_visit.facility
    assert set(entry["visits"][0]) == {"ma_lk", "accepted", "health_book", "errors", "findings"}

    # A finding: the visit is in the health book, the exit status says so; --strict says otherwise.
    assert main(["validate", "--json", str(finding)]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["files"]
    (visit_entry,) = entry["visits"]
    assert visit_entry["health_book"] is True and visit_entry["errors"] == []
    (issue,) = visit_entry["findings"]
    assert set(issue) == ERROR_KEYS
    assert (issue["code"], issue["table"], issue["field"], issue["blocks"]) == ("V212", "XML1", "SO_CCCD", "none")
    assert issue["ma_lk"] and issue["message_vi"] and issue["message_en"]
    assert issue["basis"].startswith("Portal sheet XML1 SO_CCCD (XML1.SO_CCCD, annex STT")
    assert main(["validate", "--json", "--strict", str(finding)]) == 1
    capsys.readouterr()

    # A visit kept out of the health book: exit 1, the reason with its class and basis.
    assert main(["validate", "--json", str(tmp_path)]) == 1
    files = {Path(f["path"]).name: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert files["good.xml"]["accepted"] and files["finding.xml"]["accepted"] and not files["out.xml"]["accepted"]
    (out,) = files["out.xml"]["visits"]
    assert out["health_book"] is False and not files["out.xml"]["rejected"]
    assert [(e["code"], e["blocks"]) for e in out["errors"]] == [("H603", "visit")]
    assert out["errors"][0]["basis"].startswith("Health-book need")
    assert [f["code"] for f in out["findings"]] == ["V201"]


def test_personal_data_is_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(2)
    visit = build_visit(rng, scenario="outpatient")
    summary = visit.tables["XML1"][0]
    summary["HO_TEN"] = "Nguyễn Văn " + "A" * 300
    summary["MA_THE_BHYT"] = "DN4011234567"
    path = _write(tmp_path, "pii.xml", submission(visit))
    assert main(["validate", "--json", str(path)]) == 0  # findings only: still in the health book
    out = capsys.readouterr().out
    assert "Nguyễn Văn" not in out and "DN4011234567" not in out
    errors = {e["field"]: e for e in json.loads(out)["files"][0]["visits"][0]["findings"]}
    assert errors["MA_THE_BHYT"]["value"] == "DN********67"
    assert errors["HO_TEN"]["value"] == f"*** ({len(summary['HO_TEN'])})"


def test_forced_standard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    visit = build_visit(random.Random(4), scenario="referral")
    path = _write(tmp_path, "referral.xml", submission(visit))
    assert main(["validate", "--json", str(path)]) == 0
    capsys.readouterr()
    assert main(["validate", "--json", "--strict", "--standard", "130", str(path)]) == 1
    codes = {e["code"] for e in json.loads(capsys.readouterr().out)["files"][0]["visits"][0]["findings"]}
    assert "E013" in codes  # XML13 does not exist under QĐ 130: the table is left out, a finding


def test_usage_and_io_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "missing.xml")]) == 2
    assert main(["validate", str(tmp_path)]) == 2  # a folder without any *.xml
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--standard", "999", str(tmp_path)])
    assert exit_info.value.code == 2


def test_readable_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(5)
    visit = build_visit(rng, scenario="outpatient")
    path = _write(tmp_path, "x.xml", submission(visit, inject(visit, rng, "too_long")))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "finding V202 XML1.MA_KHOA" in out and "1 finding(s)" in out
    assert "1/1 file(s) accepted, 0 rejected; 1/1 visit(s) in the health book; 1 finding(s)" in out
    visit.tables["XML1"][0]["HO_TEN"] = ""
    path.write_bytes(submission(visit))
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "NOT ADMITTED" in out and "NOT admitted" in out and "VISIT   H601" in out
    assert "0/1 visit(s) in the health book" in out


def test_validate_only_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--validate-only", "--visits", "25", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "labelled defects missed: 0; clean files with an issue: 0" in out and "total" in out


def test_folders_are_listed_as_sorted_paths_would_be(tmp_path: Path) -> None:
    """The fast listing (os.scandir, string sort) takes the same files in the same order as rglob and sorted
    Paths: hidden files and file links in, other suffixes and folder links out, "a/x" before "a-b/y"."""
    for name in ("a/x.xml", "a-b/y.xml", "a/sub/z.xml", "b.xml", "c.XML", "d.txt", "a/.hidden.xml", "e.xml/f.xml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("<x/>")
    os.symlink(tmp_path / "a", tmp_path / "folder-link")
    os.symlink(tmp_path / "b.xml", tmp_path / "file-link.xml")
    listed = xml_files([str(tmp_path)], verb="validate")
    assert listed == sorted(p for p in tmp_path.rglob("*.xml") if p.is_file())
    assert [p.relative_to(tmp_path).as_posix() for p in listed] == [
        "a/.hidden.xml", "a/sub/z.xml", "a/x.xml", "a-b/y.xml", "b.xml", "e.xml/f.xml", "file-link.xml"]
