"""The two kinds of province file, their canonical columns, and the schema every row is checked against.

The participant list (``enrolment``) is one row per person of the social/health-insurance participant database,
in the QĐ 130 field names the facilities already know (``SO_CCCD``, ``HO_TEN``, ``NGAY_SINH``...). Vaccination
records (``vaccination``) are one row per dose given; they arrive as CSV/XLSX in the same spirit or as NDJSON
FHIR ``Immunization`` resources, which the reader turns into the same columns. Every file becomes the canonical
CSV (:data:`CANONICAL_COLUMNS`, first column ``ROW``: the source row number) and every canonical row is checked
here by :func:`validate_row`, the one check production and ``healthbook enrol validate`` share.

Rows are strings (what a CSV and Step Functions' ItemReader give); the pydantic models normalise them (dates to
yyyyMMdd, names to NFC with single spaces, codes to upper case) and raise each problem with its stable code
(:mod:`healthbook.enrolment.codes`), never with a value.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from healthbook.enrolment import Kind
from healthbook.enrolment.codes import CODES, RowProblem, problem, reason
from healthbook.enrolment.vaccines import lookup
from healthbook.kernel import is_facility_code
from healthbook.standard import places

ROW: Final = "ROW"


@dataclass(frozen=True)
class Column:
    """One column of a kind: its name, what it holds and its rule (docs/enrolment.md is checked against these)."""

    name: str
    required: bool
    holds: str
    rule: str


_PERSON = (
    Column("SO_CCCD", False, "citizen ID (số định danh cá nhân)", "12 digits; SO_CCCD or MA_SO_BHXH or both"),
    Column("MA_SO_BHXH", False, "social-insurance number (mã số BHXH)", "10 digits; SO_CCCD or MA_SO_BHXH or both"),
    Column("HO_TEN", True, "full name", "text, at most 255 characters, kept as given (NFC, single spaces)"),
    Column("NGAY_SINH", True, "birth date",
           "yyyyMMdd (00 for an unknown month or day; yyyyMMddHHmm is read too), dd/MM/yyyy or a date cell"),
)

COLUMNS: dict[Kind, tuple[Column, ...]] = {
    Kind.ENROLMENT: (
        _PERSON[1], _PERSON[0], *_PERSON[2:],
        Column("GIOI_TINH", True, "sex", "1 male, 2 female, 3 undetermined"),
        Column("MATINH_CU_TRU", True, "province of residence",
               "2 digits, one of the 34 provinces in force since 1 July 2025"),
        Column("MAXA_CU_TRU", False, "commune of residence (xã/phường)", "5 digits"),
        Column("MA_THE_BHYT", False, "health-insurance card number",
               "15 characters: 2 letters, 13 digits; its last 10 digits are MA_SO_BHXH when both are given"),
        Column("GT_THE_TU", False, "card valid from", "a date (yyyyMMdd, dd/MM/yyyy or a date cell)"),
        Column("GT_THE_DEN", False, "card valid to", "a date, not before GT_THE_TU"),
        Column("MA_DKBD", False, "registered primary-care facility", "5-digit facility code"),
    ),
    Kind.VACCINATION: (
        *_PERSON,
        Column("GIOI_TINH", False, "sex", "1, 2 or 3; compared with the population database only when given"),
        Column("MA_VACCINE", True, "vaccine code", "a code of the vaccine code list (an unknown code is kept and "
                                                   "reported, N290); letters, digits, '-', '_', at most 32"),
        Column("TEN_VACCINE", False, "vaccine name as given", "text, at most 255 characters"),
        Column("MUI_THU", True, "dose number", "a whole number from 1 to 20"),
        Column("NGAY_TIEM", True, "date given", "a date, not after today nor before NGAY_SINH"),
        Column("MA_CSKCB", True, "facility that gave it", "5-digit facility code"),
        Column("SO_LO", False, "lot number", "text, at most 64 characters"),
    ),
}

#: The header of the canonical CSV of each kind: "ROW" (the source row number), then the kind's columns.
CANONICAL_COLUMNS: dict[Kind, tuple[str, ...]] = {
    kind: (ROW, *(c.name for c in cols)) for kind, cols in COLUMNS.items()}
#: Columns the header must name (besides SO_CCCD or MA_SO_BHXH, at least one of them).
REQUIRED_COLUMNS: dict[Kind, tuple[str, ...]] = {
    kind: tuple(c.name for c in cols if c.required) for kind, cols in COLUMNS.items()}
ID_COLUMNS: Final = ("SO_CCCD", "MA_SO_BHXH")
#: Columns that hold dates: a date cell of a workbook is read as yyyyMMdd.
DATE_COLUMNS: Final = frozenset({"NGAY_SINH", "GT_THE_TU", "GT_THE_DEN", "NGAY_TIEM"})
#: Columns of digits whose leading zeros a spreadsheet drops when they are typed as numbers: a number cell is read
#: back as its digits, left-padded with zeros to this length.
DIGIT_COLUMNS: Final = {"SO_CCCD": 12, "MA_SO_BHXH": 10, "MATINH_CU_TRU": 2, "MAXA_CU_TRU": 5, "MA_DKBD": 5,
                        "MA_CSKCB": 5}

# FHIR (docs/enrolment.md): the identifier systems and the vaccine code system this deployment reads. They are
# ours: no Vietnamese FHIR naming system for these numbers was published when this was written.
CCCD_SYSTEM: Final = "urn:healthbook:sid:so-cccd"
BHXH_SYSTEM: Final = "urn:healthbook:sid:ma-so-bhxh"
FACILITY_SYSTEM: Final = "urn:healthbook:sid:ma-cskcb"
VACCINE_SYSTEM: Final = "urn:healthbook:cs:vaccine"

NAME_MAX = 255
VACCINE_NAME_MAX = 255
LOT_MAX = 64
DOSE_MAX = 20
EARLIEST_BIRTH_YEAR = 1900

_CCCD = re.compile(r"[0-9]{12}")
_BHXH = re.compile(r"[0-9]{10}")
_CARD = re.compile(r"[A-Z]{2}[0-9]{13}")
_COMMUNE = re.compile(r"[0-9]{5}")
_VACCINE_CODE = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,31}")
_DMY = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DIGITS = re.compile(r"[0-9]+")


# --------------------------------------------------------------------------------------------------- dates

def _valid(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def parse_date(text: str, *, partial: bool = False) -> str | None:
    """A date as yyyyMMdd, or None: yyyyMMdd (and yyyyMMddHHmm[ss], whose time is dropped), dd/MM/yyyy, yyyy-MM-dd.
    With ``partial`` (birth dates, as QĐ 130 writes them) month and day may be 00 when unknown, day alone too."""
    value = text.strip()
    if len(value) in (8, 12, 14) and _DIGITS.fullmatch(value):
        year, month, day = int(value[:4]), int(value[4:6]), int(value[6:8])
    elif match := _DMY.fullmatch(value):
        day, month, year = int(match[1]), int(match[2]), int(match[3])
    elif match := _ISO.fullmatch(value):
        year, month, day = int(match[1]), int(match[2]), int(match[3])
    else:
        return None
    if year < EARLIEST_BIRTH_YEAR or year > 9999:
        return None
    if partial and month == 0 and day == 0:
        return f"{year:04d}0000"
    if partial and day == 0 and 1 <= month <= 12:
        return f"{year:04d}{month:02d}00"
    return f"{year:04d}{month:02d}{day:02d}" if _valid(year, month, day) else None


def iso_date(yyyymmdd: str) -> str:
    """yyyyMMdd as ISO 8601, partial when month or day is unknown: 1990-05-17, 1990-05, 1990."""
    year, month, day = yyyymmdd[:4], yyyymmdd[4:6], yyyymmdd[6:8]
    if month == "00":
        return year
    return f"{year}-{month}" if day == "00" else f"{year}-{month}-{day}"


def _earliest(yyyymmdd: str) -> date:
    """The earliest day a possibly partial date (00 month or day) can be."""
    year, month, day = int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8])
    return date(year, month or 1, day or 1)


def normalise_name(text: str) -> str:
    """NFC, whitespace runs collapsed to one space: the same name always gives the same entry."""
    return " ".join(unicodedata.normalize("NFC", text).split())


# ----------------------------------------------------------------------------------------------- the schema

def _fail(code: str, column: str | None = None) -> PydanticCustomError:
    return PydanticCustomError(code, reason(code, column=column))


def _today(info: ValidationInfo) -> date | None:
    context = info.context
    value = context.get("today") if isinstance(context, Mapping) else None
    return value if isinstance(value, date) else None


class _Person(BaseModel):
    """The person fields both kinds share; field order matters (later validators read earlier fields)."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)
    SERIES: ClassVar[int] = 0  # overridden: 1 participant list, 2 vaccinations

    MA_SO_BHXH: str = ""
    SO_CCCD: str = ""
    HO_TEN: str = ""
    NGAY_SINH: str = ""

    @classmethod
    def _code(cls, last_two: int) -> str:
        return f"N{cls.SERIES}{last_two:02d}"

    @field_validator("MA_SO_BHXH")
    @classmethod
    def _bhxh(cls, value: str) -> str:
        if value and not _BHXH.fullmatch(value):
            raise _fail(cls._code(3))
        return value

    @field_validator("SO_CCCD")
    @classmethod
    def _cccd(cls, value: str, info: ValidationInfo) -> str:
        if value and not _CCCD.fullmatch(value):
            raise _fail(cls._code(2))
        if not value and info.data.get("MA_SO_BHXH") == "":  # absent, not merely malformed
            raise _fail(cls._code(1))
        return value

    @field_validator("HO_TEN")
    @classmethod
    def _name(cls, value: str) -> str:
        name = normalise_name(value)
        if not name:
            raise _fail(cls._code(4))
        if len(name) > NAME_MAX:
            raise _fail(cls._code(5))
        return name

    @field_validator("NGAY_SINH")
    @classmethod
    def _birth(cls, value: str, info: ValidationInfo) -> str:
        birth = parse_date(value, partial=True)
        if birth is None:
            raise _fail(cls._code(6))
        today = _today(info)
        if today is not None and _earliest(birth) > today:
            raise _fail(cls._code(7))
        return birth

    @classmethod
    def _sex(cls, value: str, *, required: bool) -> str:
        if value in ("1", "2", "3") or (not value and not required):
            return value
        raise _fail(cls._code(8))

    @property
    def id_number(self) -> str:
        """The number shown, masked, in the outcome file: SO_CCCD, else MA_SO_BHXH."""
        return self.SO_CCCD or self.MA_SO_BHXH


class EnrolmentRow(_Person):
    """One participant: the administrative section ("profile") of the citizen's health book."""

    SERIES: ClassVar[int] = 1

    GIOI_TINH: str = ""
    MATINH_CU_TRU: str = ""
    MAXA_CU_TRU: str = ""
    MA_THE_BHYT: str = ""
    GT_THE_TU: str = ""
    GT_THE_DEN: str = ""
    MA_DKBD: str = ""

    @field_validator("GIOI_TINH")
    @classmethod
    def _gender(cls, value: str) -> str:
        return cls._sex(value, required=True)

    @field_validator("MATINH_CU_TRU")
    @classmethod
    def _province(cls, value: str) -> str:
        if value not in places.provinces_on(None):
            raise _fail("N109")
        return value

    @field_validator("MAXA_CU_TRU")
    @classmethod
    def _commune(cls, value: str) -> str:
        if value and not _COMMUNE.fullmatch(value):
            raise _fail("N110")
        return value

    @field_validator("MA_THE_BHYT")
    @classmethod
    def _card(cls, value: str, info: ValidationInfo) -> str:
        card = value.upper()
        if card and not _CARD.fullmatch(card):
            raise _fail("N111")
        number = info.data.get("MA_SO_BHXH")
        if card and number and card[-10:] != number:
            raise _fail("N112")
        return card

    @field_validator("GT_THE_TU", "GT_THE_DEN")
    @classmethod
    def _card_date(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return ""
        day = parse_date(value)
        if day is None:
            raise _fail("N113", info.field_name)
        start = info.data.get("GT_THE_TU")
        if info.field_name == "GT_THE_DEN" and start and day < start:
            raise _fail("N114")
        return day

    @field_validator("MA_DKBD")
    @classmethod
    def _facility(cls, value: str) -> str:
        if value and not is_facility_code(value):
            raise _fail("N115")
        return value

    @property
    def social_insurance_number(self) -> str:
        return self.MA_SO_BHXH or (self.MA_THE_BHYT[-10:] if self.MA_THE_BHYT else "")


class VaccinationRow(_Person):
    """One dose given: an entry of the citizen's vaccination history."""

    SERIES: ClassVar[int] = 2

    GIOI_TINH: str = ""
    MA_VACCINE: str = ""
    TEN_VACCINE: str = ""
    MUI_THU: int = 0
    NGAY_TIEM: str = ""
    MA_CSKCB: str = ""
    SO_LO: str = ""

    @field_validator("GIOI_TINH")
    @classmethod
    def _gender(cls, value: str) -> str:
        return cls._sex(value, required=False)

    @field_validator("MA_VACCINE")
    @classmethod
    def _vaccine(cls, value: str) -> str:
        code = value.upper()
        if not _VACCINE_CODE.fullmatch(code):
            raise _fail("N209")
        return code

    @field_validator("TEN_VACCINE")
    @classmethod
    def _vaccine_name(cls, value: str) -> str:
        name = normalise_name(value)
        if len(name) > VACCINE_NAME_MAX:
            raise _fail("N216")
        return name

    @field_validator("MUI_THU", mode="before")
    @classmethod
    def _dose(cls, value: Any) -> int:
        text = value.strip() if isinstance(value, str) else ""
        if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= DOSE_MAX):
            raise _fail("N210")
        return int(text)

    @field_validator("NGAY_TIEM")
    @classmethod
    def _given(cls, value: str, info: ValidationInfo) -> str:
        day = parse_date(value)
        if day is None:
            raise _fail("N211")
        given = _earliest(day)  # a full date: parse_date without partial
        today = _today(info)
        if today is not None and given > today:
            raise _fail("N212")
        birth = info.data.get("NGAY_SINH")
        if isinstance(birth, str) and birth and _earliest(birth) > given:  # before any day the birth can be
            raise _fail("N213")
        return day

    @field_validator("MA_CSKCB")
    @classmethod
    def _facility(cls, value: str) -> str:
        if not is_facility_code(value):
            raise _fail("N214")
        return value

    @field_validator("SO_LO")
    @classmethod
    def _lot(cls, value: str) -> str:
        if len(value) > LOT_MAX:
            raise _fail("N215")
        return value


MODELS: dict[Kind, type[EnrolmentRow] | type[VaccinationRow]] = {
    Kind.ENROLMENT: EnrolmentRow, Kind.VACCINATION: VaccinationRow}


@dataclass(frozen=True)
class Checked:
    """A canonical row after :func:`validate_row`: the record when it is usable, its blocking problems otherwise,
    and its findings (kept and reported: an unknown vaccine code)."""

    row: int
    record: EnrolmentRow | VaccinationRow | None
    problems: tuple[RowProblem, ...]
    findings: tuple[RowProblem, ...] = ()


def row_number(row: Mapping[str, Any]) -> int:
    """The ROW cell of a canonical row (0 when it is missing: never the case for a canonical CSV)."""
    value = row.get(ROW)
    text = value.strip() if isinstance(value, str) else str(value) if isinstance(value, int) else ""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 12 else 0


_ROW_LEVEL = frozenset({"N101", "N201"})  # about the row, not one column


def validate_row(row: Mapping[str, Any], kind: Kind, *, today: date | None = None) -> Checked:
    """Check one canonical row (strings keyed by the canonical header; missing columns are empty). Never raises on
    any input: every problem is a :class:`RowProblem` with its code, its column and no value."""
    number = row_number(row)
    model = MODELS[kind]
    values = {name: _text(row.get(name)) for name in CANONICAL_COLUMNS[kind][1:]}
    try:
        record = model.model_validate(values, context={"today": today})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            code = error["type"]
            column = str(error["loc"][0]) if error["loc"] else None
            if code not in CODES:  # a pydantic error of its own (cannot happen with string input): its column
                code = f"N{model.SERIES}04" if column == "HO_TEN" else f"N{model.SERIES}06"
            problems.append(problem(code, number, None if code in _ROW_LEVEL else column))
        return Checked(number, None, tuple(problems))
    findings: tuple[RowProblem, ...] = ()
    if isinstance(record, VaccinationRow) and lookup(record.MA_VACCINE) is None:
        findings = (problem("N290", number, "MA_VACCINE"),)
    return Checked(number, record, (), findings)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)

