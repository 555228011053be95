"""Invented participant lists and vaccination files for tests, the demo and benchmarks (docs/enrolment.md).

Every person is invented by the visit generator's own person builder (``healthbook_dev.generate.visit``: names from
the vocabulary, an ID shaped like a chip ID of the province, birth year and sex, a card whose last 10 digits are
the social-insurance number), so lists and visits describe the same kind of people. Nothing here is a real person.

* :func:`enrolment_list` - the rows of a participant list, with options for people the population database does not
  know, identical duplicate rows, and rows identified by the social-insurance number alone; :func:`corrected` - a
  later list in which some rows are corrected (another commune, a renewed card); :meth:`EnrolmentList.population`
  - the fake population database that knows the registered ones.
* :func:`enrolment_csv`, :func:`enrolment_xlsx` - the file a province uploads (XLSX as spreadsheets write them: IDs
  typed as numbers, dates as date cells, a title row above the header).
* :func:`vaccination_rows`, :func:`vaccination_csv`, :func:`vaccination_ndjson` (FHIR R4B ``Immunization``, one per
  line, the patient in a contained ``Patient``).
* :func:`xlsx_bomb` - a workbook-shaped zip whose parts expand to gigabytes from a few megabytes.
"""

from __future__ import annotations

import csv
import io
import json
import random
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from healthbook.enrolment import Kind
from healthbook.enrolment.schema import (
    BHXH_SYSTEM,
    CANONICAL_COLUMNS,
    CCCD_SYSTEM,
    FACILITY_SYSTEM,
    VACCINE_SYSTEM,
)
from healthbook.enrolment.vaccines import vaccines
from healthbook.reconcile.matching import Citizen

from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.generate import vocab
from healthbook_dev.generate.visit import _Builder, current_standard

__all__ = ["ENROLMENT_COLUMNS", "VACCINATION_COLUMNS", "EnrolmentList", "Person", "corrected", "enrolment_csv",
           "enrolment_list", "enrolment_xlsx", "immunization", "people", "vaccination_csv", "vaccination_ndjson",
           "vaccination_rows", "xlsx_bomb"]

ENROLMENT_COLUMNS = CANONICAL_COLUMNS[Kind.ENROLMENT][1:]
VACCINATION_COLUMNS = CANONICAL_COLUMNS[Kind.VACCINATION][1:]
LIST_DAY = datetime(2026, 1, 5, 9, 0)  # the lists describe people as of a day under the 34 provinces
UNKNOWN_VACCINE = ("VX-THU-NGHIEM", "Vắc xin thử nghiệm (không có trong danh mục)")


@dataclass(frozen=True)
class Person:
    """An invented participant (the values a participant list holds for them)."""

    so_cccd: str = field(repr=False)
    ma_so_bhxh: str = field(repr=False)
    ho_ten: str = field(repr=False)
    ngay_sinh: str = field(repr=False)  # yyyyMMdd
    gioi_tinh: str
    matinh: str
    maxa: str
    ma_the_bhyt: str = field(repr=False)
    gt_the_tu: str
    gt_the_den: str
    ma_dkbd: str

    def row(self) -> dict[str, str]:
        """The participant-list row (the canonical enrolment columns)."""
        return {"MA_SO_BHXH": self.ma_so_bhxh, "SO_CCCD": self.so_cccd, "HO_TEN": self.ho_ten,
                "NGAY_SINH": self.ngay_sinh, "GIOI_TINH": self.gioi_tinh, "MATINH_CU_TRU": self.matinh,
                "MAXA_CU_TRU": self.maxa, "MA_THE_BHYT": self.ma_the_bhyt, "GT_THE_TU": self.gt_the_tu,
                "GT_THE_DEN": self.gt_the_den, "MA_DKBD": self.ma_dkbd}

    def citizen(self) -> Citizen:
        """How the population database holds them."""
        return Citizen(self.so_cccd, self.ho_ten, self.ngay_sinh, self.gioi_tinh, self.ma_so_bhxh)


def people(n: int, *, seed: int = 0, start: datetime = LIST_DAY) -> list[Person]:
    """``n`` invented people with distinct ID and social-insurance numbers, living under the units of ``start``."""
    rng = random.Random(seed)
    found: list[Person] = []
    seen: set[str] = set()
    while len(found) < n:
        builder = _Builder(rng, rng.choice(vocab.FACILITIES), current_standard(), "outpatient", start, None)
        summary = builder.person()
        card = summary["MA_THE_BHYT"]
        person = Person(so_cccd=summary["SO_CCCD"], ma_so_bhxh=card[-10:], ho_ten=summary["HO_TEN"],
                        ngay_sinh=summary["NGAY_SINH"][:8], gioi_tinh=summary["GIOI_TINH"],
                        matinh=summary["MATINH_CU_TRU"], maxa=summary["MAXA_CU_TRU"], ma_the_bhyt=card,
                        gt_the_tu=summary["GT_THE_TU"], gt_the_den=summary["GT_THE_DEN"], ma_dkbd=summary["MA_DKBD"])
        if person.so_cccd in seen or person.ma_so_bhxh in seen:
            continue
        seen.update((person.so_cccd, person.ma_so_bhxh))
        found.append(person)
    return found


@dataclass
class EnrolmentList:
    """A participant list: its ``rows`` (in file order), what each row is (``labels``: "person", "unknown" - not in
    the population database, "duplicate" - an identical copy of an earlier row, "bhxh_only" - identified by the
    social-insurance number alone, "corrected" - a corrected row of a later list) and the people behind them."""

    rows: list[dict[str, str]]
    labels: list[str]
    listed: list[Person]
    registered: list[Person]

    def population(self) -> FakePopulation:
        return FakePopulation(p.citizen() for p in self.registered)


def enrolment_list(n: int, *, seed: int = 0, unknown_rate: float = 0.0, duplicates: int = 0,
                   bhxh_only_rate: float = 0.0) -> EnrolmentList:
    """``n`` distinct people, ``unknown_rate`` of them unknown to the population database, ``bhxh_only_rate`` of
    the known ones listed without SO_CCCD; then ``duplicates`` identical copies of earlier rows at random places."""
    rng = random.Random(seed + 1)
    listed = people(n, seed=seed)
    rows, labels, registered = [], [], []
    for person in listed:
        row = person.row()
        if rng.random() < unknown_rate:
            labels.append("unknown")
        else:
            registered.append(person)
            if rng.random() < bhxh_only_rate:
                row["SO_CCCD"] = ""
                labels.append("bhxh_only")
            else:
                labels.append("person")
        rows.append(row)
    for _ in range(duplicates):
        source = rng.randrange(len(rows)) if rows else 0
        at = rng.randint(source + 1, len(rows))
        rows.insert(at, dict(rows[source]))
        labels.insert(at, "duplicate")
    return EnrolmentList(rows, labels, listed, registered)


def corrected(original: EnrolmentList, *, share: float, seed: int = 0) -> EnrolmentList:
    """The same people listed again, ``share`` of the known ones with a corrected row (another commune of their
    province, a card renewed for the next year); the rest as before. Duplicate rows are left out."""
    rng = random.Random(seed + 2)
    communes = {code: [c for c, _ in units] for code, _, _, units in vocab.PROVINCES_2025}
    rows, labels = [], []
    for row, label in zip(original.rows, original.labels, strict=True):
        if label == "duplicate":
            continue
        row = dict(row)
        if label != "unknown" and rng.random() < share:
            others = [c for c in communes.get(row["MATINH_CU_TRU"], []) if c != row["MAXA_CU_TRU"]]
            if others:
                row["MAXA_CU_TRU"] = rng.choice(others)
            year = int(row["GT_THE_DEN"][:4]) + 1
            row["GT_THE_TU"], row["GT_THE_DEN"] = f"{year}0101", f"{year}1231"
            label = "corrected"
        rows.append(row)
        labels.append(label)
    return EnrolmentList(rows, labels, original.listed, original.registered)


# ------------------------------------------------------------------------------------------------ the files

def _csv(rows: Iterable[Mapping[str, str]], columns: Sequence[str], *, bom: bool, delimiter: str) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8")


def enrolment_csv(rows: Iterable[Mapping[str, str]], *, bom: bool = True, delimiter: str = ",",
                  columns: Sequence[str] = ENROLMENT_COLUMNS) -> bytes:
    """A participant list as Excel's "CSV UTF-8" writes it (with a BOM, CRLF)."""
    return _csv(rows, columns, bom=bom, delimiter=delimiter)


def enrolment_xlsx(rows: Iterable[Mapping[str, str]], *, typed: bool = True, title: str | None = None,
                   columns: Sequence[str] = ENROLMENT_COLUMNS) -> bytes:
    """A participant list as a workbook. ``typed``: IDs as numbers (their leading zeros gone, as when a clerk
    types them) and full dates as date cells; ``title``: a title row above the header."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Danh sách")
    if title:
        sheet.append([title])
    sheet.append(list(columns))
    for row in rows:
        sheet.append([_typed(c, row.get(c, "")) if typed else row.get(c, "") for c in columns])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def _typed(column: str, value: str) -> Any:
    if column in ("SO_CCCD", "MA_SO_BHXH") and value.isdigit():
        return int(value)
    if column in ("NGAY_SINH", "GT_THE_TU", "GT_THE_DEN", "NGAY_TIEM") and len(value) == 8 and value.isdigit() \
            and value[6:] != "00":  # a partial birth date (00 month or day) stays text, as a spreadsheet keeps it
        return datetime.strptime(value, "%Y%m%d")
    return value


# ------------------------------------------------------------------------------------------- vaccinations

_CHILD_DOSES = (("VGB", 1, 0), ("BCG", 1, 20), ("DPT-VGB-HIB", 1, 60), ("OPV", 1, 60), ("DPT-VGB-HIB", 2, 90),
                ("OPV", 2, 90), ("DPT-VGB-HIB", 3, 120), ("OPV", 3, 120), ("IPV", 1, 150), ("SOI", 1, 270),
                ("VNNB", 1, 365), ("VNNB", 2, 380), ("MR", 1, 540), ("DPT", 4, 540))
_COVID = ("COVID-AZ", "COVID-PFIZER", "COVID-MODERNA", "COVID-VEROCELL")


def vaccination_rows(listed: Sequence[Person], *, seed: int = 0, per_person: tuple[int, int] = (1, 4),
                     unknown_code_rate: float = 0.0, today: date | None = None,
                     bhxh_only_rate: float = 0.0) -> list[dict[str, str]]:
    """Doses each person plausibly got: children born from 2010 their expanded-programme doses by age, adults
    Covid-19 doses in 2021-2022; ``unknown_code_rate`` of the rows with a code the list does not hold."""
    rng = random.Random(seed + 3)
    names = vaccines()
    until = today or LIST_DAY.date()
    rows: list[dict[str, str]] = []
    for person in listed:
        born = datetime.strptime(person.ngay_sinh, "%Y%m%d").date()
        if born.year >= 2010:
            doses = [(code, dose, born + timedelta(days=days + rng.randint(0, 10)))
                     for code, dose, days in _CHILD_DOSES]
        else:
            first = date(2021, rng.randint(6, 12), rng.randint(1, 28))
            brand = rng.choice(_COVID)
            doses = [(brand, 1, first), (brand, 2, first + timedelta(days=rng.randint(28, 84))),
                     ("COVID-PFIZER", 3, first + timedelta(days=rng.randint(180, 300)))]
        count = rng.randint(*per_person)
        for code, dose, day in [d for d in doses if d[2] <= until][:count]:
            name = names[code].name_vi
            if rng.random() < unknown_code_rate:
                code, name = UNKNOWN_VACCINE
            only_bhxh = rng.random() < bhxh_only_rate
            rows.append({"SO_CCCD": "" if only_bhxh else person.so_cccd, "MA_SO_BHXH": person.ma_so_bhxh,
                         "HO_TEN": person.ho_ten, "NGAY_SINH": person.ngay_sinh, "GIOI_TINH": person.gioi_tinh,
                         "MA_VACCINE": code, "TEN_VACCINE": name, "MUI_THU": str(dose), "NGAY_TIEM": f"{day:%Y%m%d}",
                         "MA_CSKCB": rng.choice(vocab.FACILITIES)[0],
                         "SO_LO": f"{rng.choice('ABCDEFGHKLMN')}{rng.randint(1000, 99999)}"})
    return rows


def vaccination_csv(rows: Iterable[Mapping[str, str]], *, bom: bool = True) -> bytes:
    return _csv(rows, VACCINATION_COLUMNS, bom=bom, delimiter=",")


def _fhir_date(yyyymmdd: str) -> str:
    if yyyymmdd[4:] == "0000":
        return yyyymmdd[:4]
    if yyyymmdd[6:] == "00":
        return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}"
    return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}"


def immunization(row: Mapping[str, str]) -> dict[str, Any]:
    """A vaccination row as a FHIR R4B Immunization (docs/enrolment.md, "FHIR"): the patient in a contained
    Patient with our identifier systems, the vaccine coded in our code system."""
    identifiers = [{"system": system, "value": row[column]}
                   for system, column in ((CCCD_SYSTEM, "SO_CCCD"), (BHXH_SYSTEM, "MA_SO_BHXH")) if row.get(column)]
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "p", "identifier": identifiers,
                               "name": [{"text": row["HO_TEN"]}], "birthDate": _fhir_date(row["NGAY_SINH"])}
    if row.get("GIOI_TINH") in ("1", "2"):
        patient["gender"] = {"1": "male", "2": "female"}[row["GIOI_TINH"]]
    resource: dict[str, Any] = {
        "resourceType": "Immunization", "status": "completed", "contained": [patient],
        "patient": {"reference": "#p"},
        "vaccineCode": {"coding": [{"system": VACCINE_SYSTEM, "code": row["MA_VACCINE"],
                                    "display": row.get("TEN_VACCINE") or row["MA_VACCINE"]}],
                        "text": row.get("TEN_VACCINE") or row["MA_VACCINE"]},
        "occurrenceDateTime": _fhir_date(row["NGAY_TIEM"]),
        "protocolApplied": [{"doseNumberPositiveInt": int(row["MUI_THU"])}],
        "performer": [{"actor": {"identifier": {"system": FACILITY_SYSTEM, "value": row["MA_CSKCB"]}}}],
    }
    if row.get("SO_LO"):
        resource["lotNumber"] = row["SO_LO"]
    return resource


def vaccination_ndjson(rows: Iterable[Mapping[str, str]]) -> bytes:
    return "".join(json.dumps(immunization(r), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ------------------------------------------------------------------------------------------------ the bomb

def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _zip(entries: Sequence[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of already deflated entries (name, deflated bytes, CRC-32, size): what zipfile cannot write."""
    out, central = bytearray(), bytearray()
    for name, deflated, crc, size in entries:
        encoded, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(deflated), size, len(encoded), 0)
        out += encoded + deflated
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(deflated), size,
                               len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    directory = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), directory, 0)
    return bytes(out)


def xlsx_bomb(parts: int = 12, part_mib: int = 256) -> bytes:
    """A workbook-shaped zip ([Content_Types].xml, xl/workbook.xml, then ``parts`` sheets of ``part_mib`` MiB of
    zeros each: 3 GiB by default) in a few MB. Built from one deflated 16 MiB block repeated (a full flush makes
    each copy stand alone), so it takes a fraction of a second; the CRCs are right, it is a real bomb."""
    block = bytes(16 * 1024 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)
    copies = part_mib // 16
    crc = 0
    for _ in range(copies):
        crc = zlib.crc32(block, crc)
    small = {
        "[Content_Types].xml": b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.'
                               b'org/package/2006/content-types"/>',
        "xl/workbook.xml": b'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.'
                           b'org/spreadsheetml/2006/main"/>',
    }
    entries = [(name, _deflate(data), zlib.crc32(data), len(data)) for name, data in small.items()]
    entries += [(f"xl/worksheets/sheet{i + 1}.xml", segment * copies + tail, crc, copies * len(block))
                for i in range(parts)]
    return _zip(entries)

