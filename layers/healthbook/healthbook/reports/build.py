"""Build a Report from the counters (docs/reports.md): facility rows from their day items, district and province
rows as sums of their facilities, distinct citizens from their own marker counts (a citizen seen at two
facilities is one citizen of the province), coverage from the province's "ever" counts. Pure: the counters
come through a CounterSource."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from importlib import resources
from typing import Protocol

from healthbook.reports.aggregates import district_scope, facility_scope, percentile, province_scope, total
from healthbook.reports.model import Figures, Level, Period, Report, Row

TOP_ERRORS = 5
_FIRST_DAY = "D#0000-00-00"


Range = tuple[str, str, str]  # (scope, lowest period key, highest period key)


class CounterSource(Protocol):
    def sum_many(self, ranges: Sequence[Range]) -> list[dict[str, int]]:
        """For each range, the counters of the scope's items whose period key lies in [low, high], added up; in
        the order asked (an adapter may read them in parallel)."""
        ...


@dataclass(frozen=True)
class Place:
    """A registered facility, as the report sees it."""

    code: str
    name: str
    province: str
    district: str = ""


@dataclass(frozen=True)
class PopulationFigure:
    province: str
    name: str
    population: int
    year: int
    source: str


def load_population() -> dict[str, PopulationFigure]:
    """The reference table shipped with the package (reports/data/population.json)."""
    text = resources.files("healthbook.reports").joinpath("data/population.json").read_text(encoding="utf-8")
    provinces = json.loads(text)["provinces"]
    return {code: PopulationFigure(code, str(entry["name"]), int(entry["population"]), int(entry["year"]),
                                   str(entry["source"])) for code, entry in provinces.items()}


def _day_key(day: date) -> str:
    return f"D#{day.isoformat()}"


def _citizen_period(period: Period) -> str | None:
    """The marker period of distinct citizens: months and half-years have one, days do not."""
    if period.kind == "month":
        return f"M#{period.label}"
    if period.kind == "half":
        return f"S#{period.label}"
    return None


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
    return scope, _day_key(period.start), _day_key(period.end)


def _citizens(scope: str, period: Period) -> Range | None:
    marker = _citizen_period(period)
    return None if marker is None else (scope, marker, marker)


def _to_date(scope: str, period: Period) -> Range:
    return scope, _FIRST_DAY, _day_key(period.end)


class _Counts:
    """Every range the report needs, read in one call to the source (planned first, so a large registry is one
    parallel read, not thousands of sequential ones)."""

    def __init__(self, source: CounterSource, ranges: Sequence[Range]) -> None:
        wanted = list(dict.fromkeys(ranges))
        self._read = dict(zip(wanted, source.sum_many(wanted), strict=True))

    def __call__(self, scope: str, low: str, high: str) -> dict[str, int]:
        return self._read[(scope, low, high)]  # KeyError: a range the plan missed

    def citizens(self, scope: str, period: Period) -> int | None:
        wanted = _citizens(scope, period)
        return None if wanted is None else self(*wanted).get("citizens", 0)


def build_report(period: Period, places: Sequence[Place], source: CounterSource, *, generated_at: datetime,
                 population: Mapping[str, PopulationFigure] | None = None) -> Report:
    population = load_population() if population is None else population
    previous = period.previous()
    by_district: dict[tuple[str, str], list[Place]] = {}
    by_province: dict[str, list[Place]] = {}
    for place in places:
        by_district.setdefault((place.province, place.district), []).append(place)
        by_province.setdefault(place.province, []).append(place)

    plan: list[Range | None] = []
    for of in (period, previous):
        plan += [_days(facility_scope(p.code), of) for p in places]
        plan += [_citizens(facility_scope(p.code), of) for p in places]
        plan += [_citizens(district_scope(*key), of) for key in by_district if key[1]]
        plan += [_citizens(province_scope(province), of) for province in by_province]
    plan += [_to_date(province_scope(province), period) for province in by_province]
    reader = _Counts(source, [wanted for wanted in plan if wanted is not None])
    rows: list[Row] = []

    facility_counts: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for place in sorted(places, key=lambda p: p.code):
        scope = facility_scope(place.code)
        now, before = reader(*_days(scope, period)), reader(*_days(scope, previous))
        facility_counts[place.code] = (now, before)
        current = figures(now, reader.citizens(scope, period))
        rows.append(Row("facility", place.code, place.name, place.province, current,
                        figures(before, reader.citizens(scope, previous)),
                        facilities_without_submission=() if current.files_received else (place.code,)))

    def grouped(members: Sequence[Place], level: Level, code: str, name: str, province: str,
                citizens_scope: str | None) -> Row:
        now = total(facility_counts[m.code][0] for m in members)
        before = total(facility_counts[m.code][1] for m in members)
        silent = tuple(sorted(m.code for m in members if not facility_counts[m.code][0].get("files_received")))

        def citizens(of: Period) -> int | None:
            return reader.citizens(citizens_scope, of) if citizens_scope else None

        return Row(level, code, name, province, figures(now, citizens(period)), figures(before, citizens(previous)),
                   facilities=len(members), facilities_without_submission=silent)

    # Within a province, the facilities with no district on record come last.
    for (province, district), members in sorted(by_district.items(), key=lambda kv: (kv[0][0], not kv[0][1], kv[0])):
        # Facilities with no district on record share one row per province; no marker counts them.
        rows.append(grouped(members, "district", f"{province}/{district or '?'}",
                            district or "Chưa xác định quận/huyện", province,
                            district_scope(province, district) if district else None))

    for province, members in sorted(by_province.items()):
        figure = population.get(province)
        scope = province_scope(province)
        with_book = reader(*_to_date(scope, period)).get("new_citizens", 0)
        row = grouped(members, "province", province, figure.name if figure else f"Tỉnh {province}", province, scope)
        rows.append(replace(row, citizens_with_book=with_book, population=figure.population if figure else None,
                            population_source=f"{figure.source} ({figure.year})" if figure else None))
    return Report(period=period, generated_at=generated_at, rows=tuple(rows))
