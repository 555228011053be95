"""HIS export mode: synthetic claim files shaped like what hospital information systems really export (2026).

Every shape measured in shared/spec/real-world-shapes.md (1,152 envelopes of one facility, February–March 2026,
and 3 of a second facility) is reproduced at about its measured frequency, with invented people only (the
generator's vocabulary). Each file is labelled with the shapes it applied and the genuine defects it plants, each
defect with the code, table, field and value a report is expected to name.

    healthbook generate --his-export --visits 600 --out corpus/ [--seed 0] [--facility 92001]

writes one file per visit plus manifest.json (per file: style, tables, shapes, defects). In code:
``his_export_batch(seed, visits)`` returns the files as ``HisExport`` objects.

Counts below are the measured ones, over the sample they were measured on; shares marked "ours" are choices where
the sample says "some", "rare" or nothing. Scaled counts are exact per corpus (round(count × visits / 1,152)),
so a corpus holds each shape as often as the sample did, not merely on average.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from healthbook import standard as standards

from healthbook_dev.generate import vocab
from healthbook_dev.generate.defects import Defect
from healthbook_dev.generate.visit import Row, Visit, build_visit, cost_totals, record_summary, set_everywhere
from healthbook_dev.generate.writer import FREE_TEXT, envelope, table_document

__all__ = ["HIS_A", "INLINE", "STYLES", "WRAPPED", "HisExport", "his_export_batch"]

SAMPLE_FILES = 1152  # the first facility's envelopes, one visit each
SAMPLE_DOCUMENTS = 4659  # the inner documents they hold

# --- envelope and encoding --------------------------------------------------------------------------------------
BOM_FILES = 4  # of SAMPLE_FILES: a UTF-8 byte-order mark before the XML declaration
INNER_DECLARATION = 26  # of SAMPLE_DOCUMENTS: an inner document starting with <?xml …?>
INNER_XSI_WITH_SPACE = 2319  # of SAMPLE_DOCUMENTS: the inner root declares XSI_WITH_SPACE
INNER_CRLF = 24  # of SAMPLE_DOCUMENTS
INNER_CDATA = 34  # of SAMPLE_DOCUMENTS
XSI_WITH_SPACE = b'xmlns:xsi="http://www.w3.org/2001/XMLSchema instance"'  # a space, not a hyphen: not a URI
BOM = b"\xef\xbb\xbf"

# Export styles. HIS_A is the measured facility's (base64 on one line); other HIS wrap base64 at 76 columns (none in
# the sample); the second facility writes every table inline in NOIDUNGFILE, CDATA inside (3 of its 3 files).
HIS_A, WRAPPED, INLINE = "his_a", "base64_76", "inline"
STYLES = (HIS_A, WRAPPED, INLINE)
STYLE_SHARES = {WRAPPED: 0.05, INLINE: 0.02}  # ours: a corpus of a few hundred files holds several of each

# --- which tables a visit carries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    tables: tuple[str, ...]
    visits: int  # of SAMPLE_FILES
    scenario: str  # what build_visit is asked for


def _mix(tables: str, visits: int, scenario: str) -> Mix:
    return Mix(tuple(f"XML{number}" for number in tables.split("+")), visits, scenario)


MIXES = (  # the measured mixes, then ours for the 142 "others", chosen so the per-table totals stay close to the
    # sample's (XML2 1,006 of 1,024; XML4 430; XML5 4; XML7 155; XML8 143; XML9 57; XML13 6; XML14 512 of 536)
    # and MA_LOAI_KCB matches it (03: 188, 02: 12, 01: 952), 45 inpatient stays (03) lacking XML8 as in the sample.
    _mix("1+2+3", 338, "outpatient"),
    _mix("1+2+3+14", 294, "outpatient_reexam"),
    _mix("1+2+3+4+14", 130, "outpatient_reexam"),
    _mix("1+2+3+4", 84, "outpatient"),
    _mix("1+2+3+4", 33, "inpatient"),
    _mix("1+2+3+4", 12, "outpatient_treatment"),
    _mix("1+2+3+4+7+8", 49, "inpatient"),
    _mix("1+3", 42, "outpatient"),
    _mix("1+2+3+4+7+8+9+14", 28, "birth"),
    _mix("1+2+3+4+7+8+9", 20, "birth"),
    _mix("1+3+4+7+8+9", 9, "birth"),
    _mix("1+3+4+7+8+14", 16, "inpatient"),
    _mix("1+3+4+5+7+8+14", 4, "inpatient"),
    _mix("1+3+7+8", 17, "inpatient"),
    _mix("1+2+3+4+7", 12, "inpatient"),
    _mix("1+3+4+14", 15, "outpatient_reexam"),
    _mix("1+3+14", 25, "outpatient_reexam"),
    _mix("1+2+3+13", 6, "referral"),
    _mix("1+3+4", 18, "outpatient"),
)
# Ours: uninsured visits (XML1 and XML8 only, sent since 1 January 2026 under QĐ 31/QĐ-BYT); the sample has none
# (every one of its visits has XML3).
UNINSURED_SHARE = 0.03
UNINSURED_DOITUONG = "9"  # assumed: QĐ 3276's MA_DOITUONG_KCB list is not available here

# --- values ------------------------------------------------------------------------------------------------------
NO_CITIZEN_ID = 237  # of SAMPLE_FILES: SO_CCCD empty (identity through the insurance card)
SHORT_CARDS = {10: 1, 14: 1}  # of SAMPLE_FILES: MA_THE_BHYT of 10 and of 14 characters (the rest 15)
XML1_REMAINDERS = 53  # of SAMPLE_FILES: XML1 T_BNCCT written -0.00 / -0.01 (rounding remainders)
XML2_REMAINDERS = 74  # XML2 lines over SAMPLE_FILES with such a T_BNCCT
REMAINDERS = ("-0.00", "-0.01")  # ours: the split between the two
T_THUOC_DIFFERS = 0.5  # of files with XML2: T_THUOC is not the sum of XML2 THANH_TIEN_BV ("about half")
INTEGER_AMOUNTS = 0.15  # ours ("some integers"): files writing whole amounts without decimals
JOINED_PRACTITIONERS = 0.1  # ours ("sometimes"): XML3 lines naming two practising certificates joined by ';'
# Measured values in the order the sample lists them; the weights are ours.
DOITUONG_WEIGHTS = {"1.12": 40, "3.3": 20, "1.1": 12, "1.13": 8, "1.15": 6, "1.16": 5, "3.5": 3, "3.7": 3,
                    "1.2": 2, "02": 1}
HOME_PROVINCE = 0.7  # ours: share of patients living in the facility's province
PRACTITIONER_FIELDS = ("MA_BAC_SI", "NGUOI_THUC_HIEN", "MA_BS_DOC_KQ", "MA_TTDV", "MA_BS")
# (table, field): (empty, of rows) as measured; fields the portal sheet marks required, often empty in real files.
EMPTY_FIELDS = {
    ("XML2", "HAM_LUONG"): (3581, 4363), ("XML2", "DUONG_DUNG"): (685, 4363), ("XML2", "DANG_BAO_CHE"): (4044, 4363),
    ("XML3", "MA_BENH"): (1684, 2934), ("XML4", "TEN_CHI_SO"): (546, 8920), ("XML4", "GIA_TRI"): (3569, 8920),
    ("XML1", "CHAN_DOAN_VAO"): (73, 1152), ("XML1", "LY_DO_VV"): (52, 1152), ("XML1", "CAN_NANG"): (43, 1152),
    ("XML8", "QT_BENHLY"): (139, 143), ("XML7", "SO_LUU_TRU"): (151, 155),
}

# --- genuine defects (planted and labelled) ---------------------------------------------------------------------
DECIMAL_COMMA_LINES = 14  # of SAMPLE_FILES: an amount written with a decimal comma
MA_NHOM_UNDEFINED = 12  # XML2 lines with MA_NHOM "undefined"
MA_NHOM_LABEL = 1  # XML2 lines with MA_NHOM "Nhóm 1"
NO_MAIN_DIAGNOSIS = 26  # of SAMPLE_FILES: MA_BENH_CHINH empty
NO_IDENTITY = 1  # ours ("rare"): neither SO_CCCD nor MA_THE_BHYT
REFERRAL_REASON = "1. Đủ điều kiện chuyển tuyến"  # XML13 MA_LYDO_CT: the code followed by its label, every time

# Visit dates: the sample's months (post-reform rules apply); the second facility's files span Dec 2025 – Mar 2026.
FIRST_DAY, INLINE_FIRST_DAY, LAST_DAY = date(2026, 2, 1), date(2025, 12, 1), date(2026, 3, 21)
DEFAULT_FACILITY, DEFAULT_INLINE_FACILITY = vocab.FACILITIES[6], vocab.FACILITIES[2]  # 92001 (Cần Thơ), 79001

Facility = tuple[str, str, str]
T = TypeVar("T")
_PROVINCES = {province[0]: province for province in vocab.PROVINCES_2025}


@dataclass(frozen=True)
class HisExport:
    """One export file and its labels."""

    file: str
    ma_lk: str
    facility: str
    style: str  # one of STYLES
    tables: tuple[str, ...]
    shapes: tuple[str, ...]  # e.g. "bom", "uninsured", "no_so_cccd", "xsi_with_space:XML3", "empty:XML2.HAM_LUONG"
    defects: tuple[Defect, ...]  # genuine defects, each with the issue it must be reported as
    body: bytes = field(repr=False)

    def label(self) -> dict[str, Any]:
        return {"file": self.file, "ma_lk": self.ma_lk, "facility": self.facility, "style": self.style,
                "tables": list(self.tables), "shapes": list(self.shapes),
                "defects": [defect.label() for defect in self.defects]}


@dataclass
class _Draft:
    visit: Visit
    style: str
    province: str  # the facility's
    shapes: list[str] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    documents: dict[str, set[str]] = field(default_factory=dict)  # table -> inner-document shapes

    @property
    def summary(self) -> Row:
        return self.visit.tables["XML1"][0]

    @property
    def insured(self) -> bool:
        return bool(self.summary.get("MA_THE_BHYT"))

    def has(self, table: str) -> bool:
        return bool(self.visit.tables.get(table))


def his_export_batch(seed: int | random.Random, visits: int, *, facility: Facility = DEFAULT_FACILITY,
                     inline_facility: Facility = DEFAULT_INLINE_FACILITY) -> list[HisExport]:
    """``visits`` export files, one visit each, shaped and labelled as the module docstring says."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    styles = [style for style, share in STYLE_SHARES.items() for _ in range(round(visits * share))]
    styles += [HIS_A] * (visits - len(styles))
    rng.shuffle(styles)
    uninsured = round(visits * UNINSURED_SHARE)
    mixes: list[Mix | None] = [*_apportion(MIXES, visits - uninsured), *[None] * uninsured]
    rng.shuffle(mixes)
    drafts = [_draft(rng, mix, style, inline_facility if style == INLINE else facility)
              for mix, style in zip(mixes, styles, strict=True)]
    for draft in drafts:
        _real_values(rng, draft)
    _counted_shapes(rng, drafts)
    _plant_defects(rng, drafts)
    _integer_amounts(rng, drafts)  # last: only amounts still written "N.00" lose their decimals
    _document_shapes(rng, drafts)
    return [_export(draft, number) for number, draft in enumerate(drafts, start=1)]


def _scaled(count: int, visits: int) -> int:
    return round(count * visits / SAMPLE_FILES)


def _pick(rng: random.Random, population: Sequence[T], count: int) -> list[T]:
    return rng.sample(population, max(0, min(count, len(population))))


def _apportion(mixes: Sequence[Mix], visits: int) -> list[Mix]:
    """``visits`` mixes in the sample's proportions (largest remainders)."""
    quotas = [(mix, mix.visits * visits / SAMPLE_FILES) for mix in mixes]
    counts = {mix: int(quota) for mix, quota in quotas}
    by_remainder = sorted(quotas, key=lambda item: item[1] - int(item[1]), reverse=True)
    for mix, _ in by_remainder[:visits - sum(counts.values())]:
        counts[mix] += 1
    return [mix for mix in mixes for _ in range(counts[mix])]


# --- one visit -----------------------------------------------------------------------------------------------------

def _draft(rng: random.Random, mix: Mix | None, style: str, facility: Facility) -> _Draft:
    scenario, wanted = (mix.scenario, set(mix.tables)) if mix else ("outpatient", {"XML1", "XML3"})
    first = INLINE_FIRST_DAY if style == INLINE else FIRST_DAY
    for _ in range(100):  # the builder draws its lines at random: XML2 or XML4 may be missing; draw again
        day = first + timedelta(days=rng.randint(0, (LAST_DAY - first).days))
        start = datetime(day.year, day.month, day.day, rng.randint(7, 15), rng.randint(0, 59))
        visit = build_visit(rng, scenario=scenario, standard=standards.select(day).id, facility=facility,
                            start=start, reexam="XML14" in wanted)
        if wanted <= visit.tables.keys():
            break
    else:
        raise RuntimeError(f"no {scenario} visit with {sorted(wanted)} in 100 draws")
    draft = _Draft(visit, style, facility[2])
    if mix is None:
        _uninsured(visit)
        draft.shapes.append("uninsured")
    else:
        for table in [t for t in visit.tables if t not in wanted]:
            del visit.tables[table]
        draft.summary.update(cost_totals(visit.tables.get("XML2", []), visit.tables["XML3"]))
    return draft


def _uninsured(visit: Visit) -> None:
    """No insurance card: the patient pays everything, and only XML1 and XML8 are sent (QĐ 31/QĐ-BYT)."""
    summary = visit.tables["XML1"][0]
    totals = cost_totals(visit.tables.get("XML2", []), visit.tables["XML3"])
    visit.tables = {"XML1": [summary]}
    summary.update({"MA_THE_BHYT": "", "MA_DKBD": "", "GT_THE_TU": "", "GT_THE_DEN": "", **totals,
                    "T_TONGCHI_BH": "0.00", "T_BNCCT": "0.00", "T_BHTT": "0.00",
                    "T_BNTT": totals["T_TONGCHI_BV"], "MA_DOITUONG_KCB": UNINSURED_DOITUONG})
    visit.tables["XML8"] = [record_summary(summary)]


def _real_values(rng: random.Random, draft: _Draft) -> None:
    """What every real file does: post-reform address, practising certificates, 8-digit re-exam day, T_BHTT_GDV 0."""
    visit, summary = draft.visit, draft.summary
    home = _PROVINCES.get(draft.province, vocab.PROVINCES_2025[0])
    others = [p for p in vocab.PROVINCES_2025 if p is not home]
    code, province, _, communes = home if rng.random() < HOME_PROVINCE else rng.choice(others)
    commune_code, commune = rng.choice(communes)
    address = f"Số {rng.randint(1, 300)} đường {rng.choice(vocab.STREETS)}, {commune}, {province}"
    for name, value in (("DIA_CHI", address), ("MATINH_CU_TRU", code), ("MAHUYEN_CU_TRU", ""),
                        ("MAXA_CU_TRU", commune_code)):
        set_everywhere(visit, name, value)
    for row in visit.tables.get("XML9", []):
        row["NOI_CU_TRU_NND"] = address
    _practising_certificates(rng, visit, home[2])
    if draft.insured:
        category = rng.choices(list(DOITUONG_WEIGHTS), list(DOITUONG_WEIGHTS.values()))[0]
        set_everywhere(visit, "MA_DOITUONG_KCB", category)
    for row in visit.tables.get("XML14", []):
        row["NGAY_HEN_KL"] = row["NGAY_HEN_KL"][:8]  # yyyyMMdd in every real re-exam paper
    summary["T_BHTT_GDV"] = "0"


def _practising_certificates(rng: random.Random, visit: Visit, abbreviation: str) -> None:
    """Practitioners as their practising-certificate numbers (``004078/CT-CCHN``), where the builder wrote a
    code or a social-insurance number; now and then two joined by ';'."""
    def certificate() -> str:
        return f"{rng.randint(1, 9999):06d}/{abbreviation}-CCHN"

    rows = [row for rows in visit.tables.values() for row in rows]
    known = sorted({row[name] for row in rows for name in PRACTITIONER_FIELDS if row.get(name)})
    numbers = {code: certificate() for code in known}
    second = certificate()
    for row in rows:
        for name in PRACTITIONER_FIELDS:
            if row.get(name):
                row[name] = numbers[row[name]]
    for row in visit.tables.get("XML3", []):
        if row.get("NGUOI_THUC_HIEN") and rng.random() < JOINED_PRACTITIONERS:
            row["NGUOI_THUC_HIEN"] += f";{second}"


# --- shapes counted over the corpus --------------------------------------------------------------------------------

def _counted_shapes(rng: random.Random, drafts: list[_Draft]) -> None:
    visits = len(drafts)
    for draft in _pick(rng, drafts, _scaled(BOM_FILES, visits)):
        draft.shapes.append("bom")
    # Mothers keep their ID: XML9 repeats it (SO_CCCD_NND) and their card (MA_THE_NND).
    adults = [d for d in drafts if d.insured and not d.has("XML9")]
    for draft in _pick(rng, adults, _scaled(NO_CITIZEN_ID, visits)):
        set_everywhere(draft.visit, "SO_CCCD", "")
        draft.shapes.append("no_so_cccd")
    for length, count in SHORT_CARDS.items():
        full = [d for d in adults if len(d.summary["MA_THE_BHYT"]) == 15]
        for draft in _pick(rng, full, _scaled(count, visits)):
            card = draft.summary["MA_THE_BHYT"]
            # Either way the last 10 characters stay the social-insurance number.
            set_everywhere(draft.visit, "MA_THE_BHYT", card[-10:] if length == 10 else card[:2] + card[3:])
            draft.shapes.append(f"card_{length}")
    for (table, name), (empty, seen) in EMPTY_FIELDS.items():
        rows = [(d, row) for d in drafts for row in d.visit.tables.get(table, [])]
        missing = round(len(rows) * empty / seen) - sum(1 for _, row in rows if not row.get(name))
        for draft, row in _pick(rng, [(d, row) for d, row in rows if row.get(name)], missing):
            row[name] = ""
            if f"empty:{table}.{name}" not in draft.shapes:
                draft.shapes.append(f"empty:{table}.{name}")
    with_drugs = [d for d in drafts if d.has("XML2")]
    for draft in _pick(rng, with_drugs, round(len(with_drugs) * T_THUOC_DIFFERS)):
        # The facility's own rule, unknown to the annex: here one drug line is left out.
        draft.summary["T_THUOC"] = cost_totals(draft.visit.tables["XML2"][:-1], [])["T_THUOC"]
        draft.shapes.append("t_thuoc_differs")
    for draft in _pick(rng, [d for d in drafts if d.summary["T_BNCCT"] == "0.00" and d.insured],
                       _scaled(XML1_REMAINDERS, visits)):
        draft.summary["T_BNCCT"] = value = rng.choice(REMAINDERS)
        draft.shapes.append(f"xml1_t_bncct:{value}")
    zero_copay = [(d, lines) for d in drafts
                  if (lines := [r for r in d.visit.tables.get("XML2", []) if r["T_BNCCT"] == "0.00"])]
    for draft, lines in _pick(rng, zero_copay, _scaled(XML2_REMAINDERS, visits)):
        rng.choice(lines)["T_BNCCT"] = value = rng.choice(REMAINDERS)  # one line per file
        draft.shapes.append(f"xml2_t_bncct:{value}")


def _plant_defects(rng: random.Random, drafts: list[_Draft]) -> None:
    visits = len(drafts)
    # The inline files stay free of blocking defects: they show that the inline form alone is admitted.
    base64_files = [d for d in drafts if d.style != INLINE]
    for draft in _pick(rng, base64_files, _scaled(NO_MAIN_DIAGNOSIS, visits)):
        set_everywhere(draft.visit, "MA_BENH_CHINH", "")
        draft.defects.append(Defect("H603", "XML1", "MA_BENH_CHINH", "main diagnosis left empty"))
    anonymous = [d for d in base64_files if d.insured and not d.defects and not d.has("XML9")
                 and not any(s.startswith("card_") for s in d.shapes)]
    for draft in _pick(rng, anonymous, _scaled(NO_IDENTITY, visits)):
        set_everywhere(draft.visit, "SO_CCCD", "")
        set_everywhere(draft.visit, "MA_THE_BHYT", "")
        draft.defects.append(Defect("H601", "XML1", None, "neither SO_CCCD nor MA_THE_BHYT"))
    with_lines = [d for d in drafts if d.has("XML2") or d.has("XML3")]
    for draft in _pick(rng, with_lines, _scaled(DECIMAL_COMMA_LINES, visits)):
        table = rng.choice([t for t in ("XML2", "XML3") if draft.has(t)])
        row = rng.choice(draft.visit.tables[table])
        row["THANH_TIEN_BV"] = value = row["THANH_TIEN_BV"].replace(".", ",")
        draft.defects.append(Defect("V203", table, "THANH_TIEN_BV", "decimal comma in an amount", value=value))
    for value, count in (("undefined", MA_NHOM_UNDEFINED), ("Nhóm 1", MA_NHOM_LABEL)):
        with_drugs = [d for d in drafts if d.has("XML2") and not any(x.field == "MA_NHOM" for x in d.defects)]
        for draft in _pick(rng, with_drugs, _scaled(count, visits)):
            rng.choice(draft.visit.tables["XML2"])["MA_NHOM"] = value
            draft.defects.append(Defect("V208", "XML2", "MA_NHOM", f"cost group written {value!r}", value=value))
    for draft in drafts:
        for row in draft.visit.tables.get("XML13", []):
            row["MA_LYDO_CT"] = REFERRAL_REASON
            draft.defects.append(Defect("V208", "XML13", "MA_LYDO_CT", "the code followed by its label",
                                        value=REFERRAL_REASON))


@cache
def _amount_fields(standard: str, table: str) -> tuple[str, ...]:
    fields = standards.load(standard).tables[table].fields
    return tuple(f.name for f in fields if f.type == "number" and f.decimals == 2)


def _integer_amounts(rng: random.Random, drafts: list[_Draft]) -> None:
    for draft in _pick(rng, drafts, round(len(drafts) * INTEGER_AMOUNTS)):
        for table, rows in draft.visit.tables.items():
            for row in rows:
                for name in _amount_fields(draft.visit.standard, table):
                    value = row.get(name, "")
                    if value.endswith(".00") and not value.startswith("-"):  # a remainder keeps its sign and decimals
                        row[name] = value[:-3]
        draft.shapes.append("integer_amounts")


def _document_shapes(rng: random.Random, drafts: list[_Draft]) -> None:
    """Shapes of single inner documents, in the base64 styles (the inline form has no inner documents)."""
    documents = [(d, table) for d in drafts if d.style != INLINE for table in d.visit.tables]
    free_text = [(d, table) for d, table in documents
                 if any(row.get(name) for row in d.visit.tables[table] for name in FREE_TEXT)]
    for shape, count, population in (("declaration", INNER_DECLARATION, documents),
                                     ("xsi_with_space", INNER_XSI_WITH_SPACE, documents),
                                     ("crlf", INNER_CRLF, documents), ("cdata", INNER_CDATA, free_text)):
        for draft, table in _pick(rng, population, round(len(documents) * count / SAMPLE_DOCUMENTS)):
            draft.documents.setdefault(table, set()).add(shape)
            draft.shapes.append(f"{shape}:{table}")


# --- writing -------------------------------------------------------------------------------------------------------

def _inner_document(visit: Visit, table: str, shapes: set[str]) -> bytes:
    document = table_document(visit, table, cdata="cdata" in shapes, declaration="declaration" in shapes,
                              pretty=True)
    if "xsi_with_space" in shapes:  # lxml refuses a namespace that is not a URI, so it goes in as bytes
        root = standards.load(visit.standard).tables[table].root.encode()
        document = document.replace(b"<" + root + b">", b"<" + root + b" " + XSI_WITH_SPACE + b">", 1)
    if "crlf" in shapes:
        document = document.replace(b"\n", b"\r\n")
    return document


def _export(draft: _Draft, number: int) -> HisExport:
    visit = draft.visit
    created = datetime.strptime(draft.summary["NGAY_TTOAN"][:8], "%Y%m%d")  # exported on the day of payment
    if draft.style == INLINE:
        body = envelope([visit], created=created, inline=True)
    else:
        encode = base64.encodebytes if draft.style == WRAPPED else base64.b64encode  # encodebytes: 76 columns
        body = envelope([visit], created=created, documents={
            (visit.ma_lk, table): encode(_inner_document(visit, table, draft.documents.get(table, set())))
            for table in visit.tables})
    if "bom" in draft.shapes:
        body = BOM + body
    return HisExport(file=f"{visit.facility}_{number:06d}.xml", ma_lk=visit.ma_lk, facility=visit.facility,
                     style=draft.style, tables=tuple(sorted(visit.tables, key=lambda t: int(t[3:]))),
                     shapes=tuple(draft.shapes), defects=tuple(draft.defects), body=body)
