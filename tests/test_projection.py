"""Health-book projection: groups mapped from generated visits, code labels, ICD names, sensitivity rules."""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from healthbook.generate import build_visit, submission
from healthbook.projection import SensitiveDataError, dumps, is_hiv_code, mapping, project, projection_id
from healthbook.signing.merkle import canonical_visit
from healthbook.standard import icd10, load
from healthbook.validation import validate_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCENARIOS = ("outpatient", "outpatient_reexam", "inpatient", "referral", "tuberculosis")
RECEIVED = datetime(2024, 8, 1, 3, 0, tzinfo=UTC)


def stored(seed: int, scenario: str) -> tuple[str, dict[str, Any]]:
    visit = build_visit(random.Random(seed), scenario=scenario)
    result = validate_bytes(submission(visit))
    assert result.visits, f"generated {scenario} visit {seed} was not accepted"
    return visit.facility, json.loads(canonical_visit(result.visits[0]))


def entry_of(seed: int, scenario: str, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    facility, data = stored(seed, scenario)
    return data, project(data, facility=facility, received_at=RECEIVED, version=kwargs.pop("version", 1), **kwargs)


def iso(stamp: str) -> str:
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}:00+07:00"


def day(stamp: str) -> str:
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_citizen_and_visit_groups(scenario: str) -> None:
    data, entry = entry_of(3, scenario)
    x1 = data["tables"]["XML1"][0]
    codelists = load(data["standard"]).codelists
    citizen, visit = entry["citizen"], entry["visit"]
    assert citizen["name"] == x1["HO_TEN"]
    assert citizen["id_number"] == x1["SO_CCCD"]
    assert citizen["birth_date"] == day(x1["NGAY_SINH"])
    assert citizen["sex"] == {"code": x1["GIOI_TINH"], "label": codelists["GIOI_TINH"][x1["GIOI_TINH"]]}
    assert citizen["ethnicity"] == x1["MA_DANTOC"]
    assert citizen["nationality"] == x1["MA_QUOCTICH"]
    assert citizen["occupation"] == x1["MA_NGHE_NGHIEP"]
    assert citizen["phone"] == x1.get("DIEN_THOAI")
    assert citizen["insurance_cards"] == x1["MA_THE_BHYT"].split(";")
    assert citizen["registered_facilities"] == x1["MA_DKBD"].split(";")
    assert citizen["card_valid_from"] == [day(v) for v in x1["GT_THE_TU"].split(";")]
    assert citizen["card_valid_to"] == [day(v) for v in x1["GT_THE_DEN"].split(";")]
    assert citizen["address"] == x1["DIA_CHI"]
    assert visit["facility"] == x1["MA_CSKCB"]
    assert visit["admitted_at"] == iso(x1["NGAY_VAO"])
    assert visit["discharged_at"] == iso(x1["NGAY_RA"])
    assert visit["admitted_at"].endswith("+07:00")
    assert visit["visit_type"] == {"code": x1["MA_LOAI_KCB"], "label": codelists["MA_LOAI_KCB"][x1["MA_LOAI_KCB"]]}
    assert visit["result"]["label"] == codelists["KET_QUA_DTRI"][x1["KET_QUA_DTRI"]]
    assert visit["discharge_type"]["label"] == codelists["MA_LOAI_RV"][x1["MA_LOAI_RV"]]
    assert visit["reason"] == x1.get("LY_DO_VV")
    assert visit["discharge_diagnosis_text"] == x1["CHAN_DOAN_RV"]
    assert visit["blood_group"] == x1.get("NHOM_MAU")
    assert visit["weight_kg"] == (float(x1["CAN_NANG"]) if "CAN_NANG" in x1 else None)
    if scenario == "inpatient":
        assert visit["inpatient_admitted_at"] == iso(x1["NGAY_VAO_NOI_TRU"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_diagnoses_main_first_with_names(scenario: str) -> None:
    data, entry = entry_of(4, scenario)
    x1 = data["tables"]["XML1"][0]
    diagnoses = entry["diagnoses"]
    assert diagnoses[0] == {"code": x1["MA_BENH_CHINH"], "name": icd10.name(x1["MA_BENH_CHINH"]), "main": True}
    assert diagnoses[0]["name"]
    secondary = [c for c in x1.get("MA_BENH_KT", "").split(";") if c]
    assert [d["code"] for d in diagnoses[1:]] == secondary
    assert all(not d["main"] and d["name"] for d in diagnoses[1:])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_line_groups(scenario: str) -> None:
    data, entry = entry_of(5, scenario)
    tables = data["tables"]
    assert [d["name"] for d in entry["drugs"]] == [r["TEN_THUOC"] for r in tables.get("XML2", [])]
    for drug, row in zip(entry["drugs"], tables.get("XML2", []), strict=True):
        assert drug["code"] == row["MA_THUOC"]
        assert drug["quantity"] == float(row["SO_LUONG"])
        assert drug["ordered_at"] == iso(row["NGAY_YL"])
        assert drug["group"]["code"] == row["MA_NHOM"] and drug["group"]["label"]
    assert [s["code"] for s in entry["services"]] == [r.get("MA_DICH_VU") for r in tables.get("XML3", [])]
    for service, row in zip(entry["services"], tables.get("XML3", []), strict=True):
        assert service["name"] == row.get("TEN_DICH_VU")
        codes = [c for c in row.get("MA_BENH", "").split(";") if c]
        assert [d["code"] for d in service["diagnoses"]] == codes
    assert len(entry["results"]) == len(tables.get("XML4", []))
    for result, row in zip(entry["results"], tables.get("XML4", []), strict=True):
        assert result["indicator_name"] == row.get("TEN_CHI_SO")
        assert result["value"] == row.get("GIA_TRI")
        assert result["reported_at"] == iso(row["NGAY_KQ"])


def test_discharge_summary_from_xml8() -> None:
    for seed in range(20):
        data, entry = entry_of(seed, "inpatient")
        if "XML8" in data["tables"]:
            break
    else:
        pytest.fail("no inpatient visit with XML8 in 20 seeds")
    x8 = data["tables"]["XML8"][0]
    summary = entry["discharge_summary"]
    assert summary["course"] == x8["QT_BENHLY"]
    assert summary["key_results"] == x8["TOMTAT_KQ"]
    assert summary["discharged_at"] == iso(x8["NGAY_RA"])
    assert summary["issued_on"] == day(x8["NGAY_CT"])
    assert summary["result"]["code"] == x8["KET_QUA_DTRI"]


def test_referral_from_xml13() -> None:
    data, entry = entry_of(6, "referral")
    x13 = data["tables"]["XML13"][0]
    referral = entry["referral"]
    assert referral["number"] == x13["SO_CHUYENTUYEN"]
    assert referral["to_facility"] == x13["MA_NOI_DEN"]
    assert referral["main_diagnoses"] == [{"code": x13["MA_BENH_CHINH"], "name": icd10.name(x13["MA_BENH_CHINH"])}]
    assert referral["reason"]["label"] == load("4750").codelists["MA_LYDO_CT"][x13["MA_LYDO_CT"]]
    assert referral["clinical_signs"] == x13["DAU_HIEU_LS"]
    assert entry["reexam"] is None or "XML14" in data["tables"]


def test_reexam_from_xml14() -> None:
    data, entry = entry_of(7, "outpatient_reexam")
    x14 = data["tables"]["XML14"][0]
    assert entry["reexam"]["appointment_at"] == iso(x14["NGAY_HEN_KL"])
    assert entry["reexam"]["number"] == x14["SO_GIAYHEN_KL"]
    assert entry["referral"] is None


def test_missing_optional_tables() -> None:
    facility, data = stored(8, "outpatient")
    only_xml1 = {**data, "tables": {"XML1": data["tables"]["XML1"]}}
    entry = project(only_xml1, facility=facility, received_at=RECEIVED, version=1)
    assert entry["drugs"] == entry["services"] == entry["results"] == []
    assert entry["discharge_summary"] is entry["referral"] is entry["reexam"] is None
    bare = project({"ma_lk": "X", "standard": "4750", "tables": {}}, facility="01001", received_at=RECEIVED,
                   version=1)
    assert bare["citizen"]["name"] is None and bare["diagnoses"] == []


def test_tuberculosis_xml15_is_never_projected() -> None:
    data, entry = entry_of(9, "tuberculosis")
    assert "XML15" in data["tables"]
    text = dumps(entry)
    assert "PHANLOAI_LAO" not in text and "BDDT_ARV" not in text
    assert "tuberculosis" not in json.dumps(list(entry))


HIV_ROW = {"MA_LK": "", "NGAYKD_HIV": "20190304", "NOI_XN_KD": "PKNT-HIVSECRET", "BDDT_ARV": "20190311",
           "MA_PHAC_DO_DIEU_TRI_BD": "TDF+3TC+DTG-SECRET", "MA_CSKCB": "79999", "SO_NGAY_CAP_THUOC_ARV": "987"}
HIV_LINE = {"STT": "99", "MA_DICH_VU": "24.0999.SECRET", "TEN_DICH_VU": "Đo tải lượng HIV-SECRET", "MA_NHOM": "1",
            "SO_LUONG": "1", "MA_BENH": "B20", "NGAY_YL": "202407071000"}
HIV_RESULT = {"STT": "99", "MA_DICH_VU": "24.0999.SECRET", "MA_CHI_SO": "VL", "TEN_CHI_SO": "HIV viral load SECRET",
              "GIA_TRI": "123456789", "NGAY_KQ": "202407071100"}


def with_hiv(data: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out["tables"]["XML6"] = [{**HIV_ROW, "MA_LK": data["ma_lk"]}]
    out["tables"].setdefault("XML3", []).append({**HIV_LINE, "MA_LK": data["ma_lk"]})
    out["tables"].setdefault("XML4", []).append({**HIV_RESULT, "MA_LK": data["ma_lk"]})
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_xml6_and_hiv_lines_never_projected(scenario: str) -> None:
    facility, data = stored(10, scenario)
    clean = project(data, facility=facility, received_at=RECEIVED, version=1)
    entry = project(with_hiv(data), facility=facility, received_at=RECEIVED, version=1)
    text = dumps(entry)
    for value in [*HIV_ROW.values(), *HIV_LINE.values(), *HIV_RESULT.values()]:
        if "SECRET" in value or value in ("B20", "123456789", "987"):
            assert value not in text, value
    assert "XML6" not in text and "HIV" not in text
    assert len(entry["services"]) == len(clean["services"])
    assert len(entry["results"]) == len(clean["results"])
    # a visit that submitted XML6 has every free-text field nulled (diagnosis text could name the disease)
    assert entry["visit"]["discharge_diagnosis_text"] is None
    assert clean["visit"]["discharge_diagnosis_text"] is not None


def test_hiv_diagnoses_dropped_and_text_redacted() -> None:
    facility, data = stored(11, "outpatient")
    hiv = copy.deepcopy(data)
    x1 = hiv["tables"]["XML1"][0]
    secondary = x1.get("MA_BENH_KT", "")
    x1["MA_BENH_KT"] = ";".join(c for c in ("Z21", "B24", secondary) if c)
    x1["CHAN_DOAN_RV"] = "Nhiễm HIV không triệu chứng"
    entry = project(hiv, facility=facility, received_at=RECEIVED, version=1)
    codes = [d["code"] for d in entry["diagnoses"]]
    assert "Z21" not in codes and "B24" not in codes
    assert codes[0] == x1["MA_BENH_CHINH"]
    assert "HIV" not in dumps(entry)
    x1["MA_BENH_CHINH"] = "B20.1"
    entry = project(hiv, facility=facility, received_at=RECEIVED, version=1)
    assert all(not is_hiv_code(d["code"]) for d in entry["diagnoses"])
    assert "B20" not in dumps(entry)


@pytest.mark.parametrize(("code", "hit"), [("B20", True), ("B20.1", True), ("b229", True), ("B24", True),
                                           ("Z21", True), ("B19.9", False), ("B25", False), ("Z20.6", False),
                                           ("A16.2", False), ("", False), ("B2", False)])
def test_is_hiv_code(code: str, hit: bool) -> None:
    assert is_hiv_code(code) is hit


def test_mapping_routes_no_sensitive_table() -> None:
    data = mapping()
    sensitive = set(data["sensitive"]["tables"])
    assert {"XML6", "XML15"} <= sensitive
    assert not sensitive & {group["source"] for group in data["groups"].values()}
    transforms = set(data["transforms"])
    for group in data["groups"].values():
        for spec in group.get("fields", {}).values():
            assert spec["transform"] in transforms
            if spec["transform"] == "code":
                assert spec["codelist"] in load("4750").codelists


def test_guard_fails_closed() -> None:
    facility, data = stored(12, "outpatient")
    data = copy.deepcopy(data)
    data["tables"]["XML1"][0]["LY_DO_VV"] = "B20"  # a code smuggled into free text: refuse rather than publish
    with pytest.raises(SensitiveDataError):
        project(data, facility=facility, received_at=RECEIVED, version=1)


def test_deterministic_and_versioned() -> None:
    facility, data = stored(13, "inpatient")
    first = project(data, facility=facility, received_at=RECEIVED, version=1)
    again = project(copy.deepcopy(data), facility=facility, received_at=RECEIVED, version=1)
    assert dumps(first) == dumps(again)
    assert dumps(first).encode() == dumps(json.loads(dumps(first))).encode()
    assert first["visit_id"] == f"{facility}#{data['ma_lk']}"
    assert first["projection_id"] == projection_id(first["visit_id"], 1)
    assert len(first["projection_id"]) == 64
    assert first["supersedes"] is None
    assert first["received_at"] == "2024-08-01T10:00:00+07:00"
    second = project(data, facility=facility, received_at=RECEIVED, version=2, supersedes=first["projection_id"])
    assert second["version"] == 2 and second["supersedes"] == first["projection_id"]
    assert second["projection_id"] != first["projection_id"]
    assert second["visit_id"] == first["visit_id"]


def test_naive_received_at_rejected() -> None:
    facility, data = stored(14, "outpatient")
    with pytest.raises(ValueError, match="timezone"):
        project(data, facility=facility, received_at=datetime(2024, 1, 1), version=1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32), scenario=st.sampled_from(SCENARIOS), hiv=st.booleans())
def test_property_never_raises_and_serialises(seed: int, scenario: str, hiv: bool) -> None:
    facility, data = stored(seed, scenario)
    if hiv:
        data = with_hiv(data)
    entry = project(data, facility=facility, received_at=RECEIVED, version=1)
    text = dumps(entry)
    assert json.loads(text) == entry
    assert entry["schema"] == "healthbook-entry/1"
    assert "SECRET" not in text
    for group in ("drugs", "services", "results"):
        for line in entry[group]:
            for key, value in line.items():
                if key.endswith("_at") and value is not None:
                    assert value.endswith("+07:00")


def test_hiv_code_shape_is_exact() -> None:
    """Found by the property test: a projection_id starting "b20" must not count as an HIV code."""
    from healthbook.projection import is_hiv_code

    assert is_hiv_code("B20") and is_hiv_code("b20.1") and is_hiv_code("B249") and is_hiv_code("Z21")
    assert not is_hiv_code("b20f3a9c41") and not is_hiv_code("Z21abc") and not is_hiv_code("B25")
