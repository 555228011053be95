"""The report's files from a hand-built Report: CSV per level, the XLSX workbook, the HTML page and its screenshot."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import lxml.html
import pytest
from healthbook.reports.model import COLUMNS, Figures, Period, Report, Row
from healthbook.reports.render import outputs, to_csv, to_html, to_xlsx
from healthbook.reports.xlsx import sheet_title
from openpyxl import load_workbook

ROOT = Path(__file__).resolve().parents[1]
BOM = b"\xef\xbb\xbf"
EVIL = 'Phòng khám "An Bình", <script>alert(1)</script>'
HEADERS = [column.header_vi for column in COLUMNS]
POS = {column.key: index for index, column in enumerate(COLUMNS)}


def _report() -> Report:
    """Hà Nội (one commune, two facilities) and Đà Nẵng (one commune, one facility that delivered nothing)."""
    hn_current = Figures(files_received=1234, files_rejected=4, visits_accepted=5000, visits_rejected=7,
                         top_errors=(("V212", 3), ("R301", 1)), citizens=4100, delivered=4000, delivered_in_time=3900,
                         latency_p50_s=30.0, latency_p95_s=3600.0, breached=2, needs_reconciliation=5,
                         referral_delivered=40, reexam_delivered=12)
    hn_previous = Figures(files_received=1000, visits_accepted=4500, delivered=3000, delivered_in_time=2400)
    facility_a = Figures(files_received=1000, visits_accepted=4000, delivered=3200, delivered_in_time=3200,
                         latency_p50_s=5.0, latency_p95_s=60.0)
    facility_b = Figures(files_received=234, files_rejected=4, visits_accepted=1000, delivered=800,
                         delivered_in_time=700, latency_p50_s=120.0, latency_p95_s=math.inf)
    nothing = Figures(files_received=3)  # delivered nothing: no SLA, no latency
    rows = (
        Row("facility", "01001", "Bệnh viện Bạch Mai", "01", facility_a, Figures()),
        Row("facility", "01002", EVIL, "01", facility_b, Figures()),
        Row("facility", "48001", "=Trạm y tế Hòa Khánh", "48", nothing, Figures()),
        Row("commune", "01/00004", "Phường Ba Đình", "01", hn_current, hn_previous, facilities=2),
        Row("commune", "48/20194", "Phường Hòa Khánh", "48", nothing, Figures(), facilities=3,
            facilities_without_submission=("48002", "48003")),
        Row("province", "01", "Thành phố Hà Nội", "01", hn_current, hn_previous, facilities=2,
            population=8_500_000, population_source="TCTK 2024", citizens_with_book=5_100_000),
        Row("province", "48", "Thành phố Đà Nẵng", "48", nothing, Figures(), facilities=3,
            population=1_250_000, population_source="TCTK 2024", citizens_with_book=250_000),
    )
    # 23:30 UTC on 1 December is 06:30 on 2 December in Vietnam
    return Report(Period.parse("2026-11"), datetime(2026, 12, 1, 23, 30, tzinfo=UTC), rows)


REPORT = _report()


def _csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(BOM)
    return list(csv.reader(io.StringIO(data[len(BOM):].decode("utf-8"), newline="")))


# --- CSV -------------------------------------------------------------------------------------------------------


def test_csv_has_a_bom_the_vietnamese_headers_and_one_line_per_row() -> None:
    for level, codes in (("facility", ["01001", "01002", "48001"]), ("commune", ["01/00004", "48/20194"]),
                         ("province", ["01", "48"])):
        data = to_csv(REPORT, level)  # type: ignore[arg-type]
        assert data.startswith(BOM) and not data.startswith(BOM + BOM)
        rows = _csv_rows(data)
        assert rows[0] == HEADERS and rows[0][POS["name"]] == "Tên"
        assert [row[POS["code"]] for row in rows[1:]] == codes
        assert all(len(row) == len(COLUMNS) for row in rows)
        assert b"\r\n" in data


def test_csv_values_none_pct_and_seconds() -> None:
    facility = _csv_rows(to_csv(REPORT, "facility"))
    bach_mai, evil, tram = facility[1:]
    assert bach_mai[POS["in_time_pct"]] == "100.00" and bach_mai[POS["latency_p95"]] == "60"
    assert evil[POS["in_time_pct"]] == "87.50"  # 700 / 800
    assert evil[POS["latency_p50"]] == "120" and evil[POS["latency_p95"]] == ">86400"
    assert evil[POS["files_received"]] == "234" and evil[POS["files_rejected"]] == "4"
    # nothing delivered: no percentage, no latency, no distinct-citizen figure, no population — empty, never 0
    for key in ("in_time_pct", "latency_p50", "latency_p95", "citizens", "population", "coverage_pct"):
        assert tram[POS[key]] == "", key
    assert tram[POS["delivered"]] == "0"
    assert tram[POS["name"]] == "'=Trạm y tế Hòa Khánh"  # a spreadsheet shows it, never evaluates it

    commune = _csv_rows(to_csv(REPORT, "commune"))
    assert commune[1][POS["top_errors"]] == "V212: 3; R301: 1"
    assert commune[1][POS["in_time_pct_prev"]] == "80.00"  # 2400 / 3000
    assert commune[2][POS["facilities_without_submission"]] == "48002; 48003"

    province = _csv_rows(to_csv(REPORT, "province"))
    hanoi, danang = province[1:]
    assert hanoi[POS["name"]] == "Thành phố Hà Nội"
    assert hanoi[POS["in_time_pct"]] == "97.50" and hanoi[POS["coverage_pct"]] == "60.00"
    assert hanoi[POS["population"]] == "8500000" and hanoi[POS["files_received_prev"]] == "1000"
    assert danang[POS["coverage_pct"]] == "20.00" and danang[POS["in_time_pct"]] == ""


def test_a_name_with_a_comma_and_quotes_round_trips() -> None:
    data = to_csv(REPORT, "facility")
    assert _csv_rows(data)[2][POS["name"]] == EVIL
    assert '"Phòng khám ""An Bình"", <script>' in data.decode("utf-8-sig")  # quoted, quotes doubled


# --- XLSX ------------------------------------------------------------------------------------------------------


def _workbook():  # type: ignore[no-untyped-def]
    return load_workbook(io.BytesIO(to_xlsx(REPORT)))


def test_xlsx_sheets_headers_frozen_panes_and_filters() -> None:
    workbook = _workbook()
    assert workbook.sheetnames == ["Tổng hợp", "Tỉnh-thành phố", "Xã-phường", "Cơ sở KCB"]  # since July 2025
    assert sheet_title("district") == "Quận-huyện"
    for level, rows in (("province", 2), ("commune", 2), ("facility", 3)):
        ws = workbook[sheet_title(level)]  # type: ignore[arg-type]
        assert [c.value for c in ws[1]] == HEADERS
        assert ws.cell(1, 1).font.b
        assert ws.freeze_panes == "C2"  # below the header, right of code and name
        assert ws.auto_filter.ref == f"A1:{ws.cell(1, len(COLUMNS)).column_letter}{rows + 1}"
        assert ws.max_row == rows + 1
        assert ws.column_dimensions["B"].width >= len("Thành phố Hà Nội")


def test_xlsx_values_and_number_formats() -> None:
    workbook = _workbook()
    province = workbook["Tỉnh-thành phố"]

    def at(ws, row: int, key: str):  # type: ignore[no-untyped-def]
        return ws.cell(row, POS[key] + 1)

    assert at(province, 2, "name").value == "Thành phố Hà Nội"
    assert at(province, 2, "code").value == "01" and at(province, 2, "code").data_type == "s"  # leading zero kept
    assert at(province, 2, "files_received").value == 1234
    assert at(province, 2, "files_received").number_format == "#,##0"
    assert at(province, 2, "in_time_pct").value == pytest.approx(97.5)
    assert at(province, 2, "in_time_pct").number_format == "0.00"
    assert at(province, 2, "coverage_pct").value == pytest.approx(60.0)
    assert at(province, 2, "latency_p95").value == 3600 and at(province, 2, "latency_p95").number_format == "#,##0"
    assert at(province, 3, "in_time_pct").value is None and at(province, 3, "latency_p50").value is None
    assert "(%)" in at(province, 1, "in_time_pct").value

    facility = workbook["Cơ sở KCB"]
    assert at(facility, 3, "name").value == EVIL
    assert at(facility, 3, "latency_p95").value == ">86400"
    assert at(facility, 4, "name").value == "=Trạm y tế Hòa Khánh" and at(facility, 4, "name").data_type == "s"


def test_xlsx_summary_title_figures_and_chart() -> None:
    ws = _workbook()["Tổng hợp"]
    assert ws["A1"].value == "Báo cáo sổ sức khỏe điện tử — Tháng 11/2026"
    assert "02/12/2026 06:30" in ws["A3"].value and "UTC+7" in ws["A3"].value
    header = [c.value for c in ws[5]]
    assert header[:2] == ["Mã", "Tên"]
    sla_col, coverage_col = header.index("Tỷ lệ gửi trong 24 giờ (%)") + 1, header.index("Tỷ lệ bao phủ (%)") + 1
    assert [ws.cell(r, 2).value for r in (6, 7)] == ["Thành phố Hà Nội", "Thành phố Đà Nẵng"]
    assert ws.cell(6, sla_col).value == pytest.approx(97.5) and ws.cell(7, coverage_col).value == pytest.approx(20)

    assert len(ws._charts) == 1
    chart = ws._charts[0]
    assert len(chart.series) == 2
    letter = {col: ws.cell(1, col).column_letter for col in (sla_col, coverage_col)}
    assert [s.val.numRef.f for s in chart.series] == [
        f"'Tổng hợp'!${letter[sla_col]}$6:${letter[sla_col]}$7",
        f"'Tổng hợp'!${letter[coverage_col]}$6:${letter[coverage_col]}$7"]
    for series in chart.series:
        categories = series.cat.strRef.f if series.cat.strRef is not None else series.cat.numRef.f
        assert categories == "'Tổng hợp'!$B$6:$B$7"


# --- HTML ------------------------------------------------------------------------------------------------------


def test_html_is_self_contained_and_escapes_names() -> None:
    page = to_html(REPORT)
    doc = lxml.html.document_fromstring(page)
    assert doc.get("lang") == "vi"
    assert doc.xpath("//meta[@charset]")[0].get("charset").lower() == "utf-8"
    assert not doc.xpath("//script") and "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not doc.xpath("//*[@src]") and not doc.xpath("//link")
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert doc.xpath("//title")[0].text == "Báo cáo sổ sức khỏe điện tử — Tháng 11/2026"
    assert "02/12/2026 06:30" in doc.text_content()


def test_html_chart_has_one_bar_per_province_per_series() -> None:
    doc = lxml.html.document_fromstring(to_html(REPORT))
    svg = doc.xpath("//svg")
    assert len(svg) == 1
    sla = svg[0].xpath(".//rect[contains(@class, 'bar sla')]")
    coverage = svg[0].xpath(".//rect[contains(@class, 'bar coverage')]")
    assert len(coverage) == 2  # both provinces have a population figure
    # Đà Nẵng delivered nothing: no SLA bar, a dash instead; Hà Nội's bar is 97.5 % of the plot's height
    assert len(sla) == 1 and svg[0].xpath(".//text[contains(@class, 'missing')]")
    heights = sorted(float(rect.get("height")) for rect in coverage)
    assert heights[1] / heights[0] == pytest.approx(3.0, rel=0.01)  # 60 % against 20 %
    assert float(sla[0].get("height")) / heights[1] == pytest.approx(97.5 / 60, rel=0.01)
    grid = [float(line.get("y1")) for line in svg[0].xpath(".//line[@class='grid']")]  # 0 %, 20 %, ..., 100 %
    zero, hundred = grid[0], grid[-1]
    assert float(sla[0].get("y")) + float(sla[0].get("height")) == pytest.approx(zero)  # bars stand on the axis
    assert float(sla[0].get("height")) == pytest.approx(0.975 * (zero - hundred), abs=0.1)
    categories = [t.text for t in svg[0].xpath(".//text[contains(@class, 'category')]")]
    assert categories == ["Thành phố Hà Nội", "Thành phố Đà Nẵng"]
    assert [t.text for t in svg[0].xpath(".//text[contains(@class, 'tick')]")] == ["0", "20", "40", "60", "80", "100"]


def test_a_full_chart_draws_every_bar() -> None:
    both = Figures(delivered=10, delivered_in_time=9)
    rows = tuple(Row("province", f"{n:02}", f"Tỉnh {n}", f"{n:02}", both, Figures(), population=100,
                     citizens_with_book=50) for n in range(1, 6))
    doc = lxml.html.document_fromstring(to_html(Report(Period.parse("2026-H1"), datetime(2026, 7, 1, tzinfo=UTC),
                                                        rows)))
    assert len(doc.xpath("//svg//rect[contains(@class, 'bar sla')]")) == 5
    assert len(doc.xpath("//svg//rect[contains(@class, 'bar coverage')]")) == 5


def test_html_tables_per_level() -> None:
    doc = lxml.html.document_fromstring(to_html(REPORT))
    tables = doc.xpath("//table")
    assert len(tables) == 3
    for table, count in zip(tables, (2, 2, 3), strict=True):
        headers = table.xpath(".//thead/tr/th")
        assert [th.text for th in headers] == HEADERS
        assert headers[POS["in_time_pct"]].get("title") == "Delivered within 24 h (%)"
        assert len(table.xpath(".//tbody/tr")) == count
    province_cells = [td.text for td in tables[0].xpath(".//tbody/tr[1]/td")]
    assert province_cells[POS["population"]] == "8.500.000" and province_cells[POS["in_time_pct"]] == "97,50"
    assert province_cells[POS["latency_p95"]] == "3.600"
    facility_rows = tables[2].xpath(".//tbody/tr")
    evil = [td.text for td in facility_rows[1].xpath("td")]
    assert evil[POS["name"]] == EVIL and evil[POS["latency_p95"]] == ">86.400"
    assert [td.text for td in facility_rows[2].xpath("td")][POS["in_time_pct"]] == "–"


def test_an_empty_report_still_renders() -> None:
    empty = Report(Period.parse("2026-03-14"), datetime(2026, 3, 15, 1, 0, tzinfo=UTC))
    assert _csv_rows(to_csv(empty, "facility")) == [HEADERS]
    workbook = load_workbook(io.BytesIO(to_xlsx(empty)))
    assert workbook["Tổng hợp"]["A1"].value.endswith("Ngày 14/03/2026") and not workbook["Tổng hợp"]._charts
    doc = lxml.html.document_fromstring(to_html(empty))
    assert not doc.xpath("//svg//rect[contains(@class, 'bar')]")
    assert [td.text for td in doc.xpath("//td[@class='empty']")] == ["Không có dữ liệu"] * 3


# --- Files -----------------------------------------------------------------------------------------------------


def test_outputs_are_the_five_files() -> None:
    files = outputs(REPORT)
    assert set(files) == {"report.xlsx", "report.html", "facility.csv", "commune.csv", "province.csv"}
    before = Report(Period.parse("2025-06"), datetime(2025, 7, 1, tzinfo=UTC))  # the last month with districts
    assert set(outputs(before)) == {"report.xlsx", "report.html", "facility.csv", "district.csv", "province.csv"}
    assert load_workbook(io.BytesIO(to_xlsx(before))).sheetnames == ["Tổng hợp", "Tỉnh-thành phố", "Quận-huyện",
                                                                       "Cơ sở KCB"]
    assert files["report.xlsx"][0][:2] == b"PK"
    assert files["report.html"][1] == "text/html; charset=utf-8"
    assert files["province.csv"] == (to_csv(REPORT, "province"), "text/csv; charset=utf-8")


# --- Screenshot ------------------------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("CI installs chromium (.ci/run) to render the HTML report, but it is missing")
    pytest.skip("no chromium to render the HTML report")


@pytest.mark.slow  # starts Chromium
def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(to_html(REPORT), encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
         "--window-size=1400,1800", page.as_uri()],
        env={**os.environ, "HOME": str(home)}, capture_output=True, timeout=60, check=False)
    assert png.is_file(), result.stderr.decode(errors="replace")[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    artifacts = ROOT / os.environ.get("HEALTHBOOK_ARTIFACTS", "ci-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, artifacts / "report.png")
