"""Single labelled defects, each expected to be caught under a known (code, table, field).

An injector mutates a Visit (or the envelope options) and returns its label, or None when the visit has
nothing it applies to (the caller then picks another). Values copied from XML1 into XML13/14/15 are
changed everywhere, so one defect means one mistake, not a cascade of copy mismatches.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from healthbook_dev.generate.visit import Visit, set_everywhere


@dataclass
class Defect:
    code: str
    table: str | None
    field: str | None
    description: str
    envelope: dict[str, Any] = dataclasses.field(default_factory=dict)  # changes applied when writing the envelope
    value: str | None = None  # the planted value, when the report is expected to name it

    def label(self) -> dict[str, Any]:
        label = {"code": self.code, "table": self.table, "field": self.field, "description": self.description}
        return label if self.value is None else label | {"value": self.value}


Injector = Callable[[Visit, random.Random], Defect | None]
INJECTORS: dict[str, Injector] = {}


def injector(name: str) -> Callable[[Injector], Injector]:
    def register(fn: Injector) -> Injector:
        INJECTORS[name] = fn
        return fn
    return register


def _summary(visit: Visit) -> dict[str, str]:
    return visit.tables["XML1"][0]


@injector("required_missing")
def _required_missing(visit: Visit, rng: random.Random) -> Defect:
    name = rng.choice(["LY_DO_VV", "CHAN_DOAN_VAO", "MA_KHOA", "MA_HSBA", "CAN_NANG", "MA_DANTOC"])
    _summary(visit)[name] = ""
    return Defect("V201", "XML1", name, f"XML1.{name} left empty")


@injector("too_long")
def _too_long(visit: Visit, rng: random.Random) -> Defect:
    _summary(visit)["MA_KHOA"] = "K" * 51
    return Defect("V202", "XML1", "MA_KHOA", "MA_KHOA longer than 50")


@injector("not_a_number")
def _not_a_number(visit: Visit, rng: random.Random) -> Defect | None:
    if "XML2" not in visit.tables:
        return None
    rng.choice(visit.tables["XML2"])["SO_LUONG"] = "1,5"
    return Defect("V203", "XML2", "SO_LUONG", "comma as decimal separator")


@injector("too_many_decimals")
def _too_many_decimals(visit: Visit, rng: random.Random) -> Defect:
    row = rng.choice(visit.tables["XML3"])
    row["THANH_TIEN_BV"] = row["THANH_TIEN_BV"].split(".")[0] + ".123"
    return Defect("V204", "XML3", "THANH_TIEN_BV", "amount with 3 decimals")


@injector("bad_timestamp")
def _bad_timestamp(visit: Visit, rng: random.Random) -> Defect:
    row = rng.choice(visit.tables["XML3"])
    row["NGAY_YL"] = row["NGAY_YL"][:4] + "13" + row["NGAY_YL"][6:]
    return Defect("V205", "XML3", "NGAY_YL", "month 13 in an order time")


@injector("bad_date")
def _bad_date(visit: Visit, rng: random.Random) -> Defect | None:
    for table in ("XML7", "XML14"):
        if table in visit.tables:
            visit.tables[table][0]["NGAY_CT"] = visit.tables[table][0]["NGAY_CT"][:6] + "32"
            return Defect("V206", table, "NGAY_CT", "day 32")
    return None


@injector("code_unknown")
def _code_unknown(visit: Visit, rng: random.Random) -> Defect:
    _summary(visit)["KET_QUA_DTRI"] = "9"
    for row in visit.tables.get("XML8", []):
        row["KET_QUA_DTRI"] = "9"
    return Defect("V208", "XML1", "KET_QUA_DTRI", "result code 9 does not exist")


@injector("icd_unknown")
def _icd_unknown(visit: Visit, rng: random.Random) -> Defect:
    rng.choice(visit.tables["XML3"])["MA_BENH"] = "J18.99"
    return Defect("V209", "XML3", "MA_BENH", "not an ICD-10 code")


@injector("route_pattern")
def _route_pattern(visit: Visit, rng: random.Random) -> Defect | None:
    if "XML2" not in visit.tables:
        return None
    rng.choice(visit.tables["XML2"])["DUONG_DUNG"] = "Uống"
    return Defect("V211", "XML2", "DUONG_DUNG", "route written as text")


@injector("person_id")
def _person_id(visit: Visit, rng: random.Random) -> Defect:
    set_everywhere(visit, "SO_CCCD", "1234567")
    return Defect("V212", "XML1", "SO_CCCD", "7-digit ID")


@injector("insurance_card")
def _insurance_card(visit: Visit, rng: random.Random) -> Defect:
    set_everywhere(visit, "MA_THE_BHYT", _summary(visit)["MA_THE_BHYT"][:12])
    return Defect("V213", "XML1", "MA_THE_BHYT", "12-character card")


@injector("too_many_secondary")
def _too_many_secondary(visit: Visit, rng: random.Random) -> Defect:
    set_everywhere(visit, "MA_BENH_KT", ";".join(["I10", "E11.9", "E78.5", "K21.9", "J44.9", "N18.9", "D64.9",
                                                   "R50.9", "K29.7", "M54.5", "J20.9", "H10.9", "J06.9"]))
    return Defect("V214", "XML1", "MA_BENH_KT", "13 secondary diagnoses")


@injector("admission_before_arrival")
def _admission_before_arrival(visit: Visit, rng: random.Random) -> Defect | None:
    summary = _summary(visit)
    if not summary.get("NGAY_VAO_NOI_TRU"):
        return None
    early = datetime.strptime(summary["NGAY_VAO"], "%Y%m%d%H%M") - timedelta(hours=2)
    set_everywhere(visit, "NGAY_VAO_NOI_TRU", early.strftime("%Y%m%d%H%M"))
    return Defect("R302", "XML1", "NGAY_VAO_NOI_TRU", "inpatient admission before arrival")


@injector("order_outside_visit")
def _order_outside_visit(visit: Visit, rng: random.Random) -> Defect:
    row = rng.choice(visit.tables["XML3"])
    before = datetime.strptime(_summary(visit)["NGAY_VAO"], "%Y%m%d%H%M") - timedelta(days=1)
    row["NGAY_YL"] = before.strftime("%Y%m%d%H%M")
    row.pop("NGAY_TH_YL", None)
    row.pop("NGAY_KQ", None)
    row.pop("NGUOI_THUC_HIEN", None)
    if row["MA_NHOM"] in ("1", "2", "3", "8", "18"):
        row["NGAY_TH_YL"] = row["NGAY_YL"]
        row["NGUOI_THUC_HIEN"] = row["MA_BAC_SI"]
    return Defect("R303", "XML3", "NGAY_YL", "order a day before arrival")


@injector("treatment_days")
def _treatment_days(visit: Visit, rng: random.Random) -> Defect:
    summary = _summary(visit)
    summary["SO_NGAY_DTRI"] = str(int(summary["SO_NGAY_DTRI"]) + 2)
    return Defect("R305", "XML1", "SO_NGAY_DTRI", "treatment days off by 2")


@injector("line_formula")
def _line_formula(visit: Visit, rng: random.Random) -> Defect | None:
    if "XML2" not in visit.tables:
        return None
    row = rng.choice(visit.tables["XML2"])
    row["DON_GIA"] = str(Decimal(row["DON_GIA"]) + 100)
    return Defect("R306", "XML2", "THANH_TIEN_BV", "unit price changed, line amount not")


@injector("total_mismatch")
def _total_mismatch(visit: Visit, rng: random.Random) -> Defect:
    summary = _summary(visit)
    summary["T_THUOC"] = str(Decimal(summary["T_THUOC"]) + 1000)
    return Defect("R309", "XML1", "T_THUOC", "drug total off by 1000")


@injector("t_bhtt_formula")
def _t_bhtt_formula(visit: Visit, rng: random.Random) -> Defect:
    summary = _summary(visit)
    summary["T_BNCCT"] = str(Decimal(summary["T_BNCCT"]) + 500)
    return Defect("R310", "XML1", "T_BHTT", "co-payment total changed, insurer total not")


@injector("referral_without_paper")
def _referral_without_paper(visit: Visit, rng: random.Random) -> Defect | None:
    if "XML13" in visit.tables:
        del visit.tables["XML13"]
    elif visit.standard == "130":
        return None
    _summary(visit)["MA_LOAI_RV"] = "2"
    return Defect("R311", "XML13", None, "referral without XML13")


@injector("inpatient_without_summary")
def _inpatient_without_summary(visit: Visit, rng: random.Random) -> Defect | None:
    if "XML8" not in visit.tables:
        return None
    del visit.tables["XML8"]
    return Defect("R311", "XML8", None, "inpatient stay without XML8")


@injector("copy_mismatch")
def _copy_mismatch(visit: Visit, rng: random.Random) -> Defect | None:
    if "XML14" not in visit.tables:
        return None
    visit.tables["XML14"][0]["HO_TEN"] = visit.tables["XML14"][0]["HO_TEN"] + " A"
    return Defect("R312", "XML14", "HO_TEN", "name on the appointment differs from XML1")


@injector("reexam_before_discharge")
def _reexam_before_discharge(visit: Visit, rng: random.Random) -> Defect | None:
    if "XML14" not in visit.tables:
        return None
    discharge = datetime.strptime(_summary(visit)["NGAY_RA"], "%Y%m%d%H%M")
    visit.tables["XML14"][0]["NGAY_HEN_KL"] = (discharge - timedelta(days=1)).strftime("%Y%m%d%H%M")
    return Defect("R313", "XML14", "NGAY_HEN_KL", "appointment before discharge")


@injector("ma_lk_mismatch")
def _ma_lk_mismatch(visit: Visit, rng: random.Random) -> Defect:
    rng.choice(visit.tables["XML3"])["MA_LK"] = visit.ma_lk + "X"
    return Defect("S104", "XML3", "MA_LK", "line MA_LK differs from XML1")


@injector("facility_mismatch")
def _facility_mismatch(visit: Visit, rng: random.Random) -> Defect:
    other = "01001" if visit.facility != "01001" else "79001"
    set_everywhere(visit, "MA_CSKCB", other)
    return Defect("R301", "XML1", "MA_CSKCB", "XML1 facility differs from the envelope")


@injector("cost_group_table")
def _cost_group_table(visit: Visit, rng: random.Random) -> Defect | None:
    labs = [r for r in visit.tables["XML3"] if r["MA_NHOM"] == "1"]
    if not labs:
        return None
    rng.choice(labs)["MA_NHOM"] = "4"
    return Defect("R316", "XML3", "MA_NHOM", "drug cost group on a service line")


@injector("soluonghoso")
def _soluonghoso(visit: Visit, rng: random.Random) -> Defect:
    return Defect("E010", None, "SOLUONGHOSO", "SOLUONGHOSO says 2 for 1 HOSO", envelope={"count": 2})


@injector("base64")
def _base64(visit: Visit, rng: random.Random) -> Defect:
    return Defect("E012", "XML3", None, "NOIDUNGFILE not base64",
                  envelope={"documents": {(visit.ma_lk, "XML3"): b"PFRPTkdfSE9QPg==!!"}})


def inject(visit: Visit, rng: random.Random, name: str | None = None) -> Defect:
    names = [name] if name else list(INJECTORS)
    rng.shuffle(names)
    for candidate in names:
        defect = INJECTORS[candidate](visit, rng)
        if defect is not None:
            return defect
    raise ValueError(f"no defect applies to visit {visit.ma_lk} ({name})")
