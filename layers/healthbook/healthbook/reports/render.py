"""The periodic report as files: CSV per level, one XLSX workbook, one self-contained HTML page. Pure: no AWS.

Every output shows the columns of ``model.COLUMNS`` with their Vietnamese headers, values read with ``model.cell``.
Levels run top-down (province, district or commune by the period, facility) in the workbook and the page. Formatting:

* ``None`` (a figure that does not exist: no deliveries, no population figure) is an empty CSV field, an empty
  XLSX cell and "–" in HTML: never 0, which would claim a measured zero.
* Percentages: CSV ``97.50`` (two decimals, dot: machine-readable); XLSX the number 97.5 shown as ``0.00`` under a
  header ending in "(%)"; HTML ``97,50``.
* Latency seconds are bucket upper bounds (docs/reports.md), so whole seconds: CSV ``3600``, XLSX ``#,##0``, HTML
  ``3.600``. Beyond the last bucket (``math.inf``) is written ``>86400`` (HTML ``>86.400``): the truth the histogram
  holds, and text no spreadsheet mistakes for a number.
* Integers: CSV plain digits, XLSX ``#,##0``, HTML Vietnamese grouping (``1.234.567``).
* CSV is UTF-8 with a BOM (Excel otherwise reads Vietnamese as Windows-1258 garbage), csv-module quoting, CRLF.
  A text field starting with ``= + - @`` or a control character gets a leading ``'`` so a spreadsheet opening the
  CSV shows it instead of evaluating it (names are data). XLSX stores such text as strings, unchanged.
* Times are Vietnam time (UTC+7); a naive ``generated_at`` is taken as UTC.
"""

from __future__ import annotations

import csv
import html
import io
import math
from datetime import UTC, datetime

from healthbook.kernel import PORTAL_TZ
from healthbook.reports.aggregates import LATENCY_BUCKETS_S
from healthbook.reports.model import COLUMNS, LEVEL_NAMES_VI, Column, Level, Report, Row, cell

SUMMARY_TITLE = "Tổng hợp"
REPORT_TITLE = "Báo cáo sổ sức khỏe điện tử"
BEYOND_LAST_BUCKET = f">{LATENCY_BUCKETS_S[-1]}"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
HTML_TYPE = "text/html; charset=utf-8"
CSV_TYPE = "text/csv; charset=utf-8"

# The province figures the summary sheet shows; SLA and coverage are the chart's two series.
SUMMARY_KEYS = ("code", "name", "files_received", "visits_accepted", "delivered", "in_time_pct", "latency_p95",
                "breached", "citizens_with_book", "population", "coverage_pct")
SLA_KEY, COVERAGE_KEY = "in_time_pct", "coverage_pct"
COLUMN_BY_KEY = {column.key: column for column in COLUMNS}
SERIES_COLORS = {SLA_KEY: "#1f6fb2", COVERAGE_KEY: "#e8871e"}

NUMBER_FORMATS = {"int": "#,##0", "pct": "0.00", "seconds": "#,##0"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def generated_vn(report: Report) -> datetime:
    moment = report.generated_at if report.generated_at.tzinfo else report.generated_at.replace(tzinfo=UTC)
    return moment.astimezone(PORTAL_TZ)


def generated_label(report: Report) -> str:
    return f"{generated_vn(report):%d/%m/%Y %H:%M} (giờ Việt Nam, UTC+7)"


def period_line(report: Report) -> str:
    period = report.period
    return f"Kỳ báo cáo: {period.start:%d/%m/%Y} – {period.end:%d/%m/%Y}; kỳ trước: {report.previous.label_vi}"


def seconds_cell(value: float) -> int | str:
    return BEYOND_LAST_BUCKET if math.isinf(value) else round(value)


# --- CSV -------------------------------------------------------------------------------------------------------


def _csv_field(row: Row, column: Column) -> str:
    value = cell(row, column)
    if value is None:
        return ""
    if column.kind == "pct":
        return f"{float(value):.2f}"
    if column.kind == "seconds":
        return str(seconds_cell(float(value)))
    text = str(value)
    if column.kind == "text" and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def to_csv(report: Report, level: Level) -> bytes:
    """The rows of one level: a Vietnamese header row, then one line per row. UTF-8 with BOM."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([column.header_vi for column in COLUMNS])
    writer.writerows([_csv_field(row, column) for column in COLUMNS] for row in report.level(level))
    return buffer.getvalue().encode("utf-8-sig")


# --- XLSX ------------------------------------------------------------------------------------------------------


def to_xlsx(report: Report) -> bytes:
    """A summary sheet (title, province figures, SLA/coverage chart), then one sheet per level (reports/xlsx.py).
    openpyxl, which loads lxml, is imported only when a workbook is written: not on a cold start."""
    from healthbook.reports import xlsx

    return xlsx.to_xlsx(report)


# --- HTML ------------------------------------------------------------------------------------------------------


def _vi_number(value: float, decimals: int = 0) -> str:
    """1234567.5 -> "1.234.567,50": Vietnamese groups with dots and separates decimals with a comma."""
    return f"{value:,.{decimals}f}".translate(str.maketrans(",.", ".,"))


def display(value: str | int | float | None, kind: str) -> str:
    """A value as the page shows it (unescaped)."""
    if value is None or value == "":
        return "–"
    if kind == "pct":
        return _vi_number(float(value), 2)
    if kind == "seconds":
        return f">{_vi_number(LATENCY_BUCKETS_S[-1])}" if math.isinf(float(value)) else _vi_number(round(float(value)))
    if kind == "int" and isinstance(value, int):
        return _vi_number(value)
    return str(value)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _svg_chart(provinces: list[Row]) -> str:
    """Grouped bars, SLA and coverage per province, on a 0–100 axis. Hand-drawn: no script, no external file."""
    series = [(COLUMN_BY_KEY[SLA_KEY], "sla"), (COLUMN_BY_KEY[COVERAGE_KEY], "coverage")]
    bar, gap, pad = 24, 4, 14
    group = 2 * bar + gap + 2 * pad
    plot_h, left, right, top = 260, 56, 24, 48
    longest = max((len(row.name) for row in provinces), default=0)
    bottom = 24 + min(180, 5 * longest)  # room for the slanted province names
    width = max(480, left + group * len(provinces) + right)
    height = top + plot_h + bottom
    base = top + plot_h
    out = [f'<svg role="img" aria-labelledby="chart-title" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" class="chart">',
           '<title id="chart-title">Tỷ lệ gửi trong 24 giờ và tỷ lệ bao phủ theo tỉnh (%)</title>']
    for tick in range(0, 101, 20):
        y = base - plot_h * tick / 100
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{tick}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2:.1f}" transform="rotate(-90 14 {top + plot_h / 2:.1f})" '
               'text-anchor="middle" class="axis-title">%</text>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" class="axis"/>')
    out.append(f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" class="axis"/>')
    for index, (column, _) in enumerate(series):  # legend, top left
        x = left + index * 230
        color = SERIES_COLORS[column.key]
        out.append(f'<rect x="{x}" y="12" width="14" height="14" fill="{color}" class="legend"/>')
        out.append(f'<text x="{x + 20}" y="24" class="legend-label">{_e(column.header_vi)}</text>')
    for position, row in enumerate(provinces):
        x0 = left + position * group + pad
        for index, (column, key) in enumerate(series):
            x = x0 + index * (bar + gap)
            value = cell(row, column)
            label = f"{row.name} — {column.header_vi}: {display(value, 'pct')}"
            if value is None:  # no figure: no bar, a dash where it would stand
                out.append(f'<text x="{x + bar / 2}" y="{base - 4}" text-anchor="middle" class="value missing">'
                           f'–<title>{_e(label)}</title></text>')
                continue
            # Coverage can pass 100 % when the population figure is older than the books: the bar stops at the top
            # of the axis, the label tells the truth.
            h = plot_h * min(max(float(value), 0.0), 100.0) / 100
            out.append(f'<rect x="{x}" y="{base - h:.1f}" width="{bar}" height="{h:.1f}" '
                       f'fill="{SERIES_COLORS[column.key]}" class="bar {key}"><title>{_e(label)}</title></rect>')
            out.append(f'<text x="{x + bar / 2}" y="{base - h - 4:.1f}" text-anchor="middle" class="value">'
                       f'{_e(display(value, "pct"))}</text>')
        cx = x0 + bar + gap / 2
        out.append(f'<text x="{cx}" y="{base + 16}" transform="rotate(-35 {cx} {base + 16})" text-anchor="end" '
                   f'class="category">{_e(row.name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _html_table(report: Report, level: Level) -> str:
    rows = report.level(level)
    head = "".join(f'<th title="{_e(column.header_en)}" scope="col">{_e(column.header_vi)}</th>' for column in COLUMNS)
    body = ["<tr>" + "".join(
        f'<td class="{"num" if column.kind != "text" else "text"}">{_e(display(cell(row, column), column.kind))}</td>'
        for column in COLUMNS) + "</tr>" for row in rows]
    if not rows:
        body = [f'<tr><td colspan="{len(COLUMNS)}" class="empty">Không có dữ liệu</td></tr>']
    return (f'<section id="{level}">\n<h2>{_e(LEVEL_NAMES_VI[level])} <small>({len(rows)})</small></h2>\n'
            f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>\n</section>")


_CSS = """
body { font-family: "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #1b1b1b; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
h2 small { color: #666; font-weight: normal; }
p.meta { margin: 2px 0; color: #444; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #c9d3dd; padding: 4px 6px; vertical-align: top; }
th { background: #dde7f0; text-align: left; position: sticky; top: 0; min-width: 72px; }
td:nth-child(2) { min-width: 180px; }  /* the name: wide enough not to wrap every word */
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.empty { color: #666; font-style: italic; }
tbody tr:nth-child(even) { background: #f6f8fa; }
svg.chart { font-size: 11px; }
svg .grid { stroke: #e3e3e3; }
svg .axis { stroke: #555; }
svg .tick, svg .category, svg .value { fill: #333; }
svg .value { font-size: 9px; }
svg .axis-title { font-size: 12px; }
"""


def to_html(report: Report) -> str:
    """One page: title, period, generation time, the SLA/coverage chart (inline SVG), one table per level."""
    title = f"{REPORT_TITLE} — {report.period.label_vi}"
    sections = "\n".join(_html_table(report, level) for level in report.levels)
    return f"""<!DOCTYPE html>
<html lang="vi">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="meta">{_e(period_line(report))}</p>
<p class="meta">Thời điểm lập: {_e(generated_label(report))}</p>
<section id="chart">
<h2>Tỷ lệ gửi trong 24 giờ và tỷ lệ bao phủ theo tỉnh (%)</h2>
<div class="scroll">
{_svg_chart(report.level("province"))}
</div>
</section>
{sections}
</body>
</html>
"""


# --- Files -----------------------------------------------------------------------------------------------------


def outputs(report: Report) -> dict[str, tuple[bytes, str]]:
    """File name -> (content, content type): what the report job writes under the period's prefix."""
    files = {
        "report.xlsx": (to_xlsx(report), XLSX_TYPE),
        "report.html": (to_html(report).encode("utf-8"), HTML_TYPE),
    }
    files.update({f"{level}.csv": (to_csv(report, level), CSV_TYPE) for level in report.levels})
    return files


_SUMMARY = ("code", "files_received", "visits_accepted", "visits_rejected", "delivered", "in_time_pct",
            "latency_p95", "breached", "needs_reconciliation", "citizens", "coverage_pct")


def _plain(value: str | int | float | None, column: Column) -> str:
    if value is None:
        return "-"
    if column.kind == "seconds" and isinstance(value, (int, float)):
        return str(seconds_cell(value))
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_lines(report: Report, level: Level) -> list[str]:
    """A plain table of one level's key figures for the terminal ("-" where a figure does not exist)."""
    columns = [COLUMN_BY_KEY[key] for key in _SUMMARY]
    table = [[c.header_en for c in columns]]
    for row in report.level(level):
        table.append([_plain(cell(row, c), c) for c in columns])
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [f"{report.period.label_vi} ({report.period.label}), {level}:"]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in table]
    return lines
