"""Which counters each event adds, which distinct-citizen markers it sets, and how to read percentiles back
(docs/reports.md).

Pure: the adapters commit the counter deltas in the same DynamoDB transaction as the event's own conditional
write, so an event is counted exactly once however often it is retried; a marker is an item written once per
citizen, scope and period, and a report counts the items. A delivery is counted from its own item instead (since
2026-12-07): the report reads the delivered visits of a facility and day and adds ``for_delivery`` of each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from healthbook.kernel import PORTAL_TZ, SubmissionStatus
from healthbook.standard import places

# Upper bounds, in seconds, of the receipt -> VNeID latency buckets; beyond the last, "inf".
LATENCY_BUCKETS_S = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400)
LATENCY_PREFIX = "latency#"


def facility_scope(facility: str) -> str:
    return f"F#{facility}"


def district_scope(province: str, district: str) -> str:
    """A district of the 63 provinces, before 1 July 2025."""
    return f"DIST#{province}#{district}"


def commune_scope(province: str, commune: str) -> str:
    """A commune (xã/phường) of the 34 provinces, from 1 July 2025."""
    return f"XA#{province}#{commune}"


def province_scope(province: str, *, after_reform: bool = False) -> str:
    """A province of the units in force: the 63 ("P#01") before 1 July 2025, the 34 ("P34#01") after. Distinct
    prefixes, because a merged province keeps one old code: "92" was Cần Thơ alone and is now Cần Thơ, Hậu Giang
    and Sóc Trăng, and one's citizens must not count as the other's."""
    return f"{'P34' if after_reform else 'P'}#{province}"


def day(moment: datetime) -> str:
    """The Vietnam day of an event: a facility's day is its own, not UTC's."""
    return day_key(moment.astimezone(PORTAL_TZ).date())


def day_key(one: date) -> str:
    """The period key of a (Vietnam) day: ``D#2026-11-22``."""
    return f"D#{one:%Y-%m-%d}"


def month(moment: datetime) -> str:
    return month_key(moment.astimezone(PORTAL_TZ).date())


def month_key(day: date) -> str:
    """The period key of the (Vietnam) month holding ``day``: ``M#2026-11``."""
    return f"M#{day:%Y-%m}"


# Counter items are sharded (docs/reports.md, "Hot items" in docs/capacity.md): a transaction ADDs to one of
# ``shards`` items of its period, "<period>#s<nn>", and a reader sums every item from the period to
# period_high(period). The one place that knows the format; readers need not know the shard count, so it may change.
COUNTER_SHARDS = 16
MAX_COUNTER_SHARDS = 100  # two digits
_SHARD = "#s"
_ALL_SHARDS = _SHARD + "~"  # "~" sorts after every digit: the top of a period's shards


def shard_key(period: str, shard: int) -> str:
    """The sort key of shard ``shard`` of a counter period: ``D#2026-11-22`` → ``D#2026-11-22#s07``."""
    if not 0 <= shard < MAX_COUNTER_SHARDS:
        raise ValueError(f"counter shard {shard} outside 0..{MAX_COUNTER_SHARDS - 1}")
    return f"{period}{_SHARD}{shard:02d}"


# A facility's closed day rolled up (docs/reports.md, *Daily rollups*): what its files and deliveries count, in one
# item "D#2026-11-22#r", which sorts between the day's key and its shards ("#r" < "#s00"): a reader of the day's
# range adds it up with the counters, and knows from it that the day's on-time items need not be read.
_ROLLUP = "#r"


def rollup_key(period: str) -> str:
    """The sort key of a day's rollup item: ``D#2026-11-22`` → ``D#2026-11-22#r``."""
    return period + _ROLLUP


def is_rollup(key: str) -> bool:
    return key.endswith(_ROLLUP)


def unsharded(key: str) -> str:
    """The period of a counter item's sort key, sharded or not (items written before sharding have none), or of a
    day's rollup."""
    if is_rollup(key):
        return key.removesuffix(_ROLLUP)
    head, mark, tail = key.rpartition(_SHARD)
    return head if mark and len(tail) == 2 and tail.isdigit() else key


def period_high(period: str) -> str:
    """The upper bound (inclusive) of a key range that ends with ``period``: above all its shards, below the next
    period. ``D#2026-11-30#s03`` sorts after ``D#2026-11-30``, so the period itself would miss them."""
    return period + _ALL_SHARDS


def latency_bucket(milliseconds: int) -> str:
    seconds = max(0, milliseconds) / 1000
    for bound in LATENCY_BUCKETS_S:
        if seconds <= bound:
            return f"{LATENCY_PREFIX}{bound}"
    return f"{LATENCY_PREFIX}inf"


def percentile(counters: Mapping[str, int], q: float) -> float | None:
    """The upper bound (s) of the bucket where the cumulative count reaches q of the total; None when empty.

    An over-estimate by at most one bucket: a report never claims a better latency than the truth."""
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    buckets = [(float(b), counters.get(f"{LATENCY_PREFIX}{b}", 0)) for b in LATENCY_BUCKETS_S]
    buckets.append((math.inf, counters.get(f"{LATENCY_PREFIX}inf", 0)))
    total = sum(n for _, n in buckets)
    if total == 0:
        return None
    target = q * total
    seen = 0
    for bound, count in buckets:
        seen += count
        if seen >= target:
            return bound
    return math.inf  # unreachable: the last bucket completes the total


@dataclass(frozen=True)
class CounterUpdate:
    """ADD ``deltas`` to the counter item (scope, period)."""

    scope: str
    period: str
    deltas: dict[str, int] = field(default_factory=dict)


def for_submission(facility: str, received_at: datetime, *, status: str, visits_accepted: int, visits_total: int,
                   error_codes: Iterable[str], finding_codes: Iterable[str] = ()) -> CounterUpdate:
    """A recorded submission; ``error#<code>`` counts files carrying a code that rejected the file or kept a visit
    out of the health book, ``finding#<code>`` files carrying a finding (the submission keeps codes per file,
    never values). ``visits_accepted`` are the visits admitted to the health book."""
    deltas = {"files_received": 1, "visits_accepted": visits_accepted,
              "visits_rejected": visits_total - visits_accepted}
    if status == SubmissionStatus.REJECTED:
        deltas["files_rejected"] = 1
    for code in sorted(set(error_codes)):
        deltas[f"error#{code}"] = 1
    for code in sorted(set(finding_codes)):
        deltas[f"finding#{code}"] = 1
    return CounterUpdate(facility_scope(facility), day(received_at), {k: v for k, v in deltas.items() if v})


def for_delivery(facility: str, delivered_at: datetime, *, deadline_at: datetime, latency_ms: int,
                 referral: bool = False, reexam: bool = False) -> CounterUpdate:
    """What a delivered visit counts for its facility on its Vietnam day: the report adds it up from the delivered
    items (no counter item is written for a delivery; until 2026-12-07 one was, and those still add up)."""
    deltas = {"delivered": 1, latency_bucket(latency_ms): 1}
    if delivered_at <= deadline_at:
        deltas["delivered_in_time"] = 1
    if referral:
        deltas["referral_delivered"] = 1
    if reexam:
        deltas["reexam_delivered"] = 1
    return CounterUpdate(facility_scope(facility), day(delivered_at), deltas)


def for_reconciliation(facility: str, at: datetime, reasons: Iterable[str]) -> CounterUpdate:
    deltas = {"needs_reconciliation": 1}
    deltas.update({f"reconciliation#{reason}": 1 for reason in sorted(set(reasons))})
    return CounterUpdate(facility_scope(facility), day(at), deltas)


def for_breach(facility: str, at: datetime) -> CounterUpdate:
    return CounterUpdate(facility_scope(facility), day(at), {"breached": 1})


# Distinct citizens are counted when a report is built, as the number of marker items in a partition
# (docs/reports.md): a marker is written once per citizen, scope and period however often a delivery is retried, so
# no counter goes with it and no transaction is needed.
MARKER_PREFIX = "citizen#"  # a marker's sort key: "citizen#<citizen_key>"
# Period markers outlive the six-monthly report (and its re-runs) by a margin; kept markers have no TTL.
MARKER_TTL_DAYS = 400
# A half-year's distinct citizens are its months' markers, merged when the report counts them (docs/reports.md).
# Deliveries wrote a marker per half-year ("S#2026-H2") as well until 2026-12-06: the report merges those in too.
HALF_YEAR_MARKERS = "S#"
EVER = "ALL"  # the kept marker of a citizen with a health book, per province (coverage)
VISITED = "VISIT"  # the kept marker of a citizen with at least one visit delivered, per province
BOOK = "BOOK"  # the kept marker of a citizen whose book a participant list created, per province and commune
FIRST_DAY = "first_day"  # a kept marker's attribute: the Vietnam day ("D#YYYY-MM-DD") its citizen first got it
# Before kept markers carried first_day, each was counted by an ADD, on the day, in the transaction that put it.
# Those counter items stay, and the report adds them to the markers it counts that have a first_day.
LEGACY_COUNTERS = {EVER: "new_citizens", VISITED: "citizens_visited", BOOK: "books_created"}


def marker_scope(scope: str, period: str) -> str:
    """The partition of a scope's markers for a period (``M#2025-03``, ``S#2025-H1``) or a kept kind (``ALL``,
    ``VISIT``, ``BOOK``): ``P#01#M#2025-03``."""
    return f"{scope}#{period}"


@dataclass(frozen=True)
class CitizenMarker:
    """A citizen seen in a scope and period: the item (``scope``, ``period``), written if absent. A period marker
    expires; a kept marker carries the day its citizen first got it instead (docs/reports.md)."""

    scope: str  # the partition: "<counter scope>#<period or kind>", e.g. "P#01#M#2025-03", "P34#01#ALL"
    period: str  # "citizen#<citizen_key>"
    expires_at: int | None  # period markers: epoch seconds for the table's TTL; None for the kept ones
    first_day: str | None = None  # kept markers: the Vietnam day of the event ("D#YYYY-MM-DD"), never moved once set

    def __post_init__(self) -> None:
        if (self.expires_at is None) == (self.first_day is None):
            raise ValueError("a marker either expires (a period's) or is kept with its first day")


@dataclass(frozen=True)
class _Units:
    """The report units of an event on its Vietnam day: its district (before 1 July 2025) or commune (from then),
    its own province scope, and the province scopes whose "ever" marker it sets."""

    unit: str | None
    own: str
    evers: tuple[str, ...]


def _units(at: datetime, *, province: str, district: str | None, commune: str | None) -> _Units:
    """The one place the units in force are chosen (deliveries and participant lists alike). ``province`` as
    registered: a pre-reform code maps to its merged province after the reform; before it, the event also sets
    the merged province's "ever" marker, so today's coverage counts every citizen once."""
    after = places.after_reform(at.astimezone(PORTAL_TZ).date())
    current = places.province_after(province)
    if after:
        own = province_scope(current, after_reform=True)
        return _Units(commune_scope(current, commune) if commune else None, own, (own,))
    own = province_scope(province)
    return _Units(district_scope(province, district) if district else None, own,
                  (own, province_scope(current, after_reform=True)))


def _kept(scopes: Iterable[str], kind: str, marker: str, at: datetime) -> list[CitizenMarker]:
    return [CitizenMarker(marker_scope(scope, kind), marker, None, day(at)) for scope in scopes]


def citizen_markers(citizen_key: str, at: datetime, *, facility: str, province: str,
                    district: str | None, commune: str | None = None) -> list[CitizenMarker]:
    """The markers a delivery to ``citizen_key`` sets, in the units in force on its day: distinct citizens per
    month for the facility, its district (before 1 July 2025) or commune (from then) and province (a half-year's
    are its months', merged by the report: no marker of its own);
    the province's "ever" marker (citizens with a health book: coverage) and its "visited" marker (books with at
    least one visit; a book a participant list created sets only the first), both kept with their first day.
    ``province`` is the facility's code as registered (a pre-reform code maps to its merged province). A delivery
    before the reform also sets the merged province's kept markers, so today's coverage counts every citizen
    once, whenever the first visit was."""
    units = _units(at, province=province, district=district, commune=commune)
    expires = int(at.timestamp()) + MARKER_TTL_DAYS * 86400
    scopes = [scope for scope in (facility_scope(facility), units.unit, units.own) if scope]
    marker = f"{MARKER_PREFIX}{citizen_key}"
    markers = [CitizenMarker(marker_scope(scope, month(at)), marker, expires) for scope in scopes]
    return markers + _kept(units.evers, EVER, marker, at) + _kept(units.evers, VISITED, marker, at)


def book_markers(citizen_key: str, at: datetime, *, province: str, commune: str | None) -> list[CitizenMarker]:
    """The markers a participant-list row that created or changed a citizen's administrative section sets
    (docs/enrolment.md): a kept ``<scope>#BOOK`` marker for the province and the commune of residence, whose first
    day makes the books created in a period (a re-import or a retry adds no item), and the same province "ever"
    marker as :func:`citizen_markers`, so a citizen with a book from the list and later a visit counts once in
    coverage. Units as for a delivery on the same day (no district: lists carry none)."""
    units = _units(at, province=province, district=None, commune=commune)
    marker = f"{MARKER_PREFIX}{citizen_key}"
    books = [scope for scope in (units.own, units.unit) if scope]
    return _kept(books, BOOK, marker, at) + _kept(units.evers, EVER, marker, at)


def vaccination_count(province: str, at: datetime, n: int) -> CounterUpdate:
    """``n`` vaccination entries written to health books (created or updated), on the Vietnam day, for the
    province in force that day (a pre-reform code counts for its merged province after the reform)."""
    return CounterUpdate(_units(at, province=province, district=None, commune=None).own, day(at),
                         {"vaccinations_recorded": n})


def total(items: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum counter items (days into a month, facilities into a province)."""
    summed: dict[str, int] = {}
    for item in items:
        for name, value in item.items():
            summed[name] = summed.get(name, 0) + int(value)
    return summed
