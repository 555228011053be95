"""The report as an XLSX workbook (reports/render.py says how values are formatted). Its own module because
openpyxl loads lxml: the report function imports it only when it writes a workbook."""

from __future__ import annotations

import io
from collections.abc import Iterable

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.workbook.child import INVALID_TITLE_REGEX
from openpyxl.worksheet.worksheet import Worksheet

from healthbook.reports.model import COLUMNS, LEVEL_NAMES_VI, Column, Level, Report, Row, cell
from healthbook.reports.render import (
    COLUMN_BY_KEY,
    COVERAGE_KEY,
    NUMBER_FORMATS,
    REPORT_TITLE,
    SERIES_COLORS,
    SLA_KEY,
    SUMMARY_KEYS,
    SUMMARY_TITLE,
    generated_label,
    period_line,
    seconds_cell,
)


def sheet_title(level: Level) -> str:
    """Excel forbids ``\\ / ? * [ ] :`` in sheet names and allows 31 characters: "Quận/huyện" -> "Quận-huyện"."""
    return str(INVALID_TITLE_REGEX.sub("-", LEVEL_NAMES_VI[level]))[:31]


_HEADER_FONT = Font(bold=True)
_HEADER_FILL = PatternFill("solid", fgColor="DDE7F0")
_HEADER_ALIGN = Alignment(wrap_text=True, vertical="top")


def _xlsx_value(row: Row, column: Column) -> str | int | float | None:
    value = cell(row, column)
    if value is None:
        return None
    if column.kind == "seconds":
        return seconds_cell(float(value))
    if isinstance(value, str):
        return str(ILLEGAL_CHARACTERS_RE.sub("", value))  # control characters make openpyxl refuse the whole workbook
    return value


def _write_table(ws: Worksheet, top: int, columns: Iterable[Column], rows: list[Row]) -> None:
    """A header row at ``top`` and the rows under it, with number formats and widths."""
    columns = list(columns)
    widths = [min(max(len(column.header_vi) // 2, 8), 40) for column in columns]  # headers wrap onto two lines
    for index, column in enumerate(columns, start=1):
        header = ws.cell(top, index, column.header_vi)
        header.font, header.fill, header.alignment = _HEADER_FONT, _HEADER_FILL, _HEADER_ALIGN
    for offset, row in enumerate(rows, start=1):
        for index, column in enumerate(columns, start=1):
            value = _xlsx_value(row, column)
            target = ws.cell(top + offset, index)
            target.value = value
            if isinstance(value, str):
                target.data_type = "s"  # a name starting with "=" is text, never a formula
                if column.kind == "seconds":
                    target.alignment = Alignment(horizontal="right")
            elif column.kind in NUMBER_FORMATS:
                target.number_format = NUMBER_FORMATS[column.kind]
            shown = "" if value is None else f"{value:,.2f}" if isinstance(value, float) else str(value)
            widths[index - 1] = min(max(widths[index - 1], len(shown) + 2), 60)
    for index, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(index)].width = width


def _level_sheet(ws: Worksheet, report: Report, level: Level) -> None:
    rows = report.level(level)
    _write_table(ws, 1, COLUMNS, rows)
    name_col = next(index for index, column in enumerate(COLUMNS, start=1) if column.key == "name")
    ws.freeze_panes = ws.cell(2, name_col + 1).coordinate  # header and code/name stay visible when scrolling
    ws.auto_filter.ref = f"A1:{get_column_letter(len(COLUMNS))}{max(len(rows), 1) + 1}"


def _summary_sheet(ws: Worksheet, report: Report) -> None:
    ws["A1"] = f"{REPORT_TITLE} — {report.period.label_vi}"
    ws["A1"].font = Font(bold=True, size=14)
    ws["A2"] = period_line(report)
    ws["A3"] = f"Thời điểm lập: {generated_label(report)}"
    top = 5
    columns = [COLUMN_BY_KEY[key] for key in SUMMARY_KEYS]
    provinces = report.level("province")
    _write_table(ws, top, columns, provinces)
    ws.freeze_panes = ws.cell(top + 1, 1).coordinate
    if not provinces:
        return
    chart = BarChart()
    chart.type, chart.grouping = "col", "clustered"
    chart.title = "Tỷ lệ gửi trong 24 giờ và tỷ lệ bao phủ theo tỉnh (%)"
    chart.y_axis.title = "%"
    chart.y_axis.scaling.min, chart.y_axis.scaling.max = 0, 100
    chart.x_axis.delete = chart.y_axis.delete = False  # openpyxl hides both axes by default
    last = top + len(provinces)
    for key in (SLA_KEY, COVERAGE_KEY):
        col = SUMMARY_KEYS.index(key) + 1
        chart.add_data(Reference(ws, min_col=col, min_row=top, max_row=last), titles_from_data=True)
    name_col = SUMMARY_KEYS.index("name") + 1
    chart.set_categories(Reference(ws, min_col=name_col, min_row=top + 1, max_row=last))
    for series, key in zip(chart.series, (SLA_KEY, COVERAGE_KEY), strict=True):
        series.graphicalProperties.solidFill = SERIES_COLORS[key].lstrip("#")
    chart.width, chart.height = max(16, 8 * len(provinces) // 5), 9  # cm: room for every province's pair
    ws.add_chart(chart, f"A{last + 3}")


def to_xlsx(report: Report) -> bytes:
    """A summary sheet (title, province figures, SLA/coverage chart), then one sheet per level."""
    workbook = Workbook()
    workbook.properties.title = f"{REPORT_TITLE} — {report.period.label_vi}"
    workbook.properties.creator = "healthbook"
    summary = workbook.active
    assert isinstance(summary, Worksheet)  # a new workbook starts with one worksheet
    summary.title = SUMMARY_TITLE
    _summary_sheet(summary, report)
    for level in report.levels:
        _level_sheet(workbook.create_sheet(sheet_title(level)), report, level)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
