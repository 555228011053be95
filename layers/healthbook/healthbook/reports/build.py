"""Build a Report from the counters (docs/reports.md): facility rows from their day items, district or commune and
province rows as sums of their facilities, distinct citizens as the number of markers in their own partitions (a
citizen seen at two facilities is one citizen of the province), coverage from the province's "ever" markers by
their first day. Pure: counters and marker counts come through a CounterSource."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from importlib import resources
from typing import Protocol

from healthbook.reports.aggregates import (
    BOOK,
    EVER,
    HALF_YEAR_MARKERS,
    LEGACY_COUNTERS,
    VISITED,
    commune_scope,
    day_key,
    district_scope,
    facility_scope,
    marker_scope,
    month_key,
    percentile,
    period_high,
    province_scope,
    total,
)
from healthbook.reports.model import Figures, Level, Period, Report, Row
from healthbook.standard import places

TOP_ERRORS = 5
_FIRST_DAY = "D#0000-00-00"


Range = tuple[str, str, str]  # (scope, lowest period key, highest period key: period_high, so every shard is in)


@dataclass(frozen=True)
class MarkerRange:
    """Distinct-citizen markers to count: every item of one marker partition (``scope``: ``P34#79#M#2026-11``,
    ``P34#79#ALL``), or with ``days`` only the kept markers whose first day lies in that inclusive range of day keys
    (``D#YYYY-MM-DD``). Markers written before first days existed have none, so a range leaves them out: their
    citizens are in counter items (LEGACY_COUNTERS). With ``also``, the distinct citizens of ``scope`` and those
    partitions together: a citizen marked in several is one (a half-year: its months). ``wide``: the partitions may
    hold up to a province's residents, so a source reads them in key ranges side by side (a province's)."""

    scope: str
    days: tuple[str, str] | None = None
    also: tuple[str, ...] = ()
    wide: bool = False

    def __post_init__(self) -> None:
        if self.days is not None and self.also:
            raise ValueError("a first-day range counts one kept partition, not several")


class CounterSource(Protocol):
    def sum_many(self, ranges: Sequence[Range]) -> list[dict[str, int]]:
        """For each range, the counters of the scope's items whose period key lies in [low, high], added up; in
        the order asked (an adapter may read them in parallel)."""
        ...

    def count_many(self, wanted: Sequence[MarkerRange]) -> list[int]:
        """For each, the number of marker items it names; in the order asked (an adapter may count them in
        parallel)."""
        ...


@dataclass(frozen=True)
class Place:
    """A registered facility, as the report sees it."""

    code: str
    name: str
    province: str  # as registered: a pre-reform code counts in its merged province from July 2025
    district: str = ""
    commune: str = ""


@dataclass(frozen=True)
class PopulationFigure:
    province: str
    name: str
    population: int
    year: int
    source: str


def load_population(*, after_reform: bool = False) -> dict[str, PopulationFigure]:
    """The reference table shipped with the package (reports/data/population.json): the 63 provinces' figures,
    or with ``after_reform`` the 34's."""
    text = resources.files("healthbook.reports").joinpath("data/population.json").read_text(encoding="utf-8")
    provinces = json.loads(text)["provinces_after_reform" if after_reform else "provinces"]
    return {code: PopulationFigure(code, str(entry["name"]), int(entry["population"]), int(entry["year"]),
                                   str(entry["source"])) for code, entry in provinces.items()}


def _months(period: Period) -> list[str]:
    first, keys = period.start, []
    while first <= period.end:
        keys.append(month_key(first))
        first = (first + timedelta(days=32)).replace(day=1)
    return keys


def _top(counters: Mapping[str, int], prefix: str) -> tuple[tuple[str, int], ...]:
    found = sorted(((name.removeprefix(prefix), int(value)) for name, value in counters.items()
                    if name.startswith(prefix) and value), key=lambda item: (-item[1], item[0]))
    return tuple(found[:TOP_ERRORS])


def figures(counters: Mapping[str, int], citizens: int | None) -> Figures:
    get = counters.get
    return Figures(
        files_received=get("files_received", 0), files_rejected=get("files_rejected", 0),
        visits_accepted=get("visits_accepted", 0), visits_rejected=get("visits_rejected", 0),
        top_errors=_top(counters, "error#"), top_findings=_top(counters, "finding#"),
        citizens=citizens, delivered=get("delivered", 0),
        delivered_in_time=get("delivered_in_time", 0), latency_p50_s=percentile(counters, 0.5),
        latency_p95_s=percentile(counters, 0.95), breached=get("breached", 0),
        needs_reconciliation=get("needs_reconciliation", 0), referral_delivered=get("referral_delivered", 0),
        reexam_delivered=get("reexam_delivered", 0))


def _days(scope: str, period: Period) -> Range:
    return scope, day_key(period.start), period_high(day_key(period.end))


def _citizens(scope: str, period: Period, *, province: bool = False) -> MarkerRange | None:
    """Distinct citizens of a scope in a month (every marker of its partition) or a half-year (its six months' and
    its own partition's, from before half-years had none, merged); days have none. Counter items named
    ``citizens`` (from before markers were counted) are not read: the markers they counted are in the partitions.
    A province's half-year is up to its residents six times over: ``wide``."""
    if period.kind == "month":
        return MarkerRange(marker_scope(scope, month_key(period.start)))
    if period.kind == "half":
        return MarkerRange(marker_scope(scope, f"{HALF_YEAR_MARKERS}{period.label}"),
                           also=tuple(marker_scope(scope, key) for key in _months(period)), wide=province)
    return None


def _to_date(scope: str, period: Period) -> Range:
    return scope, _FIRST_DAY, period_high(day_key(period.end))


def _kept(scope: str, kind: str, period: Period, *, to_date: bool) -> MarkerRange:
    """A province's kept markers of ``kind`` first given up to the period's end (``to_date``) or within it."""
    first = _FIRST_DAY if to_date else day_key(period.start)
    return MarkerRange(marker_scope(scope, kind), (first, day_key(period.end)), wide=True)


class _Counts:
    """Every range and marker count the report needs, each kind read in one call to the source (planned first, so
    a large registry is one parallel read, not thousands of sequential ones)."""

    def __init__(self, source: CounterSource, ranges: Sequence[Range], markers: Sequence[MarkerRange]) -> None:
        wanted = list(dict.fromkeys(ranges))
        self._read = dict(zip(wanted, source.sum_many(wanted), strict=True))
        counted = list(dict.fromkeys(markers))
        self._counted = dict(zip(counted, source.count_many(counted), strict=True))

    def __call__(self, scope: str, low: str, high: str) -> dict[str, int]:
        return self._read[(scope, low, high)]  # KeyError: a range the plan missed

    def markers(self, wanted: MarkerRange) -> int:
        return self._counted[wanted]  # KeyError: a count the plan missed

    def citizens(self, scope: str, period: Period, *, province: bool = False) -> int | None:
        wanted = _citizens(scope, period, province=province)
        return None if wanted is None else self.markers(wanted)

    def kept(self, scope: str, kind: str, period: Period, counters: Mapping[str, int], *, to_date: bool) -> int:
        """Citizens given a kept marker up to the period's end or within it: those counted by the counter items
        of their day before markers had first days (``counters``, read over the same days), plus the markers
        with a first day. No citizen is in both: the markers with a counter have no first day."""
        return counters.get(LEGACY_COUNTERS[kind], 0) + self.markers(_kept(scope, kind, period, to_date=to_date))


def build_report(period: Period, places_: Sequence[Place], source: CounterSource, *, generated_at: datetime,
                 population: Mapping[str, PopulationFigure] | None = None) -> Report:
    """The report in the units in force in ``period``: districts of the 63 provinces until June 2025, communes of
    the 34 from July 2025 (a facility registered under a pre-reform province code counts in its merged province).
    Facility figures carry over the reform; distinct citizens of a district or province do not, so a period whose
    previous one is in the other units shows no previous citizens for them."""
    after = period.after_reform
    population = load_population(after_reform=after) if population is None else population
    previous = period.previous()
    comparable = previous.after_reform == after
    names = places.provinces_on(period.start)

    def province_of(place: Place) -> str:
        return places.province_after(place.province) if after else place.province

    def unit_scope(province: str, unit: str) -> str | None:
        if not unit:
            return None  # facilities with no unit on record share one row; no marker counts them
        return commune_scope(province, unit) if after else district_scope(province, unit)

    by_unit: dict[tuple[str, str], list[Place]] = {}
    by_province: dict[str, list[Place]] = {}
    for place in places_:
        province = province_of(place)
        by_unit.setdefault((province, place.commune if after else place.district), []).append(place)
        by_province.setdefault(province, []).append(place)
    own = {province: province_scope(province, after_reform=after) for province in by_province}
    unit_scopes = {key: unit_scope(*key) for key in by_unit}

    plan: list[Range] = []
    # The provinces' kept markers first: the largest partitions, counted while the small ones fill the pool.
    counts: list[MarkerRange | None] = [_kept(scope, kind, period, to_date=True)
                                        for scope in own.values() for kind in (EVER, VISITED)]
    counts += [_kept(scope, BOOK, period, to_date=False) for scope in own.values()]
    for of in (period, previous):
        plan += [_days(facility_scope(p.code), of) for p in places_]
        if of is period or comparable:
            counts += [_citizens(scope, of, province=True) for scope in own.values()]
            counts += [_citizens(scope, of) for scope in unit_scopes.values() if scope]
        counts += [_citizens(facility_scope(p.code), of) for p in places_]
    plan += [_to_date(scope, period) for scope in own.values()]  # the kept markers' counts from before first days
    plan += [_days(scope, period) for scope in own.values()]  # vaccinations, and books counted before first days
    reader = _Counts(source, plan, [wanted for wanted in counts if wanted is not None])
    rows: list[Row] = []

    facility_counts: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for place in sorted(places_, key=lambda p: p.code):
        scope = facility_scope(place.code)
        now, before = reader(*_days(scope, period)), reader(*_days(scope, previous))
        facility_counts[place.code] = (now, before)
        current = figures(now, reader.citizens(scope, period))
        rows.append(Row("facility", place.code, place.name, province_of(place), current,
                        figures(before, reader.citizens(scope, previous)),
                        facilities_without_submission=() if current.files_received else (place.code,)))

    def grouped(members: Sequence[Place], level: Level, code: str, name: str, province: str,
                citizens_scope: str | None) -> Row:
        now = total(facility_counts[m.code][0] for m in members)
        before = total(facility_counts[m.code][1] for m in members)
        silent = tuple(sorted(m.code for m in members if not facility_counts[m.code][0].get("files_received")))
        wide = level == "province"
        citizens_now = reader.citizens(citizens_scope, period, province=wide) if citizens_scope else None
        citizens_before = (reader.citizens(citizens_scope, previous, province=wide) if citizens_scope and comparable
                           else None)
        return Row(level, code, name, province, figures(now, citizens_now), figures(before, citizens_before),
                   facilities=len(members), facilities_without_submission=silent)

    level: Level = "commune" if after else "district"
    # Within a province, the facilities with no unit on record come last.
    for (province, unit), members in sorted(by_unit.items(), key=lambda kv: (kv[0][0], not kv[0][1], kv[0])):
        rows.append(grouped(members, level, f"{province}/{unit or '?'}", _unit_name(level, unit), province,
                            unit_scopes[(province, unit)]))

    for province, members in sorted(by_province.items()):
        figure = population.get(province)
        scope = own[province]
        counters_to_date = reader(*_to_date(scope, period))
        counters_in_period = reader(*_days(scope, period))
        name = names.get(province) or (figure.name if figure else f"Tỉnh {province}")
        row = grouped(members, "province", province, name, province, scope)
        rows.append(replace(row,
                            citizens_with_book=reader.kept(scope, EVER, period, counters_to_date, to_date=True),
                            books_with_visit=reader.kept(scope, VISITED, period, counters_to_date, to_date=True),
                            books_created=reader.kept(scope, BOOK, period, counters_in_period, to_date=False),
                            vaccinations_recorded=counters_in_period.get("vaccinations_recorded", 0),
                            population=figure.population if figure else None,
                            population_source=f"{figure.source} ({figure.year})" if figure else None))
    return Report(period=period, generated_at=generated_at, rows=tuple(rows))


def _unit_name(level: Level, unit: str) -> str:
    if level == "commune":
        return (places.commune_name(unit) or f"Xã/phường {unit}") if unit else "Chưa xác định xã/phường"
    return unit or "Chưa xác định quận/huyện"
