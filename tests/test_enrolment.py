"""Participant lists and vaccination history (docs/enrolment.md): reading, the row schema, reconciliation, writing
to the fake VNeID over HTTP, idempotent re-imports and corrections, the outcome file, and the docs' tables."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from healthbook.enrolment import codes
from healthbook.enrolment.codes import CODES, RECONCILIATION
from healthbook.enrolment.outcome import HEADER, mask_id, outcome_csv, safe_cell, summarise
from healthbook.enrolment.process import (
    BatchResult,
    RowOutcome,
    process_batch,
    record_id,
)
from healthbook.enrolment.reader import FileRefused, Prepared, prepare
from healthbook.enrolment.schema import (
    CANONICAL_COLUMNS,
    COLUMNS,
    VACCINE_SYSTEM,
    Kind,
    parse_date,
    validate_row,
)
from healthbook.enrolment.vaccines import document, lookup, system, vaccines
from healthbook.kernel import citizen_key
from healthbook.reconcile.matching import REASONS, PopulationUnavailable
from healthbook.vneid import PermanentDeliveryError, RetryableDeliveryError, VneidClient
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.vneid import FakeVneid
from healthbook_dev.generate.enrolment import (
    corrected,
    enrolment_csv,
    enrolment_list,
    enrolment_xlsx,
    immunization,
    vaccination_csv,
    vaccination_ndjson,
    vaccination_rows,
)

ROOT = Path(__file__).resolve().parents[1]
PEPPER = b"enrolment-test-pepper-0123456789"
NOW = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVneid]:
    with FakeVneid.start() as running:
        yield running


@pytest.fixture
def books(fake: FakeVneid) -> Iterator[VneidClient]:
    fake.reset()
    with VneidClient(fake.url, auth=fake.oauth2(), timeout=(1.0, 5.0)) as client:
        yield client


def canonical_rows(prepared: Prepared) -> list[dict[str, str]]:
    """The canonical CSV as Step Functions' ItemReader gives it: one dict of strings per row."""
    return list(csv.DictReader(io.StringIO(prepared.canonical_csv.decode("utf-8"), newline="")))


def run(data: bytes, kind: Kind, population: FakePopulation, books: Any, *, name: str = "list.csv",
        batch: int = 100, now: datetime = NOW) -> tuple[Prepared, list[RowOutcome]]:
    """prepare, then the canonical rows in batches, as the workflow runs them."""
    prepared = prepare(data, name=name, kind=kind)
    rows = canonical_rows(prepared)
    outcomes: list[RowOutcome] = []
    for start in range(0, len(rows), batch):
        outcomes += process_batch(rows[start:start + batch], kind=kind, population=population, books=books,
                                  pepper=PEPPER, now=now).outcomes
    return prepared, outcomes


def by_row(outcomes: Sequence[RowOutcome]) -> dict[int, RowOutcome]:
    return {o.row: o for o in outcomes}


# --------------------------------------------------------------------------------------------- the reader

def test_a_list_becomes_the_canonical_csv_with_its_row_numbers() -> None:
    listing = enrolment_list(5, seed=1)
    prepared = prepare(enrolment_csv(listing.rows), name="list.csv", kind=Kind.ENROLMENT)
    assert (prepared.kind, prepared.rows, prepared.kept, prepared.problems, prepared.format) == (
        Kind.ENROLMENT, 5, 5, [], "csv")
    assert not prepared.canonical_csv.startswith(b"\xef\xbb\xbf")
    header = prepared.canonical_csv.decode("utf-8").splitlines()[0]
    assert tuple(header.split(",")) == CANONICAL_COLUMNS[Kind.ENROLMENT]
    assert CANONICAL_COLUMNS[Kind.ENROLMENT][0] == "ROW"
    rows = canonical_rows(prepared)
    assert [r["ROW"] for r in rows] == ["2", "3", "4", "5", "6"]  # the header is row 1, as a spreadsheet counts
    assert [{k: v for k, v in r.items() if k != "ROW"} for r in rows] == listing.rows


def test_columns_in_another_order_with_a_title_row_a_semicolon_and_lower_case_names() -> None:
    listing = enrolment_list(3, seed=2)
    columns = list(reversed(CANONICAL_COLUMNS[Kind.ENROLMENT][1:]))
    body = enrolment_csv(listing.rows, columns=columns, delimiter=";", bom=False).decode("utf-8")
    header, rest = body.split("\r\n", 1)
    text = "DANH SÁCH NGƯỜI THAM GIA BẢO HIỂM Y TẾ\r\n\r\n" + header.lower() + "\r\n" + rest
    prepared = prepare(text.encode("utf-8"), name="list.csv", kind=Kind.ENROLMENT)
    rows = canonical_rows(prepared)
    assert [r["ROW"] for r in rows] == ["4", "5", "6"]
    assert [r["SO_CCCD"] for r in rows] == [r["SO_CCCD"] for r in listing.rows]


def test_a_workbook_as_clerks_type_it_reads_like_the_csv() -> None:
    """IDs typed as numbers lose their leading zeros and dates are date cells: read back as the CSV holds them."""
    listing = enrolment_list(6, seed=3)
    listing.rows[0]["NGAY_SINH"] = listing.rows[0]["NGAY_SINH"][:4] + "0000"  # a partial birth date stays text
    from_xlsx = prepare(enrolment_xlsx(listing.rows, title="Danh sách"), name="list.xlsx", kind=Kind.ENROLMENT)
    from_csv = prepare(enrolment_csv(listing.rows), name="list.csv", kind=Kind.ENROLMENT)
    assert from_xlsx.format == "xlsx" and from_xlsx.problems == []
    assert [{k: v for k, v in r.items() if k != "ROW"} for r in canonical_rows(from_xlsx)] == \
        [{k: v for k, v in r.items() if k != "ROW"} for r in canonical_rows(from_csv)]
    assert all(r["SO_CCCD"].startswith("0") and len(r["SO_CCCD"]) == 12 for r in canonical_rows(from_xlsx))


def test_an_unknown_column_is_ignored_and_noted_once() -> None:
    listing = enrolment_list(2, seed=4)
    rows = [{**r, "GHI_CHU": "x", "Số điện thoại": "0912"} for r in listing.rows]
    columns = [*CANONICAL_COLUMNS[Kind.ENROLMENT][1:], "GHI_CHU", "Số điện thoại"]
    prepared = prepare(enrolment_csv(rows, columns=columns), name="list.csv", kind=Kind.ENROLMENT)
    assert prepared.kept == 2
    assert [(p.row, p.column, p.code) for p in prepared.problems] == [(None, "GHI_CHU", "N015"), (None, "#13", "N015")]
    assert not any(p.blocks for p in prepared.problems)


@pytest.mark.parametrize(("text", "partial", "expected"), [
    ("19900517", False, "19900517"), ("199005171230", False, "19900517"), ("17/05/1990", False, "19900517"),
    ("7/5/1990", False, "19900507"), ("1990-05-17", False, "19900517"), ("19900500", True, "19900500"),
    ("19900000", True, "19900000"), ("19900500", False, None), ("19900230", False, None), ("1990", True, None),
    ("18991231", False, None), ("31/02/1990", False, None), ("", False, None), ("=1+1", False, None),
])
def test_dates_are_read_in_the_forms_provinces_write(text: str, partial: bool, expected: str | None) -> None:
    assert parse_date(text, partial=partial) == expected


# ------------------------------------------------------------------------------------------- the schema

def _row(kind: Kind, **values: str) -> dict[str, str]:
    base = {"ENROLMENT": {"MA_SO_BHXH": "0123456789", "SO_CCCD": "001090012345", "HO_TEN": "Nguyễn Văn An",
                          "NGAY_SINH": "19900517", "GIOI_TINH": "1", "MATINH_CU_TRU": "01", "MAXA_CU_TRU": "00004",
                          "MA_THE_BHYT": "DN4010123456789", "GT_THE_TU": "20260101", "GT_THE_DEN": "20261231",
                          "MA_DKBD": "01001"},
            "VACCINATION": {"SO_CCCD": "001090012345", "MA_SO_BHXH": "", "HO_TEN": "Nguyễn Văn An",
                            "NGAY_SINH": "19900517", "GIOI_TINH": "", "MA_VACCINE": "COVID-AZ", "TEN_VACCINE": "",
                            "MUI_THU": "1", "NGAY_TIEM": "20210710", "MA_CSKCB": "01001", "SO_LO": "A123"}}
    return {"ROW": "7", **base[kind.name], **values}


@pytest.mark.parametrize(("kind", "change", "expected"), [
    (Kind.ENROLMENT, {}, []),
    (Kind.ENROLMENT, {"SO_CCCD": "", "MA_SO_BHXH": ""}, [(None, "N101")]),
    (Kind.ENROLMENT, {"SO_CCCD": "", "MA_SO_BHXH": "12"}, [("MA_SO_BHXH", "N103")]),  # malformed, not missing
    (Kind.ENROLMENT, {"SO_CCCD": "00109001234"}, [("SO_CCCD", "N102")]),
    (Kind.ENROLMENT, {"HO_TEN": "   "}, [("HO_TEN", "N104")]),
    (Kind.ENROLMENT, {"HO_TEN": "A" * 256}, [("HO_TEN", "N105")]),
    (Kind.ENROLMENT, {"NGAY_SINH": "30021990"}, [("NGAY_SINH", "N106")]),
    (Kind.ENROLMENT, {"NGAY_SINH": "20270101"}, [("NGAY_SINH", "N107")]),
    (Kind.ENROLMENT, {"GIOI_TINH": "M"}, [("GIOI_TINH", "N108")]),
    (Kind.ENROLMENT, {"GIOI_TINH": ""}, [("GIOI_TINH", "N108")]),
    (Kind.ENROLMENT, {"MATINH_CU_TRU": "93"}, [("MATINH_CU_TRU", "N109")]),  # Hậu Giang: merged into Cần Thơ
    (Kind.ENROLMENT, {"MAXA_CU_TRU": "4"}, [("MAXA_CU_TRU", "N110")]),
    (Kind.ENROLMENT, {"MA_THE_BHYT": "DN401012345678"}, [("MA_THE_BHYT", "N111")]),
    (Kind.ENROLMENT, {"MA_THE_BHYT": "DN4019999999999"}, [("MA_THE_BHYT", "N112")]),
    (Kind.ENROLMENT, {"GT_THE_DEN": "2026-13-01"}, [("GT_THE_DEN", "N113")]),
    (Kind.ENROLMENT, {"GT_THE_TU": "20270101"}, [("GT_THE_DEN", "N114")]),
    (Kind.ENROLMENT, {"MA_DKBD": "1001"}, [("MA_DKBD", "N115")]),
    (Kind.ENROLMENT, {"SO_CCCD": "x", "NGAY_SINH": "", "GIOI_TINH": "9"},
     [("SO_CCCD", "N102"), ("NGAY_SINH", "N106"), ("GIOI_TINH", "N108")]),
    (Kind.VACCINATION, {}, []),
    (Kind.VACCINATION, {"SO_CCCD": ""}, [(None, "N201")]),
    (Kind.VACCINATION, {"MA_VACCINE": "=cmd|' /C calc'!A0"}, [("MA_VACCINE", "N209")]),
    (Kind.VACCINATION, {"MUI_THU": "0"}, [("MUI_THU", "N210")]),
    (Kind.VACCINATION, {"MUI_THU": "1.5"}, [("MUI_THU", "N210")]),
    (Kind.VACCINATION, {"NGAY_TIEM": "2021"}, [("NGAY_TIEM", "N211")]),
    (Kind.VACCINATION, {"NGAY_TIEM": "20260106"}, [("NGAY_TIEM", "N212")]),
    (Kind.VACCINATION, {"NGAY_TIEM": "19890101"}, [("NGAY_TIEM", "N213")]),
    (Kind.VACCINATION, {"MA_CSKCB": ""}, [("MA_CSKCB", "N214")]),
    (Kind.VACCINATION, {"SO_LO": "L" * 65}, [("SO_LO", "N215")]),
    (Kind.VACCINATION, {"TEN_VACCINE": "V" * 256}, [("TEN_VACCINE", "N216")]),
    (Kind.VACCINATION, {"GIOI_TINH": "4"}, [("GIOI_TINH", "N208")]),
])
def test_each_rule_has_its_code_and_column(kind: Kind, change: dict[str, str],
                                           expected: list[tuple[str | None, str]]) -> None:
    row = _row(kind, **change)
    checked = validate_row(row, kind, today=date(2026, 1, 5))
    assert [(p.column, p.code) for p in checked.problems] == expected
    assert (checked.record is None) == bool(expected) and checked.row == 7
    for problem in checked.problems:
        assert problem.reason and problem.reason_vi and problem.row == 7
        for value in change.values():  # a reason names the problem, never the value
            assert len(value) < 3 or value not in problem.reason


def test_a_birth_date_with_an_unknown_day_allows_a_dose_in_its_month() -> None:
    row = _row(Kind.VACCINATION, NGAY_SINH="20210700", NGAY_TIEM="20210701")
    assert validate_row(row, Kind.VACCINATION, today=date(2026, 1, 5)).record is not None


def test_validate_row_never_raises_on_odd_input() -> None:
    odd: list[Mapping[str, Any]] = [{}, {"ROW": None}, {"ROW": "x", "HO_TEN": None, "MUI_THU": 3},
                                    {"ROW": "9" * 40, "SO_CCCD": "\udc80" * 3}]
    for kind in Kind:
        for row in odd:
            checked = validate_row(row, kind)
            assert checked.record is None and checked.problems


# ---------------------------------------------------------------------------------- the participant list

def test_a_participant_list_gives_each_known_person_a_profile(fake: FakeVneid, books: VneidClient) -> None:
    listing = enrolment_list(30, seed=5, unknown_rate=0.2, bhxh_only_rate=0.3)
    prepared, outcomes = run(enrolment_csv(listing.rows), Kind.ENROLMENT, listing.population(), books, batch=7)
    assert prepared.kept == 30 and len(outcomes) == 30
    for outcome, label, row in zip(outcomes, listing.labels, listing.rows, strict=True):
        if label == "unknown":
            assert (outcome.outcome, outcome.citizen_key) == ("not_matched", None)
            assert set(outcome.code.split("+")) <= set(REASONS) and "UNKNOWN" in outcome.code
            continue
        assert outcome.outcome == "created" and outcome.code is None
        person = next(p for p in listing.listed if p.ma_so_bhxh == row["MA_SO_BHXH"])
        assert outcome.citizen_key == citizen_key(PEPPER, person.so_cccd)  # the one key, found by BHXH too
        assert (outcome.province, outcome.commune) == (row["MATINH_CU_TRU"], row["MAXA_CU_TRU"])
        profile = fake.profile(outcome.citizen_key)
        assert profile is not None and profile["schema"] == "healthbook-profile/1"
        assert profile["id_number"] == person.so_cccd and profile["social_insurance_number"] == person.ma_so_bhxh
        assert profile["name"] == person.ho_ten and profile["province"]["code"] == person.matinh
        assert profile["province"]["label"] and profile["sex"]["label"] in ("Nam", "Nữ")
        assert profile["insurance_cards"] == [person.ma_the_bhyt]
        assert profile["birth_date"] == f"{person.ngay_sinh[:4]}-{person.ngay_sinh[4:6]}-{person.ngay_sinh[6:]}"
        expected_mask = person.so_cccd[:4] + "******" + person.so_cccd[-2:]
        assert outcome.masked_id == (expected_mask if label == "person" else mask_id(person.ma_so_bhxh))
    counts = BatchResult(outcomes).counts()
    assert counts == {"created": listing.labels.count("person") + listing.labels.count("bhxh_only"), "updated": 0,
                      "unchanged": 0, "not_matched": listing.labels.count("unknown"), "invalid": 0}
    assert fake.counts()["profiles_created"] == counts["created"]


def test_importing_the_same_list_again_changes_nothing(fake: FakeVneid, books: VneidClient) -> None:
    listing = enrolment_list(12, seed=6)
    data = enrolment_xlsx(listing.rows)
    _, first = run(data, Kind.ENROLMENT, listing.population(), books, name="list.xlsx")
    _, again = run(data, Kind.ENROLMENT, listing.population(), books, name="list.xlsx")
    assert {o.outcome for o in first} == {"created"} and {o.outcome for o in again} == {"unchanged"}
    assert [o.citizen_key for o in first] == [o.citizen_key for o in again]
    stats = fake.counts()
    assert (stats["profiles_created"], stats["profiles_unchanged"], stats["profiles_updated"]) == (12, 12, 0)


def test_a_corrected_list_updates_the_corrected_rows_only(fake: FakeVneid, books: VneidClient) -> None:
    listing = enrolment_list(20, seed=7, duplicates=3)
    population = listing.population()
    run(enrolment_csv(listing.rows), Kind.ENROLMENT, population, books)
    fixed = corrected(listing, share=0.3, seed=7)
    assert "corrected" in fixed.labels
    _, outcomes = run(enrolment_csv(fixed.rows), Kind.ENROLMENT, population, books)
    for outcome, label, row in zip(outcomes, fixed.labels, fixed.rows, strict=True):
        assert outcome.outcome == ("updated" if label == "corrected" else "unchanged")
        profile = fake.profile(outcome.citizen_key or "")
        assert profile is not None and profile["commune"]["code"] == row["MAXA_CU_TRU"]
        assert profile["card_valid_to"] == [f"{row['GT_THE_DEN'][:4]}-12-31"]


def test_duplicate_rows_are_created_once_then_unchanged(fake: FakeVneid, books: VneidClient) -> None:
    listing = enrolment_list(8, seed=8, duplicates=5)
    _, outcomes = run(enrolment_csv(listing.rows), Kind.ENROLMENT, listing.population(), books, batch=4)
    for outcome, label in zip(outcomes, listing.labels, strict=True):
        assert outcome.outcome == ("unchanged" if label == "duplicate" else "created")
    assert fake.counts()["profiles_created"] == 8


def test_a_person_who_differs_from_the_registry_is_not_matched_with_the_reasons(books: VneidClient) -> None:
    listing = enrolment_list(3, seed=9)
    rows = [dict(r) for r in listing.rows]
    rows[0]["HO_TEN"] = "Tên Khác Hẳn"
    rows[1]["NGAY_SINH"] = str(int(rows[1]["NGAY_SINH"][:4]) + 1) + rows[1]["NGAY_SINH"][4:]
    rows[2]["GIOI_TINH"] = {"1": "2", "2": "1"}[rows[2]["GIOI_TINH"]]
    _, outcomes = run(enrolment_csv(rows), Kind.ENROLMENT, listing.population(), books)
    assert [(o.outcome, o.code) for o in outcomes] == [("not_matched", "NAME_MISMATCH"),
                                                      ("not_matched", "BIRTH_MISMATCH"),
                                                      ("not_matched", "SEX_MISMATCH")]
    assert outcomes[0].reason == RECONCILIATION["NAME_MISMATCH"][0]
    assert outcomes[0].reason_vi == RECONCILIATION["NAME_MISMATCH"][1]


def test_invalid_rows_say_why_and_the_others_go_on(books: VneidClient) -> None:
    listing = enrolment_list(4, seed=10)
    rows = [dict(r) for r in listing.rows]
    rows[1].update(SO_CCCD="12345", NGAY_SINH="31/02/1990")
    _, outcomes = run(enrolment_csv(rows), Kind.ENROLMENT, listing.population(), books)
    bad = outcomes[1]
    assert (bad.row, bad.outcome, bad.code, bad.citizen_key) == (3, "invalid", "N102+N106", None)
    assert bad.reason == f"{CODES['N102'].reason_en}; {CODES['N106'].reason_en}"
    assert bad.masked_id == "*** (5)"  # a malformed number shows only its length
    assert [o.outcome for o in outcomes] == ["created", "invalid", "created", "created"]


# ------------------------------------------------------------------------------------------ vaccinations

@pytest.mark.parametrize("form", ["csv", "ndjson"])
def test_vaccinations_become_the_history_in_either_format(fake: FakeVneid, books: VneidClient, form: str) -> None:
    listing = enrolment_list(10, seed=11)
    rows = vaccination_rows(listing.listed, seed=11, per_person=(2, 5))
    data = vaccination_csv(rows) if form == "csv" else vaccination_ndjson(rows)
    prepared, outcomes = run(data, Kind.VACCINATION, listing.population(), books, name=f"v.{form}")
    assert prepared.format == form and prepared.problems == [] and len(outcomes) == len(rows)
    assert {o.outcome for o in outcomes} == {"created"} and all(o.province is None for o in outcomes)
    for person in listing.listed:
        key = citizen_key(PEPPER, person.so_cccd)
        assert key is not None
        history = fake.vaccinations(key)
        given = [r for r in rows if r["SO_CCCD"] == person.so_cccd]
        assert len(history) == len(given)
        for entry in history:
            assert entry["schema"] == "healthbook-vaccination/1" and entry["vaccine"]["listed"]
            assert entry["vaccine"]["label"] == vaccines()[entry["vaccine"]["code"]].name_vi
            assert entry["record_id"] == record_id(key, entry["vaccine"]["code"], entry["dose_number"],
                                                   entry["date"].replace("-", ""))


def test_the_same_dose_found_by_another_number_is_the_same_entry_and_a_new_lot_updates_it(
        fake: FakeVneid, books: VneidClient) -> None:
    listing = enrolment_list(2, seed=12)
    rows = vaccination_rows(listing.listed, seed=12, per_person=(1, 1))
    population = listing.population()
    _, first = run(vaccination_csv(rows), Kind.VACCINATION, population, books)
    by_bhxh = [{**r, "SO_CCCD": ""} for r in rows]
    _, second = run(vaccination_ndjson(by_bhxh), Kind.VACCINATION, population, books, name="v.ndjson")
    relotted = [{**r, "SO_LO": "Z99999"} for r in rows]
    _, third = run(vaccination_csv(relotted), Kind.VACCINATION, population, books)
    assert [o.outcome for o in first + second + third] == ["created"] * 2 + ["unchanged"] * 2 + ["updated"] * 2
    assert all(len(fake.vaccinations(o.citizen_key or "")) == 1 for o in first)
    assert fake.vaccinations(first[0].citizen_key or "")[0]["lot_number"] == "Z99999"


def test_an_unknown_vaccine_code_is_kept_and_reported(fake: FakeVneid, books: VneidClient) -> None:
    listing = enrolment_list(1, seed=13)
    row = {**vaccination_rows(listing.listed, seed=13, per_person=(1, 1))[0], "MA_VACCINE": "vx-moi-2026",
           "TEN_VACCINE": "Vắc xin mới"}
    _, outcomes = run(vaccination_csv([row]), Kind.VACCINATION, listing.population(), books)
    (outcome,) = outcomes
    assert (outcome.outcome, outcome.code, outcome.reason) == ("created", "N290", CODES["N290"].reason_en)
    (entry,) = fake.vaccinations(outcome.citizen_key or "")
    assert entry["vaccine"] == {"code": "VX-MOI-2026", "label": "Vắc xin mới", "label_en": None,
                                "programme": None, "listed": False}


def test_a_vaccination_without_sex_is_matched_on_name_and_birth(books: VneidClient) -> None:
    listing = enrolment_list(2, seed=14)
    rows = [{**r, "GIOI_TINH": ""} for r in vaccination_rows(listing.listed, seed=14, per_person=(1, 1))]
    _, outcomes = run(vaccination_csv(rows), Kind.VACCINATION, listing.population(), books)
    assert {o.outcome for o in outcomes} == {"created"}


def test_fhir_lines_are_read_through_the_contained_patient_and_our_systems() -> None:
    listing = enrolment_list(1, seed=15)
    row = vaccination_rows(listing.listed, seed=15, per_person=(1, 1))[0]
    resource = immunization(row)
    resource["occurrenceDateTime"] = "2021-07-09T20:30:00Z"  # 03:30 on the 10th in Vietnam
    resource["vaccineCode"]["coding"].insert(0, {"system": "http://hl7.org/fhir/sid/cvx", "code": "210"})
    resource["contained"][0]["identifier"].append({"system": "urn:other", "value": "999"})
    line = json.dumps(resource, ensure_ascii=False).encode("utf-8") + b"\n"
    (parsed,) = canonical_rows(prepare(line, name="v.ndjson", kind=Kind.VACCINATION))
    assert parsed["NGAY_TIEM"] == "20210710" and parsed["MA_VACCINE"] == row["MA_VACCINE"]
    assert (parsed["SO_CCCD"], parsed["MA_SO_BHXH"], parsed["HO_TEN"]) == (row["SO_CCCD"], row["MA_SO_BHXH"],
                                                                           row["HO_TEN"])
    assert (parsed["MUI_THU"], parsed["MA_CSKCB"], parsed["SO_LO"]) == (row["MUI_THU"], row["MA_CSKCB"], row["SO_LO"])
    assert system() == VACCINE_SYSTEM == document()["system"]


# -------------------------------------------------------------------------------------- services failing

class _Down(FakePopulation):
    def lookup(self, id_number: str) -> None:
        raise PopulationUnavailable("population database timed out")


def test_an_unavailable_population_service_fails_the_batch_for_a_retry(books: VneidClient) -> None:
    listing = enrolment_list(2, seed=16)
    rows = canonical_rows(prepare(enrolment_csv(listing.rows), name="l.csv", kind=Kind.ENROLMENT))
    with pytest.raises(PopulationUnavailable):
        process_batch(rows, kind=Kind.ENROLMENT, population=_Down(), books=books, pepper=PEPPER, now=NOW)


def test_vneid_down_fails_the_batch_and_the_retry_finishes_it(fake: FakeVneid, books: VneidClient) -> None:
    listing = enrolment_list(4, seed=17)
    rows = canonical_rows(prepare(enrolment_csv(listing.rows), name="l.csv", kind=Kind.ENROLMENT))
    population = listing.population()
    process_batch(rows[:2], kind=Kind.ENROLMENT, population=population, books=books, pepper=PEPPER, now=NOW)
    fake.respond_next(503, times=1, retry_after=2)  # the batch of all four fails on its first write
    with pytest.raises(RetryableDeliveryError) as caught:
        process_batch(rows, kind=Kind.ENROLMENT, population=population, books=books, pepper=PEPPER, now=NOW)
    assert caught.value.retry_after == 2
    retried = process_batch(rows, kind=Kind.ENROLMENT, population=population, books=books, pepper=PEPPER, now=NOW)
    assert [o.outcome for o in retried.outcomes] == ["unchanged", "unchanged", "created", "created"]


class _Refusing:
    """A sink that refuses one row's body (a 422 about the record) and lets the others through."""

    def __init__(self, status: int) -> None:
        self.status, self.calls = status, 0

    def put_profile(self, citizen_key: str, profile: Mapping[str, Any]) -> str:
        self.calls += 1
        if self.calls == 1:
            raise PermanentDeliveryError(f"VNeID answered {self.status}", status=self.status, code="invalid_body")
        return "created"

    def put_vaccination(self, citizen_key: str, record_id: str, record: Mapping[str, Any]) -> str:
        return "created"


def test_vneid_refusing_one_row_makes_it_invalid_but_refusing_us_fails_the_batch() -> None:
    listing = enrolment_list(2, seed=18)
    rows = canonical_rows(prepare(enrolment_csv(listing.rows), name="l.csv", kind=Kind.ENROLMENT))
    result = process_batch(rows, kind=Kind.ENROLMENT, population=listing.population(), books=_Refusing(422),
                           pepper=PEPPER, now=NOW)
    assert [(o.outcome, o.code) for o in result.outcomes] == [("invalid", "N301"), ("created", None)]
    assert "422" in (result.outcomes[0].reason or "") and result.outcomes[0].citizen_key
    with pytest.raises(PermanentDeliveryError):
        process_batch(rows, kind=Kind.ENROLMENT, population=listing.population(), books=_Refusing(403),
                      pepper=PEPPER, now=NOW)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        process_batch([], kind=Kind.ENROLMENT, population=FakePopulation(), books=_Refusing(422), pepper=PEPPER,
                      now=datetime(2026, 1, 5))


# ----------------------------------------------------------------------------------------- the outcome file

def test_the_outcome_file_opens_in_excel_and_holds_no_personal_data(books: VneidClient) -> None:
    listing = enrolment_list(6, seed=19, unknown_rate=0.3)
    rows = [dict(r) for r in listing.rows]
    rows[2]["NGAY_SINH"] = "bad"
    data = enrolment_csv(rows) + b"x,y,z,1,2,3,4,5,6,7,8,9,10\r\n"  # a row with a cell too many
    prepared, outcomes = run(data, Kind.ENROLMENT, listing.population(), books)
    text = outcome_csv(outcomes, prepared.problems)
    assert text.startswith(b"\xef\xbb\xbf")
    lines = list(csv.reader(io.StringIO(text[3:].decode("utf-8"), newline="")))
    assert tuple(lines[0]) == HEADER == ("row", "outcome", "code", "reason", "masked_id", "reason_vi")
    assert lines[1][:3] == ["8", "invalid", "N023"]  # unread rows first
    assert len(lines) == 1 + len(outcomes) + 1
    body = text.decode("utf-8")
    for row in listing.rows:
        for column in ("SO_CCCD", "MA_SO_BHXH", "HO_TEN", "MA_THE_BHYT"):
            assert row[column] not in body
    summary = summarise(outcomes, prepared.problems)
    assert summary["rows"] == 7 and summary["by_outcome"]["invalid"] == 2
    assert summary["by_code"]["N106"] == 1 and summary["by_code"]["N023"] == 1
    assert set(summary["by_outcome"]) == {"created", "updated", "unchanged", "not_matched", "invalid"}


@pytest.mark.parametrize(("cell", "shown"), [
    ("=HYPERLINK(\"http://evil\",\"x\")", "'=HYPERLINK(\"http://evil\",\"x\")"), ("+1", "'+1"), ("-2", "'-2"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("a=b", "a=b"), ("", ""), (None, ""), (7, "7"),
])
def test_every_cell_of_the_outcome_file_is_formula_safe(cell: object, shown: str) -> None:
    assert safe_cell(cell) == shown
    outcome = RowOutcome(row=2, outcome="invalid", code="N104", reason=str(cell or ""), masked_id=str(cell or ""),
                         citizen_key=None, province=None, commune=None, reason_vi=str(cell or ""))
    line = list(csv.reader(io.StringIO(outcome_csv([outcome])[3:].decode("utf-8"), newline="")))[1]
    assert line[3] == line[4] == line[5] == shown


@pytest.mark.parametrize(("number", "masked"), [
    ("001290012389", "0012******89"), ("0123456789", "01******89"), ("12345", "*** (5)"),
    ("=HYPERLINK(1)", "*** (13)"), ("", ""),
])
def test_ids_are_masked(number: str, masked: str) -> None:
    assert mask_id(number) == masked


def test_outcomes_rebuilt_by_the_workflow_read_their_reasons_from_the_codes() -> None:
    """The workflow keeps only row, outcome, code and masked id in its state; the Vietnamese comes back from code."""
    rebuilt = RowOutcome(row=3, outcome="not_matched", code="UNKNOWN_ID+UNKNOWN_SOCIAL_INSURANCE", reason="x",
                         masked_id="0012******89", citizen_key=None, province=None, commune=None)
    line = list(csv.reader(io.StringIO(outcome_csv([rebuilt])[3:].decode("utf-8"), newline="")))[1]
    assert line[5] == f"{RECONCILIATION['UNKNOWN_ID'][1]}; {RECONCILIATION['UNKNOWN_SOCIAL_INSURANCE'][1]}"
    assert codes.reasons("N102+N106") == f"{CODES['N102'].reason_en}; {CODES['N106'].reason_en}"


# ----------------------------------------------------------------------------------------- codes and docs

def test_every_code_is_stable_shaped_and_bilingual() -> None:
    for code, entry in CODES.items():
        assert re.fullmatch(r"N[0-3][0-9]{2}", code) and entry.code == code
        assert entry.reason_en.strip() and entry.reason_vi.strip() and entry.name.isupper()
        assert entry.scope in ("file", "row", "value", "finding", "note")
        series = code[1]
        assert series in "0123"
    assert set(RECONCILIATION) == set(REASONS)
    # the person checks are the same in both kinds
    for last in range(1, 9):
        assert CODES[f"N1{last:02d}"].name == CODES[f"N2{last:02d}"].name


def test_file_refusals_carry_their_code_and_both_reasons() -> None:
    with pytest.raises(FileRefused) as caught:
        prepare(b"", name="x.csv", kind=Kind.ENROLMENT)
    assert (caught.value.code, caught.value.reason) == ("N001", CODES["N001"].reason_en)
    assert caught.value.reason_vi == CODES["N001"].reason_vi and isinstance(caught.value, ValueError)
    assert caught.value.as_problem().row is None


def _docs() -> str:
    return (ROOT / "docs" / "enrolment.md").read_text(encoding="utf-8")


def test_the_docs_list_every_column_with_its_rule() -> None:
    text = _docs()
    for kind in Kind:
        for column in COLUMNS[kind]:
            line = f"| `{column.name}` | {'yes' if column.required else 'no'} | {column.holds} | {column.rule} |"
            assert line in text, line


def test_the_docs_list_every_code_with_its_reasons() -> None:
    text = _docs()
    for entry in CODES.values():
        line = f"| `{entry.code}` | {entry.name} | {entry.scope} | {entry.reason_en} | {entry.reason_vi} |"
        assert line in text, line
    for code, (english, vietnamese) in RECONCILIATION.items():
        assert f"| `{code}` | {english} | {vietnamese} |" in text


def test_the_docs_list_every_vaccine_and_the_sources() -> None:
    text = _docs()
    for vaccine in vaccines().values():
        line = (f"| `{vaccine.code}` | {vaccine.programme} | {vaccine.name_vi} | {vaccine.name_en} |"
                f"{' yes' if vaccine.assumption else ''} |")
        assert line in text, line
    assert "Thông tư 38/2017/TT-BYT" in text and "R4B" in text and "assumption" in text.lower()
    assert lookup(" bcg ") is not None and lookup("NOPE") is None
    assert all(v.name_vi and v.name_en and v.programme in ("TCMR", "COVID19") for v in vaccines().values())


def test_the_docs_leave_the_aws_section_to_the_workflow() -> None:
    text = _docs()
    assert "\n## On AWS\n" in text


def test_the_sample_events_read_cleanly() -> None:
    enrolment = prepare((ROOT / "events" / "enrolment-sample.csv").read_bytes(), name="enrolment-sample.csv",
                        kind=Kind.ENROLMENT)
    vaccination = prepare((ROOT / "events" / "vaccination-sample.ndjson").read_bytes(),
                          name="vaccination-sample.ndjson", kind=Kind.VACCINATION)
    for prepared in (enrolment, vaccination):
        assert prepared.problems == [] and prepared.rows == prepared.kept > 0
        for row in canonical_rows(prepared):
            checked = validate_row(row, prepared.kind, today=date(2026, 1, 5))
            assert checked.record is not None and not checked.findings
    readme = (ROOT / "events" / "README.md").read_text(encoding="utf-8")
    assert "`enrolment-sample.csv`" in readme and "`vaccination-sample.ndjson`" in readme
