"""Health-book projection: groups mapped from generated visits, code labels, ICD names, sensitivity rules."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import healthbook.projection
import pytest
from healthbook.projection import (
    SCHEMA,
    SensitiveDataError,
    dumps,
    is_hiv_code,
    mapping,
    mapping_sha256,
    project,
    projection_id,
)
from healthbook.projection.project import _named
from healthbook.signing.merkle import canonical_visit
from healthbook.standard import icd10, load, places
from healthbook.validation import validate_bytes
from healthbook_dev.generate import build_visit, submission
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


def split_label(codelist: str, code: str) -> dict[str, str]:
    """The entry's form of a listed code whose label is "Vietnamese / English"."""
    vietnamese, english = load("4750").codelists[codelist][code].split(" / ")
    return {"code": code, "label": vietnamese, "label_en": english}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_citizen_and_visit_groups(scenario: str) -> None:
    data, entry = entry_of(3, scenario)
    x1 = data["tables"]["XML1"][0]
    citizen, visit = entry["citizen"], entry["visit"]
    assert citizen["name"] == x1["HO_TEN"]
    assert citizen["id_number"] == x1["SO_CCCD"]
    assert citizen["birth_date"] == day(x1["NGAY_SINH"])
    assert citizen["sex"] == {"1": {"code": "1", "label": "Nam", "label_en": "male"},
                              "2": {"code": "2", "label": "Nữ", "label_en": "female"}}[x1["GIOI_TINH"]]
    # the generator writes Kinh, Việt Nam and an occupation of groups 2, 5 or 6 (or none)
    assert citizen["ethnicity"] == {"code": "01", "label": "Kinh", "label_en": "Kinh"} == split_label("MA_DANTOC", "01")
    assert citizen["nationality"] == {"code": "704", "label": "Việt Nam", "label_en": "Viet Nam"}
    assert citizen["occupation"]["code"] == x1["MA_NGHE_NGHIEP"] and citizen["occupation"]["label"]
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
    assert visit["visit_type"] == split_label("MA_LOAI_KCB", x1["MA_LOAI_KCB"])
    assert visit["result"] == split_label("KET_QUA_DTRI", x1["KET_QUA_DTRI"])
    assert visit["discharge_type"] == split_label("MA_LOAI_RV", x1["MA_LOAI_RV"])
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
        assert drug["group"] == split_label("MA_NHOM", row["MA_NHOM"])
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
    assert summary["result"] == split_label("KET_QUA_DTRI", x8["KET_QUA_DTRI"])


def test_referral_from_xml13() -> None:
    data, entry = entry_of(6, "referral")
    x13 = data["tables"]["XML13"][0]
    referral = entry["referral"]
    assert referral["number"] == x13["SO_CHUYENTUYEN"]
    assert referral["to_facility"] == x13["MA_NOI_DEN"]
    assert referral["main_diagnoses"] == [{"code": x13["MA_BENH_CHINH"], "name": icd10.name(x13["MA_BENH_CHINH"])}]
    assert referral["reason"] == split_label("MA_LYDO_CT", x13["MA_LYDO_CT"])
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
            if spec["transform"] in ("code", "occupation"):
                assert spec["codelist"] in load("4750").codelists


def test_mapping_sha256_is_the_digest_of_the_mapping_file_the_layer_ships() -> None:
    """What a delivered item records as mapping_sha256: an auditor finds the layer whose mapping has it."""
    shipped = Path(healthbook.projection.__file__).with_name("mapping.json")
    assert mapping_sha256() == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert len(mapping_sha256()) == 64 and mapping_sha256() is mapping_sha256()  # computed once


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
    assert entry["schema"] == "healthbook-entry/2"
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


# ------------------------------------------------------------------------------------- names, not codes


def citizen_of(**xml1: str) -> dict[str, Any]:
    """The citizen group of a visit whose XML1 holds just ``xml1``."""
    stored = {"ma_lk": "LK1", "standard": "4750", "tables": {"XML1": [{"MA_LK": "LK1", **xml1}]}}
    citizen: dict[str, Any] = project(stored, facility="01001", received_at=RECEIVED, version=1)["citizen"]
    return citizen


def test_schema_is_the_mappings() -> None:
    assert SCHEMA == mapping()["schema"] == "healthbook-entry/2"


def test_a_label_is_split_into_vietnamese_and_english() -> None:
    assert _named("3", "Không thay đổi / unchanged") == {"code": "3", "label": "Không thay đổi",
                                                         "label_en": "unchanged"}
    assert _named("3", "DRG") == {"code": "3", "label": "DRG", "label_en": None}  # a label with no " / "
    assert _named("K1", "") == _named("K1", None) == {"code": "K1", "label": None, "label_en": None}


def test_ethnicity_list_is_the_54_groups_of_qd_121_in_its_order() -> None:
    groups = load("4750").codelists["MA_DANTOC"]
    assert list(groups) == [f"{n:02}" for n in range(1, 55)]
    # QĐ 121-TCTK/PPCĐ order, not the census order (04 Mường, 05 Khmer, 06 Hoa)
    assert [groups[c] for c in ("01", "04", "05", "06", "54")] == [
        "Kinh / Kinh", "Hoa / Hoa", "Khơ-me / Khơ-me", "Mường / Mường", "Rơ-măm / Rơ-măm"]
    assert load("130").codelists["MA_DANTOC"] == groups  # the same under both standards


@pytest.mark.parametrize(("field", "code", "label", "label_en"), [
    ("MA_DANTOC", "01", "Kinh", "Kinh"),
    ("MA_DANTOC", "08", "HMông", "HMông"),
    ("MA_DANTOC", "23", "Bru-Vân Kiều", "Bru-Vân Kiều"),
    ("MA_DANTOC", "54", "Rơ-măm", "Rơ-măm"),
    ("MA_QUOCTICH", "704", "Việt Nam", "Viet Nam"),
    ("MA_QUOCTICH", "410", "Hàn Quốc", "Republic of Korea"),
    ("MA_QUOCTICH", "036", "Ô-xtơ-rây-li-a", "Australia"),
    ("MA_QUOCTICH", "418", "Lào", "Lao People's Democratic Republic"),
])
def test_ethnicity_and_nationality_are_named(field: str, code: str, label: str, label_en: str) -> None:
    output = {"MA_DANTOC": "ethnicity", "MA_QUOCTICH": "nationality"}[field]
    assert citizen_of(**{field: code})[output] == {"code": code, "label": label, "label_en": label_en}


@pytest.mark.parametrize(("code", "label", "label_en"), [
    ("00000", "Không có hoặc chưa có nghề nghiệp", "no occupation"),
    ("01100", "Lực lượng vũ trang", "armed forces"),
    ("11120", "Nhà lãnh đạo trong các ngành, các cấp và các đơn vị", "managers"),
    ("25110", "Nhà chuyên môn bậc cao", "professionals"),
    ("31120", "Nhà chuyên môn bậc trung", "technicians and associate professionals"),
    ("41100", "Nhân viên trợ lý văn phòng", "clerical support workers"),
    ("51310", "Nhân viên dịch vụ và bán hàng", "service and sales workers"),
    ("61130", "Lao động có kỹ năng trong nông nghiệp, lâm nghiệp và thủy sản",
     "skilled agricultural, forestry and fishery workers"),
    ("71110", "Lao động thủ công và các nghề nghiệp có liên quan khác", "craft and related trades workers"),
    ("81110", "Thợ lắp ráp và vận hành máy móc, thiết bị", "plant and machine operators and assemblers"),
    ("92110", "Lao động giản đơn", "elementary occupations"),
])
def test_occupation_is_named_by_its_level_1_group(code: str, label: str, label_en: str) -> None:
    assert citizen_of(MA_NGHE_NGHIEP=code)["occupation"] == {"code": code, "label": label, "label_en": label_en}


@pytest.mark.parametrize(("field", "output", "code"), [
    ("MA_DANTOC", "ethnicity", "55"),
    ("MA_DANTOC", "ethnicity", "KINH"),
    ("MA_QUOCTICH", "nationality", "999"),
    ("MA_QUOCTICH", "nationality", "VN"),
    ("MA_NGHE_NGHIEP", "occupation", "2511"),  # only a 5-digit code has a group
    ("MA_NGHE_NGHIEP", "occupation", "251100"),
    ("MA_NGHE_NGHIEP", "occupation", "2511A"),
    ("MA_NGHE_NGHIEP", "occupation", "2"),
    ("MATINH_CU_TRU", "province", "00"),
    ("MAXA_CU_TRU", "commune", "14755"),  # no commune list is held: the code alone
])
def test_an_unknown_code_is_kept_with_null_names(field: str, output: str, code: str) -> None:
    assert citizen_of(**{field: code, "NGAY_VAO": "202403051000"})[output] == {
        "code": code, "label": None, "label_en": None}


@pytest.mark.parametrize(("code", "admitted", "label"), [
    ("94", "202403051000", "Tỉnh Sóc Trăng"),  # a 2024 visit: the 63 provinces
    ("93", "202506302359", "Tỉnh Hậu Giang"),  # the last day before the merger
    ("93", "202507010000", "Thành phố Cần Thơ"),  # merged into 92 on 1 July 2025: named by the province now
    ("92", "202507010000", "Thành phố Cần Thơ"),  # the first day of the 34 provinces
    ("92", "202601150800", "Thành phố Cần Thơ"),
    ("52", "202506300800", "Tỉnh Bình Định"),  # a code that names another province after the merger
    ("52", "202507010800", "Tỉnh Gia Lai"),
    ("37", "202506300800", "Tỉnh Ninh Bình"),
    ("35", "202506300800", "Tỉnh Hà Nam"),
    ("35", "202507010800", "Tỉnh Ninh Bình"),
    ("92", "", "Thành phố Cần Thơ"),  # no admission day: today's provinces
    ("93", "2025AB301200", "Thành phố Cần Thơ"),  # an unreadable admission day: today's provinces
])
def test_province_is_named_by_the_units_in_force_on_the_visit_day(code: str, admitted: str,
                                                                  label: str | None) -> None:
    citizen = citizen_of(MATINH_CU_TRU=code, NGAY_VAO=admitted)
    assert citizen["province"] == {"code": code, "label": label, "label_en": None}


def test_commune_is_named_once_the_list_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    assert places.commune_name("31234") is None  # the list is empty today
    monkeypatch.setattr(places, "commune_name", {"31234": "Phường Sóc Trăng"}.get)
    assert citizen_of(MAXA_CU_TRU="31234")["commune"] == {"code": "31234", "label": "Phường Sóc Trăng",
                                                          "label_en": None}


def test_district_stays_text() -> None:
    assert citizen_of(MAHUYEN_CU_TRU="941", NGAY_VAO="202403051000")["district"] == "941"


def test_names_keep_the_entry_bytes_deterministic() -> None:
    xml1 = {"MA_DANTOC": "08", "MA_QUOCTICH": "410", "MA_NGHE_NGHIEP": "25110", "MATINH_CU_TRU": "94",
            "MAXA_CU_TRU": "31234", "NGAY_VAO": "202403051000"}
    first, again = citizen_of(**xml1), citizen_of(**dict(reversed(xml1.items())))
    assert dumps(first) == dumps(again)
    assert '"ethnicity":{"code":"08","label":"HMông","label_en":"HMông"}' in dumps(first)
    assert '"province":{"code":"94","label":"Tỉnh Sóc Trăng","label_en":null}' in dumps(first)
