"""``healthbook enrol validate``: the same reader and schema as production, one JSON document, exit 0/1/2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from healthbook.enrolment import Kind, reader, schema
from healthbook_dev.cli import main
from healthbook_dev.commands import enrol
from healthbook_dev.generate.enrolment import (
    enrolment_csv,
    enrolment_list,
    enrolment_xlsx,
    vaccination_ndjson,
    vaccination_rows,
)

LISTING = enrolment_list(5, seed=41)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["enrol", "validate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_it_uses_the_production_reader_and_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command loads them when it checks a file (not when the CLI starts), from production's modules."""
    used: list[str] = []
    for module, name in ((reader, "prepare"), (schema, "validate_row")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _o=original, _n=name, **k: (used.append(_n), _o(*a, **k))[1])
    enrol.check(enrolment_csv(LISTING.rows), name="list.csv", kind=Kind.ENROLMENT)
    assert used[0] == "prepare" and used.count("validate_row") == len(LISTING.rows)


def test_a_clean_list_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.xlsx"
    path.write_bytes(enrolment_xlsx(LISTING.rows, title="Danh sách"))
    code, out, _ = _run(capsys, str(path), "--json")
    assert code == 0
    assert json.loads(out) == {"file": str(path), "kind": "enrolment", "rows": 5, "usable": 5, "problems": []}
    code, out, _ = _run(capsys, str(path))
    assert code == 0 and out.startswith("OK ") and "5/5 row(s) usable" in out


def test_unusable_rows_exit_1_with_one_json_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [dict(r) for r in LISTING.rows]
    rows[1]["NGAY_SINH"] = "31/02/1990"
    rows[3]["SO_CCCD"] = "=HYPERLINK(\"x\")"
    path = tmp_path / "list.csv"
    path.write_bytes(enrolment_csv(rows) + b"a,b,c,d,e,f,g,h,i,j,k,l\r\n")
    code, out, _ = _run(capsys, str(path), "--json")
    assert code == 1 and out.count("\n") == 1
    document = json.loads(out)
    assert set(document) == {"file", "kind", "rows", "usable", "problems"}
    assert (document["rows"], document["usable"]) == (6, 3)
    assert [(p["row"], p["column"], p["code"]) for p in document["problems"]] == [
        (3, "NGAY_SINH", "N106"), (5, "SO_CCCD", "N102"), (7, None, "N023")]
    assert all(set(p) == {"row", "column", "code", "reason"} for p in document["problems"])
    assert "HYPERLINK" not in out and LISTING.rows[1]["HO_TEN"] not in out
    code, out, _ = _run(capsys, str(path))
    assert code == 1 and "ROWS UNUSABLE" in out and "N106" in out and "N023" in out


def test_findings_are_listed_but_leave_the_row_usable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = vaccination_rows(LISTING.listed, seed=41, per_person=(1, 1))
    rows[0]["MA_VACCINE"] = "VX-MOI"
    path = tmp_path / "doses.ndjson"
    path.write_bytes(vaccination_ndjson(rows))
    code, out, _ = _run(capsys, str(path), "--json")  # .ndjson: vaccination by default
    document = json.loads(out)
    assert code == 0 and document["kind"] == "vaccination" and document["usable"] == document["rows"] == 5
    assert [(p["row"], p["code"]) for p in document["problems"]] == [(1, "N290")]


def test_a_refused_file_exits_1_with_its_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(enrolment_csv(LISTING.rows).decode("utf-8-sig").encode("utf-16"))
    code, out, _ = _run(capsys, str(path), "--json")
    assert code == 1
    assert json.loads(out) == {"file": str(path), "kind": "enrolment", "rows": 0, "usable": 0, "problems": [
        {"row": None, "column": None, "code": "N004", "reason": reader.FileRefused.of("N004").reason}]}
    code, out, _ = _run(capsys, str(path))
    assert code == 1 and out.startswith("REFUSED") and "N004" in out


def test_the_kind_can_be_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "doses.csv"
    path.write_bytes(enrolment_csv(LISTING.rows))
    code, out, _ = _run(capsys, str(path), "--kind", "vaccination", "--json")
    assert code == 1 and json.loads(out)["problems"][0]["code"] == "N010"  # a participant list lacks MA_VACCINE


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, str(tmp_path / "missing.csv"))
    assert code == 2 and "no such file" in err
    with pytest.raises(SystemExit) as caught:
        main(["enrol", "validate", str(tmp_path), "--kind", "visits"])
    assert caught.value.code == 2
    code, _, err = _run(capsys, str(tmp_path))  # a folder is not a file
    assert code == 2
