"""Build one internally consistent visit (all its tables as field -> text rows)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from healthbook.standard import in_force, places, version_ids

from healthbook_dev.generate import vocab

SCENARIOS = ("outpatient", "outpatient_reexam", "outpatient_treatment", "inpatient", "referral", "tuberculosis",
             "birth")
# "birth" (a delivery with its birth certificate, XML9) only on request: weight 0 keeps every seed's visits as they were.
SCENARIO_WEIGHTS = (30, 20, 8, 27, 8, 7, 0)
CENT, MILL = Decimal("0.01"), Decimal("0.001")

Row = dict[str, str]


@dataclass
class Visit:
    ma_lk: str
    facility: str
    scenario: str
    standard: str
    tables: dict[str, list[Row]] = field(default_factory=dict)


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M")


def _d(day: date) -> str:
    return day.strftime("%Y%m%d")


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def _qty(value: Decimal) -> str:
    text = str(value.quantize(MILL, rounding=ROUND_HALF_UP)).rstrip("0").rstrip(".")
    return text or "0"


def _full_name(rng: random.Random, male: bool) -> str:
    return " ".join([rng.choice(vocab.SURNAMES), rng.choice(vocab.MIDDLE_MALE if male else vocab.MIDDLE_FEMALE),
                     rng.choice(vocab.GIVEN_MALE if male else vocab.GIVEN_FEMALE)])


def set_everywhere(visit: Visit, name: str, value: str) -> None:
    """Set an XML1 value and its copies (XML9, XML13, XML14, XML15), so one change stays one change."""
    for table in ("XML1", "XML9", "XML13", "XML14", "XML15"):
        for row in visit.tables.get(table, []):
            if table == "XML1" or name in row:
                row[name] = value


def cost_totals(drugs: list[Row], services: list[Row]) -> Row:
    """XML1's money fields: the sums of the XML2 (drugs) and XML3 (services, supplies) lines."""
    lines = drugs + services

    def total(name: str, rows: list[Row]) -> str:
        return _money(sum((Decimal(r[name]) for r in rows), Decimal(0)))

    return {"T_THUOC": total("THANH_TIEN_BV", drugs),
            "T_VTYT": total("THANH_TIEN_BV", [s for s in services if s["MA_NHOM"] in ("10", "11")]),
            "T_TONGCHI_BV": total("THANH_TIEN_BV", lines), "T_TONGCHI_BH": total("THANH_TIEN_BH", lines),
            "T_BNTT": total("T_BNTT", lines), "T_BNCCT": total("T_BNCCT", lines), "T_BHTT": total("T_BHTT", lines),
            "T_NGUONKHAC": "0", "T_BHTT_GDV": total("T_BHTT", lines)}


def record_summary(summary: Row) -> Row:
    """XML8, the medical-record summary, from the visit's XML1 values."""
    span_days = (datetime.strptime(summary["NGAY_RA"][:8], "%Y%m%d")
                 - datetime.strptime(summary["NGAY_VAO"][:8], "%Y%m%d")).days + 1
    return {"MA_LK": summary["MA_LK"], "MA_LOAI_KCB": summary["MA_LOAI_KCB"], "NGAY_VAO": summary["NGAY_VAO"],
            "NGAY_RA": summary["NGAY_RA"], "CHAN_DOAN_VAO": summary["CHAN_DOAN_VAO"],
            "CHAN_DOAN_RV": summary["CHAN_DOAN_RV"],
            "QT_BENHLY": f"Vào viện vì {summary['LY_DO_VV'].lower()}, diễn biến {span_days} ngày.",
            "TOMTAT_KQ": "Các xét nghiệm trong giới hạn, X-quang phù hợp chẩn đoán.",
            "PP_DIEUTRI": summary["PP_DIEU_TRI"], "KET_QUA_DTRI": summary["KET_QUA_DTRI"],
            "MA_TTDV": summary["MA_TTDV"], "NGAY_CT": summary["NGAY_RA"][:8]}


def current_standard() -> str:
    """The newest version of the standard: the demos' visits are dated in its window, so they carry today's
    units (34 provinces, communes, no districts) and rules."""
    return version_ids()[-1]


def _address(rng: random.Random, *units: str) -> str:
    street = f"Số {rng.randint(1, 300)} đường {rng.choice(vocab.STREETS)}"
    return ", ".join(part for part in (street, *units) if part)


class _Builder:
    def __init__(self, rng: random.Random, facility: tuple[str, str, str], standard: str, scenario: str,
                 start: datetime, detail_rows: int | None) -> None:
        self.rng, self.standard, self.scenario = rng, standard, scenario
        self.facility_code, self.facility_name, self.province = facility
        self.detail_rows = detail_rows
        self.inpatient = scenario in ("inpatient", "birth") or (scenario == "tuberculosis" and rng.random() < 0.5)
        self.start = start
        self.admitted: datetime | None
        if self.inpatient:
            self.admitted = start + timedelta(minutes=rng.randint(30, 180))
            self.end = self.admitted + timedelta(days=rng.randint(2, 9), hours=rng.randint(0, 6))
        elif scenario == "outpatient_treatment":
            self.admitted = None
            self.end = start + timedelta(days=rng.randint(2, 5), hours=rng.randint(1, 4))
        else:
            self.admitted = None
            self.end = start + timedelta(hours=rng.randint(1, 4), minutes=rng.randint(0, 59))
        self.ma_lk = f"{self.facility_code}{start:%y%m%d}{rng.randint(0, 10**8 - 1):08d}"
        self.doctor = f"00{rng.randint(1000, 9999)}/{self.province}-CCHN"
        self.head = f"{rng.randint(1, 99):02d}{rng.randint(10**7, 10**8 - 1)}"
        if scenario == "birth":
            self.department = vocab.MATERNITY
        else:
            self.department = rng.choice(vocab.DEPARTMENTS[2:] if self.inpatient else vocab.DEPARTMENTS[:1])[0]
        self.lines_bv = Decimal(0)

    # --- the person -------------------------------------------------------------------------------------
    def person(self) -> Row:
        rng = self.rng
        mother = self.scenario == "birth"
        male = False if mother else rng.random() < 0.5
        name = _full_name(rng, male)
        years = (self.start.year - 40, self.start.year - 18) if mother else (1940, 2018)
        birth = date(rng.randint(*years), rng.randint(1, 12), rng.randint(1, 28))
        if places.after_reform(self.start.date()):  # two-level local government: province and commune only
            province, province_name, _, communes = rng.choice(vocab.PROVINCES_2025)
            district, district_name = "", ""
        else:
            province, province_name, districts = rng.choice(vocab.PLACES)
            district, district_name, communes = rng.choice(districts)
        commune, commune_name = rng.choice(communes)
        century_digit = {19: 0, 20: 2}[birth.year // 100] + (0 if male else 1)
        cccd = f"0{province}{century_digit}{birth.year % 100:02d}{rng.randint(0, 999999):06d}"
        group, benefit = rng.choice(vocab.CARD_GROUPS)
        card = f"{group}{benefit}{province}{rng.randint(10**9, 10**10 - 1)}"
        self.benefit = vocab.BENEFIT_LEVEL[benefit]
        card_from = date(self.start.year, 1, 1)
        return {
            "HO_TEN": name, "SO_CCCD": cccd, "NGAY_SINH": birth.strftime("%Y%m%d") + "0000",
            "GIOI_TINH": "1" if male else "2", "MA_QUOCTICH": "704", "MA_DANTOC": "01",
            "MA_NGHE_NGHIEP": "00000" if birth.year > 2006 else rng.choice(["21110", "25110", "51310", "61130"]),
            "DIA_CHI": _address(rng, commune_name, district_name, province_name),
            "MATINH_CU_TRU": province, "MAHUYEN_CU_TRU": district, "MAXA_CU_TRU": commune,
            "DIEN_THOAI": f"09{rng.randint(10**7, 10**8 - 1)}", "MA_THE_BHYT": card,
            "MA_DKBD": self.facility_code, "GT_THE_TU": _d(card_from), "GT_THE_DEN": _d(date(self.start.year, 12, 31)),
            "CAN_NANG": f"{rng.randint(3 if birth.year > 2015 else 40, 20 if birth.year > 2015 else 85)}.{rng.randint(0, 9)}0",
        }

    # --- cost lines --------------------------------------------------------------------------------------
    def _split(self, row: Row, total_bv: Decimal, total_bh: Decimal) -> None:
        insurer = (total_bh * Decimal(self.benefit) / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        row.update({"THANH_TIEN_BV": _money(total_bv), "THANH_TIEN_BH": _money(total_bh),
                    "T_NGUONKHAC_NSNN": "0", "T_NGUONKHAC_VTNN": "0", "T_NGUONKHAC_VTTN": "0",
                    "T_NGUONKHAC_CL": "0", "T_NGUONKHAC": "0", "MUC_HUONG": str(self.benefit),
                    "T_BNTT": _money(total_bv - total_bh), "T_BNCCT": _money(total_bh - insurer),
                    "T_BHTT": _money(insurer), "MA_KHOA": self.department, "MA_BAC_SI": self.doctor,
                    "MA_PTTT": "1"})

    def _order_time(self) -> datetime:
        span = int((self.end - self.start).total_seconds() // 60)
        return self.start + timedelta(minutes=self.rng.randint(5, max(6, span - 30)))

    def drug(self, spec: tuple[str, ...], stt: int) -> Row:
        code, name, strength, route, form, unit, price, reg, group = spec
        quantity = Decimal(self.rng.choice([1, 2, 3, 5, 7, 10, 14, 20, 30]))
        if route.startswith("2"):
            quantity = Decimal(self.rng.randint(1, 3))
        unit_price = Decimal(price)
        ratio = 50 if group == "6" else 100
        total_bv = (quantity * unit_price).quantize(CENT, rounding=ROUND_HALF_UP)
        total_bh = (quantity * unit_price * ratio / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        ordered = self._order_time()
        row: Row = {"MA_LK": self.ma_lk, "STT": str(stt), "MA_THUOC": code, "MA_NHOM": group, "TEN_THUOC": name,
                    "DON_VI_TINH": unit, "HAM_LUONG": strength, "DUONG_DUNG": route, "DANG_BAO_CHE": form,
                    "LIEU_DUNG": f"{self.rng.choice([1, 2])} {unit.lower()}/lần x {self.rng.choice([2, 3])} lần/ngày",
                    "CACH_DUNG": "Uống sau ăn" if route == "1.01" else "Theo chỉ định của bác sĩ",
                    "SO_DANG_KY": reg, "TT_THAU": f"{self.rng.randint(100, 999)}/QĐ-BV;G1;N{self.rng.randint(1, 5)};{self.start.year - 1}",
                    "PHAM_VI": "1", "TYLE_TT_BH": str(ratio), "SO_LUONG": _qty(quantity), "DON_GIA": _qty(unit_price),
                    "NGAY_YL": _ts(ordered), "NGUON_CTRA": "1"}
        if self.standard != "130":
            row["NGAY_TH_YL"] = _ts(min(ordered + timedelta(minutes=30), self.end))
        self._split(row, total_bv, total_bh)
        return row

    def service(self, spec: tuple[str, ...], stt: int, diagnosis: str, *, quantity: Decimal = Decimal(1),
                ordered: datetime | None = None, rate: int = 100) -> Row:
        code, name, group, price, unit = spec[:5]
        unit_price = Decimal(price)
        total_bv = (quantity * unit_price * (rate if self.standard != "130" else 100) / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        total_bh = (quantity * unit_price * rate / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        ordered = ordered or self._order_time()
        row: Row = {"MA_LK": self.ma_lk, "STT": str(stt), "MA_DICH_VU": code, "MA_NHOM": group, "TEN_DICH_VU": name,
                    "DON_VI_TINH": unit, "PHAM_VI": "1", "SO_LUONG": _qty(quantity), "DON_GIA_BV": _qty(unit_price),
                    "DON_GIA_BH": _qty(unit_price), "TYLE_TT_DV": str(rate), "TYLE_TT_BH": "100",
                    "MA_BENH": diagnosis, "NGAY_YL": _ts(ordered)}
        if group in ("1", "2", "3", "8", "18"):
            done = min(ordered + timedelta(minutes=20), self.end)
            row.update({"NGUOI_THUC_HIEN": self.doctor, "NGAY_TH_YL": _ts(done),
                        "NGAY_KQ": _ts(min(done + timedelta(minutes=40), self.end))})
        if group == "8":
            row["PP_VO_CAM"] = "2"
        self._split(row, total_bv, total_bh)
        return row

    def supply(self, spec: tuple[str, ...], stt: int, diagnosis: str) -> Row:
        code, name, price, unit = spec
        quantity = Decimal(self.rng.randint(1, 4))
        unit_price = Decimal(price)
        total = (quantity * unit_price).quantize(CENT, rounding=ROUND_HALF_UP)
        row: Row = {"MA_LK": self.ma_lk, "STT": str(stt), "MA_VAT_TU": code, "MA_NHOM": "10", "TEN_VAT_TU": name,
                    "DON_VI_TINH": unit, "PHAM_VI": "1", "SO_LUONG": _qty(quantity), "DON_GIA_BV": _qty(unit_price),
                    "DON_GIA_BH": _qty(unit_price), "TT_THAU": f"{self.rng.randint(100, 999)}.{self.province};G2;N3;{self.start.year - 1}",
                    "TYLE_TT_DV": "100", "TYLE_TT_BH": "100", "MA_BENH": diagnosis, "NGAY_YL": _ts(self._order_time())}
        self._split(row, total, total)
        return row

    def birth_certificate(self, mother: Row, born: datetime) -> Row:
        """XML9 for one newborn; the mother (người nuôi dưỡng) is the visit's patient."""
        rng = self.rng
        boy = rng.random() < 0.5
        father = _full_name(rng, True)
        child = " ".join([father.split()[0], rng.choice(vocab.MIDDLE_MALE if boy else vocab.MIDDLE_FEMALE),
                          rng.choice(vocab.GIVEN_MALE if boy else vocab.GIVEN_FEMALE)])
        card = mother["MA_THE_BHYT"]
        issued = date(max(int(mother["NGAY_SINH"][:4]) + 14, 2021), rng.randint(1, 12), rng.randint(1, 28))
        order = rng.randint(1, 3)
        return {"MA_LK": self.ma_lk, "MA_BHXH_NND": card[-10:], "MA_THE_NND": card, "HO_TEN_NND": mother["HO_TEN"],
                "NGAYSINH_NND": mother["NGAY_SINH"][:8], "MA_DANTOC_NND": mother["MA_DANTOC"],
                "SO_CCCD_NND": mother["SO_CCCD"], "NGAYCAP_CCCD_NND": _d(issued),
                "NOICAP_CCCD_NND": "Cục Cảnh sát quản lý hành chính về trật tự xã hội",
                "NOI_CU_TRU_NND": mother["DIA_CHI"], "MA_QUOCTICH": mother["MA_QUOCTICH"],
                **{k: mother[k] for k in ("MATINH_CU_TRU", "MAHUYEN_CU_TRU", "MAXA_CU_TRU")},
                "HO_TEN_CHA": father, "MA_THE_TAM": f"TE1{self.province}{rng.randint(10**9, 10**10 - 1)}",
                "HO_TEN_CON": child, "GIOI_TINH_CON": "1" if boy else "2", "SO_CON": "1", "LAN_SINH": str(order),
                "SO_CON_SONG": str(order), "CAN_NANG_CON": str(rng.randint(2600, 3900)),  # grams
                "NGAY_SINH_CON": _ts(born), "NOI_SINH_CON": self.facility_name, "TINH_TRANG_CON": "Khỏe mạnh",
                "SINHCON_PHAUTHUAT": "0", "SINHCON_DUOI32TUAN": "0", "GHI_CHU": "Không",
                "NGUOI_DO_DE": f"NHS. {_full_name(rng, False)}", "NGUOI_GHI_PHIEU": f"NHS. {_full_name(rng, False)}",
                "NGAY_CT": _d(self.end.date()), "SO": str(rng.randint(1, 999)),
                "QUYEN_SO": f"{rng.randint(1, 20):02d}/{born.year}", "MA_TTDV": self.head}


# What the person is in XML1 (``_Builder.person``): the same citizen coming back carries all of it again.
PERSON_FIELDS = ("HO_TEN", "SO_CCCD", "NGAY_SINH", "GIOI_TINH", "MA_QUOCTICH", "MA_DANTOC", "MA_NGHE_NGHIEP",
                 "DIA_CHI", "MATINH_CU_TRU", "MAHUYEN_CU_TRU", "MAXA_CU_TRU", "DIEN_THOAI", "MA_THE_BHYT",
                 "MA_DKBD", "GT_THE_TU", "GT_THE_DEN", "CAN_NANG")


def returning_visit(rng: random.Random, earlier: Visit, *, facility: tuple[str, str, str],
                    scenario: str = "outpatient") -> Visit:
    """A new visit (its own MA_LK, care and costs) by the citizen of ``earlier``, a day after it within the same
    year (the card in ``earlier`` stays valid), at ``facility`` (code, name, province)."""
    came = datetime.strptime(earlier.tables["XML1"][0]["NGAY_VAO"], "%Y%m%d%H%M")
    again = came + timedelta(days=1) if (came + timedelta(days=1)).year == came.year else came - timedelta(days=1)
    visit = build_visit(rng, scenario=scenario, standard=earlier.standard, facility=facility, start=again)
    for name in PERSON_FIELDS:
        if name in earlier.tables["XML1"][0]:
            set_everywhere(visit, name, earlier.tables["XML1"][0][name])
    return visit


def build_visit(rng: random.Random, *, scenario: str | None = None, standard: str = "4750",
                facility: tuple[str, str, str] | None = None, detail_rows: int | None = None,
                start: datetime | None = None, reexam: bool | None = None) -> Visit:
    """A visit valid under ``standard``; ``detail_rows`` sizes XML2+XML3+XML4 (the benchmark uses ~70).
    ``reexam`` forces the re-examination paper (XML14) in or out; by default the scenario decides."""
    scenario = scenario or rng.choices(SCENARIOS, SCENARIO_WEIGHTS)[0]
    if standard == "130" and scenario in ("referral", "outpatient_reexam", "tuberculosis"):
        scenario = "outpatient"  # XML13/14/15 do not exist before QĐ 4750
    facility = facility or rng.choice(vocab.FACILITIES)
    if start is None:  # a day on which ``standard`` is the version in force, leaving room for a stay
        since, until = in_force(standard)
        first = since + timedelta(days=1)
        last = until - timedelta(days=16) if until is not None else date(2026, 10, 31)
        day = first + timedelta(days=rng.randint(0, (last - first).days))
        start = datetime(day.year, day.month, day.day, rng.randint(7, 15), rng.randint(0, 59))
    b = _Builder(rng, facility, standard, scenario, start, detail_rows)
    person = b.person()
    tb = scenario == "tuberculosis"
    if tb:
        main_code, main_name = rng.choice(vocab.TB_DIAGNOSES)
    elif scenario == "birth":
        main_code, main_name = vocab.DELIVERY_DIAGNOSIS
    else:
        main_code, main_name, *_ = rng.choice([d for d in vocab.DIAGNOSES if (d[3] if b.inpatient else d[2])])
    if scenario == "birth":
        secondary = [vocab.LIVE_BIRTH]
    else:
        secondary = rng.sample([c for c in vocab.SECONDARY if c != main_code], rng.randint(0, 3))

    # Cost lines: drugs (XML2), then exam/labs/imaging/procedures/bed days/supplies (XML3), results (XML4).
    drugs: list[Row] = []
    services: list[Row] = []
    results: list[Row] = []
    want = detail_rows or (rng.randint(45, 90) if b.inpatient else rng.randint(6, 18))
    services.append(b.service(vocab.EXAM, 1, main_code, ordered=start + timedelta(minutes=2)))
    catalogue = list(vocab.TB_DRUGS if tb else []) + vocab.DRUGS
    while len(drugs) + len(services) + len(results) < want:
        pick = rng.random()
        if pick < 0.45:
            drugs.append(b.drug(rng.choice(catalogue[:3] if b.inpatient is False else catalogue), len(drugs) + 1))
        elif pick < 0.75:
            lab: Any = rng.choice(vocab.LABS)
            line = b.service(lab, len(services) + 1, main_code)
            services.append(line)
            for code, name, unit, low, high in lab[5]:
                value = round(rng.uniform(float(low) * 0.8, float(high) * 1.1), 1)
                results.append({"MA_LK": b.ma_lk, "STT": str(len(results) + 1), "MA_DICH_VU": lab[0], "MA_CHI_SO": code,
                                "TEN_CHI_SO": name, "GIA_TRI": str(value), "DON_VI_DO": unit,
                                "KET_LUAN": "Bình thường" if low <= value <= high else "Bất thường",
                                "NGAY_KQ": line["NGAY_KQ"], "MA_BS_DOC_KQ": b.doctor})
        elif pick < 0.85:
            scan = rng.choice(vocab.IMAGING + vocab.FUNCTIONAL)
            line = b.service(scan, len(services) + 1, main_code)
            services.append(line)
            results.append({"MA_LK": b.ma_lk, "STT": str(len(results) + 1), "MA_DICH_VU": scan[0],
                            "TEN_CHI_SO": scan[1], "MO_TA": scan[5], "KET_LUAN": scan[5], "NGAY_KQ": line["NGAY_KQ"],
                            "MA_BS_DOC_KQ": b.doctor})
        elif pick < 0.93 and b.inpatient:
            services.append(b.supply(rng.choice(vocab.SUPPLIES), len(services) + 1, main_code))
        elif b.inpatient:
            services.append(b.service(rng.choice(vocab.PROCEDURES), len(services) + 1, main_code))
        else:
            drugs.append(b.drug(rng.choice(catalogue), len(drugs) + 1))
    born: datetime | None = None
    if scenario == "birth":
        assert b.admitted is not None
        born = b.admitted + timedelta(hours=rng.randint(2, 20))
        services.append(b.service(vocab.DELIVERY, len(services) + 1, main_code, ordered=born - timedelta(minutes=40)))
    if b.inpatient:
        assert b.admitted is not None
        days = (b.end.date() - b.admitted.date()).days or 1
        services.append(b.service(vocab.BED_DAY, len(services) + 1, main_code, quantity=Decimal(days),
                                  ordered=b.admitted + timedelta(minutes=10)))

    visit_type = "03" if b.inpatient else ("02" if scenario == "outpatient_treatment" else "01")
    referral = scenario == "referral"
    target = rng.choice([f for f in vocab.FACILITIES if f[0] != b.facility_code]) if referral else None
    if standard == "130":
        reexam = False  # XML14 does not exist before QĐ 4750
    elif reexam is None:
        reexam = scenario in ("outpatient_reexam", "tuberculosis") or (b.inpatient and rng.random() < 0.4)
    span_days = (b.end.date() - start.date()).days + 1
    summary: Row = {
        "MA_LK": b.ma_lk, "STT": "1", "MA_BN": f"BN{rng.randint(10**7, 10**8 - 1)}", **person,
        "LY_DO_VV": rng.choice(["Sốt, ho", "Đau bụng", "Khám định kỳ", "Mệt mỏi, chóng mặt", "Đau ngực", "Khó thở"]),
        "CHAN_DOAN_VAO": main_name, "CHAN_DOAN_RV": main_name, "MA_BENH_CHINH": main_code,
        "MA_BENH_KT": ";".join(secondary), "MA_DOITUONG_KCB": rng.choice(["1.1", "1.2", "1.3", "2", "3.1"]),
        "NGAY_VAO": _ts(start), "NGAY_RA": _ts(b.end),
        "SO_NGAY_DTRI": "0" if visit_type == "01" else str(span_days),
        "PP_DIEU_TRI": "Điều trị nội khoa" if not b.inpatient else "Điều trị nội khoa kết hợp theo dõi tại khoa",
        "KET_QUA_DTRI": rng.choice(["1", "2"]), "MA_LOAI_RV": "2" if referral else "1",
        "NGAY_TTOAN": _ts(b.end + timedelta(minutes=15)), **cost_totals(drugs, services),
        "NAM_QT": str(b.end.year), "THANG_QT": str(b.end.month), "MA_LOAI_KCB": visit_type,
        "MA_KHOA": b.department, "MA_CSKCB": b.facility_code, "MA_KHUVUC": "",
        "MA_HSBA": f"{b.end.year}{rng.randint(10**5, 10**6 - 1)}", "MA_TTDV": b.head,
    }
    if b.admitted is not None:
        summary.update({"NGAY_VAO_NOI_TRU": _ts(b.admitted), "LY_DO_VNT": main_name})
    if scenario == "birth":
        summary["LY_DO_VV"] = "Chuyển dạ"
    if referral and target:
        summary.update({"MA_NOI_DEN": target[0], "GIAY_CHUYEN_TUYEN": f"{rng.randint(1, 9999)}/CT"})
    if reexam:
        summary["NGAY_TAI_KHAM"] = _d((b.end + timedelta(days=rng.randint(7, 30))).date())
    if standard == "130":
        summary.pop("NHOM_MAU", None)
    else:
        summary["NHOM_MAU"] = rng.choice(["", "A", "B", "O", "AB"])
    visit = Visit(ma_lk=b.ma_lk, facility=b.facility_code, scenario=scenario, standard=standard,
                  tables={"XML1": [summary]})
    if drugs:
        visit.tables["XML2"] = drugs
    visit.tables["XML3"] = services
    if results:
        visit.tables["XML4"] = results

    if b.inpatient:
        notes: list[Row] = []
        moment = b.admitted or start
        while moment < b.end and len(notes) < 10:
            notes.append({"MA_LK": b.ma_lk, "STT": str(len(notes) + 1), "DIEN_BIEN_LS": rng.choice([
                "Người bệnh tỉnh, tiếp xúc tốt, mạch 80 l/p, HA 120/80 mmHg, nhiệt độ 37°C.",
                "Đỡ sốt, còn ho ít, ăn uống được.", "Ổn định, tiếp tục điều trị theo phác đồ."]),
                "THOI_DIEM_DBLS": _ts(moment), "NGUOI_THUC_HIEN": b.doctor})
            moment += timedelta(days=1)
        visit.tables["XML5"] = notes
        visit.tables["XML7"] = [{"MA_LK": b.ma_lk, "SO_LUU_TRU": f"LT{rng.randint(10**5, 10**6 - 1)}",
                                 "MA_YTE": summary["MA_BN"], "MA_KHOA_RV": b.department, "NGAY_VAO": summary["NGAY_VAO"],
                                 "NGAY_RA": summary["NGAY_RA"], "MA_DINH_CHI_THAI": "0", "CHAN_DOAN_RV": main_name,
                                 "PP_DIEUTRI": summary["PP_DIEU_TRI"], "MA_TTDV": b.head, "MA_BS": b.doctor,
                                 "TEN_BS": f"BS. {rng.choice(vocab.SURNAMES)} {rng.choice(vocab.GIVEN_MALE)}",
                                 "NGAY_CT": _d(b.end.date())}]
        visit.tables["XML8"] = [record_summary(summary)]
    if born is not None:
        visit.tables["XML9"] = [b.birth_certificate(summary, born)]
        summary["CAN_NANG_CON"] = visit.tables["XML9"][0]["CAN_NANG_CON"]
    copy = ("HO_TEN", "NGAY_SINH", "GIOI_TINH", "DIA_CHI", "MA_THE_BHYT", "GT_THE_DEN", "NGAY_VAO", "NGAY_RA",
            "CHAN_DOAN_RV", "MA_BENH_CHINH", "MA_BENH_KT")
    if referral and target:
        visit.tables["XML13"] = [{"MA_LK": b.ma_lk, "SO_HOSO": f"HS{rng.randint(1000, 9999)}",
                                  "SO_CHUYENTUYEN": f"{rng.randint(1, 9999)}", "GIAY_CHUYEN_TUYEN": summary["GIAY_CHUYEN_TUYEN"],
                                  "MA_CSKCB": b.facility_code, "MA_NOI_DEN": target[0],
                                  **{k: summary[k] for k in (*copy, "MA_QUOCTICH", "MA_DANTOC", "MA_NGHE_NGHIEP")},
                                  "DAU_HIEU_LS": "Sốt cao, khó thở tăng dần", "QT_BENHLY": "Điều trị 1 ngày không đỡ.",
                                  "TOMTAT_KQ": "Bạch cầu tăng.", "TEN_DICH_VU": services[0]["TEN_DICH_VU"],
                                  "MA_LOAI_RV": "2", "MA_LYDO_CT": "1", "HUONG_DIEU_TRI": "Chuyển tuyến trên điều trị tiếp",
                                  "PHUONGTIEN_VC": "Xe cứu thương", "MA_BAC_SI": b.doctor, "MA_TTDV": b.head}]
    if reexam:
        appointment = datetime.strptime(summary["NGAY_TAI_KHAM"], "%Y%m%d").replace(hour=8)
        visit.tables["XML14"] = [{"MA_LK": b.ma_lk, "SO_GIAYHEN_KL": f"GH{rng.randint(1000, 99999)}",
                                  "MA_CSKCB": b.facility_code, **{k: summary[k] for k in copy},
                                  "NGAY_HEN_KL": _ts(appointment), "MA_DOITUONG_KCB": summary["MA_DOITUONG_KCB"],
                                  "MA_BAC_SI": b.doctor, "MA_TTDV": b.head, "NGAY_CT": _d(b.end.date())}]
        if b.admitted is not None:
            visit.tables["XML14"][0]["NGAY_VAO_NOI_TRU"] = summary["NGAY_VAO_NOI_TRU"]
    if tb:
        started = (start - timedelta(days=rng.randint(0, 60))).date()
        visit.tables["XML15"] = [{"MA_LK": b.ma_lk, "STT": "1", "MA_BN": summary["MA_BN"], "HO_TEN": summary["HO_TEN"],
                                  "SO_CCCD": summary["SO_CCCD"], "PHANLOAI_LAO_VITRI": "1", "PHANLOAI_LAO_TS": "1",
                                  "PHANLOAI_LAO_HIV": "2", "PHANLOAI_LAO_VK": "1", "PHANLOAI_LAO_KT": "1",
                                  "LOAI_DTRI_LAO": "1", "NGAYBD_DTRI_LAO": _d(started), "PHACDO_DTRI_LAO": "1",
                                  "KET_QUA_DTRI_LAO": "1", "MA_CSKCB": b.facility_code, "BDDT_ARV": _d(started),
                                  "NGAY_BAT_DAU_DT_CTX": _d(started)}]
    return visit
