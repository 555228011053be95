"""Any file a province sends, read once into the canonical CSV that the batches then process row by row.

``prepare(data, name=..., kind=...)`` accepts a CSV (UTF-8, with or without a byte-order mark; comma, semicolon
or tab), an XLSX workbook (its first sheet) and, for vaccination records, NDJSON (one FHIR R4B ``Immunization``
per line). It answers a :class:`Prepared`: the canonical CSV (UTF-8 without a BOM, header
``CANONICAL_COLUMNS[kind]``, one line per row that could be read, its source row number first) and the
problems found while reading. A row that cannot even be read (not UTF-8, a cell over the size limit, a control
character, more cells than columns, a line that is not a valid Immunization) becomes a :class:`RowProblem` and
stays out of the CSV; every other row goes in, to be checked by :func:`healthbook.enrolment.schema.validate_row`.
A file that cannot be read at all raises :class:`FileRefused` with its code.

Hostile input (docs/enrolment.md): the size is checked first; a workbook's parts are counted and their declared
sizes summed before openpyxl opens it (zipfile never inflates an entry past its declared size, so the sum bounds
the work), and a part declaring a DOCTYPE is refused; no cell longer than ``max_cell_chars`` is copied; a
formula is only ever text here (it is made harmless in the outcome file); nothing of a value is ever put in a
reason.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final

from healthbook.enrolment import Kind
from healthbook.enrolment.codes import RowProblem, problem, reason
from healthbook.enrolment.schema import (
    BHXH_SYSTEM,
    CANONICAL_COLUMNS,
    CCCD_SYSTEM,
    DATE_COLUMNS,
    DIGIT_COLUMNS,
    FACILITY_SYSTEM,
    ID_COLUMNS,
    REQUIRED_COLUMNS,
    VACCINE_SYSTEM,
)
from healthbook.kernel import PORTAL_TZ

__all__ = ["FileRefused", "Limits", "Prepared", "RowProblem", "prepare"]


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 200 * 1024**2
    max_rows: int = 1_000_000  # what Prepare and Summarise hold within their memory (bench/enrol_limits.py)
    max_cell_chars: int = 1024
    max_xlsx_uncompressed: int = 1024**3  # the sum of a workbook's declared part sizes
    max_xlsx_parts: int = 10_000
    max_xlsx_columns: int = 64  # a sheet is read up to this column (BL); a cell further right is not read at all
    max_line_bytes: int = 64 * 1024  # one NDJSON line
    header_rows: int = 10  # the header is the first of these rows that names a column of the kind


class FileRefused(ValueError):
    """The whole file is refused: ``code`` (N0xx) and ``reason`` (English; ``reason_vi`` Vietnamese), no value."""

    def __init__(self, code: str, reason: str, reason_vi: str = "") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.reason_vi = reason_vi

    @classmethod
    def of(cls, code: str, *, column: str | None = None, limit: int | None = None) -> FileRefused:
        return cls(code, reason(code, column=column, limit=limit),
                   reason(code, vietnamese=True, column=column, limit=limit))

    def as_problem(self) -> RowProblem:
        return RowProblem(None, None, self.code, self.reason, self.reason_vi)


@dataclass
class Prepared:
    """``rows`` data rows were found (blank rows are not counted); ``kept`` of them are in ``canonical_csv``;
    ``problems`` holds the rows left out (``row`` set) and notes about the file (``row`` None)."""

    kind: Kind
    rows: int
    canonical_csv: bytes
    problems: list[RowProblem]
    kept: int = 0
    format: str = ""  # "csv", "xlsx" or "ndjson"


_ZIP: Final = (b"PK\x03\x04", b"PK\x05\x06")
_OLE2: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an old .xls workbook (or .doc)
_UTF16_32_BOMS: Final = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_UTF8_BOM: Final = codecs.BOM_UTF8
_XML_HEAD = 64 * 1024
_COLUMN_LABEL = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
_DELIMITERS = (",", ";", "\t")
_LEADING_SPACE = re.compile(rb"(?:\xef\xbb\xbf)?\s*")  # a BOM and whitespace: what an "empty" file holds


def prepare(data: bytes, *, name: str, kind: Kind, limits: Limits = Limits()) -> Prepared:
    """Read ``data`` (the file named ``name``, for its extension) as ``kind``; raise :class:`FileRefused` when the
    file as a whole cannot be read."""
    kind = Kind(kind)
    if len(data) > limits.max_bytes:
        raise FileRefused.of("N002", limit=limits.max_bytes)
    content = _LEADING_SPACE.match(data)
    start = content.end() if content else 0
    if start == len(data):
        raise FileRefused.of("N001")
    if data.startswith(_ZIP):
        return _Sink(kind, limits, "xlsx").finish_table(_xlsx_rows(data, kind, limits))
    if data.startswith(_OLE2):
        raise FileRefused.of("N005")
    if data.startswith(_UTF16_32_BOMS):
        raise FileRefused.of("N004")
    first_line = data[:limits.max_line_bytes].split(b"\n", 1)[0]
    if b"\x00" in first_line:  # UTF-16 without a byte-order mark (every other byte NUL), or not text at all
        raise FileRefused.of("N004" if _looks_utf16(data[:1024]) else "N005")
    ndjson = data[start:start + 1] == b"{" or name.lower().endswith((".ndjson", ".jsonl"))
    if ndjson:
        if kind is not Kind.VACCINATION:
            raise FileRefused.of("N005")
        return _ndjson(data, limits)
    return _Sink(kind, limits, "csv").finish_table(_csv_rows(data, kind, limits))


def _looks_utf16(sample: bytes) -> bool:
    """Text in UTF-16 without a BOM: the NULs of its ASCII characters on one side of every pair."""
    even, odd = sample[0::2], sample[1::2]
    return bool(even) and (even.count(0) > 0.8 * len(even) or odd.count(0) > 0.8 * len(odd))


# ------------------------------------------------------------------------------------------ the one writer

class _Sink:
    """Writes the canonical CSV and collects the problems, whatever the format."""

    def __init__(self, kind: Kind, limits: Limits, fmt: str) -> None:
        self.kind, self.limits, self.format = kind, limits, fmt
        self.columns = CANONICAL_COLUMNS[kind]
        self._buffer = io.BytesIO()
        self._text = io.TextIOWrapper(self._buffer, encoding="utf-8", newline="", write_through=True)
        self._writer = csv.writer(self._text, lineterminator="\n")
        self._writer.writerow(self.columns)
        self.rows = 0
        self.kept = 0
        self.not_utf8 = 0
        self.problems: list[RowProblem] = []

    def count(self) -> None:
        self.rows += 1
        if self.rows > self.limits.max_rows:
            raise FileRefused.of("N014", limit=self.limits.max_rows)

    def refuse(self, code: str, row: int, column: str | None = None, *, limit: int | None = None) -> None:
        if code == "N020":
            self.not_utf8 += 1
        self.problems.append(problem(code, row, column, limit=limit))

    def offer(self, row: int, values: dict[str, str]) -> None:
        """A read row (canonical column -> text): refused if a cell is too long or holds a control character,
        else written."""
        for column, value in values.items():
            if len(value) > self.limits.max_cell_chars:
                self.refuse("N021", row, column, limit=self.limits.max_cell_chars)
                return
            if _has_control(value):
                self.refuse("N022", row, column)
                return
        self._writer.writerow([str(row), *(values.get(c, "") for c in self.columns[1:])])
        self.kept += 1

    def finish(self) -> Prepared:
        if self.rows == 0:
            raise FileRefused.of("N013")
        if self.not_utf8 and self.not_utf8 * 2 >= self.rows:  # most rows: the file is in another encoding
            raise FileRefused.of("N003")
        self._text.flush()
        return Prepared(self.kind, self.rows, self._buffer.getvalue(), self.problems, kept=self.kept,
                        format=self.format)

    def finish_table(self, rows: Iterator[tuple[int, Sequence[str] | str]]) -> Prepared:
        """A table (CSV or sheet): find the header, then offer every data row. ``rows`` yields (row number,
        cells) or (row number, a problem code) for a record that could not be parsed."""
        header: _Header | None = None
        for number, cells in rows:
            if header is None:
                if isinstance(cells, str):
                    continue
                if number > self.limits.header_rows:
                    raise FileRefused.of("N009", limit=self.limits.header_rows)
                header = _Header.find(cells, self.kind)
                if header is not None:
                    self.problems.extend(header.notes)
                continue
            if isinstance(cells, str):
                self.count()
                self.refuse(cells, number, limit=self.limits.max_cell_chars if cells == "N021" else None)
                continue
            if not any(c.strip() for c in cells):
                continue  # a blank row: not data
            self.count()
            if any(_not_utf8(c) for c in cells):
                self.refuse("N020", number)
                continue
            values, extra = header.values(cells)
            if extra:
                self.refuse("N023", number)
                continue
            self.offer(number, values)
        if header is None:
            raise FileRefused.of("N009", limit=self.limits.header_rows)
        return self.finish()


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text) if not text.isprintable() else False


def _not_utf8(text: str) -> bool:
    """Bytes that were not UTF-8, decoded with surrogateescape into lone surrogates."""
    return any("\udc80" <= ch <= "\udcff" for ch in text) if not text.isascii() else False


@dataclass
class _Header:
    """Where each canonical column is in the file's rows, and the notes about the others."""

    positions: dict[str, int]
    width: int
    notes: list[RowProblem] = field(default_factory=list)

    @classmethod
    def find(cls, cells: Sequence[str], kind: Kind) -> _Header | None:
        """The header, when ``cells`` name at least one column of ``kind``; refuses a header that repeats a
        column or lacks a required one."""
        known = set(CANONICAL_COLUMNS[kind][1:])
        names = [unicodedata.normalize("NFC", c).strip().lstrip("\ufeff").strip().upper() for c in cells]
        if not known & set(names):
            return None
        if any(_not_utf8(n) for n in names):
            raise FileRefused.of("N003")
        positions: dict[str, int] = {}
        notes = []
        for index, column in enumerate(names):
            if column in known:
                if column in positions:
                    raise FileRefused.of("N012", column=column)
                positions[column] = index
            elif column:
                label = column if _COLUMN_LABEL.fullmatch(column) else f"#{index + 1}"
                notes.append(problem("N015", None, label))
        missing = [c for c in REQUIRED_COLUMNS[kind] if c not in positions]
        if missing:
            raise FileRefused.of("N010", column=", ".join(missing))
        if not any(c in positions for c in ID_COLUMNS):
            raise FileRefused.of("N011")
        return cls(positions, len(names), notes)

    def values(self, cells: Sequence[str]) -> tuple[dict[str, str], bool]:
        """The canonical values of a row (stripped; absent cells empty), and whether it has non-empty cells
        beyond the header's columns."""
        values = {column: cells[i].strip() if i < len(cells) else "" for column, i in self.positions.items()}
        return values, any(c.strip() for c in cells[self.width:])


# ------------------------------------------------------------------------------------------------------ CSV

def _delimiter(data: bytes, kind: Kind, limits: Limits) -> str:
    """The delimiter that splits the first rows into the most known column names (comma when none does)."""
    head = data[:limits.max_line_bytes * 2].decode("utf-8", "replace").lstrip("\ufeff")
    lines = head.splitlines()[:limits.header_rows]
    known = set(CANONICAL_COLUMNS[kind][1:])

    def score(delimiter: str) -> int:
        return max((sum(p.strip().strip('"').upper() in known for p in line.split(delimiter)) for line in lines),
                   default=0)

    return max(_DELIMITERS, key=score)  # ties: the first, the comma


def _csv_rows(data: bytes, kind: Kind, limits: Limits) -> Iterator[tuple[int, Sequence[str] | str]]:
    """(record number, cells) of each record; a record that overflows csv's own field limit is (number, "N021").
    Undecodable bytes become lone surrogates (surrogateescape): the row is refused, the file goes on."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=_delimiter(data, kind, limits), strict=False)
    number = 0
    while True:
        number += 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error:  # past csv's field limit (128 KiB): the rest of that line is skipped by the reader
            yield number, "N021"
            continue
        yield number, cells


# ----------------------------------------------------------------------------------------------------- XLSX

def _guard_workbook(data: bytes, limits: Limits) -> None:
    """Refuse a workbook before openpyxl reads it: not a zip of a workbook, too many parts, declared sizes
    summing past the limit (a zip bomb), an encrypted part, or an XML part declaring a DOCTYPE."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise FileRefused.of("N006") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_xlsx_parts:
            raise FileRefused.of("N007", limit=limits.max_xlsx_uncompressed)
        if sum(info.file_size for info in infos) > limits.max_xlsx_uncompressed:
            raise FileRefused.of("N007", limit=limits.max_xlsx_uncompressed)
        names = {info.filename for info in infos}
        if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
            raise FileRefused.of("N006")
        for info in infos:
            if info.flag_bits & 0x1:
                raise FileRefused.of("N006")  # encrypted
            if not info.filename.endswith((".xml", ".rels", ".vml")):
                continue
            try:
                with archive.open(info) as part:
                    head = part.read(_XML_HEAD)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, ValueError):
                raise FileRefused.of("N006") from None
            if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in head.upper():
                raise FileRefused.of("N008")


def _cell_text(value: Any, column: str | None, serial_day: Callable[[int], date | None]) -> str:
    """A cell as the text a CSV would hold: dates as yyyyMMdd in date columns, whole numbers without ".0", the
    leading zeros of an ID typed as a number restored."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime | date):
        return f"{value:%Y%m%d}" if column in DATE_COLUMNS else value.isoformat()
    if isinstance(value, time | timedelta):
        return str(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not value.is_integer():
            return repr(value)
        number = int(value)
        if column in DATE_COLUMNS and 0 < number < 100_000:  # a date cell without a date format: its serial
            day = serial_day(number)
            return f"{day:%Y%m%d}" if day else str(number)
        if column in DIGIT_COLUMNS and number >= 0:
            return str(number).zfill(DIGIT_COLUMNS[column])
        return str(number)
    return str(value)


def _xlsx_rows(data: bytes, kind: Kind, limits: Limits) -> Iterator[tuple[int, Sequence[str] | str]]:
    _guard_workbook(data, limits)
    from openpyxl import load_workbook  # only now: its import is not free, and the guard may have refused
    from openpyxl.utils.datetime import from_excel

    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True, keep_links=False)
    except MemoryError:
        raise
    except Exception:  # openpyxl raises anything from KeyError to lxml's errors on a broken workbook
        raise FileRefused.of("N006") from None
    try:
        if not workbook.worksheets:
            raise FileRefused.of("N013")
        sheet = workbook.worksheets[0]
        epoch: datetime = workbook.epoch

        def serial_day(serial: int) -> date | None:
            try:
                moment = from_excel(serial, epoch)
            except (OverflowError, ValueError, TypeError):
                return None
            return moment.date() if isinstance(moment, datetime) else None

        known = set(CANONICAL_COLUMNS[kind][1:])
        columns: list[str | None] | None = None
        # max_col: a row is never wider than this, whatever the sheet's <dimension> claims (A1:XFD1048576 would
        # otherwise pad every row to 16,384 cells)
        rows = sheet.iter_rows(values_only=True, max_col=limits.max_xlsx_columns)
        number = 0
        while True:
            try:
                raw = next(rows)
            except StopIteration:
                return
            except MemoryError:
                raise
            except Exception:
                raise FileRefused.of("N006") from None
            number += 1
            if columns is None:
                cells = [_cell_text(v, None, serial_day) for v in raw]
                names = [c.strip().upper() for c in cells]
                if known & set(names):
                    columns = [n if n in known else None for n in names]
                yield number, cells
                continue
            yield number, [_cell_text(v, columns[i] if i < len(columns) else None, serial_day)
                           for i, v in enumerate(raw)]
    finally:
        workbook.close()


# --------------------------------------------------------------------------------------------------- NDJSON

_GENDER: Final = {"male": "1", "female": "2", "other": "3", "unknown": "3"}


def _ndjson(data: bytes, limits: Limits) -> Prepared:
    sink = _Sink(Kind.VACCINATION, limits, "ndjson")
    validate = _immunization_validator()
    start = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    number = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        number += 1
        line, start = data[start:end], end + 1
        if not line.strip():
            continue
        sink.count()
        if len(line) > limits.max_line_bytes:
            sink.refuse("N220", number, limit=limits.max_line_bytes)
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            sink.refuse("N020", number)
            continue
        try:
            resource = json.loads(text)
        except (ValueError, RecursionError):
            sink.refuse("N221", number)
            continue
        if not isinstance(resource, dict):
            sink.refuse("N221", number)
            continue
        where = validate(resource)
        if where is not None:
            sink.refuse("N222", number, where)
            continue
        if resource.get("status") != "completed":
            sink.refuse("N223", number, "status")
            continue
        sink.offer(number, immunization_row(resource))
    return sink.finish()


def _immunization_validator() -> Callable[[dict[str, Any]], str | None]:
    """None when the resource is a valid FHIR R4B Immunization, else where its first problem is (element names
    and indexes only: never a value)."""
    from fhir.resources.R4B.immunization import Immunization  # ~0.2 s to import: only for NDJSON files
    from pydantic import ValidationError

    def check(resource: dict[str, Any]) -> str | None:
        if resource.get("resourceType") != "Immunization":
            return "resourceType"
        try:
            Immunization.model_validate(resource)
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            location = errors[0]["loc"] if errors else ()
            parts = [str(p) if isinstance(p, int) or _ELEMENT.fullmatch(str(p)) else "?" for p in location]
            return ".".join(parts)[:80] or "Immunization"
        except (ValueError, TypeError, RecursionError):
            return "Immunization"
        return None

    return check


_ELEMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


def _get(node: Any, *path: str | int) -> Any:
    for step in path:
        if isinstance(step, int):
            node = node[step] if isinstance(node, list) and len(node) > step else None
        else:
            node = node.get(step) if isinstance(node, dict) else None
    return node


def _string(value: Any) -> str:
    return value if isinstance(value, str) else str(value) if isinstance(value, int) else ""


def _contained_patient(resource: dict[str, Any]) -> dict[str, Any]:
    reference = _get(resource, "patient", "reference")
    if isinstance(reference, str) and reference.startswith("#"):
        for item in resource.get("contained") or []:
            if isinstance(item, dict) and item.get("resourceType") == "Patient" and item.get("id") == reference[1:]:
                return item
    return {}


def _fhir_date(value: Any, *, partial: bool) -> str:
    """FHIR date/dateTime -> yyyyMMdd (Vietnam's day for a dateTime with a zone); partial dates with 00 when
    allowed; anything else as given, for the schema to refuse."""
    text = _string(value)
    if re.fullmatch(r"[0-9]{4}", text) and partial:
        return f"{text}0000"
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}", text) and partial:
        return f"{text[:4]}{text[5:7]}00"
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return text.replace("-", "")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(PORTAL_TZ)
    return f"{moment:%Y%m%d}"


def immunization_row(resource: dict[str, Any]) -> dict[str, str]:
    """The canonical vaccination columns of a valid Immunization (docs/enrolment.md, "FHIR"): the patient's
    identifiers of our systems (Immunization.patient.identifier, or the contained Patient it references), the
    name, birth date and sex of that contained Patient (or patient.display for the name), the vaccine coding of
    our system (else the first coding), the dose number, the day given, the facility and the lot."""
    identifiers: dict[str, str] = {}
    patient = _contained_patient(resource)
    for identifier in [_get(resource, "patient", "identifier"), *(patient.get("identifier") or [])]:
        system, value = _get(identifier, "system"), _get(identifier, "value")
        if isinstance(system, str) and isinstance(value, str):
            identifiers.setdefault(system, value)
    name = _get(patient, "name", 0)
    full_name = _string(_get(name, "text"))
    if not full_name and isinstance(name, dict):
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        full_name = " ".join([_string(name.get("family")), *given]).strip()
    full_name = full_name or _string(_get(resource, "patient", "display"))
    codings = [c for c in _get(resource, "vaccineCode", "coding") or [] if isinstance(c, dict) and c.get("code")]
    coding = next((c for c in codings if c.get("system") == VACCINE_SYSTEM), codings[0] if codings else {})
    dose = _get(resource, "protocolApplied", 0, "doseNumberPositiveInt")
    if dose is None:
        dose = _get(resource, "protocolApplied", 0, "doseNumberString")
    facility = ""
    for performer in resource.get("performer") or []:
        if _get(performer, "actor", "identifier", "system") == FACILITY_SYSTEM:
            facility = _string(_get(performer, "actor", "identifier", "value"))
            break
    if not facility and _get(resource, "location", "identifier", "system") == FACILITY_SYSTEM:
        facility = _string(_get(resource, "location", "identifier", "value"))
    return {
        "SO_CCCD": identifiers.get(CCCD_SYSTEM, "").strip(),
        "MA_SO_BHXH": identifiers.get(BHXH_SYSTEM, "").strip(),
        "HO_TEN": full_name.strip(),
        "NGAY_SINH": _fhir_date(patient.get("birthDate"), partial=True) if patient.get("birthDate") else "",
        "GIOI_TINH": _GENDER.get(_string(patient.get("gender")), ""),
        "MA_VACCINE": _string(coding.get("code")).strip(),
        "TEN_VACCINE": (_string(_get(resource, "vaccineCode", "text")) or _string(coding.get("display"))).strip(),
        "MUI_THU": _string(dose).strip(),
        "NGAY_TIEM": _fhir_date(resource.get("occurrenceDateTime"), partial=False),
        "MA_CSKCB": facility.strip(),
        "SO_LO": _string(resource.get("lotNumber")).strip(),
    }
