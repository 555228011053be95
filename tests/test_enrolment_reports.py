"""The report figures of a participant list and of vaccination records (healthbook.reports.aggregates): books
created per province and commune, kept markers with the day first written, once per citizen; the province "ever"
marker the deliveries set, so coverage counts a citizen once; ``vaccinations_recorded``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.reports.aggregates import (
    EVER,
    MARKER_TTL_DAYS,
    VISITED,
    CounterUpdate,
    book_markers,
    citizen_markers,
    vaccination_count,
)
from healthbook.reports.build import MarkerRange
from healthbook_dev.aws.sandbox import NAMES

AFTER = datetime(2026, 1, 5, 2, 30, tzinfo=UTC)  # 09:30 on 5 January 2026 in Vietnam
BEFORE = datetime(2025, 3, 1, 23, 30, tzinfo=UTC)  # 06:30 on 2 March 2025 in Vietnam


def _plain(markers: list[Any]) -> set[tuple[str, str, int | None, str | None]]:
    return {(m.scope, m.period, m.expires_at, m.first_day) for m in markers}


def test_a_book_counts_per_province_and_commune_on_vietnams_day_and_sets_the_ever_marker() -> None:
    markers = book_markers("k1", AFTER, province="92", commune="31120")
    assert _plain(markers) == {
        ("P34#92#BOOK", "citizen#k1", None, "D#2026-01-05"),
        ("XA#92#31120#BOOK", "citizen#k1", None, "D#2026-01-05"),
        (f"P34#92#{EVER}", "citizen#k1", None, "D#2026-01-05"),
    }
    without_commune = book_markers("k1", AFTER, province="92", commune=None)
    assert {m.scope for m in without_commune} == {"P34#92#BOOK", "P34#92#ALL"}


def test_the_ever_marker_is_the_one_a_delivery_sets() -> None:
    """A citizen given a book by the list and later delivered a visit in the same province is one citizen."""
    book = {m.scope: m for m in book_markers("k2", AFTER, province="92", commune="31120")}
    later = AFTER + timedelta(days=40)
    delivery = {m.scope: m for m in citizen_markers("k2", later, facility="92001", province="92", district=None,
                                                    commune="31120")}
    ever = f"P34#92#{EVER}"
    assert (book[ever].scope, book[ever].period) == (delivery[ever].scope, delivery[ever].period)
    assert delivery[ever].expires_at is None and book[ever].expires_at is None


def test_a_pre_reform_code_counts_for_its_merged_province() -> None:
    markers = book_markers("k3", AFTER, province="93", commune="31471")  # Hậu Giang: part of Cần Thơ now
    assert {m.scope for m in markers} == {"P34#92#BOOK", "XA#92#31471#BOOK", "P34#92#ALL"}
    assert vaccination_count("93", AFTER, 4) == CounterUpdate("P34#92", "D#2026-01-05", {"vaccinations_recorded": 4})


def test_before_the_reform_the_units_are_the_63_provinces_as_for_a_delivery() -> None:
    markers = book_markers("k4", BEFORE, province="93", commune="31471")
    delivery_evers = {m.scope for m in citizen_markers("k4", BEFORE, facility="93001", province="93",
                                                       district=None) if m.scope.endswith(EVER)}
    assert {m.scope for m in markers if m.scope.endswith(EVER)} == delivery_evers == {"P#93#ALL", "P34#92#ALL"}
    assert {m.scope for m in markers if m.scope.endswith("#BOOK")} == {"P#93#BOOK"}  # no district on a list
    assert all(m.first_day == "D#2025-03-02" for m in markers)
    assert vaccination_count("93", BEFORE, 1).scope == "P#93"


def test_the_delivery_markers_are_unchanged() -> None:
    markers = citizen_markers("k5", BEFORE, facility="01001", province="01", district="001")
    expires = int(BEFORE.timestamp()) + MARKER_TTL_DAYS * 86400
    kept = "D#2025-03-02"
    assert {(m.scope, m.expires_at, m.first_day) for m in markers} == {
        ("F#01001#M#2025-03", expires, None), ("DIST#01#001#M#2025-03", expires, None),
        ("P#01#M#2025-03", expires, None), ("P#01#ALL", None, kept),
        ("P34#01#ALL", None, kept), ("P#01#VISIT", None, kept), ("P34#01#VISIT", None, kept)}


def test_a_book_from_a_list_is_not_a_book_with_a_visit() -> None:
    assert not {m.scope for m in book_markers("k8", AFTER, province="92", commune="31120")
                if m.scope.endswith(f"#{VISITED}")}
    visits = [m for m in citizen_markers("k8", AFTER, facility="92001", province="92", district=None,
                                         commune="31120") if m.scope.endswith(f"#{VISITED}")]
    assert _plain(visits) == {("P34#92#VISIT", "citizen#k8", None, "D#2026-01-05")}


def _counter(ddb: Any, scope: str, period: str) -> dict[str, int]:
    from healthbook.aws.reports import DynamoCounters

    return DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"]).period(scope, period)  # every shard of it, added up


def _marked(ddb: Any, partition: str, first: str | None = None, last: str | None = None) -> int:
    """The markers of a partition a report counts (with a day, the kept ones first written that day or in that
    range)."""
    from healthbook.aws.reports import DynamoCounters

    days = None if first is None else (first, last or first)
    return DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"]).count(MarkerRange(partition, days))


def test_committed_a_book_then_a_visit_count_the_citizen_once(ddb: Any) -> None:
    store = DynamoVisitStatus(ddb, visits_table=NAMES["VISITS_TABLE"], aggregates_table=NAMES["AGGREGATES_TABLE"])
    store.count_citizen(book_markers("k6", AFTER, province="92", commune="31120"))
    store.count_citizen(book_markers("k6", AFTER, province="92", commune="31120"))  # a retry, a re-import
    store.count_citizen(book_markers("k6", AFTER + timedelta(days=1), province="92", commune="31120"))  # updated
    later = AFTER + timedelta(days=3)
    store.count_citizen(citizen_markers("k6", later, facility="92001", province="92", district=None,
                                        commune="31120"))
    store.count_citizen(book_markers("k7", AFTER, province="92", commune=None))
    assert _counter(ddb, "P34#92", "D#2026-01-05") == {}  # no counter: the markers are the count
    assert (_marked(ddb, "P34#92#BOOK", "D#2026-01-05"), _marked(ddb, "P34#92#ALL", "D#2026-01-05")) == (2, 2)
    assert _marked(ddb, "XA#92#31120#BOOK", "D#2026-01-05") == 1
    assert _marked(ddb, "P34#92#ALL", "D#2026-01-06", "D#2026-01-31") == 0  # k6 kept its first day
    # the visit adds no new citizen (k6 is counted) but makes k6's book one with a visit
    assert _marked(ddb, "P34#92#VISIT", "D#2026-01-08") == _marked(ddb, "P34#92#VISIT") == 1
    assert _marked(ddb, "P34#92#M#2026-01") == 1  # the visit's monthly distinct citizen


def test_the_monthly_report_shows_the_books_and_vaccinations_of_the_provinces_lists(ddb: Any) -> None:
    from healthbook.aws.records import counter_update
    from healthbook.aws.reports import DynamoCounters
    from healthbook.reports.build import Place, build_report
    from healthbook.reports.model import Period, cell
    from healthbook.reports.render import COLUMN_BY_KEY

    store = DynamoVisitStatus(ddb, visits_table=NAMES["VISITS_TABLE"], aggregates_table=NAMES["AGGREGATES_TABLE"])
    for key in ("k1", "k2", "k3"):
        store.count_citizen(book_markers(key, AFTER, province="92", commune="31120"))
    store.count_citizen(book_markers("k1", AFTER + timedelta(days=40), province="92", commune="31120"))  # re-import
    ddb.transact_write_items(TransactItems=[counter_update(NAMES["AGGREGATES_TABLE"],
                                                           vaccination_count("92", AFTER, 7), shard=3)])
    source = DynamoCounters(ddb, NAMES["AGGREGATES_TABLE"])
    places = [Place("92001", "BV Cần Thơ", "92", None, "31120")]
    report = build_report(Period.month_of(AFTER.date()), places, source, generated_at=AFTER)
    (province,) = report.level("province")
    assert cell(province, COLUMN_BY_KEY["books_created"]) == 3
    assert cell(province, COLUMN_BY_KEY["vaccinations_recorded"]) == 7
    assert province.citizens_with_book == 3  # the books are citizens with a health book: coverage counts them
    assert cell(province, COLUMN_BY_KEY["books_with_visit"]) == 0  # none of them has had a visit yet
    (facility,) = report.level("facility")
    assert cell(facility, COLUMN_BY_KEY["books_created"]) is None  # a list belongs to a province, not a facility
    later = build_report(Period.month_of((AFTER + timedelta(days=40)).date()), places, source, generated_at=AFTER)
    assert cell(later.level("province")[0], COLUMN_BY_KEY["books_created"]) == 0  # the re-import created nothing

    visit_day = AFTER + timedelta(days=45)
    for key in ("k2", "k4"):  # k2 has a book from the list; k4's book begins with this visit
        store.count_citizen(citizen_markers(key, visit_day, facility="92001", province="92", district=None,
                                            commune="31120"))
    store.count_citizen(citizen_markers("k2", visit_day + timedelta(days=1), facility="92001", province="92",
                                        district=None, commune="31120"))  # a second visit: counted once
    after_visits = build_report(Period.month_of(visit_day.date()), places, source, generated_at=visit_day)
    (province,) = after_visits.level("province")
    assert (province.citizens_with_book, province.books_with_visit) == (4, 2)
    assert build_report(Period.month_of(AFTER.date()), places, source,
                        generated_at=visit_day).level("province")[0].books_with_visit == 0  # to date: not later
