"""Reports: periods, the builder on hand-set counters, and a hand-computable dataset committed through the real
DynamoDB adapters on moto, retries and duplicates included (docs/reports.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import pytest
from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.aws.records import DynamoRecords
from healthbook.aws.reports import DynamoCounters, counters_by_period
from healthbook.delivery.model import DeliveredEntry
from healthbook.ingest.model import PENDING, ROLL_UP_AFTER, SubmissionRecord, VisitRef, status_shard
from healthbook.kernel import iso_utc
from healthbook.reports.aggregates import citizen_markers, for_breach, for_reconciliation, is_rollup, period_high
from healthbook.reports.build import MarkerRange, Place, PopulationFigure, build_report, load_population
from healthbook.reports.job import period_for, report_prefix
from healthbook.reports.model import COLUMNS, Period, cell
from healthbook_dev.aws.sandbox import NAMES, SerialisedClient

REGION = "ap-southeast-1"
VN = timedelta(hours=7)


# --- periods ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "kind", "start", "end", "previous"), [
    ("2025-03", "month", date(2025, 3, 1), date(2025, 3, 31), "2025-02"),
    ("2024-02", "month", date(2024, 2, 1), date(2024, 2, 29), "2024-01"),
    ("2025-01", "month", date(2025, 1, 1), date(2025, 1, 31), "2024-12"),
    ("2025-H1", "half", date(2025, 1, 1), date(2025, 6, 30), "2024-H2"),
    ("2025-H2", "half", date(2025, 7, 1), date(2025, 12, 31), "2025-H1"),
    ("2025-03-01", "day", date(2025, 3, 1), date(2025, 3, 1), "2025-02-28"),
])
def test_periods_parse_with_their_bounds_and_the_one_before(text: str, kind: str, start: date, end: date,
                                                            previous: str) -> None:
    period = Period.parse(text)
    assert (period.kind, period.start, period.end, period.label) == (kind, start, end, text)
    assert period.previous().label == previous


@pytest.mark.parametrize("text", ["2025-13", "2025-H3", "2025-02-30", "25-03", "march", ""])
def test_bad_periods_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        Period.parse(text)


@pytest.mark.parametrize(("kind", "now", "expected"), [
    ("day", datetime(2025, 3, 1, 17, 30, tzinfo=UTC), "2025-03-01"),  # 00:30 on 2 March in Vietnam
    ("day", datetime(2025, 3, 1, 16, 59, tzinfo=UTC), "2025-02-28"),  # 23:59 on 1 March in Vietnam
    ("month", datetime(2024, 12, 31, 19, 0, tzinfo=UTC), "2024-12"),  # 02:00 on 1 January in Vietnam
    ("half", datetime(2025, 6, 30, 20, 0, tzinfo=UTC), "2025-H1"),  # 03:00 on 1 July in Vietnam
    ("half", datetime(2024, 12, 31, 20, 0, tzinfo=UTC), "2024-H2"),
])
def test_a_scheduled_run_reports_the_last_complete_period_on_vietnams_calendar(kind: str, now: datetime,
                                                                               expected: str) -> None:
    period = period_for({"kind": kind}, now)
    assert period.label == expected and period.kind == kind
    assert report_prefix(period) == f"reports/{kind}/{expected}/"


def test_a_rerun_names_its_period_and_anything_else_is_refused() -> None:
    assert period_for({"period": "2025-03", "kind": "day"}, datetime.now(UTC)).label == "2025-03"
    for event in ({}, {"kind": "week"}, {"period": 202503}):
        with pytest.raises(ValueError, match="expected"):
            period_for(event, datetime.now(UTC))


# --- the builder on counters set by hand -------------------------------------------------------------------

class DictCounters:
    """CounterSource over counter items {(scope, period): counters} and marker items {(partition, citizen): first
    day, or None for a period marker or a kept one from before first days}."""

    def __init__(self, items: dict[tuple[str, str], dict[str, int]],
                 markers: dict[tuple[str, str], str | None] | None = None) -> None:
        self.items = items
        self.markers = markers or {}
        self.reads: list[tuple[str, str, str]] = []
        self.counted: list[MarkerRange] = []
        self.calls = 0
        self.count_calls = 0

    def sum_many(self, ranges: Sequence[tuple[str, str, str]]) -> list[dict[str, int]]:
        self.calls += 1
        return [self.sum(*wanted) for wanted in ranges]

    def sum(self, scope: str, low: str, high: str) -> dict[str, int]:
        self.reads.append((scope, low, high))
        summed: dict[str, int] = {}
        for (item_scope, period), counters in self.items.items():
            if item_scope == scope and low <= period <= high:
                for name, value in counters.items():
                    summed[name] = summed.get(name, 0) + value
        return summed

    def count_many(self, wanted: Sequence[MarkerRange]) -> list[int]:
        self.count_calls += 1
        self.counted += wanted
        return [len({key for (partition, key), first in self.markers.items() if partition in (one.scope, *one.also)
                     and (one.days is None or (first is not None and one.days[0] <= first <= one.days[1]))})
                for one in wanted]


def citizens(partition: str, n: int, first_day: str | None = None) -> dict[tuple[str, str], str | None]:
    """``n`` marker items of one partition."""
    return {(partition, f"citizen#{partition}-{first_day}-{i}"): first_day for i in range(n)}


POPULATION = {"26": PopulationFigure("26", "Tỉnh Ví Dụ", 2_724_670, 2025, "test figure")}


def test_coverage_is_citizens_with_a_book_over_the_population_to_two_decimals() -> None:
    # the seeds' example: 369,164 citizens integrated = 13.55 % of 2,724,670 people
    source = DictCounters({("P#26", "D#2024-12-31"): {"new_citizens": 369_000},
                           ("P#26", "D#2025-03-31"): {"new_citizens": 164},
                           ("P#26", "D#2025-04-01"): {"new_citizens": 99}})  # after the period: not counted
    report = build_report(Period.parse("2025-03"), [Place("26001", "BV", "26")], source,
                          generated_at=datetime(2025, 4, 1, tzinfo=UTC), population=POPULATION)
    (province,) = report.level("province")
    assert province.citizens_with_book == 369_164 and province.population == 2_724_670
    assert province.coverage_pct == 13.55
    assert province.population_source == "test figure (2025)"


def test_across_the_upgrade_the_kept_figures_are_old_counters_plus_markers_with_a_first_day() -> None:
    """A stack upgraded in March 2025: its old kept markers have no first day and their citizens are in counter
    items of their days; the new ones carry a first day and no counter. Each citizen counts once."""
    # old markers (some of them: a range leaves them all out; their counters say how many there are)
    old = {**citizens("P#26#ALL", 3_690), **citizens("P#26#VISIT", 3_000), **citizens("P#26#BOOK", 690)}
    source = DictCounters({
        ("P#26", "D#2024-12-31#s03"): {"new_citizens": 369_000, "citizens_visited": 300_000, "books_created": 9},
        ("P#26", "D#2025-03-02#s11"): {"books_created": 68_991},  # an old list in the month, before the upgrade
        ("P#26", "D#2025-03-02"): {"citizens": 7},  # an old monthly count: the markers are read instead
    }, {**old, **citizens("P#26#ALL", 150, "D#2025-03-20"), **citizens("P#26#ALL", 14, "D#2025-03-31"),
        **citizens("P#26#ALL", 99, "D#2025-04-01"),  # after the period: not counted
        **citizens("P#26#VISIT", 120, "D#2025-03-20"), **citizens("P#26#BOOK", 30, "D#2025-03-21"),
        **citizens("P#26#BOOK", 5, "D#2025-02-27"),  # a book of February: not this month's
        **citizens("P#26#M#2025-03", 43)})  # old and new period markers alike
    report = build_report(Period.parse("2025-03"), [Place("26001", "BV", "26")], source,
                          generated_at=datetime(2025, 4, 1, tzinfo=UTC), population=POPULATION)
    (province,) = report.level("province")
    assert province.citizens_with_book == 369_164 and province.coverage_pct == 13.55
    assert province.books_with_visit == 300_120
    assert province.books_created == 68_991 + 30  # the old counters of the month's days, and the new markers
    assert province.current.citizens == 43  # every marker of the month's partition, whoever wrote it


class MarkerStore:
    """What DynamoVisitStatus.count_citizen does, in memory: a marker written if absent, a kept one's first day
    never moved."""

    def __init__(self) -> None:
        self.markers: dict[tuple[str, str], str | None] = {}

    def deliver(self, citizen: str, at: datetime, facility: str, province: str, *, district: str | None = None,
                commune: str | None = None) -> None:
        for marker in citizen_markers(citizen, at, facility=facility, province=province, district=district,
                                      commune=commune):
            self.markers.setdefault((marker.scope, marker.period), marker.first_day)


# Cần Thơ, Hậu Giang and Sóc Trăng became Thành phố Cần Thơ (code 92) on 1 July 2025.
MEKONG = [Place("92001", "BV Cần Thơ", "92", "916", "31117"), Place("93001", "BV Hậu Giang", "93", "930", "31342"),
          Place("94001", "BV Sóc Trăng", "94", "941", "31471"), Place("94002", "TYT", "94")]


def test_from_july_2025_reports_roll_up_by_commune_into_the_34_provinces() -> None:
    store = MarkerStore()
    june, july = datetime(2025, 6, 20, 3, tzinfo=UTC), datetime(2025, 7, 20, 3, tzinfo=UTC)
    store.deliver("a", june, "94001", "94", district="941")  # first seen in Sóc Trăng, before the reform
    store.deliver("b", june, "92001", "92", district="916")
    store.deliver("a", july, "92001", "92", commune="31117")  # and again in Cần Thơ, after it
    store.deliver("c", july, "93001", "93", commune="31342")
    store.deliver("c", july, "94001", "94", commune="31471")  # one citizen at two facilities of one province
    counters = {("F#92001", "D#2025-07-20"): {"files_received": 2, "delivered": 1},
                ("F#93001", "D#2025-07-20"): {"files_received": 1, "delivered": 1},
                ("F#94001", "D#2025-06-20"): {"files_received": 1, "delivered": 1},
                ("F#94001", "D#2025-07-20"): {"files_received": 1, "delivered": 1}}

    july_report = build_report(Period.parse("2025-07"), MEKONG, DictCounters(counters, store.markers),
                               generated_at=datetime(2025, 8, 1, tzinfo=UTC))
    assert july_report.levels == ("province", "commune", "facility") and not july_report.level("district")
    (province,) = july_report.level("province")
    assert (province.code, province.name, province.facilities) == ("92", "Thành phố Cần Thơ", 4)
    assert (province.current.files_received, province.current.delivered) == (4, 3)
    assert province.previous.files_received == 1  # the facilities' June, summed into today's province
    assert province.previous.citizens is None  # June's citizens were counted in the 63 provinces
    assert province.current.citizens == 2  # a and c, once each
    assert province.citizens_with_book == 3  # a, b, c: a counted once although seen in Sóc Trăng and Cần Thơ
    assert province.population == 4_199_824 and province.coverage_pct == 0.0
    communes = {row.code: row for row in july_report.level("commune")}
    assert list(communes) == ["92/31117", "92/31342", "92/31471", "92/?"]
    assert communes["92/31342"].current.citizens == 1 and communes["92/?"].current.citizens is None
    assert communes["92/31117"].name == "Xã/phường 31117"  # the commune list is not held (docs/reports.md)
    assert {row.code: row.province for row in july_report.level("facility")} == dict.fromkeys(
        ("92001", "93001", "94001", "94002"), "92")

    june_report = build_report(Period.parse("2025-06"), MEKONG, DictCounters(counters, store.markers),
                               generated_at=datetime(2025, 7, 1, tzinfo=UTC))
    assert june_report.levels == ("province", "district", "facility")
    provinces = {row.code: row for row in june_report.level("province")}
    assert {code: row.name for code, row in provinces.items()} == {
        "92": "Thành phố Cần Thơ", "93": "Tỉnh Hậu Giang", "94": "Tỉnh Sóc Trăng"}
    assert {code: row.citizens_with_book for code, row in provinces.items()} == {"92": 1, "93": 0, "94": 1}
    assert provinces["92"].population == 1_235_171  # Cần Thơ alone, 2019 census
    assert sorted(row.code for row in june_report.level("district")) == ["92/916", "93/930", "94/941", "94/?"]


def test_the_old_to_new_province_mapping_covers_the_63_and_names_the_34() -> None:
    from healthbook.standard import places

    before, after = places.provinces_on(date(2025, 6, 30)), places.provinces_on(date(2025, 7, 1))
    assert (len(before), len(after)) == (63, 34)
    assert {places.province_after(code) for code in before} == set(after)
    assert all(places.province_after(code) == code for code in after)  # idempotent: a new code is its own
    # the codes real 2026 exports carry (shared/spec/real-world-shapes.md) are among the 34
    assert {"92", "96", "79", "86", "91", "80", "52"} <= set(after)
    assert [places.province_after(c) for c in ("10", "72", "89", "64", "27")] == ["15", "80", "91", "52", "24"]
    assert {code for code in before if places.province_after(code) == "79"} == {"74", "77", "79"}
    assert set(load_population(after_reform=True)) == set(after)


def test_figures_roll_up_with_percentiles_from_the_summed_histograms_and_top_errors_ordered() -> None:
    source = DictCounters({
        ("F#01001", "D#2025-03-02"): {"files_received": 2, "files_rejected": 1, "visits_accepted": 1,
                                      "visits_rejected": 1, "error#E_B": 1, "error#E_A": 1, "delivered": 1,
                                      "finding#R309": 1, "finding#V201": 2,
                                      "delivered_in_time": 1, "latency#10": 1},
        ("F#01002", "D#2025-03-31"): {"files_received": 1, "visits_accepted": 3, "error#E_B": 1, "delivered": 3,
                                      "delivered_in_time": 2, "latency#60": 2, "latency#inf": 1, "breached": 1},
        ("F#01002", "D#2025-02-28"): {"files_received": 5, "delivered": 4, "delivered_in_time": 4},
        ("P#01", "M#2025-03"): {"citizens": 99},  # a count from before markers were counted: not read
    }, {**citizens("F#01001#M#2025-03", 1), **citizens("F#01002#M#2025-03", 2),
        **citizens("DIST#01#001#M#2025-03", 2), **citizens("P#01#M#2025-03", 2), **citizens("P#01#M#2025-02", 4)})
    places = [Place("01001", "A", "01", "001"), Place("01002", "B", "01", "001"), Place("01003", "C", "01")]
    report = build_report(Period.parse("2025-03"), places, source, generated_at=datetime.now(UTC),
                          population={})
    a, b, c = report.level("facility")
    assert (a.current.top_errors, b.current.top_errors) == ((("E_A", 1), ("E_B", 1)), (("E_B", 1),))
    assert (a.current.top_findings, b.current.top_findings) == ((("V201", 2), ("R309", 1)), ())
    assert (a.current.latency_p50_s, b.current.latency_p50_s, b.current.latency_p95_s) == (10, 60, math.inf)
    assert b.previous.files_received == 5 and b.previous.in_time_pct == 100.0 and b.previous.citizens == 0
    assert c.facilities_without_submission == ("01003",) and c.current.citizens == 0
    district, no_district = report.level("district")
    assert (district.code, district.facilities, district.current.citizens) == ("01/001", 2, 2)
    assert district.current.top_errors == (("E_B", 2), ("E_A", 1))
    assert district.current.in_time_pct == 75.0  # 3 of 4
    assert district.current.latency_p50_s == 60 and district.current.latency_p95_s == math.inf
    assert (no_district.code, no_district.current.citizens, no_district.facilities_without_submission) == (
        "01/?", None, ("01003",))
    (province,) = report.level("province")
    assert province.current.files_received == 3 and province.current.citizens == 2
    assert province.previous.citizens == 4 and province.previous.delivered == 4
    assert province.facilities == 3 and province.facilities_without_submission == ("01003",)
    assert province.population is None and province.coverage_pct is None and province.citizens_with_book == 0


def test_a_half_year_counts_a_citizen_of_several_months_once_with_the_half_year_markers_of_before() -> None:
    markers = dict.fromkeys([
        ("P34#79#M#2026-08", "citizen#a"), ("P34#79#M#2026-11", "citizen#a"), ("P34#79#M#2026-12", "citizen#c"),
        ("P34#79#S#2026-H2", "citizen#a"), ("P34#79#S#2026-H2", "citizen#b"),  # half-year markers of old
        ("P34#79#M#2026-06", "citizen#d"), ("P34#79#M#2026-01", "citizen#a"),  # the half-year before
        ("P34#48#M#2026-09", "citizen#e"),  # another province
        ("F#79001#M#2026-07", "citizen#a"), ("F#79001#M#2026-09", "citizen#a")])
    source = DictCounters({}, markers)
    report = build_report(Period.parse("2026-H2"), [Place("79001", "A", "79", commune="26734")], source,
                          generated_at=datetime.now(UTC), population={})
    (province,) = report.level("province")
    assert (province.current.citizens, province.previous.citizens) == (3, 2)  # a, b, c; d, a
    (facility,) = report.level("facility")
    assert (facility.current.citizens, facility.previous.citizens) == (1, 0)
    half = next(m for m in source.counted if m.scope == "P34#79#S#2026-H2")
    assert half.also == tuple(f"P34#79#M#2026-{month:02d}" for month in range(7, 13)) and half.wide
    assert not next(m for m in source.counted if m.scope == "F#79001#S#2026-H2").wide
    with pytest.raises(ValueError, match="one kept partition"):
        MarkerRange("P34#79#ALL", ("D#2026-07-01", "D#2026-12-31"), also=("P34#79#VISIT",))


def test_a_day_report_has_no_distinct_citizens_and_reads_each_range_once() -> None:
    source = DictCounters({("F#01001", "D#2025-03-02"): {"files_received": 1, "delivered": 1}})
    report = build_report(Period.parse("2025-03-02"), [Place("01001", "A", "01", "001")], source,
                          generated_at=datetime.now(UTC), population={})
    assert [row.current.citizens for row in report.rows] == [None, None, None]
    assert [row.current.delivered for row in report.rows] == [1, 1, 1]
    assert len(source.reads) == len(set(source.reads)) and source.calls == 1  # planned, then read at once
    assert len(source.counted) == len(set(source.counted)) and source.count_calls == 1
    assert all(wanted.days for wanted in source.counted)  # only the province's kept markers: no month partition


def test_every_column_reads_a_value_from_a_row() -> None:
    report = build_report(Period.parse("2025-03"), [Place("01001", "A", "01", "001")], DictCounters({}),
                          generated_at=datetime.now(UTC))
    for row in report.rows:
        values = {column.key: cell(row, column) for column in COLUMNS}
        assert values["code"] == row.code and values["files_received"] == 0
    assert {c.key for c in COLUMNS} >= {"in_time_pct", "latency_p95", "coverage_pct", "citizens", "breached"}


def test_the_shipped_population_table_names_its_source_for_every_figure() -> None:
    table = load_population()
    assert table["01"].population == 8_053_663 and table["79"].name == "Thành phố Hồ Chí Minh"
    for figure in table.values():
        assert figure.population > 100_000 and figure.year >= 2019 and figure.source


# --- a known dataset through the real adapters, on moto -----------------------------------------------------

def _submission(n: int, facility: str, at: datetime, *, accepted: int, total: int,
                errors: tuple[str, ...] = (), written_at: datetime | None = None) -> SubmissionRecord:
    return SubmissionRecord(
        submission_id=f"sub-{n}", facility=facility, received_at=at, object_key=f"inbox/{facility}/{n}.xml",
        version_id=None, content_sha256=None, size=100, status="REJECTED" if not accepted else "ACCEPTED",
        visits_total=total, visits_accepted=accepted, error_codes=errors, standards=(), receipt_key="r",
        quarantine_key=None, merkle_root=None, signing_key_id="k", written_at=written_at)


class Dataset:
    """March 2025 (and one February visit), events committed as ingest and delivery commit them."""

    def __init__(self, ddb: Any) -> None:
        self.records = DynamoRecords(ddb, submissions_table=NAMES["SUBMISSIONS_TABLE"],
                                     visits_table=NAMES["VISITS_TABLE"])
        self.status = DynamoVisitStatus(ddb, visits_table=NAMES["VISITS_TABLE"],
                                        aggregates_table=NAMES["AGGREGATES_TABLE"])
        self.ddb = ddb
        self.places = {"01001": ("01", "001"), "01002": ("01", "001"), "79001": ("79", "760"),
                       "79002": ("79", "760"), "48001": ("48", "")}

    def visit(self, facility: str, n: int) -> VisitRef:
        ref = VisitRef(f"{facility}#LK{n}", "2025-03-01T00:00:00Z#x")
        self.ddb.put_item(TableName=NAMES["VISITS_TABLE"], Item={
            "visit_id": {"S": ref.visit_id}, "version": {"S": ref.version}, "status": {"S": PENDING},
            "status_shard": {"S": status_shard(PENDING, ref.visit_id)}})
        return ref

    def deliver(self, ref: VisitRef, citizen: str, at: datetime, *, latency_s: int, late: bool = False,
                referral: bool = False) -> bool:
        province, district = self.places[ref.facility]
        self.status.count_citizen(citizen_markers(citizen, at, facility=ref.facility, province=province,
                                                  district=district or None))
        deadline = at - timedelta(seconds=1) if late else at + timedelta(hours=1)
        self.ddb.update_item(TableName=NAMES["VISITS_TABLE"], Key={"visit_id": {"S": ref.visit_id},
                                                                   "version": {"S": ref.version}},
                             UpdateExpression="SET deadline_at = :d", ExpressionAttributeValues={
                                 ":d": {"S": iso_utc(deadline)}})
        return self.status.mark_delivered(ref, delivered_at=at, latency_ms=latency_s * 1000, receipt_id="r",
                                          entry=DeliveredEntry("0" * 64, "0" * 64, "0" * 64), citizen_key=citizen,
                                          referral=referral)


def _vn(day: int, hour: int = 10, month: int = 3) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC) - VN


def test_a_known_dataset_with_retries_and_duplicates_reports_hand_computed_numbers(ddb: Any) -> None:
    data = Dataset(ddb)
    put = data.records.put_submission
    # 01001: three files; the first one retried twice (an SQS redelivery, a racing duplicate event)
    first = _submission(1, "01001", _vn(2), accepted=2, total=2)
    assert put(first) and not put(first) and not put(first)
    assert put(_submission(2, "01001", _vn(3), accepted=0, total=1, errors=("E_X", "E_Y")))
    assert put(_submission(3, "01001", _vn(4), accepted=1, total=2, errors=("E_X",)))
    assert put(_submission(4, "01002", _vn(5), accepted=1, total=1))
    assert put(_submission(5, "79001", _vn(6), accepted=1, total=1))
    assert put(_submission(6, "48001", _vn(20, month=2), accepted=1, total=1))  # February: the previous period
    # 00:30 on 1 April in Vietnam is April's, though it is still 31 March in UTC
    assert put(_submission(7, "01002", datetime(2025, 3, 31, 17, 30, tzinfo=UTC), accepted=1, total=1))

    v1, v2, v3 = data.visit("01001", 1), data.visit("01001", 2), data.visit("01001", 3)
    assert data.deliver(v1, "citizen-a", _vn(2, 11), latency_s=30)
    assert not data.deliver(v1, "citizen-a", _vn(2, 12), latency_s=3630)  # a duplicate execution: nothing
    assert data.deliver(v2, "citizen-a", _vn(3, 11), latency_s=90_000, late=True)  # the same citizen, late
    assert data.status.mark_breached(v3, error="Timeout", now=_vn(5), count=for_breach("01001", _vn(5)))
    assert not data.status.mark_breached(v3, error="Timeout", now=_vn(5), count=for_breach("01001", _vn(5)))
    v4 = data.visit("01002", 4)
    assert data.deliver(v4, "citizen-a", _vn(5, 11), latency_s=100, referral=True)  # a's second facility
    v5 = data.visit("79001", 5)
    assert data.status.mark_needs_reconciliation(v5, ["UNKNOWN_ID"], _vn(6),
                                                 count=for_reconciliation("79001", _vn(6), ["UNKNOWN_ID"]))
    v6 = data.visit("48001", 6)
    assert data.deliver(v6, "citizen-b", _vn(20, 11, month=2), latency_s=20)

    places = [Place(code, f"BV {code}", province, district) for code, (province, district) in data.places.items()]
    counters = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], submissions_table=NAMES["SUBMISSIONS_TABLE"],
                              visits_table=NAMES["VISITS_TABLE"])
    report = build_report(Period.parse("2025-03"), places, counters, generated_at=_vn(31, 23),
                          population=load_population())
    facility = {row.code: row for row in report.level("facility")}
    hn1 = facility["01001"].current
    assert (hn1.files_received, hn1.files_rejected, hn1.visits_accepted, hn1.visits_rejected) == (3, 1, 3, 2)
    assert hn1.top_errors == (("E_X", 2), ("E_Y", 1))
    assert (hn1.delivered, hn1.delivered_in_time, hn1.in_time_pct, hn1.breached, hn1.citizens) == (2, 1, 50.0, 1, 1)
    assert (hn1.latency_p50_s, hn1.latency_p95_s) == (30, math.inf)  # 30 s and 25 h
    hn2 = facility["01002"].current
    assert (hn2.files_received, hn2.delivered, hn2.referral_delivered, hn2.citizens) == (1, 1, 1, 1)
    assert facility["79001"].current.needs_reconciliation == 1
    assert facility["79002"].facilities_without_submission == ("79002",)
    assert facility["48001"].current.files_received == 0 and facility["48001"].previous.delivered == 1

    district = {row.code: row for row in report.level("district")}
    assert district["01/001"].current.citizens == 1  # citizen a, at two facilities of one district
    assert district["01/001"].current.delivered == 3 and district["01/001"].current.in_time_pct == 66.67
    assert (district["01/001"].current.latency_p50_s, district["01/001"].current.latency_p95_s) == (120, math.inf)
    assert district["48/?"].current.citizens is None  # no district on record: no marker counts it

    province = {row.code: row for row in report.level("province")}
    hanoi = province["01"]
    assert (hanoi.current.files_received, hanoi.current.visits_accepted, hanoi.current.delivered) == (4, 4, 3)
    assert (hanoi.current.breached, hanoi.current.citizens, hanoi.citizens_with_book) == (1, 1, 1)
    assert hanoi.population == 8_053_663 and hanoi.coverage_pct == 0.0
    assert province["79"].facilities_without_submission == ("79002",)
    assert province["79"].current.needs_reconciliation == 1 and province["79"].current.in_time_pct is None
    danang = province["48"]
    assert danang.current.citizens == 0 and danang.previous.citizens == 1 and danang.citizens_with_book == 1
    assert danang.facilities_without_submission == ("48001",)

    one_by_one = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], submissions_table=NAMES["SUBMISSIONS_TABLE"],
                                visits_table=NAMES["VISITS_TABLE"], workers=1)
    sequential = build_report(Period.parse("2025-03"), places, one_by_one, generated_at=_vn(31, 23),
                              population=load_population())
    assert sequential == report  # the parallel read changes nothing
    april = build_report(Period.parse("2025-04"), places, counters, generated_at=_vn(30, 23, month=4))
    assert {row.code: row.current.files_received for row in april.level("facility")}["01002"] == 1
    assert {row.code: row.citizens_with_book for row in april.level("province")} == {"01": 1, "48": 1, "79": 0}

    # Run on 2 April, the report rolls up every closed day it reads (March and February, each facility), and a
    # report read from those rollups is the same report.
    def rolling() -> DynamoCounters:
        # Its 32 readers write rollups while others query: moto is not thread-safe (DynamoDB is), so one at a time
        return DynamoCounters(SerialisedClient(ddb), NAMES["AGGREGATES_TABLE"],
                              submissions_table=NAMES["SUBMISSIONS_TABLE"], visits_table=NAMES["VISITS_TABLE"],
                              now=_vn(2, month=4))

    assert build_report(Period.parse("2025-03"), places, rolling(), generated_at=_vn(31, 23),
                        population=load_population()) == report
    assert len(_rollups(ddb)) == len(places) * (31 + 28)
    assert build_report(Period.parse("2025-03"), places, rolling(), generated_at=_vn(31, 23),
                        population=load_population()) == report


def _rollups(ddb: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(i["scope"]["S"], i["period"]["S"]): i for i in ddb.scan(TableName=NAMES["AGGREGATES_TABLE"])["Items"]
            if is_rollup(i["period"]["S"])}


def test_a_closed_day_is_rolled_up_once_and_a_late_file_counted_apart(ddb: Any) -> None:
    data = Dataset(ddb)
    put = data.records.put_submission
    assert put(_submission(1, "01001", _vn(2), accepted=1, total=1))
    assert put(_submission(2, "01001", _vn(4), accepted=0, total=1, errors=("E_X",)))
    assert data.deliver(data.visit("01001", 1), "citizen-a", _vn(2, 11), latency_s=30)
    tables = {"submissions_table": NAMES["SUBMISSIONS_TABLE"], "visits_table": NAMES["VISITS_TABLE"]}
    days = ("F#01001", "D#2025-03-02", period_high("D#2025-03-04"))
    expected = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*days)  # every item read, no clock
    assert expected["files_received"] == 2 and expected["delivered"] == 1 and _rollups(ddb) == {}

    # A second before 4 March closes (its end, then ROLL_UP_AFTER): 2 and 3 March are rolled up, the 3rd empty
    closes = datetime(2025, 3, 5, tzinfo=UTC) - VN + ROLL_UP_AFTER
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], now=closes - timedelta(seconds=1), **tables).sum(
        *days) == expected
    rollups = _rollups(ddb)
    assert set(rollups) == {("F#01001", "D#2025-03-02#r"), ("F#01001", "D#2025-03-03#r")}
    assert {name for name in rollups["F#01001", "D#2025-03-03#r"]} == {"scope", "period"}
    assert rollups["F#01001", "D#2025-03-02#r"]["files_received"] == {"N": "1"}
    assert rollups["F#01001", "D#2025-03-02#r"]["delivered"] == {"N": "1"}

    # A rolled-up day's rollup stands for its on-time items, which are no longer read: a reader without a clock
    # counts the same; and with no on-time item left, the rollup still counts it.
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*days) == expected
    # A rollup stands for both kinds: a reader of one kind, or of the counters alone, reads as it did before them
    files_only = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], submissions_table=NAMES["SUBMISSIONS_TABLE"])
    assert files_only.sum(*days) == {name: value for name, value in expected.items()
                                     if not name.startswith(("delivered", "latency#"))}
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"]).sum(*days) == {}
    assert counters_by_period(ddb.scan(TableName=NAMES["AGGREGATES_TABLE"])["Items"]) == {}
    ddb.delete_item(TableName=NAMES["SUBMISSIONS_TABLE"], Key={"submission_id": {"S": "sub-1"}})
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*days) == expected

    # A file of 2 March written two hours late (a backlog, a redrive) is in the late partition: counted, once,
    # by every reader, and never rolled up.
    assert put(_submission(3, "01001", _vn(2, 12), accepted=1, total=1, written_at=_vn(2, 14)))
    late = ddb.get_item(TableName=NAMES["SUBMISSIONS_TABLE"], Key={"submission_id": {"S": "sub-3"}})["Item"]
    assert late["facility_month"] == {"S": "01001#2025-03#late"}
    with_late = {**expected, "files_received": 3, "visits_accepted": 2}
    after = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], now=closes, **tables)
    assert after.sum(*days) == with_late  # 4 March rolled up now
    assert set(_rollups(ddb)) == {("F#01001", f"D#2025-03-0{n}#r") for n in (2, 3, 4)}
    assert after.sum(*days) == with_late
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*days) == with_late


class _RefusedRollups:
    """moto, but BatchWriteItem refused (a role without the grant) or, with ``unprocessed``, its last put left."""

    def __init__(self, ddb: Any, *, unprocessed: bool = False) -> None:
        self._ddb, self._unprocessed = ddb, unprocessed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddb, name)

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # boto3's keyword
        if not self._unprocessed:
            raise self._ddb.exceptions.ClientError({"Error": {"Code": "AccessDeniedException"}}, "BatchWriteItem")
        (table, puts), = RequestItems.items()
        self._ddb.batch_write_item(RequestItems={table: puts[:-1]})
        return {"UnprocessedItems": {table: puts[-1:]}}


def test_a_rollup_not_written_leaves_the_report_whole_and_its_day_read_again(ddb: Any,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    data = Dataset(ddb)
    assert data.records.put_submission(_submission(1, "01001", _vn(2), accepted=1, total=1))
    tables = {"submissions_table": NAMES["SUBMISSIONS_TABLE"], "visits_table": NAMES["VISITS_TABLE"]}
    days = ("F#01001", "D#2025-03-01", period_high("D#2025-03-03"))
    expected = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*days)
    refused = DynamoCounters(_RefusedRollups(ddb), NAMES["AGGREGATES_TABLE"], now=_vn(20), **tables)
    with caplog.at_level("WARNING"):
        assert refused.sum(*days) == expected
    assert (refused.days_read_by_item, refused.days_rolled_up) == (3, 0) and _rollups(ddb) == {}
    (warning,) = [record for record in caplog.records if record.getMessage() == "rollups not written"]
    assert (warning.__dict__["error"], warning.__dict__["days"]) == ("AccessDeniedException", 3)
    partly = DynamoCounters(_RefusedRollups(ddb, unprocessed=True), NAMES["AGGREGATES_TABLE"], now=_vn(20), **tables)
    assert partly.sum(*days) == expected and partly.days_rolled_up == 2  # 3 March left: read item by item again
    again = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], now=_vn(20), **tables)
    assert again.sum(*days) == expected and (again.days_read_by_item, again.days_rolled_up) == (1, 1)


def test_a_range_across_months_mixes_rollups_and_items_and_counts_each_file_once(ddb: Any) -> None:
    """Files on 27 February to 3 March; the days up to 1 March rolled up by a report of February, the rest read
    item by item; the late partitions of both months read whole; every reader adds up to the same."""
    from healthbook.aws.reports import _stretches

    data = Dataset(ddb)
    days = [(2, 27), (2, 28), (3, 1), (3, 2), (3, 3)]
    for n, (month, day_of) in enumerate(days):
        assert data.records.put_submission(_submission(n, "01001", _vn(day_of, month=month), accepted=1, total=1))
    # late: a file of 28 February written on 2 March, one of 2 March written the next day
    assert data.records.put_submission(_submission(10, "01001", _vn(28, month=2), accepted=0, total=2,
                                                   written_at=_vn(2, month=3)))
    assert data.records.put_submission(_submission(11, "01001", _vn(2, 9, month=3), accepted=1, total=1,
                                                   written_at=_vn(3, 9, month=3)))
    tables = {"submissions_table": NAMES["SUBMISSIONS_TABLE"], "visits_table": NAMES["VISITS_TABLE"]}
    whole = ("F#01001", "D#2025-02-27", period_high("D#2025-03-03"))
    expected = {"files_received": 7, "files_rejected": 1, "visits_accepted": 6, "visits_rejected": 2}
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*whole) == expected
    on_2_march = datetime(2025, 3, 2, tzinfo=UTC) - VN + ROLL_UP_AFTER  # 1 March has just closed
    february = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], now=on_2_march, **tables)
    assert february.sum("F#01001", "D#2025-02-01", period_high("D#2025-03-01")) == {**expected, "files_received": 4,
                                                                                    "visits_accepted": 3}
    assert len(_rollups(ddb)) == 29  # every day of February and 1 March, empty ones too
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*whole) == expected
    later = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], now=on_2_march + timedelta(days=5), **tables)
    assert later.sum(*whole) == expected and len(_rollups(ddb)) == 31
    assert DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"], **tables).sum(*whole) == expected
    assert list(_stretches([date(2025, 3, d) for d in (1, 2, 3, 7, 8, 10)])) == [
        (date(2025, 3, 1), date(2025, 3, 3)), (date(2025, 3, 7), date(2025, 3, 8)),
        (date(2025, 3, 10), date(2025, 3, 10))]
    assert list(_stretches([])) == []


def test_markers_expire_but_the_province_ever_marker_is_kept(ddb: Any) -> None:
    at = _vn(2)
    status = DynamoVisitStatus(ddb, visits_table=NAMES["VISITS_TABLE"], aggregates_table=NAMES["AGGREGATES_TABLE"])
    status.count_citizen(citizen_markers("k", at, facility="01001", province="01", district="001"))
    items = {(i["scope"]["S"], i["period"]["S"]): i for i in
             ddb.scan(TableName=NAMES["AGGREGATES_TABLE"])["Items"] if i["period"]["S"].startswith("citizen#")}
    # Before July 2025: facility, district and the 63-province unit by month, and "ever" in both the old province
    # and the merged one of the 34 (today's coverage), and "visited" in both (books with a visit).
    assert len(items) == 7
    ever = {(f"P{n}#01#{kind}", "citizen#k") for n in ("", "34") for kind in ("ALL", "VISIT")}
    assert all("expires_at" not in items[key] and items[key]["first_day"] == {"S": "D#2025-03-02"} for key in ever)
    expiring = [int(i["expires_at"]["N"]) for key, i in items.items() if key not in ever]
    assert expiring == [int(at.timestamp()) + 400 * 86400] * 3
    assert not [key for key, i in items.items() if key not in ever and "first_day" in i]
    assert all(set(i) <= {"scope", "period", "expires_at", "first_day"} for i in items.values())  # no counts


# --- the report function and the command, on moto ------------------------------------------------------------

def _registry_and_counters(ddb: Any, tmp_path: Any) -> None:
    from cryptography import x509
    from healthbook.aws.facilities import put_facility
    from healthbook_dev.pki import dev_pki

    pki = dev_pki(tmp_path / "pki")
    table = boto3.resource("dynamodb", region_name=REGION).Table(NAMES["FACILITIES_TABLE"])
    for code, district in (("01001", "001"), ("79001", None)):
        cert = x509.load_pem_x509_certificate(pki[code].read_bytes())
        put_facility(table, code, f"Bệnh viện {code}", code[:2], cert, district=district)
    records = DynamoRecords(ddb, submissions_table=NAMES["SUBMISSIONS_TABLE"], visits_table=NAMES["VISITS_TABLE"])
    assert records.put_submission(_submission(1, "01001", _vn(2), accepted=1, total=2, errors=("E_X",)))


def test_the_report_function_writes_every_file_under_the_period_and_a_rerun_replaces_them(
        ddb: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from healthbook_dev.aws.sandbox import LambdaContext, load_function

    _registry_and_counters(ddb, tmp_path)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="reports-test", CreateBucketConfiguration={"LocationConstraint": REGION})
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AGGREGATES_TABLE", NAMES["AGGREGATES_TABLE"])
    monkeypatch.setenv("SUBMISSIONS_TABLE", NAMES["SUBMISSIONS_TABLE"])
    monkeypatch.setenv("VISITS_TABLE", NAMES["VISITS_TABLE"])
    monkeypatch.setenv("FACILITIES_TABLE", NAMES["FACILITIES_TABLE"])
    monkeypatch.setenv("REPORTS_BUCKET", "reports-test")
    # The function's 32 readers write rollups while others query: moto is not thread-safe (DynamoDB is)
    from healthbook.aws import report_runtime

    real_client = report_runtime.client
    monkeypatch.setattr(report_runtime, "client", lambda name, **kwargs: SerialisedClient(real_client(name, **kwargs))
                        if name == "dynamodb" else real_client(name, **kwargs))
    app = load_function("report")
    context = LambdaContext(function_name="report")
    first, result = (app.lambda_handler({"period": "2025-03"}, context) for _ in range(2))  # a re-run: replaced
    assert result["period"] == "2025-03" and result["rows"] == 6  # 2 facilities, 2 districts, 2 provinces
    # The first run read March and February of each facility item by item and rolled them up; the re-run reads
    # their rollups only (what the log line tells ops).
    assert (first["days_read_by_item"], first["days_rolled_up"]) == (2 * (31 + 28), 2 * (31 + 28))
    assert (result["days_read_by_item"], result["days_rolled_up"]) == (0, 0)
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="reports-test")["Contents"])
    assert listed == [f"reports/month/2025-03/{name}" for name in
                      ("district.csv", "facility.csv", "province.csv", "report.html", "report.xlsx")]
    body = s3.get_object(Bucket="reports-test", Key="reports/month/2025-03/facility.csv")["Body"].read()
    assert body.startswith(b"\xef\xbb\xbf") and "Bệnh viện 01001".encode() in body
    with pytest.raises(ValueError, match="expected"):
        app.lambda_handler({"kind": "week"}, context)


def test_the_report_command_writes_the_files_and_prints_a_level(ddb: Any, tmp_path: Any,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from healthbook_dev.cli import main

    _registry_and_counters(ddb, tmp_path)
    common = ["--aggregates-table", NAMES["AGGREGATES_TABLE"], "--submissions-table", NAMES["SUBMISSIONS_TABLE"],
              "--visits-table", NAMES["VISITS_TABLE"],
              "--table", NAMES["FACILITIES_TABLE"], "--region", REGION]
    assert main(["report", "--period", "2025-03", "--out", str(tmp_path / "all"), *common]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "district.csv", "facility.csv", "province.csv", "report.html", "report.xlsx"]
    assert "Tháng 03/2025 (2025-03), province:" in out and "Files received" in out
    assert main(["report", "--period", "2025-03", "--level", "facility", "--out", str(tmp_path / "one"),
                 *common]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["facility.csv"]
    assert printed[2].split()[:4] == ["01001", "1", "1", "1"]  # code, files, visits accepted, rejected
    assert main(["report", "--period", "2025-13", "--out", str(tmp_path / "x"), *common]) == 2
    assert "YYYY-MM" in capsys.readouterr().err
    assert _rollups(ddb) == {}  # read access is enough: a person's report rolls nothing up


def test_the_demos_moto_shim_still_rolls_a_cancelled_transaction_back(ddb: Any) -> None:
    from healthbook_dev.aws.sandbox import moto_transactions_copy_tables_once

    table = NAMES["AGGREGATES_TABLE"]
    add = {"Update": {"TableName": table, "Key": {"scope": {"S": "F#01001"}, "period": {"S": "D#2025-03-01"}},
                      "UpdateExpression": "ADD n :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}}
    fails = {"Put": {"TableName": table, "Item": {"scope": {"S": "F#01001"}, "period": {"S": "D#2025-03-01"}},
                     "ConditionExpression": "attribute_not_exists(#p)", "ExpressionAttributeNames": {"#p": "period"}}}
    other = {"Update": {**add["Update"], "Key": {"scope": {"S": "F#01001"}, "period": {"S": "D#2025-03-02"}}}}
    with moto_transactions_copy_tables_once():
        ddb.transact_write_items(TransactItems=[add])
        with pytest.raises(ddb.exceptions.TransactionCanceledException):
            ddb.transact_write_items(TransactItems=[other, fails])
        ddb.transact_write_items(TransactItems=[add, other])
    items = {i["period"]["S"]: i["n"]["N"] for i in ddb.scan(TableName=table)["Items"]}
    assert items == {"D#2025-03-01": "2", "D#2025-03-02": "1"}


class _ScriptedDynamo:
    """Answers in turns: the first read and the first batch write each leave some keys unprocessed; an UpdateItem
    finds a marker written before first days (a writer of the old code racing this one) and refuses. Anything
    else (a transaction) is an AttributeError."""

    def __init__(self, old_markers: set[tuple[str, str]]) -> None:
        self.present: dict[tuple[str, str], dict[str, Any]] = {}
        self.old = set(old_markers)
        self.gets = self.batches = self.updates = 0

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        ((table, request),) = RequestItems.items()
        self.gets += 1
        keys = [(k["scope"]["S"], k["period"]["S"]) for k in request["Keys"]]
        answered, left = (keys[:2], keys[2:]) if self.gets == 1 else (keys, [])
        found = [{"scope": {"S": s}, "period": {"S": p}} for s, p in answered if (s, p) in self.present]
        unprocessed = {table: {**request, "Keys": [{"scope": {"S": s}, "period": {"S": p}} for s, p in left]}}
        return {"Responses": {table: found}, "UnprocessedKeys": unprocessed if left else {}}

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        ((table, writes),) = RequestItems.items()
        self.batches += 1
        done, left = (writes[:1], writes[1:]) if self.batches == 1 else (writes, [])
        for write in done:
            item = write["PutRequest"]["Item"]
            self.present[(item["scope"]["S"], item["period"]["S"])] = item
        return {"UnprocessedItems": {table: left} if left else {}}

    def update_item(self, **request: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        self.updates += 1
        key = (request["Key"]["scope"]["S"], request["Key"]["period"]["S"])
        assert request["ConditionExpression"] == "attribute_not_exists(#p) OR attribute_exists(#d)"
        if key in self.old:  # written by the old code since the read: there now, without a first day
            self.present[key] = {}
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "UpdateItem")
        self.present.setdefault(key, {"first_day": request["ExpressionAttributeValues"][":day"]})
        return {}


def test_markers_read_and_write_unprocessed_keys_again_and_make_no_transaction() -> None:
    markers = citizen_markers("k", _vn(2), facility="01001", province="01", district="001")
    old = {(m.scope, m.period) for m in markers if m.scope == "P#01#ALL"}
    dynamo = _ScriptedDynamo(old)
    store = DynamoVisitStatus(dynamo, visits_table="visits", aggregates_table="aggregates")
    store.count_citizen(markers)
    assert dynamo.gets == 2  # the read answered in two parts
    assert dynamo.batches == 2  # the six period markers: one written, five sent again
    assert dynamo.updates == 4  # the four kept markers, one each; the old one refused and left as it was
    assert set(dynamo.present) == {(m.scope, m.period) for m in markers}
    assert [key for key, item in dynamo.present.items() if "first_day" in item] == [
        (m.scope, m.period) for m in markers if m.first_day and (m.scope, m.period) not in old]
    store.count_citizen(markers)  # a repeat: one read finds them, nothing written
    assert (dynamo.gets, dynamo.batches, dynamo.updates) == (3, 2, 4)
