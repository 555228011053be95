"""What a report holds: its period, one row per facility, district (before 1 July 2025) or commune (from then) and
province, and the columns every output (CSV, XLSX, HTML) shows, with Vietnamese headers (English in docs/reports.md).
Pure data, no AWS."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal

from healthbook.standard import places

PeriodKind = Literal["day", "month", "half"]
Level = Literal["facility", "district", "commune", "province"]
LEVELS: tuple[Level, ...] = ("facility", "district", "commune", "province")
LEVEL_NAMES_VI = {"facility": "Cơ sở KCB", "district": "Quận/huyện", "commune": "Xã/phường",
                  "province": "Tỉnh/thành phố"}

_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_HALF = re.compile(r"(\d{4})-H([12])")


@dataclass(frozen=True, order=True)
class Period:
    """A reporting period in Vietnam time: a day (2025-03-14), a month (2025-03) or a half-year (2025-H1)."""

    kind: PeriodKind
    start: date
    end: date  # inclusive

    @classmethod
    def parse(cls, text: str) -> Period:
        """``YYYY-MM-DD``, ``YYYY-MM`` or ``YYYY-H1|H2``; ValueError naming the forms otherwise."""
        text = text.strip()
        try:
            if match := _DAY.fullmatch(text):
                day = date(int(match[1]), int(match[2]), int(match[3]))
                return cls("day", day, day)
            if match := _MONTH.fullmatch(text):
                return cls.month_of(date(int(match[1]), int(match[2]), 1))
            if match := _HALF.fullmatch(text):
                return cls.half_of(date(int(match[1]), 1 if match[2] == "1" else 7, 1))
        except ValueError:
            pass
        raise ValueError(f"period {text!r}: expected YYYY-MM-DD (day), YYYY-MM (month) or YYYY-H1/YYYY-H2 (half-year)")

    @classmethod
    def month_of(cls, day: date) -> Period:
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return cls("month", first, following - timedelta(days=1))

    @classmethod
    def half_of(cls, day: date) -> Period:
        if day.month <= 6:
            return cls("half", date(day.year, 1, 1), date(day.year, 6, 30))
        return cls("half", date(day.year, 7, 1), date(day.year, 12, 31))

    @classmethod
    def last_complete(cls, kind: PeriodKind, today: date) -> Period:
        """The period a scheduled run on ``today`` (Vietnam date) reports: the last one that has ended."""
        if kind == "day":
            yesterday = today - timedelta(days=1)
            return cls("day", yesterday, yesterday)
        if kind == "month":
            return cls.month_of(today.replace(day=1) - timedelta(days=1))
        return cls.half_of(cls.half_of(today).start - timedelta(days=1))

    @property
    def label(self) -> str:
        if self.kind == "day":
            return self.start.isoformat()
        if self.kind == "month":
            return f"{self.start:%Y-%m}"
        return f"{self.start.year}-H{1 if self.start.month == 1 else 2}"

    @property
    def label_vi(self) -> str:
        if self.kind == "day":
            return f"Ngày {self.start:%d/%m/%Y}"
        if self.kind == "month":
            return f"Tháng {self.start:%m/%Y}"
        return f"{'6 tháng đầu' if self.start.month == 1 else '6 tháng cuối'} năm {self.start.year}"

    def previous(self) -> Period:
        before = self.start - timedelta(days=1)
        if self.kind == "day":
            return Period("day", before, before)
        return Period.month_of(before) if self.kind == "month" else Period.half_of(before)

    @property
    def after_reform(self) -> bool:
        """Whether the period counts in the 34 provinces and their communes (from 1 July 2025; periods do not
        straddle that day: it starts a month and a half-year)."""
        return places.after_reform(self.start)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Figures:
    """One row's numbers for one period. ``None`` where a figure does not exist (no deliveries, no latency,
    distinct citizens for a day)."""

    files_received: int = 0
    files_rejected: int = 0
    visits_accepted: int = 0  # admitted to the health book (findings allowed)
    visits_rejected: int = 0  # not admitted: their file rejected, or a reason of their own
    top_errors: tuple[tuple[str, int], ...] = ()  # (blocking code, files carrying it), most frequent first
    top_findings: tuple[tuple[str, int], ...] = ()  # (finding code, files carrying it), most frequent first
    citizens: int | None = None  # distinct citizens delivered in the period
    delivered: int = 0
    delivered_in_time: int = 0
    latency_p50_s: float | None = None  # receipt -> VNeID, bucket upper bounds (docs/reports.md)
    latency_p95_s: float | None = None
    breached: int = 0
    needs_reconciliation: int = 0
    referral_delivered: int = 0
    reexam_delivered: int = 0

    @property
    def in_time_pct(self) -> float | None:
        return round(100 * self.delivered_in_time / self.delivered, 2) if self.delivered else None


@dataclass(frozen=True)
class Row:
    """A facility, a district or commune, or a province, for the period and the one before."""

    level: Level
    code: str  # MACSKCB, "<province>/<district or commune>" or the province code
    name: str
    province: str  # province code
    current: Figures
    previous: Figures
    facilities: int = 1  # facilities in the registry under this row
    facilities_without_submission: tuple[str, ...] = ()  # their codes, for the period
    population: int | None = None  # province rows with a reference figure only
    population_source: str | None = None
    citizens_with_book: int | None = None  # distinct citizens delivered since the start, up to the period's end
    books_with_visit: int | None = None  # province rows: citizens with at least one visit delivered, to date
    books_created: int | None = None  # province rows: books a participant list created in the period
    vaccinations_recorded: int | None = None  # province rows: vaccination entries written in the period

    @property
    def coverage_pct(self) -> float | None:
        if not self.population or self.citizens_with_book is None:
            return None
        return round(100 * self.citizens_with_book / self.population, 2)


@dataclass(frozen=True)
class Report:
    period: Period
    generated_at: datetime
    rows: tuple[Row, ...] = field(default_factory=tuple)

    @property
    def previous(self) -> Period:
        return self.period.previous()

    @property
    def levels(self) -> tuple[Level, ...]:
        """The levels of the units in force in the period, top-down (what a reader looks at first)."""
        return ("province", "commune" if self.period.after_reform else "district", "facility")

    def level(self, level: Level) -> list[Row]:
        return [row for row in self.rows if row.level == level]


@dataclass(frozen=True)
class Column:
    """One column of every output. ``value`` names a Row attribute, or ``current.<figure>``/``previous.<figure>``;
    ``kind`` says how to format it."""

    key: str
    header_vi: str
    header_en: str
    value: str
    kind: Literal["text", "int", "pct", "seconds"] = "int"


COLUMNS: tuple[Column, ...] = (
    Column("code", "Mã", "Code", "code", "text"),
    Column("name", "Tên", "Name", "name", "text"),
    Column("province", "Mã tỉnh", "Province code", "province", "text"),
    Column("files_received", "Số hồ sơ (file) nhận", "Files received", "current.files_received"),
    Column("files_received_prev", "Số file nhận kỳ trước", "Files received, previous period",
           "previous.files_received"),
    Column("files_rejected", "Số file bị từ chối", "Files rejected", "current.files_rejected"),
    Column("visits_accepted", "Số lượt KCB đưa vào sổ sức khỏe", "Visits admitted to the health book",
           "current.visits_accepted"),
    Column("visits_accepted_prev", "Số lượt đưa vào sổ kỳ trước", "Visits admitted, previous period",
           "previous.visits_accepted"),
    Column("visits_rejected", "Số lượt KCB không đưa vào sổ", "Visits not admitted", "current.visits_rejected"),
    Column("top_errors", "Lý do không tiếp nhận thường gặp (số file)", "Top reasons for refusal (files)",
           "current.top_errors", "text"),
    Column("top_findings", "Phát hiện cần sửa thường gặp (số file)", "Top findings (files)", "current.top_findings",
           "text"),
    Column("citizens", "Số công dân (không trùng)", "Distinct citizens", "current.citizens"),
    Column("delivered", "Số lượt đã gửi lên VNeID", "Visits delivered to VNeID", "current.delivered"),
    Column("delivered_prev", "Số lượt đã gửi kỳ trước", "Visits delivered, previous period", "previous.delivered"),
    Column("in_time_pct", "Tỷ lệ gửi trong 24 giờ (%)", "Delivered within 24 h (%)", "current.in_time_pct", "pct"),
    Column("in_time_pct_prev", "Tỷ lệ trong 24 giờ kỳ trước (%)", "Within 24 h, previous period (%)",
           "previous.in_time_pct", "pct"),
    Column("latency_p50", "Thời gian gửi p50 (giây)", "Latency p50 (s)", "current.latency_p50_s", "seconds"),
    Column("latency_p95", "Thời gian gửi p95 (giây)", "Latency p95 (s)", "current.latency_p95_s", "seconds"),
    Column("breached", "Số lượt quá hạn 24 giờ", "Deadline breaches", "current.breached"),
    Column("needs_reconciliation", "Số lượt chờ đối soát danh tính", "Awaiting identity reconciliation",
           "current.needs_reconciliation"),
    Column("referral_delivered", "Giấy chuyển tuyến đã gửi", "Referral papers delivered",
           "current.referral_delivered"),
    Column("reexam_delivered", "Giấy hẹn khám lại đã gửi", "Re-exam appointments delivered",
           "current.reexam_delivered"),
    Column("facilities", "Số cơ sở KCB", "Facilities", "facilities"),
    Column("facilities_without_submission", "Cơ sở không gửi dữ liệu", "Facilities with no submission",
           "facilities_without_submission", "text"),
    Column("citizens_with_book", "Công dân có sổ sức khỏe điện tử (lũy kế)", "Citizens with a health book (to date)",
           "citizens_with_book"),
    Column("books_with_visit", "Sổ sức khỏe có ít nhất một lượt KCB (lũy kế)",
           "Health books with at least one visit (to date)", "books_with_visit"),
    Column("books_created", "Sổ sức khỏe tạo từ danh sách BHXH, BHYT (trong kỳ)",
           "Health books created from participant lists (period)", "books_created"),
    Column("vaccinations_recorded", "Mũi tiêm chủng ghi vào sổ (trong kỳ)", "Vaccinations recorded (period)",
           "vaccinations_recorded"),
    Column("population", "Dân số", "Population", "population"),
    Column("coverage_pct", "Tỷ lệ bao phủ (%)", "Coverage (%)", "coverage_pct", "pct"),
    Column("population_source", "Nguồn số liệu dân số", "Population source", "population_source", "text"),
)


def cell(row: Row, column: Column) -> str | int | float | None:
    """The raw value of ``column`` in ``row``: tuples joined as text ("E_X: 3; E_Y: 1"), None left as None."""
    target: object = row
    for part in column.value.split("."):
        target = getattr(target, part)
    if isinstance(target, tuple):
        return "; ".join(f"{item[0]}: {item[1]}" if isinstance(item, tuple) else str(item) for item in target)
    if target is None or isinstance(target, (str, int, float)):
        return target
    raise TypeError(f"column {column.key}: unexpected {type(target).__name__}")
