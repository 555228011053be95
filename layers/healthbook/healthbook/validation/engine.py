"""Validate one submitted file: the GIAMDINHHS envelope, each HOSO (one visit) and its tables.

Every problem becomes an Issue with a catalogue code; nothing here raises on bad input. A visit is
checked against the standard version in force on its date (or the forced one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, BinaryIO

from lxml import etree

from healthbook import standard as standards
from healthbook.kernel import is_facility_code
from healthbook.parsing.safe_xml import Limits, XmlRejected, decode_base64, parse
from healthbook.standard import Standard, TableSpec
from healthbook.validation import admission, cross
from healthbook.validation.cross import TableRows, VisitContext
from healthbook.validation.fields import MEMO_LIMIT, PLAIN_UNBOUNDED, Memo, Plan, parse_date, parse_timestamp, plan
from healthbook.validation.issues import Issue, VisitIssues, make_issue
from healthbook.validation.results import FileResult, VisitResult

ENVELOPE_ROOT = "GIAMDINHHS"
SIGNATURE = "CHUKYDONVI"


@dataclass(frozen=True, slots=True)
class Options:
    standard: str = "auto"  # "auto" picks by visit date; otherwise a version id such as "4750"
    limits: Limits = Limits()  # noqa: RUF009 - Limits is frozen, sharing the default is safe

    def __post_init__(self) -> None:
        if self.standard != "auto" and self.standard not in standards.version_ids():
            raise ValueError(f"unknown standard {self.standard!r}; known: auto, {', '.join(standards.version_ids())}")


def _text(element: etree._Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip()


def _child(parent: etree._Element, tag: str) -> etree._Element | None:
    """``parent.find(tag)`` for a plain name, without the ElementPath machinery (a few times per file)."""
    return next(parent.iterchildren(tag), None)


@cache
def _newest() -> Standard:
    return standards.load(standards.version_ids()[-1])


@cache
def _standalone_roots() -> dict[str, str]:
    return {t.root: t.id for t in _newest().tables.values() if t.standalone}


@cache
def _visit_date_fields() -> tuple[str, str]:
    rules = standards.semantics()["visit_rules"]
    return rules["visit_date_field"], rules["visit_date_fallback"]


# The version in force on a day depends on the day alone: asked once per day seen, not once per visit.
_select = lru_cache(maxsize=1024)(standards.select)


DEFAULT_OPTIONS = Options()


def validate_bytes(data: bytes, *, path: str = "<bytes>", options: Options = DEFAULT_OPTIONS) -> FileResult:
    return _read(data, path, options, visits=True)


def identify(data: bytes, *, path: str = "<bytes>", options: Options = DEFAULT_OPTIONS) -> FileResult:
    """What the file is and whose, without reading a visit: its kind and facility (the envelope's MACSKCB, or a
    standalone document's first MA_CSKCB), and only the problems that stop it being read at all. For a file
    refused before its content matters (a signature that does not hold): the receipt names the file and why."""
    return _read(data, path, options, visits=False)


def _read(data: bytes, path: str, options: Options, *, visits: bool) -> FileResult:
    result = FileResult(path=path, size=len(data))
    try:
        root = parse(data, limit=options.limits.max_file_bytes)
    except XmlRejected as rejected:
        result.errors.append(make_issue(rejected.code, **rejected.params))
        return result
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag == ENVELOPE_ROOT:
        result.kind = "claim"
        if visits:
            _validate_envelope(root, result, options)
        else:
            facility = _text(root.find("THONGTINDONVI/MACSKCB"))
            result.facility = facility if facility and is_facility_code(facility) else None
    elif tag in _standalone_roots():
        table_id = _standalone_roots()[tag]
        result.kind = "checkin" if table_id == "XML0" else "assessment"
        if visits:
            _validate_standalone(root, table_id, result, options)
        else:
            result.facility = _text(next(root.iter("MA_CSKCB"), None)) or None  # the first record's
    else:
        expected = " | ".join([ENVELOPE_ROOT, *_standalone_roots()])
        result.errors.append(make_issue("E006", root=tag, expected=expected))
    return result


# --- envelope -------------------------------------------------------------------------------------------

def _finder(root: etree._Element, parent: str) -> Callable[[str], etree._Element | None]:
    """``root.find(f"{parent}/{name}")`` for the names asked: when ``parent`` occurs once, as it does, its children
    are looked at directly rather than through the ElementPath machinery each time."""
    parents = list(root.iterchildren(parent))
    if len(parents) == 1:
        only = parents[0]
        return lambda name: _child(only, name)
    return lambda name: root.find(f"{parent}/{name}")


def _validate_envelope(root: etree._Element, result: FileResult, options: Options) -> None:
    errors = result.errors
    facility = _text(_finder(root, "THONGTINDONVI")("MACSKCB"))
    if not facility:
        errors.append(make_issue("E007", element="THONGTINDONVI/MACSKCB"))
    elif not is_facility_code(facility):
        errors.append(make_issue("E008", field="MACSKCB", value=facility))
    else:
        result.facility = facility
    about = _finder(root, "THONGTINHOSO")
    created = _text(about("NGAYLAP"))
    if not created:
        errors.append(make_issue("E007", element="THONGTINHOSO/NGAYLAP"))
    elif parse_date(created) is None:
        errors.append(make_issue("E009", field="NGAYLAP", value=created))
    listing = about("DANHSACHHOSO")
    hoso = [] if listing is None else [e for e in listing if e.tag == "HOSO"]
    if len(hoso) > options.limits.max_visits:  # before any visit is read: the work per file is bounded
        errors.append(make_issue("E019", count=len(hoso), limit=options.limits.max_visits))
        return
    declared = _text(about("SOLUONGHOSO"))
    if declared is None:
        errors.append(make_issue("E007", element="THONGTINHOSO/SOLUONGHOSO"))
    elif declared != str(len(hoso)):
        errors.append(make_issue("E010", field="SOLUONGHOSO", value=declared, declared=declared, actual=len(hoso)))
    if listing is None:
        errors.append(make_issue("E007", element="THONGTINHOSO/DANHSACHHOSO"))
    elif not hoso:
        errors.append(make_issue("E011"))
    seen: set[str] = set()
    for index, element in enumerate(hoso, start=1):
        visit = _validate_hoso(element, index, result.facility, options)  # None when MACSKCB is unusable
        if visit.ma_lk and visit.ma_lk in seen:
            visit.issues.append(make_issue("E017", table="XML1", ma_lk=visit.ma_lk, field="MA_LK", value=visit.ma_lk))
        seen.add(visit.ma_lk)
        result.visits.append(visit)


Payload = str | etree._Element | None  # NOIDUNGFILE's base64 text, or the table written inline as elements


def _payload(element: etree._Element | None) -> Payload:
    """What NOIDUNGFILE holds: its text (base64, as CV 1245 asks), or the inner document's root when the HIS
    wrote the table inline as one child element (S107, read as it is)."""
    if element is None:
        return None
    if not len(element):
        return element.text or ""
    children = [child for child in element if isinstance(child.tag, str)]
    if len(children) == 1 and not (element.text or "").strip() and not (children[0].tail or "").strip():
        return children[0]
    return element.text or ""


def _decode(table: str, content: Payload, spec_root: str, limits: Limits) -> etree._Element:
    if isinstance(content, etree._Element):
        root = content
        if root.tag != spec_root:
            raise XmlRejected("E006", root=root.tag if isinstance(root.tag, str) else "", expected=spec_root)
        return root
    raw = decode_base64(content, limit=limits.max_inner_bytes, table=table)
    root = parse(raw, limit=limits.max_inner_bytes)
    if root.tag != spec_root:
        raise XmlRejected("E006", root=root.tag if isinstance(root.tag, str) else "", expected=spec_root)
    return root


def _choose(forced: str, summary: dict[str, str]) -> tuple[Standard, bool]:
    if forced != "auto":
        return standards.load(forced), True
    for name in _visit_date_fields():
        when = parse_timestamp(summary.get(name, ""))
        if when is not None:
            return _select(when.date()), True
    return _select(None), False


def _validate_hoso(element: etree._Element, index: int, facility: str | None, options: Options) -> VisitResult:
    visit = _read_hoso(element, index, facility, options)
    visit.issues.summarise()
    return visit


def _read_hoso(element: etree._Element, index: int, facility: str | None, options: Options) -> VisitResult:
    visit = VisitResult(ma_lk="", standard=None)
    documents: dict[str, Payload] = {}
    early: list[Issue] = []
    for item in element:
        if item.tag != "FILEHOSO":
            continue
        kind = (_text(_child(item, "LOAIHOSO")) or "").upper()
        if not kind:
            early.append(make_issue("E007", element=f"HOSO[{index}]/FILEHOSO/LOAIHOSO"))
            continue
        if kind in documents:
            early.append(make_issue("E014", table=kind))
            continue
        documents[kind] = _payload(_child(item, "NOIDUNGFILE"))
        if isinstance(documents[kind], etree._Element):
            early.append(make_issue("S107", table=kind))
    if "XML1" not in documents:
        visit.issues.extend(early)
        visit.issues.append(make_issue("E015", table="XML1", index=index))
        return visit

    # XML1 first: it carries MA_LK and the date that chooses the standard version.
    try:
        summary_root = _decode("XML1", documents["XML1"], standards.document_root("XML1"), options.limits)
    except XmlRejected as rejected:
        visit.issues.extend(early)
        visit.issues.append(make_issue(rejected.code, table="XML1", **rejected.params))
        return visit
    summary_raw = _summary_keys(summary_root)
    visit.ma_lk = summary_raw.get("MA_LK", "")
    standard, dated = _choose(options.standard, summary_raw)
    visit.standard = standard.id
    for issue in early:
        issue.ma_lk = visit.ma_lk
    visit.issues.extend(early)
    if not dated:
        visit.issues.append(make_issue("R320", table="XML1", ma_lk=visit.ma_lk, standard=standard.id))

    broken: set[str] = set()
    for kind, content in documents.items():
        spec = standard.tables.get(kind)
        if spec is None or spec.standalone:
            visit.issues.append(make_issue("E013", table=kind, ma_lk=visit.ma_lk, loai=kind, standard=standard.id))
            continue
        try:
            root = summary_root if kind == "XML1" else _decode(kind, content, spec.root, options.limits)
        except XmlRejected as rejected:
            visit.issues.append(make_issue(rejected.code, table=kind, ma_lk=visit.ma_lk, **rejected.params))
            broken.add(kind)
            continue
        visit.tables[kind] = _check_table(spec, standard, root, visit.ma_lk, visit.issues)

    cross.run(VisitContext(standard=standard, ma_lk=visit.ma_lk, facility=facility, tables=visit.tables,
                           issues=visit.issues, broken=broken))
    admission.admit(standard, visit.tables, visit.ma_lk, visit.issues)
    return visit


def _raw_values(row: etree._Element) -> dict[str, str]:
    return {c.tag: (c.text or "").strip() for c in row if isinstance(c.tag, str)}


def _summary_keys(summary: etree._Element) -> dict[str, str]:
    """``_raw_values`` of XML1 for the names read before its table is checked: MA_LK and the visit's dates."""
    return {c.tag: (c.text or "").strip() for c in summary.iterchildren("MA_LK", *_visit_date_fields())}


# --- one table ------------------------------------------------------------------------------------------

def _rows_of(spec: TableSpec, root: etree._Element, ma_lk: str, issues: list[Issue]) -> list[etree._Element]:
    if spec.flat:
        return [root]
    listing = _child(root, spec.list) if spec.list else None
    if listing is None:
        issues.append(make_issue("S106", table=spec.id, ma_lk=ma_lk, element=spec.list))
        return []
    rows = list(listing.iterchildren(spec.row)) if spec.row else []
    if not rows:
        issues.append(make_issue("S105", table=spec.id, ma_lk=ma_lk))
    return rows


Predicate = Callable[[dict[str, str]], bool]


def _both(first: Predicate, second: Predicate) -> Predicate:
    return lambda row: first(row) and second(row)


def _every(tests: tuple[Predicate, ...]) -> Predicate:
    return lambda row: all(test(row) for test in tests)


def _conditional(spec: TableSpec) -> tuple[tuple[str, Predicate, str], ...]:
    """(field, does-the-condition-hold, description) for conditionally required fields."""
    compiled = []
    for field in spec.fields:
        if not field.required_when:
            continue
        tests = [c.compile() for c in field.required_when]
        if len(tests) == 1:
            applies = tests[0]
        else:
            first, second, *rest = tests
            applies = _both(first, second) if not rest else _every(tuple(tests))
        compiled.append((field.name, applies, ", ".join(c.describe() for c in field.required_when)))
    return tuple(compiled)


@dataclass(frozen=True, slots=True, eq=False)
class _TablePlan:
    """Everything checking one table needs that depends on the standard version and the table alone, built on
    first use and kept: the fields' plans, the required and conditional fields, the known names."""

    plans: dict[str, Plan]  # every field's plan (fields.plan), and no maximum length for the signature element
    required: frozenset[str]
    conditional: tuple[tuple[str, Predicate, str], ...]
    check_key: bool  # whether a row's MA_LK must equal XML1's (S104)
    known: frozenset[str]  # the table's fields and the signature element


@cache
def _table_plan(standard: Standard, spec: TableSpec) -> _TablePlan:
    return _TablePlan(
        plans={SIGNATURE: PLAIN_UNBOUNDED, **plan(standard, spec.id)},
        required=frozenset(f.name for f in spec.fields if f.required),
        conditional=_conditional(spec),
        check_key=spec.id != "XML1" and not spec.no_visit_key and "MA_LK" in spec.by_name,
        known=frozenset(spec.by_name.keys() | {SIGNATURE}),
    )


def _check_table(spec: TableSpec, standard: Standard, root: etree._Element, ma_lk: str,
                 issues: VisitIssues) -> TableRows:
    """Field rules for every row of one table. The hot loop: keep it lean (see bench/validate.py)."""
    table_id = spec.id
    table = _table_plan(standard, spec)
    plans, required, conditional, check_key, known = (table.plans, table.required, table.conditional,
                                                       table.check_key, table.known)
    unknown_reported: set[str] = set()
    out = TableRows()
    for row in _rows_of(spec, root, ma_lk, issues):
        children = list(row)
        every = {child.tag: child.text for child in children}
        lookup = plans
        # Repeated, unknown (even empty) or nested elements send the row down the slow path. (A nested signature
        # element does too: the slow path passes over it.)
        if len(every) != len(children) or not every.keys() <= known or any(map(len, children)):
            _structure_issues(spec, standard, row, every, ma_lk, issues, unknown_reported)
            if not every.keys() <= known:
                lookup = {**plans, **dict.fromkeys(every.keys() - known, PLAIN_UNBOUNDED)}
        # ``every`` becomes the row's values: non-empty ones only (absent, empty and blank are all "no value"),
        # stripped. Done in place as the fields are read, the empty ones dropped after: most need nothing.
        raw: dict[str, str] = every  # type: ignore[assignment]  # strings only, once the empty are dropped
        typed: dict[str, Any] = {}
        empty: list[str] = []
        for tag, text in every.items():
            if not text:
                empty.append(tag)
                continue
            memo = lookup[tag]
            if type(memo) is Memo:
                # Only valid values are memoised, as their typed value, and only stripped ones: a value found
                # as it stands has nothing to strip.
                value = memo.get(text)
                if value is None:
                    stripped = text.strip()
                    if stripped is not text:
                        every[tag] = stripped
                        if not stripped:
                            empty.append(tag)
                            continue
                        text = stripped
                        value = memo.get(text)
                    if value is None:
                        value, problem = memo.check(text)
                        if problem is not None:
                            code, params = problem
                            if issues.room(code, table_id, tag, ma_lk):
                                issues.append(make_issue(code, table=table_id, ma_lk=ma_lk, field=tag,
                                                         value=params.get("_value", text), **params))
                            if value is None:
                                continue
                        elif len(memo) < MEMO_LIMIT:
                            memo[text] = value
                typed[tag] = value
                continue
            stripped = text.strip()
            if stripped is not text:
                every[tag] = stripped
                if not stripped:
                    empty.append(tag)
                    continue
                text = stripped
            # A plain string: only its length is checked (the signature and an element the standard lacks, reported
            # by the slow path, have no maximum).
            if len(text) > memo and issues.room("V202", table_id, tag, ma_lk):  # type: ignore[operator]
                issues.append(make_issue("V202", table=table_id, ma_lk=ma_lk, field=tag, value=text,
                                         length=len(text), max_length=memo))
        for tag in empty:
            del raw[tag]
        if not raw.keys() >= required:  # (frozenset.issubset would copy the keys into a set first)
            for name in sorted(required - raw.keys(), key=spec.field_names().index):
                if issues.room("V201", table_id, name, ma_lk):
                    issues.append(make_issue("V201", table=table_id, ma_lk=ma_lk, field=name))
        for name, applies, condition in conditional:
            if name not in raw and applies(raw) and issues.room("V201", table_id, name, ma_lk):
                issues.append(make_issue("V201", table=table_id, ma_lk=ma_lk, field=name,
                                         condition_vi=f" (bắt buộc khi {condition})",
                                         condition_en=f" (required when {condition})"))
        if check_key and raw.get("MA_LK") and raw["MA_LK"] != ma_lk and issues.room("S104", table_id, "MA_LK", ma_lk):
            issues.append(make_issue("S104", table=table_id, ma_lk=ma_lk, field="MA_LK", value=raw["MA_LK"]))
        out.raw.append(raw)
        out.typed.append(typed)
    return out


def _structure_issues(spec: TableSpec, standard: Standard, row: etree._Element, every: dict[str, str | None],
                      ma_lk: str, issues: VisitIssues, unknown_reported: set[str]) -> None:
    """The slow path, for a row that repeats an element, holds a nested one or one the standard lacks."""
    seen: set[str] = set()
    for child in row:
        tag = str(child.tag)
        if tag == SIGNATURE:
            continue
        if tag not in spec.by_name and tag not in unknown_reported:
            unknown_reported.add(tag)
            issues.append(make_issue("S101", table=spec.id, ma_lk=ma_lk, field=tag, standard=standard.id))
        if tag in seen:
            issues.append(make_issue("S102", table=spec.id, ma_lk=ma_lk, field=tag))
        seen.add(tag)
        if len(child):
            issues.append(make_issue("S103", table=spec.id, ma_lk=ma_lk, field=tag))
            every[tag] = None  # a nested element holds no value of its own


# --- standalone documents (check-in table, medical assessment) -----------------------------------------

def _validate_standalone(root: etree._Element, table_id: str, result: FileResult, options: Options) -> None:
    newest = standards.load(standards.version_ids()[-1])
    spec = newest.tables[table_id]
    rows = _rows_of(spec, root, "", result.errors)
    if len(rows) > options.limits.max_visits:  # one visit per record: bounded before any is read
        result.errors.append(make_issue("E019", count=len(rows), limit=options.limits.max_visits))
        return
    for row in rows:
        raw = _raw_values(row)
        ma_lk = raw.get("MA_LK", "")
        standard, _ = _choose(options.standard, raw) if table_id == "XML0" else (newest, True)
        table = standard.tables.get(table_id)
        visit = VisitResult(ma_lk=ma_lk, standard=standard.id)
        if table is None:
            visit.issues.append(make_issue("E013", table=table_id, ma_lk=ma_lk, loai=table_id, standard=standard.id))
        else:
            # Re-wrap the single row so the table checker sees one record.
            holder = etree.Element(spec.list or "LIST")
            holder.append(row)
            wrapper = etree.Element(spec.root)
            wrapper.append(holder)
            visit.tables[table_id] = _check_table(table, standard, wrapper, ma_lk, visit.issues)
            visit.issues.summarise()
        if result.facility is None and raw.get("MA_CSKCB"):
            result.facility = raw["MA_CSKCB"]
        result.visits.append(visit)


def validate_path(path: str, options: Options = DEFAULT_OPTIONS) -> FileResult:
    """Read a file with the size limit enforced before reading it whole."""
    size = os.path.getsize(path)
    if size > options.limits.max_file_bytes:
        result = FileResult(path=path, size=size)
        result.errors.append(make_issue("E002", size=size, limit=options.limits.max_file_bytes))
        return result
    # At most the size seen and a byte: read(limit) would allocate the limit first. Unbuffered, it is read straight
    # into the bytes kept (a buffered file costs twice as many system calls).
    with open(path, "rb", buffering=0) as fh:
        data = _read_at_most(fh, size + 1)
    return validate_bytes(data, path=path, options=options)


def _read_at_most(fh: BinaryIO, count: int) -> bytes:
    """Up to ``count`` bytes, fewer only at the end of the file (one read a regular file, then one that finds the
    end, as a buffered read did)."""
    chunks = []
    while count > 0 and (chunk := fh.read(count)):
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
