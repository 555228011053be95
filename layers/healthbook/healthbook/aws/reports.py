"""The report job on AWS: counters from the ``aggregates`` table and, for files and deliveries, the items
themselves (the ``submissions`` table's ``by-facility-month`` index, the ``visits`` table's
``by-facility-delivered``); facilities from the registry; files to the reports bucket under the period
(docs/reports.md)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, TypeVar

from healthbook.aws.facilities import FacilitiesRepository
from healthbook.aws.settings import error_code
from healthbook.ingest.model import LATE, ROLL_UP_AFTER, facility_month
from healthbook.kernel import PORTAL_TZ, iso_utc, parse_time
from healthbook.reports.aggregates import (
    FIRST_DAY,
    MARKER_PREFIX,
    CounterUpdate,
    day_key,
    for_delivery,
    for_submission,
    is_rollup,
    period_high,
    rollup_key,
    unsharded,
)
from healthbook.reports.build import MarkerRange, Place, Range, build_report
from healthbook.reports.job import report_prefix
from healthbook.reports.model import Period, Report
from healthbook.reports.render import outputs

log = logging.getLogger(__name__)
_KEYS = {"scope", "period", "expires_at"}
# Queries in flight at once: a six-monthly report of a national registry is about 200,000 small Queries (a
# facility's half-year is seven partitions), each mostly a round trip; the client needs as many connections.
READERS = 32
_Wanted = TypeVar("_Wanted")
_Read = TypeVar("_Read")


def submission_count(item: Mapping[str, Any]) -> CounterUpdate:
    """What a file counts for its facility on its Vietnam day (``for_submission``), from its submission item or its
    ``by-facility-month`` entry as DynamoDB returns them."""
    return for_submission(item["facility_month"]["S"].split("#", 1)[0], parse_time(item["received_at"]["S"]),
                          status=item["status"]["S"], visits_accepted=int(item["visits_accepted"]["N"]),
                          visits_total=int(item["visits_total"]["N"]),
                          error_codes=item.get("error_codes", {}).get("SS", ()),
                          finding_codes=item.get("finding_codes", {}).get("SS", ()))


def delivery_count(item: Mapping[str, Any]) -> CounterUpdate:
    """What a delivered visit counts for its facility on its Vietnam day (``for_delivery``), from its item or its
    ``by-facility-delivered`` entry as DynamoDB returns them."""
    return for_delivery(item["delivered_month"]["S"].split("#", 1)[0], parse_time(item["delivered_at"]["S"]),
                        deadline_at=parse_time(item["deadline_at"]["S"]), latency_ms=int(item["latency_ms"]["N"]),
                        referral=item.get("referral", {}).get("BOOL", False),
                        reexam=item.get("reexam", {}).get("BOOL", False))


@dataclass(frozen=True)
class CountedItems:
    """Events counted from their own items since 2026-12-07, not from counter items: an index of a facility's items
    by Vietnam month (``key``: ``{facility}#{YYYY-MM}``) and time (``at``), and what each item counts. An event from
    before has a counter item instead and no entry here, so it is counted once, on either side of the change."""

    index: str
    key: str
    at: str
    count: Callable[[Mapping[str, Any]], CounterUpdate]
    late: bool  # whether an item may be written late, to its month's late partition (ingest.model.counted_month)


FILES = CountedItems("by-facility-month", "facility_month", "received_at", submission_count, late=True)
# A delivery's time is stamped in the attempt that writes it: never late, so no late partition to read.
DELIVERIES = CountedItems("by-facility-delivered", "delivered_month", "delivered_at", delivery_count, late=False)


class DynamoCounters:
    """healthbook.reports.build.CounterSource: one Query per scope and range, summed, and one Query per marker
    partition, counted; ``workers`` at a time (a national registry is thousands of facilities: sequential Queries
    would outlast the function's timeout). A range's items are every shard of its periods (and any item written
    before sharding): they all add up. A facility's days also add its files (the items of ``submissions_table``)
    and deliveries (of ``visits_table``), counted from the items themselves (``CountedItems``), unless the day is
    rolled up: then its rollup item, read with the counters, holds what they count (docs/reports.md, *Daily
    rollups*). With ``now`` (the run's clock) and both tables, each closed day read item by item is rolled up."""

    def __init__(self, dynamodb: Any, table: str, *, submissions_table: str | None = None,
                 visits_table: str | None = None, workers: int = READERS, now: datetime | None = None) -> None:
        self._db = dynamodb
        self.table = table
        self.counted = [(name, kind) for name, kind in ((submissions_table, FILES), (visits_table, DELIVERIES))
                        if name]
        self.workers = workers
        # A rollup stands for both kinds: only a reader of both reads one (another reads what it read before
        # rollups, the counters alone, or them and the items of its kind) or writes one.
        self.reads_rollups = len(self.counted) == 2
        self.rolls_up_at = now if self.reads_rollups else None
        # What the run did (its log line: a monthly report should read no day item by item)
        self.days_read_by_item = 0
        self.days_rolled_up = 0
        self._tally = threading.Lock()

    def sum_many(self, ranges: Sequence[Range]) -> list[dict[str, int]]:
        return self._each(lambda wanted: self.sum(*wanted), ranges)

    def count_many(self, wanted: Sequence[MarkerRange]) -> list[int]:
        """Each count; the ``wide`` ones (a province's kept markers, growing to one item per resident, and its
        half-year's months) in ``_SPLIT_AT`` key ranges read side by side, so the largest is not one long
        sequential Query."""
        parts = [(index, part) for index, one in enumerate(wanted)
                 for part in (_key_ranges(one) if one.wide else [_KeyRange(one)])]
        counted = [0] * len(wanted)
        for (index, _), count in zip(parts, self._each(lambda item: self._count_part(item[1]), parts), strict=True):
            counted[index] += count
        return counted

    def _each(self, read: Callable[[_Wanted], _Read], wanted: Sequence[_Wanted]) -> list[_Read]:
        if self.workers <= 1 or len(wanted) <= 1:
            return [read(one) for one in wanted]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:  # boto3 clients are thread-safe
            return list(pool.map(read, wanted))

    def period(self, scope: str, period: str) -> dict[str, int]:
        """One period's counters of a scope (``F#01001``, ``D#2026-11-22``), its shards added up."""
        return self.sum(scope, period, period_high(period))

    def sum(self, scope: str, low: str, high: str) -> dict[str, int]:
        kwargs: dict[str, Any] = {
            "TableName": self.table, "KeyConditionExpression": "#sc = :s AND #p BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": {"#sc": "scope", "#p": "period"},
            "ExpressionAttributeValues": {":s": {"S": scope}, ":lo": {"S": low}, ":hi": {"S": high}}}
        summed: dict[str, int] = {}
        rolled: set[date] = set()
        for page in self._pages(kwargs):
            for item in page.get("Items", []):
                if is_rollup(key := item["period"]["S"]):
                    if not self.reads_rollups or (rolled_day := _day(key)) is None:
                        continue
                    rolled.add(rolled_day)
                _add(summed, _counts(item))
        first, last = _day(low), _day(high)
        if scope.startswith("F#") and first is not None and last is not None and self.counted:
            _add(summed, self._items(scope.removeprefix("F#"), first, last, rolled))
        return summed

    def _items(self, facility: str, first: date, last: date, rolled: set[date]) -> dict[str, int]:
        """What the facility's files and deliveries from ``first`` to ``last`` (Vietnam days, inclusive) count,
        added up, but for the days ``rolled`` up (their rollup items hold it): per month, one Query of the on-time
        partition per stretch of days not rolled up and one of the late partition. The closed days read here are
        rolled up (``rolls_up_at``), so the next report reads one item for each."""
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        closing = self.rolls_up_at
        by_day: dict[date, dict[str, int]] = {
            one: {} for one in days if one not in rolled and closing is not None
            and closing >= datetime.combine(one + timedelta(days=1), time(), PORTAL_TZ) + ROLL_UP_AFTER}
        summed: dict[str, int] = {}
        for table, kind in self.counted:
            for month, stretch in itertools.groupby(days, key=lambda one: one.replace(day=1)):
                in_month = list(stretch)
                partition = facility_month(facility, datetime.combine(month, time(12), PORTAL_TZ))
                for low, high in _stretches([one for one in in_month if one not in rolled]):
                    for count in self._counted(table, kind, partition, low, high):
                        _add(summed, count.deltas)
                        if by_day and (counted_on := _day(count.period)) in by_day:
                            _add(by_day[counted_on], count.deltas)
                if kind.late:
                    for count in self._counted(table, kind, partition + LATE, in_month[0], in_month[-1]):
                        _add(summed, count.deltas)
        written = self._roll_up(facility, by_day) if by_day else 0
        with self._tally:
            self.days_read_by_item += sum(1 for one in days if one not in rolled)
            self.days_rolled_up += written
        return summed

    def _counted(self, table: str, kind: CountedItems, partition: str, first: date,
                 last: date) -> Iterator[CounterUpdate]:
        """What each item of an index partition counts, its time from ``first`` to ``last`` (Vietnam days)."""
        start = datetime.combine(first, time(), PORTAL_TZ)
        end = datetime.combine(last + timedelta(days=1), time(), PORTAL_TZ) - timedelta(seconds=1)
        kwargs: dict[str, Any] = {
            "TableName": table, "IndexName": kind.index,
            "KeyConditionExpression": "#k = :m AND #at BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": {"#k": kind.key, "#at": kind.at},
            "ExpressionAttributeValues": {":m": {"S": partition}, ":lo": {"S": iso_utc(start)},
                                          ":hi": {"S": iso_utc(end)}}}
        for page in self._pages(kwargs):
            for item in page.get("Items", []):
                yield kind.count(item)

    def _roll_up(self, facility: str, by_day: Mapping[date, Mapping[str, int]]) -> int:
        """One item per closed day, empty days too (so that no later report queries them); how many were written.
        Unconditional: a day is closed, so two runs write the same counts. Best effort: the report already holds
        the counts, so a put left unprocessed, or refused, only leaves its day to be read item by item again (a
        refusal is logged: the role's grant, say)."""
        scope = f"F#{facility}"
        puts = [{"PutRequest": {"Item": {
            "scope": {"S": scope}, "period": {"S": rollup_key(day_key(one))},
            **{name: {"N": str(value)} for name, value in counts.items()}}}} for one, counts in sorted(by_day.items())]
        written = 0
        for start in range(0, len(puts), 25):
            batch = puts[start:start + 25]
            try:
                response = self._db.batch_write_item(RequestItems={self.table: batch})
            except Exception as exc:
                log.warning("rollups not written", extra={"facility": facility, "days": len(batch),
                                                          "error": error_code(exc) or type(exc).__name__})
                continue
            written += len(batch) - len((response.get("UnprocessedItems") or {}).get(self.table, []))
        return written

    def count(self, wanted: MarkerRange) -> int:
        """The marker items of a partition (with ``days``, those whose first day lies in the range): Queries that
        return counts, not items. They still read every item of the partition (a filter applies after the read):
        docs/capacity.md has the read units and time for the largest. With ``also``, the distinct keys of every
        partition named, merged (_count_merged)."""
        return self.count_many([wanted])[0]

    def _count_part(self, part: _KeyRange) -> int:
        wanted = part.wanted
        if wanted.also:
            return self._count_merged(part)
        kwargs = self._query(wanted.scope, part)
        kwargs["Select"] = "COUNT"
        names, values = kwargs["ExpressionAttributeNames"], kwargs["ExpressionAttributeValues"]
        if wanted.days is not None:
            kwargs["FilterExpression"] = "#d BETWEEN :first AND :last"
            names["#d"] = FIRST_DAY
            values.update({":first": {"S": wanted.days[0]}, ":last": {"S": wanted.days[1]}})
        counted = sum(int(page.get("Count", 0)) for page in self._pages(kwargs))
        if part.shared is not None:  # the key two neighbouring ranges both hold: counted once, not twice
            # A Query for the one key, not a GetItem: the same read unit, and moto (the demo, the tests) adds a
            # missing partition to its table on a GetItem, under the Queries of the other readers.
            found = self._db.query(TableName=self.table, ConsistentRead=True,
                                   KeyConditionExpression="#sc = :s AND #p = :k",
                                   ExpressionAttributeNames={"#sc": "scope", "#p": "period"},
                                   ExpressionAttributeValues={":s": {"S": wanted.scope}, ":k": {"S": part.shared}})
            item = next(iter(found.get("Items", [])), None)
            if item is not None and (wanted.days is None or wanted.days[0] <= item.get(FIRST_DAY, {}).get(
                    "S", "") <= wanted.days[1]):
                counted -= 1
        return counted

    def _count_merged(self, part: _KeyRange) -> int:
        """The distinct keys of several partitions in one key range. A Query returns a partition's keys in order, so
        merging them counts each key once without holding them: memory is a page a partition, whatever the size."""
        streams = [self._keys(scope, part) for scope in (part.wanted.scope, *part.wanted.also)]
        counted, last = 0, None
        for key in heapq.merge(*streams):
            if key != last and key != part.shared:  # the shared bound is counted by the range after this one
                counted += 1
            last = key
        return counted

    def _keys(self, scope: str, part: _KeyRange) -> Iterator[str]:
        kwargs = self._query(scope, part)
        kwargs["ExpressionAttributeNames"]["#p"] = "period"
        kwargs["ProjectionExpression"] = "#p"
        for page in self._pages(kwargs):
            for item in page.get("Items", []):
                yield str(item["period"]["S"])

    def _query(self, scope: str, part: _KeyRange) -> dict[str, Any]:
        """A Query of the partition ``scope``, its sort keys within the part's range."""
        names: dict[str, str] = {"#sc": "scope"}
        values: dict[str, Any] = {":s": {"S": scope}}
        condition = "#sc = :s"
        if part.low is not None or part.high is not None:
            names["#p"] = "period"
            if part.low is not None and part.high is not None:
                condition += " AND #p BETWEEN :lo AND :hi"
                values.update({":lo": {"S": part.low}, ":hi": {"S": part.high}})
            elif part.low is not None:
                condition += " AND #p >= :lo"
                values[":lo"] = {"S": part.low}
            else:
                condition += " AND #p <= :hi"
                values[":hi"] = {"S": part.high}
        return {"TableName": self.table, "KeyConditionExpression": condition, "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values}

    def _pages(self, kwargs: dict[str, Any]) -> Iterable[dict[str, Any]]:
        while True:
            page: dict[str, Any] = self._db.query(**kwargs)
            yield page
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# A citizen key is an HMAC in hex, so a partition's markers spread evenly over the 16 first digits: its key space is
# cut there, each range counted by its own Query. Neighbouring ranges share their bound (BETWEEN is inclusive on
# both ends), so a marker whose key is exactly a bound is taken back once: exact whatever the keys.
_SPLIT_AT = tuple(MARKER_PREFIX + digit for digit in "123456789abcdef")


@dataclass(frozen=True)
class _KeyRange:
    """One Query's share of a marker count: sort keys from ``low`` to ``high`` (inclusive; None: unbounded), and
    ``shared``, the bound it shares with the range after it."""

    wanted: MarkerRange
    low: str | None = None
    high: str | None = None
    shared: str | None = None


def _key_ranges(wanted: MarkerRange) -> list[_KeyRange]:
    bounds: list[str | None] = [None, *_SPLIT_AT, None]
    return [_KeyRange(wanted, low, high, shared=high) for low, high in itertools.pairwise(bounds)]


def counted_by_day(items: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
    """Submission or visit items as DynamoDB returns them (a Scan's page, say): what the files and the delivered
    visits among them count, per facility scope and day, as ``counters_by_period`` gives the counter items', for
    the tests and the demos."""
    summed: dict[tuple[str, str], dict[str, int]] = {}
    for item in items:
        kind = next((kind for kind in (FILES, DELIVERIES) if kind.key in item), None)
        if kind is None:
            continue
        count = kind.count(item)
        _add(summed.setdefault((count.scope, count.period), {}), count.deltas)
    return summed


def _add(summed: dict[str, int], deltas: Mapping[str, int]) -> None:
    for name, value in deltas.items():
        summed[name] = summed.get(name, 0) + value


def _counts(item: Mapping[str, Any]) -> dict[str, int]:
    """A counter or rollup item's counts, as DynamoDB returns the item: its number attributes but the keys."""
    return {name: int(value["N"]) for name, value in item.items() if name not in _KEYS and "N" in value}


def _stretches(days: Sequence[date]) -> Iterator[tuple[date, date]]:
    """Consecutive days, as (first, last) of each run: ``[1, 2, 3, 7, 8]`` → (1, 3), (7, 8)."""
    for _, run in itertools.groupby(enumerate(days), key=lambda pair: pair[1] - timedelta(days=pair[0])):
        one = [each for _, each in run]
        yield one[0], one[-1]


def _day(key: str) -> date | None:
    """The day of a day key, sharded or a range's bound (``D#2026-11-30#s~``); None for anything else (a month
    key, the ``D#0000-00-00`` of a range from the beginning)."""
    if not key.startswith("D#"):
        return None
    try:
        return date.fromisoformat(key[2:12])
    except ValueError:
        return None


def counters_by_period(items: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
    """Counter items as DynamoDB returns them (a Scan's page, say), added up per scope and period across their
    shards; the distinct-citizen markers left out (their sort key is ``citizen#...``: markers_by_partition), and
    the days' rollups (what items counted: ``counted_by_day`` counts the items themselves)."""
    summed: dict[tuple[str, str], dict[str, int]] = {}
    for item in items:
        period = str(item["period"]["S"])
        if period.startswith(MARKER_PREFIX) or is_rollup(period):
            continue
        _add(summed.setdefault((str(item["scope"]["S"]), unsharded(period)), {}), _counts(item))
    return summed


def markers_by_partition(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str | None, int]]:
    """Marker items as DynamoDB returns them (a Scan's page, say), counted per partition (``P34#79#M#2026-11``) and
    first day (None: a period marker, or a kept one from before first days), for the tests and the demos."""
    counted: dict[str, dict[str | None, int]] = {}
    for item in items:
        if str(item["period"]["S"]).startswith(MARKER_PREFIX):
            first = item.get(FIRST_DAY, {}).get("S")
            days = counted.setdefault(str(item["scope"]["S"]), {})
            days[first] = days.get(first, 0) + 1
    return counted


def places(facilities_table: Any) -> list[Place]:
    """The registered facilities (``facilities_table``: a boto3 Table resource)."""
    return [Place(e.code, e.name, e.province, e.district, e.commune)
            for e in FacilitiesRepository(facilities_table).list_facilities()]


def build(period: Period, *, counters: DynamoCounters, facilities_table: Any, generated_at: datetime) -> Report:
    """The period's report from ``counters``: with a clock (the report function) the closed days it reads item by
    item are rolled up; without (a person's read-only credentials) it only reads, and the report is the same."""
    return build_report(period, places(facilities_table), counters, generated_at=generated_at)


def publish(report: Report, *, s3: Any, bucket: str) -> list[str]:
    """Write the report's files under its period's prefix, replacing a previous run's; the keys written."""
    prefix = report_prefix(report.period)
    keys = []
    for name, (body, content_type) in sorted(outputs(report).items()):
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=body, ContentType=content_type)
        keys.append(prefix + name)
    return keys
