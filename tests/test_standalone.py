"""Files that are not claim envelopes: the check-in table (XML0) and the medical assessment (XML12)."""

from __future__ import annotations

import random

from healthbook.validation import validate_bytes
from healthbook_dev.generate import build_visit
from lxml import etree

CHECKIN_FIELDS = ("MA_LK", "STT", "MA_BN", "HO_TEN", "SO_CCCD", "NGAY_SINH", "GIOI_TINH", "MA_DKBD", "GT_THE_TU",
                  "GT_THE_DEN", "MA_DOITUONG_KCB", "NGAY_VAO", "MA_LOAI_KCB", "MA_CSKCB")


def checkin_file(rows: list[dict[str, str]]) -> bytes:
    root = etree.Element("CHI_TIEU_TRANG_THAI_KCB")
    listing = etree.SubElement(root, "DSACH_TRANG_THAI_KCB")
    for row in rows:
        element = etree.SubElement(listing, "TRANG_THAI_KCB")
        for name, value in row.items():
            etree.SubElement(element, name).text = value
    etree.SubElement(root, "CHUKYDONVI")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def checkin_row(seed: int) -> dict[str, str]:
    visit = build_visit(random.Random(seed), scenario="outpatient")
    summary = visit.tables["XML1"][0]
    row = {name: summary[name] for name in CHECKIN_FIELDS}
    service = visit.tables["XML3"][0]
    row.update({"MA_THE_BHYT": summary["MA_THE_BHYT"], "MA_DICH_VU": service["MA_DICH_VU"],
                "TEN_DICH_VU": service["TEN_DICH_VU"], "NGAY_YL": service["NGAY_YL"]})
    return row


def test_checkin_rows_are_validated_one_by_one() -> None:
    good, bad = checkin_row(1), checkin_row(2)
    bad["NGAY_VAO"] = "2024133100"  # not a timestamp
    result = validate_bytes(checkin_file([good, bad]))
    assert result.kind == "checkin" and result.facility == good["MA_CSKCB"]
    assert [v.ma_lk for v in result.visits] == [good["MA_LK"], bad["MA_LK"]]
    assert result.visits[0].accepted and not result.visits[0].issues
    # A check-in record is a status, not a health-book entry: what is wrong in it is a finding.
    assert [(i.code, i.table, i.field) for i in result.visits[1].findings] == [("V205", "XML0", "NGAY_VAO")]
    assert result.accepted and result.visits[1].errors == []


def test_checkin_conditional_requirements() -> None:
    row = checkin_row(3)
    for name in ("MA_DICH_VU", "TEN_DICH_VU"):
        del row[name]  # no service, drug or supply at all: MA_DICH_VU becomes required
    result = validate_bytes(checkin_file([row]))
    assert {(i.code, i.field) for i in result.visits[0].findings} >= {("V201", "MA_DICH_VU")}


ASSESSMENT = {
    "NGUOI_CHU_TRI": "Trần Văn Chủ", "CHUC_VU": "1", "NGAY_HOP": "20250310", "HO_TEN": "Lê Thị Giám",
    "NGAY_SINH": "19700412", "SO_CCCD": "001170012345", "NGAY_CAP_CCCD": "20210101", "NOI_CAP_CCCD": "Cục Cảnh sát",
    "DIA_CHI": "Số 1 Lê Lợi, Hà Nội", "MATINH_CU_TRU": "01", "MAHUYEN_CU_TRU": "001", "MAXA_CU_TRU": "00001",
    "MA_BHXH": "0112345678", "DIEN_THOAI": "0912345678", "MA_DOI_TUONG": "TNLĐ", "KHAM_GIAM_DINH": "1",
    "SO_BIEN_BAN": "12", "DANG_HUONG_CHE_DO": "4", "NGAY_CHUNG_TU": "20250310", "SO_GIAY_GIOI_THIEU": "45/GT",
    "NGAY_DE_NGHI": "20250301", "MA_DONVI": "DV01", "GIOI_THIEU_CUA": "Công ty A", "KET_QUA_KHAM": "Tổn thương 21%",
    "SO_VAN_BAN_CAN_CU": "56/2017/TT-BYT", "TYLE_TTCT_MOI": "21", "TONG_TYLE_TTCT": "21", "DE_NGHI": "Hưởng chế độ",
    "DUOC_XACDINH": "Không",
}


def assessment_file(row: dict[str, str]) -> bytes:
    root = etree.Element("CHI_TIEU_GIAM_DINH_YKHOA")
    element = etree.SubElement(etree.SubElement(root, "DSACH_GIAM_DINH_YKHOA"), "GIAM_DINH_YKHOA")
    for name, value in row.items():
        etree.SubElement(element, name).text = value
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def test_assessment_is_read_and_checked() -> None:
    result = validate_bytes(assessment_file(ASSESSMENT))
    assert result.kind == "assessment" and result.accepted, [i.to_dict() for v in result.visits for i in v.issues]
    broken = {**ASSESSMENT, "NGAY_SINH": "197004121200"}  # XML12 NGAY_SINH is a date, not a timestamp
    result = validate_bytes(assessment_file(broken))
    assert [(i.code, i.field) for i in result.visits[0].findings] == [("V202", "NGAY_SINH")]
    assert result.visits[0].findings[0].value == "1970********"  # a birth date is personal data
