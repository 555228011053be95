"""Distinct citizens as marker items counted at report time (docs/reports.md): the writes a delivery and a
participant list make (no counter, no transaction), retries and races that must not count twice or move a first
day, the write units a first visit costs, and exact figures across the upgrade from the counted markers."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.aws.records import counter_update
from healthbook.aws.reports import DynamoCounters, markers_by_partition
from healthbook.reports.aggregates import (
    LEGACY_COUNTERS,
    CitizenMarker,
    CounterUpdate,
    book_markers,
    citizen_markers,
    day,
)
from healthbook.reports.build import Place, build_report
from healthbook.reports.model import Period
from healthbook_dev.aws.sandbox import NAMES

AGGREGATES = NAMES["AGGREGATES_TABLE"]
AT = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)  # 11:00 in Vietnam, 22 November 2026: the 34 provinces


class Recorded:
    """A DynamoDB client that notes each call, and can fail one (``crash_on``: the operation, its nth call) as a
    Lambda killed mid-step would leave things, or answer reads with nothing (``blind``: a racing delivery whose
    read came before the other one's writes)."""

    def __init__(self, client: Any, *, crash_on: tuple[str, int] | None = None, blind: bool = False) -> None:
        self._client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.crash_on = crash_on
        self.blind = blind

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(**request: Any) -> Any:
            self.calls.append((name, request))
            if self.crash_on and self.crash_on == (name, sum(1 for n, _ in self.calls if n == name)):
                raise RuntimeError("the function was stopped here")
            if name == "batch_get_item" and self.blind:
                return {"Responses": {}, "UnprocessedKeys": {}}
            return method(**request)

        return call

    def operations(self) -> Counter[str]:
        return Counter(name for name, _ in self.calls)

    def write_units(self) -> int:
        """What DynamoDB bills for the writes made: 1 WRU per KB of item written, twice that in a transaction
        (every item here is well under 1 KB)."""
        units = 0
        for name, request in self.calls:
            if name == "batch_write_item":
                units += sum(len(writes) for writes in request["RequestItems"].values())
            elif name in ("put_item", "update_item"):
                units += 1
            elif name == "transact_write_items":
                units += 2 * len(request["TransactItems"])
        return units


def _store(client: Any) -> DynamoVisitStatus:
    return DynamoVisitStatus(client, visits_table=NAMES["VISITS_TABLE"], aggregates_table=AGGREGATES)


def _markers(ddb: Any) -> dict[str, dict[str | None, int]]:
    return markers_by_partition(ddb.scan(TableName=AGGREGATES)["Items"])


def _first_day(ddb: Any, marker: CitizenMarker) -> str | None:
    item = ddb.get_item(TableName=AGGREGATES, Key={"scope": {"S": marker.scope}, "period": {"S": marker.period}})
    return item["Item"].get("first_day", {}).get("S")


def _visit(citizen: str, at: datetime = AT, facility: str = "79001") -> list[CitizenMarker]:
    return citizen_markers(citizen, at, facility=facility, province="79", district=None, commune="26734")


def test_a_first_visit_writes_its_five_markers_without_a_transaction_and_a_repeat_only_reads(ddb: Any) -> None:
    recorded = Recorded(ddb)
    _store(recorded).count_citizen(_visit("k1"))
    # One read, the three month markers in one batch, the two kept ones with their first day: 5 WRU, where one
    # transaction of the markers and their counter items cost 30 (2 WRU an item), and markers per half-year 8.
    assert recorded.operations() == {"batch_get_item": 1, "batch_write_item": 1, "update_item": 2}
    assert recorded.write_units() == 5
    assert len(recorded.calls[1][1]["RequestItems"][AGGREGATES]) == 3
    periods = {f"{scope}#M#2026-11": {None: 1} for scope in ("F#79001", "XA#79#26734", "P34#79")}
    assert _markers(ddb) == {**periods, "P34#79#ALL": {"D#2026-11-22": 1}, "P34#79#VISIT": {"D#2026-11-22": 1}}
    assert not [item for item in ddb.scan(TableName=AGGREGATES)["Items"] if not item["period"]["S"].startswith(
        "citizen#")]  # no counter item at all
    again = Recorded(ddb)
    _store(again).count_citizen(_visit("k1", AT + timedelta(days=2)))  # the same month: nothing new
    assert again.operations() == {"batch_get_item": 1} and again.write_units() == 0
    # The read is eventually consistent (half the read units): a marker it misses is only written again, and the
    # blind case below shows that counts nothing twice.
    assert [request["RequestItems"][AGGREGATES]["ConsistentRead"] for _, request in again.calls] == [False]


def test_a_citizen_delivered_twice_and_a_retry_after_a_crash_count_once_per_scope_and_period(ddb: Any) -> None:
    crashing = Recorded(ddb, crash_on=("update_item", 1))  # after the period markers, before the kept ones
    with pytest.raises(RuntimeError, match="stopped"):
        _store(crashing).count_citizen(_visit("k1"))
    assert set(_markers(ddb)) == {f"{scope}#M#2026-11" for scope in ("F#79001", "XA#79#26734", "P34#79")}
    retry = Recorded(ddb)
    _store(retry).count_citizen(_visit("k1"))  # the step's retry: reads what is there, writes the rest
    assert retry.operations() == {"batch_get_item": 1, "update_item": 2}
    _store(ddb).count_citizen(_visit("k1", AT + timedelta(hours=3)))  # delivered again (another visit)
    _store(ddb).count_citizen(_visit("k1", AT + timedelta(days=1), facility="79002"))  # at another facility
    counted = _markers(ddb)
    assert all(sum(days.values()) == 1 for days in counted.values()), counted
    assert set(counted) >= {"F#79002#M#2026-11", "P34#79#M#2026-11", "P34#79#ALL"}
    report = build_report(Period.parse("2026-11"), [Place("79001", "A", "79", commune="26734"),
                                                    Place("79002", "B", "79", commune="26734")],
                          DynamoCounters(ddb, AGGREGATES), generated_at=AT)
    assert [(row.code, row.current.citizens) for row in report.rows if row.level != "facility"] == [
        ("79/26734", 1), ("79", 1)]  # one citizen of the commune and the province, seen at two facilities
    assert [row.current.citizens for row in report.level("facility")] == [1, 1]
    (province,) = report.level("province")
    assert (province.citizens_with_book, province.books_with_visit) == (1, 1)


def test_a_kept_markers_first_day_stays_when_a_later_delivery_races_or_retries(ddb: Any) -> None:
    first = _visit("k1")
    _store(ddb).count_citizen(first)
    racing = Recorded(ddb, blind=True)  # read before the first delivery wrote: sees no marker, writes them all
    _store(racing).count_citizen(_visit("k1", AT + timedelta(days=1), facility="79002"))
    assert racing.operations()["update_item"] == 2
    _store(ddb).count_citizen(_visit("k1", AT + timedelta(days=2)))  # a retry, later
    _store(ddb).count_citizen(book_markers("k1", AT + timedelta(days=3), province="79", commune="26734"))
    kept = [m for m in first if m.first_day]
    assert [_first_day(ddb, m) for m in kept] == ["D#2026-11-22", "D#2026-11-22"]
    assert _markers(ddb)["P34#79#BOOK"] == {"D#2026-11-25": 1}  # the list's own marker: its own first day
    source = DynamoCounters(ddb, AGGREGATES)
    day_report = build_report(Period.parse("2026-11-23"), [Place("79001", "A", "79")], source, generated_at=AT)
    assert day_report.level("province")[0].citizens_with_book == 1  # by the 22nd, not moved to the 23rd
    before = build_report(Period.parse("2026-11-21"), [Place("79001", "A", "79")], source, generated_at=AT)
    assert before.level("province")[0].citizens_with_book == 0


def _old_count_citizen(ddb: Any, markers: list[CitizenMarker], at: datetime) -> None:
    """What count_citizen did before markers were counted: the missing markers put with no first day, each with
    its ADD (kept kinds: LEGACY_COUNTERS on the day; a period's: ``citizens`` on its period), in one
    transaction."""
    writes: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], Counter[str]] = {}
    for marker in markers:
        if ddb.get_item(TableName=AGGREGATES, Key={"scope": {"S": marker.scope},
                                                   "period": {"S": marker.period}}).get("Item"):
            continue
        item = {"scope": {"S": marker.scope}, "period": {"S": marker.period}}
        if marker.expires_at is not None:
            item["expires_at"] = {"N": str(marker.expires_at)}
        writes.append({"Put": {"TableName": AGGREGATES, "Item": item}})
        scope, kind = marker.scope.rsplit("#", 1)
        if kind in LEGACY_COUNTERS:
            counts.setdefault((scope, day(at)), Counter())[LEGACY_COUNTERS[kind]] += 1
        else:  # "<scope>#M#2026-10": the period is the last two parts
            scope, period_kind = scope.rsplit("#", 1)
            counts.setdefault((scope, f"{period_kind}#{kind}"), Counter())["citizens"] += 1
    shard = random.randrange(16)
    writes += [counter_update(AGGREGATES, CounterUpdate(scope, period, dict(deltas)), shard=shard)
               for (scope, period), deltas in counts.items()]
    if writes:
        ddb.transact_write_items(TransactItems=writes)


def test_coverage_books_with_a_visit_and_books_created_are_exact_across_the_upgrade(ddb: Any) -> None:
    october, november = datetime(2026, 10, 5, 3, tzinfo=UTC), datetime(2026, 11, 10, 3, tzinfo=UTC)

    def visit(citizen: str, at: datetime) -> list[CitizenMarker]:
        return citizen_markers(citizen, at, facility="92001", province="92", district=None, commune="31120")

    def book(citizen: str, at: datetime) -> list[CitizenMarker]:
        return book_markers(citizen, at, province="92", commune="31120")

    # Before the upgrade, the old code: o1 and o2 delivered to, then a list gives o3 and o1 a book.
    for citizen in ("o1", "o2"):
        _old_count_citizen(ddb, visit(citizen, october), october)
    for citizen in ("o3", "o1"):
        _old_count_citizen(ddb, book(citizen, october + timedelta(days=1)), october + timedelta(days=1))
    # After it: o3's first visit (its book was the list's), o1 again, n1 new; the list gives o2 and n2 a book.
    store = _store(ddb)
    for citizen in ("o3", "o1", "n1"):
        store.count_citizen(visit(citizen, november))
    for citizen in ("o2", "n2"):
        store.count_citizen(book(citizen, november + timedelta(days=2)))
    # o2 again, racing a writer of the old code that put its kept markers after this delivery read them: refused,
    # so they keep no first day and o2 stays counted by the old counter alone.
    raced = Recorded(ddb, blind=True)
    _store(raced).count_citizen(visit("o2", november + timedelta(days=3)))
    assert _markers(ddb)["P34#92#ALL"] == {None: 3, "D#2026-11-10": 1, "D#2026-11-12": 1}  # n1, n2 new

    source = DynamoCounters(ddb, AGGREGATES)
    places = [Place("92001", "BV Cần Thơ", "92", commune="31120")]

    def province(label: str) -> Any:
        (row,) = build_report(Period.parse(label), places, source, generated_at=november).level("province")
        return row

    oct_, nov = province("2026-10"), province("2026-11")
    assert (oct_.citizens_with_book, oct_.books_with_visit, oct_.books_created) == (3, 2, 2)  # o1-o3; o1, o2; o3, o1
    assert (nov.citizens_with_book, nov.books_with_visit, nov.books_created) == (5, 4, 2)  # + n1, n2; + o3, n1; o2, n2
    assert (oct_.current.citizens, nov.current.citizens, nov.previous.citizens) == (2, 4, 2)  # o1, o2; o1-o3, n1
    assert province("2026-H2").books_created == 4 and province("2026-H2").current.citizens == 4  # o1, o2, o3, n1


def test_a_kept_partition_is_counted_in_key_ranges_side_by_side_and_exactly(ddb: Any) -> None:
    """The coverage partitions grow to a province's residents: counted in 16 key ranges read side by side. Keys on a
    range's bound, below the first and above the last, and keys that are no HMAC at all are each counted once."""
    from healthbook.aws import reports
    from healthbook.reports.build import MarkerRange

    rng = random.Random(17)
    keys = [f"{rng.getrandbits(256):064x}" for _ in range(300)]
    keys += [bound.removeprefix("citizen#") for bound in reports._SPLIT_AT]  # exactly on the bounds
    keys += ["", "0", "A", "Z", "~", "é", "f" * 64 + "~", "k8"]  # outside the hex digits, either side
    days = [f"D#2026-11-{1 + n % 28:02d}" for n in range(len(keys))]
    for key, first_day in zip(keys, days, strict=True):
        ddb.put_item(TableName=AGGREGATES, Item={"scope": {"S": "P34#79#ALL"}, "period": {"S": f"citizen#{key}"},
                                                 "first_day": {"S": first_day}})
    queries: list[dict[str, Any]] = []
    counting = _Counting(ddb, queries)
    source = DynamoCounters(counting, AGGREGATES, workers=4)
    whole = MarkerRange("P34#79#ALL", ("D#0000-00-00", "D#2026-11-30"), wide=True)
    part = MarkerRange("P34#79#ALL", ("D#2026-11-03", "D#2026-11-09"), wide=True)
    assert source.count_many([whole, part]) == [len(keys), sum("D#2026-11-03" <= d <= "D#2026-11-09" for d in days)]
    ranges = [q for q in queries if ":k" not in q["ExpressionAttributeValues"]]
    assert len(ranges) == 2 * 16  # the key ranges, each one Query (one page each here)
    assert len(queries) - len(ranges) == 2 * 15  # and each shared bound read once, by a Query for its one key
    queries.clear()
    assert source.count(MarkerRange("P34#79#M#2026-11")) == 0 and len(queries) == 1  # a period: one Query


def test_a_half_year_merges_its_months_and_its_old_partition_by_key_range_page_by_page(ddb: Any) -> None:
    """A half-year's distinct citizens: its six month partitions and the half-year partition deliveries wrote
    before, merged in 16 key ranges. A citizen in several counts once; keys on a range's bound and outside the hex
    digits, once; other half-years and provinces, not at all. Pages of 7 items: the merge spans pages."""
    from healthbook.aws import reports
    from healthbook.reports.build import MarkerRange

    rng = random.Random(23)
    months = tuple(f"P34#79#M#2026-{month:02d}" for month in range(7, 13))
    keys = [f"{rng.getrandbits(256):064x}" for _ in range(200)]
    keys += [bound.removeprefix("citizen#") for bound in reports._SPLIT_AT] + ["", "0", "A", "~", "é"]
    in_months: dict[str, set[str]] = {month: set() for month in months}
    for n, key in enumerate(keys):
        for partition in rng.sample([*months, "P34#79#S#2026-H2"], k=1 + n % 4):
            in_months.get(partition, set()).add(key)
            ddb.put_item(TableName=AGGREGATES, Item={"scope": {"S": partition}, "period": {"S": f"citizen#{key}"}})
    for partition in ("P34#79#M#2026-06", "P34#79#M#2027-01", "P34#48#M#2026-09"):
        ddb.put_item(TableName=AGGREGATES, Item={"scope": {"S": partition}, "period": {"S": "citizen#elsewhere"}})
    queries: list[dict[str, Any]] = []
    source = DynamoCounters(_Counting(ddb, queries, limit=7), AGGREGATES, workers=4)
    half, july = MarkerRange("P34#79#S#2026-H2", also=months, wide=True), MarkerRange(months[0])
    assert source.count_many([half, july]) == [len(keys), len(in_months[months[0]])]
    assert {q["ExclusiveStartKey"]["scope"]["S"] for q in queries if "ExclusiveStartKey" in q} >= set(months)
    assert len({(q["ExpressionAttributeValues"][":s"]["S"], str(q["KeyConditionExpression"]),
                 str(q["ExpressionAttributeValues"].get(":lo")), str(q["ExpressionAttributeValues"].get(":hi")))
                for q in queries if "ExclusiveStartKey" not in q}) == 16 * 7 + 1
    queries.clear()  # a facility's or a commune's half-year: each partition read whole, once
    assert source.count(MarkerRange("P34#79#S#2026-H2", also=months)) == len(keys)
    assert {q["ExpressionAttributeValues"][":s"]["S"] for q in queries if "ExclusiveStartKey" not in q} == {
        *months, "P34#79#S#2026-H2"} and len([q for q in queries if "ExclusiveStartKey" not in q]) == 7


class _Counting:
    """The DynamoDB client, its Queries noted (and, with ``limit``, paged that small)."""

    def __init__(self, client: Any, queries: list[dict[str, Any]], limit: int | None = None) -> None:
        self._client, self._queries, self._limit = client, queries, limit

    def query(self, **kwargs: Any) -> Any:
        self._queries.append(dict(kwargs))
        if self._limit is not None:
            kwargs["Limit"] = self._limit
        return self._client.query(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
