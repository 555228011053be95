"""Rules across fields and tables of one visit (one HOSO). Each rule is a function of a VisitContext.

Rules read typed values (set only when the field passed its own checks), so a bad field is reported
once, by its field rule, and not again by every sum it takes part in.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any

from healthbook.standard import Condition, Standard, semantics, version_ids
from healthbook.standard.model import code_key
from healthbook.validation.issues import Issue, make_issue


@dataclass(slots=True)
class TableRows:
    raw: list[dict[str, str]] = field(default_factory=list)
    typed: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class VisitContext:
    standard: Standard
    ma_lk: str
    facility: str | None
    tables: dict[str, TableRows]
    issues: list[Issue]
    broken: set[str] = field(default_factory=set)  # submitted tables that could not be decoded

    def add(self, code: str, table: str | None = None, field: str | None = None, value: Any = None,
            **params: Any) -> None:
        self.issues.append(make_issue(code, table=table, ma_lk=self.ma_lk, field=field,
                                      value=None if value is None else _show(value), **params))

    def one(self, table: str) -> tuple[dict[str, str], dict[str, Any]] | None:
        rows = self.tables.get(table)
        if not rows or not rows.raw:
            return None
        return rows.raw[0], rows.typed[0]


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y%m%d%H%M")
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    return str(value)


Rule = Callable[[VisitContext], None]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


# --- arithmetic -----------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*([A-Z][A-Z0-9_]*|[0-9]+(?:\.[0-9]+)?|[-+*/])")


@dataclass(frozen=True, slots=True)
class Formula:
    """A sum of products and quotients of fields and constants, evaluated on already-typed values."""

    table: str
    field: str
    expr: str
    places: int
    compute: Callable[[dict[str, Any]], Any]
    half: Decimal  # half a unit of the last place

    def mismatch(self, values: dict[str, Any], actual: Decimal, tolerance: Decimal) -> Decimal | None:
        """The rounded expected value when ``actual`` is off by more than ``tolerance``, else None.

        Rounding moves a result by at most half a unit of the last place, so only results in that band
        around the tolerance need rounding to decide: the rest are decided on the raw product.
        """
        try:
            result = self.compute(values)
        except (KeyError, ZeroDivisionError, ArithmeticError):
            return None  # an operand is missing or invalid: its own field rule has said so
        if actual == result and self.half <= tolerance:
            return None  # most lines: equal, the test below holds without working it out
        difference = abs(actual - result)
        if difference + self.half <= tolerance:
            return None
        expected = Decimal(result).quantize(_QUANTUM[self.places], rounding=ROUND_HALF_UP)
        return expected if abs(actual - expected) > tolerance else None


_QUANTUM = {places: Decimal(1).scaleb(-places) for places in range(6)}
_HALF_UNIT = {places: quantum / 2 for places, quantum in _QUANTUM.items()}


def parse_formula(table: str, target: str, expr: str, places: int) -> Formula:
    """Compile a formula from the standard's data into a function of the row's typed values.

    Only field names, decimal constants and + - * / are admitted (checked token by token), so the
    generated expression can do nothing but arithmetic on the row.
    """
    tokens = _TOKEN.findall(expr)
    if not tokens or "".join(tokens) != expr.replace(" ", ""):
        raise ValueError(f"bad formula {expr!r}")
    parts = []
    namespace: dict[str, Any] = {"__builtins__": {}}
    for token in tokens:
        if token in "+-*/":
            parts.append(token)
        elif token[0].isdigit():
            constant = f"_c{len(namespace)}"  # made once, not on every line
            namespace[constant] = Decimal(token)
            parts.append(constant)
        else:
            parts.append(f"v[{token!r}]")
    compute: Callable[[dict[str, Any]], Any] = eval(f"lambda v: {' '.join(parts)}", namespace)
    return Formula(table=table, field=target, expr=expr, places=places, compute=compute, half=_HALF_UNIT[places])


def _in_force(entry: dict[str, Any], version: str) -> bool:
    order = version_ids()
    rank = order.index(version)
    if "since" in entry and rank < order.index(entry["since"]):
        return False
    return not ("until" in entry and rank > order.index(entry["until"]))


@cache
def formulas(version: str) -> tuple[Formula, ...]:
    spec = semantics()["arithmetic"]["line_formulas"]
    return tuple(parse_formula(f["table"], f["field"], f["expr"], f["round"]) for f in spec if _in_force(f, version))


@cache
def _tolerance() -> Decimal:
    return Decimal(semantics()["arithmetic"]["tolerance"])


@cache
def _split_tables() -> frozenset[str]:
    return frozenset(semantics()["arithmetic"]["payer_split_tables"])


_HUNDRED = Decimal(100)


def _stt(raw: dict[str, str], position: int) -> str:
    return raw.get("STT") or f"#{position}"


def _payer_split(ctx: VisitContext, table: str, stt: str, typed: dict[str, Any], tolerance: Decimal) -> None:
    try:
        total_bv, patient, copay, insurer, other = (typed["THANH_TIEN_BV"], typed["T_BNTT"], typed["T_BNCCT"],
                                                    typed["T_BHTT"], typed["T_NGUONKHAC"])
    except KeyError:
        return  # a missing or invalid amount has its own field error
    actual = patient + copay + insurer + other
    if actual != total_bv and abs(actual - total_bv) > tolerance:  # (equal, as most are: nothing to work out)
        ctx.add("R307", table=table, field="THANH_TIEN_BV", value=total_bv, stt=stt, actual=actual,
                expected=total_bv)
        return
    total_bh, level = typed.get("THANH_TIEN_BH"), typed.get("MUC_HUONG")
    if other or total_bh is None or level is None:
        return  # other sources change the split (annex T_NGUONKHAC a/b/c): only the sum is checked
    share = (total_bh * level / _HUNDRED).quantize(_QUANTUM[2], rounding=ROUND_HALF_UP)
    # One test per amount, unrolled (this runs for every drug and service line); equal, as most are, settles it.
    if insurer != share and abs(insurer - share) > tolerance:
        ctx.add("R308", table=table, field="T_BHTT", value=insurer, stt=stt, expected=share)
    if copay != (expected := total_bh - share) and abs(copay - expected) > tolerance:
        ctx.add("R308", table=table, field="T_BNCCT", value=copay, stt=stt, expected=expected)
    if patient != (expected := total_bv - total_bh) and abs(patient - expected) > tolerance:
        ctx.add("R308", table=table, field="T_BNTT", value=patient, stt=stt, expected=expected)


@dataclass(frozen=True, slots=True)
class _Total:
    field: str
    sums: str
    tables: tuple[str, ...]
    where: tuple[str, frozenset[str]] | None
    source: str


@cache
def _totals(standard: Standard) -> tuple[_Total, ...]:
    out = []
    for spec in semantics()["arithmetic"]["totals"]:
        if not _in_force(spec, standard.id):
            continue
        where = None
        source = " + ".join(f"{t}.{spec['sum']}" for t in spec["tables"])
        if spec.get("where"):
            (name, codelist), = spec["where"].items()
            where = (name, _accepted(standard, codelist))
            source += f" ({name} ∈ {codelist})"
        out.append(_Total(spec["field"], spec["sum"], tuple(spec["tables"]), where, source))
    return tuple(out)


@cache
def _formulas_for(version: str, table: str) -> tuple[Formula, ...]:
    return tuple(f for f in formulas(version) if f.table == table)


@cache
def _drug_groups(standard: Standard) -> frozenset[int]:
    return frozenset(int(code) for code in standard.codes("MA_NHOM_XML2"))


@dataclass(frozen=True, slots=True)
class _CostLines:
    """What the cost-line rules need of one version of the standard, gathered once rather than per visit."""

    totals: tuple[_Total, ...]
    summed: frozenset[str]  # every table a total sums
    # (table, holds drugs, its line formulas, payer split checked), XML2 then XML3
    tables: tuple[tuple[str, bool, tuple[Formula, ...], bool], ...]
    drug_groups: frozenset[int]


@cache
def _cost_lines(standard: Standard) -> _CostLines:
    totals = _totals(standard)
    return _CostLines(totals=totals, summed=frozenset(table for total in totals for table in total.tables),
                      tables=tuple((table, holds_drugs, _formulas_for(standard.id, table), table in _split_tables())
                                   for table, holds_drugs in (("XML2", True), ("XML3", False))),
                      drug_groups=_drug_groups(standard))


@rule
def cost_lines(ctx: VisitContext) -> None:
    """Line formulas (R306), payer split (R307/R308), cost group per table (R316) and the XML1 totals
    (R309/R310), in one pass over the XML2 and XML3 lines: these are most of a claim's rows."""
    plan = _cost_lines(ctx.standard)
    tolerance = _tolerance()
    summary = ctx.one("XML1")
    head = summary[1] if summary is not None else {}
    # Totals are checked only when cost lines were sent at all: an uninsured visit sends XML1 and XML8 alone
    # (QĐ 31/2026), and its totals are the facility's costs, not sums of absent lines. A visit with services but
    # no drugs still has T_THUOC checked against zero.
    lines_sent = not plan.summed.isdisjoint(ctx.tables)
    checks = [t for t in plan.totals
              if lines_sent and head.get(t.field) is not None and ctx.broken.isdisjoint(t.tables)]
    sums = {t.field: Decimal(0) for t in checks}
    incomplete: set[str] = set()
    drug_groups = plan.drug_groups
    for table, holds_drugs, line_formulas, split in plan.tables:
        rows = ctx.tables.get(table)
        if not rows:
            continue
        wanted = [(t.field, t.sums, t.where) for t in checks if table in t.tables]
        for position, (raw, typed) in enumerate(zip(rows.raw, rows.typed, strict=True), start=1):
            for formula in line_formulas:
                actual = typed.get(formula.field)
                if actual is None:
                    continue
                expected = formula.mismatch(typed, actual, tolerance)
                if expected is not None:
                    ctx.add("R306", table=table, field=formula.field, value=actual, stt=_stt(raw, position),
                            formula=formula.expr, expected=expected)
            if split:
                _payer_split(ctx, table, raw.get("STT") or f"#{position}", typed, tolerance)
            group = typed.get("MA_NHOM")
            if group is not None and (group in drug_groups) != holds_drugs:
                ctx.add("R316", table=table, field="MA_NHOM", value=group, stt=_stt(raw, position))
            for total_field, name, where in wanted:
                if where is not None and code_key(raw.get(where[0], "")) not in where[1]:
                    continue
                value = typed.get(name)
                if value is None:
                    if name in raw:
                        incomplete.add(total_field)  # an invalid line amount: its field rule reports it
                    continue
                sums[total_field] += value
    for total in checks:
        declared = head[total.field]
        summed = sums[total.field]
        if total.field not in incomplete and declared != summed and abs(declared - summed) > tolerance:
            ctx.add("R309", table="XML1", field=total.field, value=declared, source=total.source,
                    expected=sums[total.field])
    paid, total_bh, copay = head.get("T_BHTT"), head.get("T_TONGCHI_BH"), head.get("T_BNCCT")
    if head.get("T_NGUONKHAC"):
        return  # other sources are deducted before the split (annex XML2 T_NGUONKHAC a-c): the formula cannot hold
    if paid is not None and total_bh is not None and copay is not None and abs(paid - (total_bh - copay)) > tolerance:
        ctx.add("R310", table="XML1", field="T_BHTT", value=paid, expected=total_bh - copay)


@cache
def _accepted(standard: Standard, codelist: str) -> frozenset[str]:
    return frozenset(code_key(c) for c in standard.codes(codelist))


# --- dates and times ------------------------------------------------------------------------------------

def _order(ctx: VisitContext, table: str, values: dict[str, Any], names: Iterable[str]) -> None:
    present = [(n, values[n]) for n in names if values.get(n) is not None]
    for (left, lv), (right, rv) in itertools.pairwise(present):
        if lv > rv:
            ctx.add("R302", table=table, field=right, value=rv, left=left, right=right,
                    left_value=_show(lv), right_value=_show(rv))


@rule
def visit_dates(ctx: VisitContext) -> None:
    for table, names in (("XML1", ("NGAY_VAO", "NGAY_VAO_NOI_TRU", "NGAY_RA")), ("XML7", ("NGAY_VAO", "NGAY_RA")),
                         ("XML8", ("NGAY_VAO", "NGAY_RA")), ("XML13", ("NGAY_VAO", "NGAY_VAO_NOI_TRU", "NGAY_RA")),
                         ("XML14", ("NGAY_VAO", "NGAY_VAO_NOI_TRU", "NGAY_RA"))):
        row = ctx.one(table)
        if row is not None:
            _order(ctx, table, row[1], names)


_WITHIN_VISIT = (("XML2", "NGAY_YL", True), ("XML3", "NGAY_YL", True), ("XML5", "THOI_DIEM_DBLS", True),
                 ("XML2", "NGAY_TH_YL", True), ("XML3", "NGAY_TH_YL", True), ("XML4", "NGAY_KQ", False),
                 ("XML3", "NGAY_KQ", False))
_AFTER_ORDER = (("XML2", "NGAY_TH_YL"), ("XML3", "NGAY_TH_YL"), ("XML3", "NGAY_KQ"))


@rule
def order_times(ctx: VisitContext) -> None:
    summary = ctx.one("XML1")
    if summary is None:
        return
    start, end = summary[1].get("NGAY_VAO"), summary[1].get("NGAY_RA")
    if start is None or end is None or start > end:
        return
    for table, name, bounded_above in _WITHIN_VISIT:
        rows = ctx.tables.get(table)
        if not rows:
            continue
        for typed in rows.typed:
            when = typed.get(name)
            # Results may arrive after discharge (annex XML3/XML4 NGAY_KQ), so those are bounded below only.
            if when is not None and (when < start or (bounded_above and when > end)):
                ctx.add("R303", table=table, field=name, value=when, start=_show(start),
                        end=_show(end) if bounded_above else "…")
    for table, name in _AFTER_ORDER:
        rows = ctx.tables.get(table)
        if not rows:
            continue
        for typed in rows.typed:
            when, ordered = typed.get(name), typed.get("NGAY_YL")
            if when is not None and ordered is not None and when < ordered:
                ctx.add("R304", table=table, field=name, value=when, reference="NGAY_YL",
                        reference_value=_show(ordered))


@rule
def treatment_days(ctx: VisitContext) -> None:
    summary = ctx.one("XML1")
    if summary is None:
        return
    raw, typed = summary
    days, visit_type = typed.get("SO_NGAY_DTRI"), raw.get("MA_LOAI_KCB", "").zfill(2)
    if days is None:
        return
    spec = semantics()["visit_rules"]["treatment_days"]
    expected: int | None = None
    if visit_type in spec["zero"]:
        expected = 0
    elif visit_type in spec["span_plus_one"] and typed.get("NGAY_VAO") and typed.get("NGAY_RA"):
        expected = (typed["NGAY_RA"].date() - typed["NGAY_VAO"].date()).days + 1
    if expected is not None and days != expected:
        ctx.add("R305", table="XML1", field="SO_NGAY_DTRI", value=days, visit_type=visit_type, expected=expected)


@rule
def reexam_after_discharge(ctx: VisitContext) -> None:
    reexam, summary = ctx.one("XML14"), ctx.one("XML1")
    if reexam is None or summary is None:
        return
    appointment, discharge = reexam[1].get("NGAY_HEN_KL"), summary[1].get("NGAY_RA")
    if appointment is None or discharge is None:
        return
    if not isinstance(appointment, datetime):  # a day only (V217): compared by day
        discharge = discharge.date()
    if appointment < discharge:
        ctx.add("R313", table="XML14", field="NGAY_HEN_KL", value=appointment, reference_value=_show(discharge))
    elif appointment == discharge:
        ctx.add("R314", table="XML14", field="NGAY_HEN_KL", value=appointment)


# --- tables and copies ----------------------------------------------------------------------------------

@rule
def facility_matches(ctx: VisitContext) -> None:
    summary = ctx.one("XML1")
    if summary is None or ctx.facility is None:
        return
    code = summary[0].get("MA_CSKCB")
    if code and code != ctx.facility:
        ctx.add("R301", table="XML1", field="MA_CSKCB", value=code, expected=ctx.facility)


@cache
def _required_tables(standard: Standard) -> tuple[tuple[str, tuple[Callable[[dict[str, str]], bool], ...], str], ...]:
    """(table, its conditions compiled, their description) for the tables this version has."""
    out = []
    for requirement in semantics()["visit_rules"]["required_tables"]:
        if requirement["table"] not in standard.tables:
            continue
        clauses = [Condition(c["field"], c["op"], tuple(c.get("values", ()))) for c in requirement["when"]]
        out.append((requirement["table"], tuple(c.compile() for c in clauses),
                    ", ".join(c.describe() for c in clauses)))
    return tuple(out)


@rule
def required_tables(ctx: VisitContext) -> None:
    summary = ctx.one("XML1")
    if summary is None:
        return
    for table, tests, condition in _required_tables(ctx.standard):
        if table not in ctx.tables and all(test(summary[0]) for test in tests):
            ctx.add("R311", table=table, condition=condition)


@cache
def copied_fields(standard: Standard) -> dict[str, tuple[str, ...]]:
    """Fields the portal sheet marks 'must equal Bảng 1 when given', per table."""
    marker = semantics()["visit_rules"]["copy_rule_marker"]
    extra = semantics()["visit_rules"]["copy_extra"]
    xml1 = standard.tables["XML1"].by_name
    return {t.id: tuple(f.name for f in t.fields
                        if (marker in f.portal_check_vi or f.name in extra.get(t.id, ())) and f.name in xml1)
            for t in standard.tables.values() if t.id != "XML1"}


@rule
def copies_match(ctx: VisitContext) -> None:
    summary = ctx.one("XML1")
    if summary is None:
        return
    head = summary[0]
    for table, names in copied_fields(ctx.standard).items():
        rows = ctx.tables.get(table)
        if not rows or not names:
            continue
        for raw in rows.raw:
            for name in names:
                value = raw.get(name)
                if value and value != head.get(name, ""):
                    ctx.add("R312", table=table, field=name, value=value)


@rule
def line_numbering(ctx: VisitContext) -> None:
    for table_id in ("XML2", "XML3", "XML4", "XML5", "XML15"):
        rows = ctx.tables.get(table_id)
        if not rows:
            continue
        for position, typed in enumerate(rows.typed, start=1):
            number = typed.get("STT")
            if number is not None and number != position:
                ctx.add("R317", table=table_id, field="STT", value=number, position=position)
                break


# --- the citizen and the card ---------------------------------------------------------------------------

# TT 07/2016/TT-BCA: the 4th digit gives sex (even male, odd female) and century (0-1 1900s ... 8-9 2300s).
_CENTURY_BY_DIGIT = {0: 1900, 1: 1900, 2: 2000, 3: 2000, 4: 2100, 5: 2100, 6: 2200, 7: 2200, 8: 2300, 9: 2300}


@rule
def person_id_consistent(ctx: VisitContext) -> None:
    summary = ctx.one("XML1")
    if summary is None:
        return
    raw, _ = summary
    number, birth, sex = raw.get("SO_CCCD", ""), raw.get("NGAY_SINH", ""), raw.get("GIOI_TINH", "")
    if len(number) != 12 or not number.isascii() or not number.isdigit() or len(birth) < 4:
        return
    code = int(number[3])
    year = _CENTURY_BY_DIGIT[code] + int(number[4:6])
    if str(year) != birth[:4]:
        ctx.add("R315", table="XML1", field="SO_CCCD", value=number, detail="NGAY_SINH (năm sinh / birth year)")
    elif sex in ("1", "2") and (code % 2 == 0) != (sex == "1"):
        ctx.add("R315", table="XML1", field="SO_CCCD", value=number, detail="GIOI_TINH (giới tính / sex)")


@rule
def insurance_cards(ctx: VisitContext) -> None:
    summary = ctx.one("XML1")
    if summary is None:
        return
    raw, typed = summary
    cards = [c for c in raw.get("MA_THE_BHYT", "").split(";") if c.strip()]
    if not cards:
        return
    for name in ("MA_DKBD", "GT_THE_TU", "GT_THE_DEN"):
        values = [v for v in raw.get(name, "").split(";") if v.strip()]
        if values and len(values) != len(cards):
            ctx.add("R319", table="XML1", field=name, count=len(values), cards=len(cards))
    starts, ends = typed.get("GT_THE_TU"), typed.get("GT_THE_DEN")
    if starts and ends and len(starts) == len(ends):
        for index, (start, end) in enumerate(zip(starts, ends, strict=True), start=1):
            if start > end:
                ctx.add("R318", table="XML1", field="GT_THE_DEN", value=end, index=index, start=_show(start),
                        end=_show(end))


def run(ctx: VisitContext) -> None:
    for check in RULES:
        check(ctx)
