"""The `healthbook validate` contract other parts and outside checks depend on."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from healthbook.cli import main
from healthbook.generate import build_visit, inject, submission

ERROR_KEYS = {"code", "severity", "table", "ma_lk", "field", "value", "message_vi", "message_en"}


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_json_shape_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(1)
    good_visit = build_visit(rng, scenario="outpatient")
    good = _write(tmp_path, "good.xml", submission(good_visit))
    visit = build_visit(rng, scenario="outpatient")
    _write(tmp_path, "bad.xml", submission(visit, inject(visit, rng, "person_id")))

    assert main(["validate", "--json", str(good)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"files"}
    (entry,) = document["files"]
    assert set(entry) == {"path", "accepted", "facility", "errors", "visits"}
    assert entry["accepted"] is True and entry["facility"] == good_visit.facility
    assert set(entry["visits"][0]) == {"ma_lk", "accepted", "errors", "warnings"}

    assert main(["validate", "--json", str(tmp_path)]) == 1
    files = {Path(f["path"]).name: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert files["good.xml"]["accepted"] and not files["bad.xml"]["accepted"]
    (error,) = files["bad.xml"]["visits"][0]["errors"]
    assert set(error) == ERROR_KEYS
    assert (error["code"], error["table"], error["field"]) == ("V212", "XML1", "SO_CCCD")
    assert error["ma_lk"] == visit.ma_lk and error["message_vi"] and error["message_en"]


def test_personal_data_is_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(2)
    visit = build_visit(rng, scenario="outpatient")
    summary = visit.tables["XML1"][0]
    summary["HO_TEN"] = "Nguyễn Văn " + "A" * 300
    summary["MA_THE_BHYT"] = "DN4011234567"
    path = _write(tmp_path, "pii.xml", submission(visit))
    assert main(["validate", "--json", str(path)]) == 1
    out = capsys.readouterr().out
    assert "Nguyễn Văn" not in out and "DN4011234567" not in out
    errors = {e["field"]: e for e in json.loads(out)["files"][0]["visits"][0]["errors"]}
    assert errors["MA_THE_BHYT"]["value"] == "DN********67"
    assert errors["HO_TEN"]["value"] == f"*** ({len(summary['HO_TEN'])})"


def test_forced_standard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    visit = build_visit(random.Random(4), scenario="referral")
    path = _write(tmp_path, "referral.xml", submission(visit))
    assert main(["validate", "--json", str(path)]) == 0
    capsys.readouterr()
    assert main(["validate", "--json", "--standard", "130", str(path)]) == 1
    codes = {e["code"] for e in json.loads(capsys.readouterr().out)["files"][0]["visits"][0]["errors"]}
    assert "E013" in codes  # XML13 does not exist under QĐ 130


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
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "REJECTED" in out and "V202" in out and "XML1.MA_KHOA" in out and "0/1 file(s) accepted" in out


def test_validate_only_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--validate-only", "--visits", "25", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "labelled defects missed: 0; clean files rejected: 0" in out and "total" in out
