"""Every problem a participant list or a vaccination file can have: a stable code, what it refuses, and the reason
in English and Vietnamese, defined once (docs/enrolment.md is checked against this table by the tests).

Codes never change meaning once published (provinces fix their exports by them): add codes, never reuse one.

Series: ``N0xx`` the file and the reading of its rows (any kind), ``N1xx`` the values of a participant-list row,
``N2xx`` the values of a vaccination row and its FHIR line, ``N3xx`` what VNeID answered for one row. The person
checks share their last two digits in both kinds (``N102`` and ``N202`` are the same SO_CCCD check).

Scopes: ``file`` refuses the whole file (:class:`healthbook.enrolment.reader.FileRefused`); ``row`` leaves a row
that cannot be read out of the canonical CSV; ``value`` makes a read row ``invalid``; ``finding`` keeps the row
(its entry is written) and reports it; ``note`` refuses nothing. Reasons name the problem and the column, never
a value: the outcome file goes back to the province, and logs are no place for personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from healthbook.reconcile.matching import (
    BIRTH_MISMATCH,
    ID_FORMAT,
    NAME_MISMATCH,
    NO_ID,
    SEX_MISMATCH,
    UNKNOWN_ID,
    UNKNOWN_SOCIAL_INSURANCE,
)

Scope = Literal["file", "row", "value", "finding", "note"]
BLOCKING: Final = frozenset({"file", "row", "value"})


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    name: str
    scope: Scope
    reason_en: str  # may hold {column}, {limit} or {status}: a column name, a limit, never a value
    reason_vi: str

    @property
    def blocks(self) -> bool:
        """Whether the row (or the file) is refused; a finding or a note refuses nothing."""
        return self.scope in BLOCKING


@dataclass(frozen=True, slots=True)  # slots: a file's problems are held until its outcome is written
class RowProblem:
    """One problem of a file or a row: ``row`` the source row number (None for the file), ``column`` the column
    it is about (None for the whole row), ``code`` from :data:`CODES`, ``reason`` in English naming the problem,
    never the value; ``reason_vi`` the same in Vietnamese."""

    row: int | None
    column: str | None
    code: str
    reason: str
    reason_vi: str = ""

    @property
    def blocks(self) -> bool:
        return blocks(self.code)

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "code": self.code, "reason": self.reason}


def problem(code: str, row: int | None, column: str | None = None, *, limit: int | None = None) -> RowProblem:
    """A :class:`RowProblem` with both reasons from the catalogue."""
    return RowProblem(row, column, code, *_reasons(code, column, limit))


@lru_cache(maxsize=4096)
def _reasons(code: str, column: str | None, limit: int | None) -> tuple[str, str]:
    """Both texts of a problem, shared by every row that has it (a file of a million bad rows holds a few)."""
    return reason(code, column=column, limit=limit), reason(code, vietnamese=True, column=column, limit=limit)


def _person(series: int) -> list[Code]:
    """The person checks, the same in both kinds (N1xx for the participant list, N2xx for vaccinations)."""
    s = str(series)
    return [
        Code(f"N{s}01", "ID_MISSING", "value", "Neither SO_CCCD nor MA_SO_BHXH is given.",
             "Không có SO_CCCD và cũng không có MA_SO_BHXH."),
        Code(f"N{s}02", "CCCD_FORMAT", "value", "SO_CCCD must be 12 digits.", "SO_CCCD phải gồm 12 chữ số."),
        Code(f"N{s}03", "BHXH_FORMAT", "value", "MA_SO_BHXH must be 10 digits.", "MA_SO_BHXH phải gồm 10 chữ số."),
        Code(f"N{s}04", "NAME_MISSING", "value", "HO_TEN is empty.", "HO_TEN để trống."),
        Code(f"N{s}05", "NAME_TOO_LONG", "value", "HO_TEN is longer than 255 characters.",
             "HO_TEN dài quá 255 ký tự."),
        Code(f"N{s}06", "BIRTH_INVALID", "value",
             "NGAY_SINH must be a date: yyyyMMdd (00 for an unknown month or day), dd/MM/yyyy or a date cell.",
             "NGAY_SINH phải là ngày: yyyyMMdd (tháng, ngày không rõ ghi 00), dd/MM/yyyy hoặc ô kiểu ngày."),
        Code(f"N{s}07", "BIRTH_IN_FUTURE", "value", "NGAY_SINH is after today.", "NGAY_SINH sau ngày hôm nay."),
        Code(f"N{s}08", "SEX_INVALID", "value", "GIOI_TINH must be 1 (male), 2 (female) or 3 (undetermined).",
             "GIOI_TINH phải là 1 (nam), 2 (nữ) hoặc 3 (chưa xác định)."),
    ]


_CODES: list[Code] = [
    # --- N0xx: the file --------------------------------------------------------------------------------------
    Code("N001", "FILE_EMPTY", "file", "The file is empty.", "Tệp rỗng."),
    Code("N002", "FILE_TOO_LARGE", "file", "The file is larger than {limit} bytes.", "Tệp lớn hơn {limit} byte."),
    Code("N003", "NOT_UTF8", "file",
         "The file is not UTF-8 text (Windows-1258, TCVN3 or another encoding?): save it as “CSV UTF-8”.",
         "Tệp không phải văn bản UTF-8 (Windows-1258, TCVN3 hay bảng mã khác?): hãy lưu dưới dạng “CSV UTF-8”."),
    Code("N004", "UTF16", "file",
         "The file is UTF-16 or UTF-32 text (a byte-order mark, or NUL bytes in its header): save it as “CSV UTF-8”.",
         "Tệp là văn bản UTF-16 hoặc UTF-32 (có BOM, hoặc byte NUL ở dòng tiêu đề): hãy lưu dưới dạng “CSV UTF-8”."),
    Code("N005", "UNSUPPORTED_FORMAT", "file",
         "The file is neither CSV (UTF-8), XLSX nor, for vaccination records, NDJSON (an old .xls workbook?).",
         "Tệp không phải CSV (UTF-8), XLSX hoặc, với dữ liệu tiêm chủng, NDJSON (tệp .xls cũ?)."),
    Code("N006", "WORKBOOK_UNREADABLE", "file", "The workbook cannot be read as an XLSX file.",
         "Không đọc được tệp XLSX."),
    Code("N007", "WORKBOOK_EXPANDS_TOO_MUCH", "file",
         "The workbook would expand to more than {limit} bytes, or holds too many parts: refused before it is "
         "opened.",
         "Tệp XLSX khi giải nén sẽ lớn hơn {limit} byte hoặc có quá nhiều thành phần: bị từ chối trước khi mở."),
    Code("N008", "WORKBOOK_UNSAFE_XML", "file", "A part of the workbook declares a DOCTYPE or entities.",
         "Một thành phần của tệp XLSX có khai báo DOCTYPE hoặc thực thể (entity)."),
    Code("N009", "NO_HEADER", "file", "No header row naming the columns was found in the first {limit} rows.",
         "Không tìm thấy dòng tiêu đề ghi tên các cột trong {limit} dòng đầu."),
    Code("N010", "COLUMN_MISSING", "file", "The header lacks the required column {column}.",
         "Dòng tiêu đề thiếu cột bắt buộc {column}."),
    Code("N011", "ID_COLUMNS_MISSING", "file", "The header names neither SO_CCCD nor MA_SO_BHXH.",
         "Dòng tiêu đề không có cột SO_CCCD và cũng không có cột MA_SO_BHXH."),
    Code("N012", "COLUMN_REPEATED", "file", "The column {column} appears more than once in the header.",
         "Cột {column} xuất hiện nhiều lần ở dòng tiêu đề."),
    Code("N013", "NO_ROWS", "file", "The file has no data rows (a header alone, or blank rows).",
         "Tệp không có dòng dữ liệu nào (chỉ có dòng tiêu đề hoặc các dòng trống)."),
    Code("N014", "TOO_MANY_ROWS", "file", "The file has more than {limit} rows.", "Tệp có hơn {limit} dòng."),
    Code("N015", "COLUMN_UNKNOWN", "note", "A column the format does not define is ignored.",
         "Một cột không thuộc định dạng đã bị bỏ qua."),
    # --- N02x: a row that cannot be read (left out of the canonical CSV, the file goes on) ---------------------
    Code("N020", "ROW_NOT_UTF8", "row", "The row is not valid UTF-8 text; it was left out.",
         "Dòng không phải văn bản UTF-8 hợp lệ; dòng bị bỏ qua."),
    Code("N021", "CELL_TOO_LONG", "row", "A cell is longer than {limit} characters; the row was left out.",
         "Một ô dài quá {limit} ký tự; dòng bị bỏ qua."),
    Code("N022", "CONTROL_CHARACTER", "row",
         "A cell holds a control character (NUL, a line break inside a cell...); the row was left out.",
         "Một ô chứa ký tự điều khiển (NUL, xuống dòng trong ô...); dòng bị bỏ qua."),
    Code("N023", "TOO_MANY_CELLS", "row", "The row has more cells than the header has columns; it was left out.",
         "Dòng có nhiều ô hơn số cột của dòng tiêu đề; dòng bị bỏ qua."),
    # --- N1xx: a participant-list row --------------------------------------------------------------------------
    *_person(1),
    Code("N109", "PROVINCE_INVALID", "value",
         "MATINH_CU_TRU must be the 2-digit code of one of the 34 provinces in force since 1 July 2025.",
         "MATINH_CU_TRU phải là mã 2 chữ số của một trong 34 tỉnh, thành phố (từ ngày 01/7/2025)."),
    Code("N110", "COMMUNE_INVALID", "value", "MAXA_CU_TRU must be a 5-digit commune code.",
         "MAXA_CU_TRU phải là mã xã, phường gồm 5 chữ số."),
    Code("N111", "CARD_FORMAT", "value", "MA_THE_BHYT must be 15 characters: 2 letters, then 13 digits.",
         "MA_THE_BHYT phải gồm 15 ký tự: 2 chữ cái, tiếp theo 13 chữ số."),
    Code("N112", "CARD_NUMBER_MISMATCH", "value", "The last 10 digits of MA_THE_BHYT differ from MA_SO_BHXH.",
         "10 chữ số cuối của MA_THE_BHYT khác MA_SO_BHXH."),
    Code("N113", "CARD_DATE_INVALID", "value", "{column} must be a date: yyyyMMdd, dd/MM/yyyy or a date cell.",
         "{column} phải là ngày: yyyyMMdd, dd/MM/yyyy hoặc ô kiểu ngày."),
    Code("N114", "CARD_PERIOD_REVERSED", "value", "GT_THE_TU is after GT_THE_DEN.", "GT_THE_TU sau GT_THE_DEN."),
    Code("N115", "FACILITY_INVALID", "value", "MA_DKBD must be a 5-digit facility code.",
         "MA_DKBD phải là mã cơ sở khám chữa bệnh gồm 5 chữ số."),
    # --- N2xx: a vaccination row -------------------------------------------------------------------------------
    *_person(2),
    Code("N209", "VACCINE_CODE_INVALID", "value",
         "MA_VACCINE must be a code: letters, digits, '-' or '_', at most 32 characters.",
         "MA_VACCINE phải là một mã: chữ cái, chữ số, '-' hoặc '_', tối đa 32 ký tự."),
    Code("N210", "DOSE_INVALID", "value", "MUI_THU must be a whole number from 1 to 20.",
         "MUI_THU phải là số nguyên từ 1 đến 20."),
    Code("N211", "DATE_INVALID", "value", "NGAY_TIEM must be a date: yyyyMMdd, dd/MM/yyyy or a date cell.",
         "NGAY_TIEM phải là ngày: yyyyMMdd, dd/MM/yyyy hoặc ô kiểu ngày."),
    Code("N212", "DATE_IN_FUTURE", "value", "NGAY_TIEM is after today.", "NGAY_TIEM sau ngày hôm nay."),
    Code("N213", "DATE_BEFORE_BIRTH", "value", "NGAY_TIEM is before NGAY_SINH.", "NGAY_TIEM trước NGAY_SINH."),
    Code("N214", "FACILITY_INVALID", "value", "MA_CSKCB must be a 5-digit facility code.",
         "MA_CSKCB phải là mã cơ sở khám chữa bệnh gồm 5 chữ số."),
    Code("N215", "LOT_TOO_LONG", "value", "SO_LO is longer than 64 characters.", "SO_LO dài quá 64 ký tự."),
    Code("N216", "VACCINE_NAME_TOO_LONG", "value", "TEN_VACCINE is longer than 255 characters.",
         "TEN_VACCINE dài quá 255 ký tự."),
    Code("N220", "LINE_TOO_LONG", "row", "The line is longer than {limit} bytes; it was left out.",
         "Dòng dài quá {limit} byte; dòng bị bỏ qua."),
    Code("N221", "NOT_JSON", "row", "The line is not a JSON object; it was left out.",
         "Dòng không phải một đối tượng JSON; dòng bị bỏ qua."),
    Code("N222", "NOT_IMMUNIZATION", "row",
         "The line is not a valid FHIR R4B Immunization (first problem at {column}); it was left out.",
         "Dòng không phải một Immunization FHIR R4B hợp lệ (lỗi đầu tiên tại {column}); dòng bị bỏ qua."),
    Code("N223", "NOT_COMPLETED", "row",
         "The Immunization's status is not 'completed' (not given, or entered in error); it was left out.",
         "Trạng thái của Immunization không phải 'completed' (không tiêm, hoặc nhập nhầm); dòng bị bỏ qua."),
    Code("N290", "VACCINE_CODE_UNKNOWN", "finding",
         "The vaccine code is not in the code list: the entry keeps the code and the name as given.",
         "Mã vắc xin không có trong danh mục: mục tiêm chủng giữ nguyên mã và tên như đã gửi."),
    # --- N3xx: VNeID's answer for one row ----------------------------------------------------------------------
    Code("N301", "VNEID_REFUSED", "value", "VNeID refused this record (HTTP {status}).",
         "VNeID từ chối bản ghi này (HTTP {status})."),
    Code("N302", "NOT_PROCESSED", "row", "Not processed: a service was unavailable and the retries ran out; upload "
         "the list again.", "Chưa xử lý được: dịch vụ tạm thời không sẵn sàng và đã hết số lần thử lại; hãy tải "
         "danh sách lên lại."),
]

CODES: dict[str, Code] = {c.code: c for c in _CODES}
assert len(CODES) == len(_CODES), "duplicate enrolment code"

# The reconciliation's reason codes (healthbook.reconcile.matching), as a not_matched row's code and reason.
RECONCILIATION: dict[str, tuple[str, str]] = {
    NO_ID: ("Nothing to look the person up by.", "Không có số định danh để tra cứu."),
    ID_FORMAT: ("SO_CCCD is not a personal ID number.", "SO_CCCD không phải số định danh cá nhân."),
    UNKNOWN_ID: ("The population database has no such SO_CCCD.", "CSDLQG về dân cư không có SO_CCCD này."),
    NAME_MISMATCH: ("HO_TEN differs from the registered name.", "HO_TEN khác họ tên đã đăng ký."),
    BIRTH_MISMATCH: ("NGAY_SINH differs from the registered birth date.", "NGAY_SINH khác ngày sinh đã đăng ký."),
    SEX_MISMATCH: ("GIOI_TINH differs from the registered sex.", "GIOI_TINH khác giới tính đã đăng ký."),
    UNKNOWN_SOCIAL_INSURANCE: ("No citizen has this social-insurance number.",
                               "Không có công dân nào có mã số BHXH này."),
}

SEPARATOR: Final = "+"  # several codes of one row, in one cell: "N102+N106"


class _Fill(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def reason(code: str, *, vietnamese: bool = False, column: str | None = None, limit: int | None = None,
           status: int | None = None) -> str:
    """The reason of ``code`` (a problem code or a reconciliation reason), filled with a column name, a limit or
    an HTTP status: never a value of the file."""
    if code in RECONCILIATION:
        return RECONCILIATION[code][1 if vietnamese else 0]
    entry = CODES[code]
    text = entry.reason_vi if vietnamese else entry.reason_en
    params = {"column": column, "limit": limit, "status": status}
    return text.format_map(_Fill({k: v for k, v in params.items() if v is not None}))


def reasons(codes: str, *, vietnamese: bool = False) -> str:
    """The reasons of a "+"-joined code cell, "; "-joined (without column or limit: the outcome file's text)."""
    out = []
    for code in codes.split(SEPARATOR):
        if code in CODES or code in RECONCILIATION:
            out.append(reason(code, vietnamese=vietnamese))
    return "; ".join(out)


def blocks(code: str) -> bool:
    entry = CODES.get(code)
    return entry is not None and entry.blocks
