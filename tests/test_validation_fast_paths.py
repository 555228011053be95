"""Issue 17 (per-file overhead): each shortcut of the validator's hot paths answers exactly as the general path it
stands in for. The rules' own cases (test_rules.py) and the hostile inputs (test_hostile_inputs.py) check the
verdicts; these check the shortcuts against their slow paths, value by value."""

from __future__ import annotations

import base64
import binascii
import copy
import random
import re
from decimal import Decimal

import pytest
from healthbook import standard as standards
from healthbook.parsing import safe_xml
from healthbook.parsing.safe_xml import XmlRejected
from healthbook.validation import validate_bytes
from healthbook.validation.fields import _general_checker, _lean_checker, compile_checker
from healthbook_dev.cli import main
from healthbook_dev.generate import build_visit, envelope, submission, table_document
from lxml import etree

# --- field checkers ---------------------------------------------------------------------------------------

NUMBERS = ["0", "7", "007", "12.5", "12.50", "12.505", "1.2345", "-0", "-0.00", "-1", "-12.5", "1,5", "1.", ".5", "-",
           "--1", "+1", "1e3", "١٢", "12 ", "１２", "9" * 20, "1.2.3", "", "0.000", "100", "97.5", "1_000"]
MOMENTS = ["202401011230", "202402291230", "202302291230", "202401012400", "202401011260", "000001010000",
           "20240101", "20240230", "2024010112", "2024-01-01", "２０２４０１０１１２３０", "20240101123O", "1" * 13,
           "202412310000", "199901010101", "20241301", "20240100"]


def _lean_fields(version: str) -> list[object]:
    return [spec for table in standards.load(version).tables.values() for spec in table.fields
            if _lean_checker(spec) is not None]


def test_lean_checkers_cover_the_common_fields() -> None:
    kinds = {(spec.type, spec.format) for version in standards.version_ids()
             for spec in _lean_fields(version)}
    assert kinds == {("number", None), ("string", "timestamp"), ("string", "date")}


@pytest.mark.parametrize("version", standards.version_ids())
def test_lean_checkers_answer_as_the_general_one(version: str) -> None:
    standard = standards.load(version)
    rng = random.Random(version)
    values = NUMBERS + MOMENTS + ["".join(rng.choice("0123456789.-") for _ in range(rng.randint(1, 16)))
                                  for _ in range(300)]
    for spec in _lean_fields(version):
        lean, general = compile_checker(spec, standard), _general_checker(spec, standard)
        for value in values:
            expected, got = general(value), lean(value)
            assert got == expected, (spec, value)  # the typed value and the problem, with its parameters
            assert type(got[0]) is type(expected[0]), (spec, value)  # int stays int, Decimal stays Decimal
            if isinstance(got[0], Decimal):
                assert str(got[0]) == str(expected[0])  # and is written the same (messages show it)


# --- cost lines -------------------------------------------------------------------------------------------

def test_a_line_equal_to_its_formula_is_settled_only_where_rounding_cannot_matter() -> None:
    """Equal and rounded to cents: nothing to work out. Equal but rounded to units, 2.5 is still 3 (R306)."""
    from healthbook.validation.cross import _tolerance, parse_formula

    tolerance = _tolerance()
    cents = parse_formula("XML2", "THANH_TIEN_BV", "SO_LUONG * DON_GIA", 2)
    assert cents.mismatch({"SO_LUONG": Decimal("5"), "DON_GIA": Decimal("0.5")}, Decimal("2.50"), tolerance) is None
    assert cents.mismatch({"SO_LUONG": Decimal("5"), "DON_GIA": Decimal("0.5")}, Decimal("2.6"), tolerance) == \
        Decimal("2.50")
    units = parse_formula("XML2", "THANH_TIEN_BV", "SO_LUONG * DON_GIA", 0)
    assert units.mismatch({"SO_LUONG": Decimal("5"), "DON_GIA": Decimal("0.5")}, Decimal("2.5"), tolerance) == \
        Decimal("3")
    constant = parse_formula("XML2", "THANH_TIEN_BH", "SO_LUONG * DON_GIA * TYLE_TT_BH / 100", 2)
    values = {"SO_LUONG": Decimal("3"), "DON_GIA": Decimal("1.10"), "TYLE_TT_BH": 50}
    assert constant.compute(values) == Decimal("1.65") and constant.compute(values) == constant.compute(values)


# --- the prolog and the declared encoding -----------------------------------------------------------------

def _prolog_walk(data: bytes) -> bool:
    """The general prolog check: does a DOCTYPE follow the declaration, comments and instructions?"""
    position = 0
    while (match := safe_xml._PROLOG_SKIP.match(data, position)) is not None:
        position = match.end()
    position = safe_xml._PROLOG_BLANK.match(data, position).end()
    return data[position : position + 9].upper() == b"<!DOCTYPE"


def test_plain_prolog_shortcut_never_hides_a_doctype() -> None:
    pieces = [b"<?xml version='1.0'?>", b'<?xml version="1.0" encoding="utf-8"?>', b"<?xml a>b?>", b"<?pi x?>",
              b"<?xml-stylesheet a<b?>", b"<!-- c -->", b"<!-- <!DOCTYPE x> -->", b"<!DOCTYPE r>", b"<!doctype r>",
              b" ", b"\n", b"\t", b"\x0b", b"\xef\xbb\xbf", b"<r/>", b"<R>", b"<", b"?>", b"<!", b"<?", b"x", b"<:"]
    rng = random.Random(17)
    shortcuts = 0
    for _ in range(30_000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        if safe_xml._PLAIN_PROLOG.match(data):
            shortcuts += 1
            assert not _prolog_walk(data), data
    assert shortcuts > 1000
    with pytest.raises(XmlRejected) as refused:
        safe_xml.parse(b"<?xml version='1.0'?>\n<!DOCTYPE r [<!ENTITY e 'x'>]><r>&e;</r>", limit=1000)
    assert refused.value.code == "E004"


def test_a_declaration_once_read_does_not_let_another_encoding_through() -> None:
    good = b"<?xml version='1.0' encoding='utf-8'?><r>\xc3\xa9</r>"
    assert safe_xml.parse(good, limit=1000).text == "é"
    assert safe_xml.parse(good, limit=1000).text == "é"  # now known: not searched again
    for declaration in (b"<?xml version='1.0' encoding='latin-1'?>", b'<?xml version="1.0" encoding="UTF-16"?>',
                        b"<?xml version='1.0'   encoding = 'windows-1258' ?>"):
        with pytest.raises(XmlRejected) as refused:
            safe_xml.parse(declaration + b"<r>x</r>", limit=1000)
        assert refused.value.code == "E003"
    kept = set(safe_xml._UTF8_DECLARATIONS)
    for n in range(safe_xml._UTF8_DECLARATIONS_KEPT + 10):
        safe_xml.parse(b"<?xml version='1.0'" + b" " * n + b"?><r/>", limit=1000)
    assert len(safe_xml._UTF8_DECLARATIONS) <= safe_xml._UTF8_DECLARATIONS_KEPT and kept <= safe_xml._UTF8_DECLARATIONS


# --- base64 -----------------------------------------------------------------------------------------------

def _decode_general(text: str, limit: int) -> bytes | tuple[str, dict[str, object]]:
    """decode_base64 as it was: to ASCII bytes, blanks dropped, size checked, then strictly decoded."""
    if not text.strip():
        return ("E016", {})
    raw = text.encode("ascii", errors="replace").translate(None, b" \t\r\n")
    size = len(raw) // 4 * 3 - raw[-2:].count(b"=")
    if size > limit:
        return ("E018", {"size": size, "limit": limit})
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        return ("E012", {"detail": str(exc)[:120]})


def test_base64_shortcut_answers_as_the_general_path() -> None:
    plain = base64.b64encode(bytes(range(256)) * 3).decode()
    texts = [plain, plain + "\n", "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)), " " + plain,
             plain[:-1], plain[:-4] + "=" + plain[-3:], plain + "====", "QUJD====", "QUJDRA", "QUJDRA==", "Q", "QUJDé",
             "QUJD" * 3 + "\u00a0", "QU\tJD", "QUJD\r\nREVG", "@@@@", " ", "QUJDREVG" * 100]
    for text in texts:
        for limit in (1, 3, 6, 200, 767, 768, 769, 10_000):
            expected = _decode_general(text, limit)
            try:
                got: bytes | tuple[str, dict[str, object]] = safe_xml.decode_base64(text, limit=limit, table="XML2")
            except XmlRejected as rejected:
                got = (rejected.code, rejected.params)
            assert got == expected, (text[:20], limit)


# --- one table --------------------------------------------------------------------------------------------

def _issues(data: bytes) -> list[tuple[str, str | None, str | None, str | None]]:
    result = validate_bytes(data)
    return [(i.code, i.table, i.field, i.value) for i in result.issues]


def _with_document(visit_data: bytes, table: str, document: bytes) -> bytes:
    root = etree.fromstring(visit_data)
    for item in root.iter("FILEHOSO"):
        if item.findtext("LOAIHOSO") == table:
            item.find("NOIDUNGFILE").text = base64.b64encode(document).decode()
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def test_values_are_stripped_and_blanks_dropped_whether_their_value_was_seen_or_not() -> None:
    visit = build_visit(random.Random(3), scenario="outpatient")
    clean = validate_bytes(submission(visit)).visits[0]
    padded = copy.deepcopy(visit)
    row = padded.tables["XML2"][0]
    row.update({"MA_LK": f"  {row['MA_LK']}\n", "SO_LUONG": f"\t{row['SO_LUONG']} ",
                "TEN_THUOC": f" {row['TEN_THUOC']} ", "MA_PP_CHEBIEN": "   ", "NGAY_YL": f"\n{row['NGAY_YL']}\n"})
    for data in (submission(padded), submission(padded)):  # the second time, every stripped value is memoised
        result = validate_bytes(data).visits[0]
        assert result.tables["XML2"].raw == clean.tables["XML2"].raw
        assert result.tables["XML2"].typed == clean.tables["XML2"].typed
        assert list(result.tables["XML2"].raw[0]) == list(clean.tables["XML2"].raw[0])  # the same order
        assert [(i.code, i.field) for i in result.issues] == [(i.code, i.field) for i in clean.issues]


def test_nested_elements_are_found_row_by_row() -> None:
    visit = build_visit(random.Random(4), scenario="outpatient")
    data = submission(visit)
    assert not _issues(data)

    def edited(table: str, edit) -> bytes:
        root = etree.fromstring(table_document(visit, table))
        edit(root)
        return _with_document(data, table, etree.tostring(root, xml_declaration=True, encoding="utf-8"))

    def signature(root: etree._Element) -> None:  # a signature element holding a signature: no finding
        holder = etree.SubElement(etree.SubElement(root, "CHUKYDONVI"), "Signature")
        etree.SubElement(holder, "SignatureValue").text = "x"

    def second_listing(root: etree._Element) -> None:  # rows outside the listing read are not looked at
        extra = copy.deepcopy(root[0])
        etree.SubElement(extra[0][0], "CON").text = "1"
        root.append(extra)

    def nested(root: etree._Element) -> None:
        etree.SubElement(root[0][-1].find("TEN_DICH_VU"), "CON").text = "1"

    def nested_summary(root: etree._Element) -> None:
        etree.SubElement(root.find("HO_TEN"), "CON").text = "1"

    assert not _issues(edited("XML1", signature))
    assert not _issues(edited("XML3", signature))
    assert [c for c, *_ in _issues(edited("XML3", second_listing))] == []
    # A nested element holds no value of its own: the required field is also reported empty.
    assert [(c, t, f) for c, t, f, _ in _issues(edited("XML3", nested))] == [("S103", "XML3", "TEN_DICH_VU"),
                                                                              ("V201", "XML3", "TEN_DICH_VU")]
    assert ("S103", "XML1", "HO_TEN") in [(c, t, f) for c, t, f, _ in _issues(edited("XML1", nested_summary))]


def test_the_envelope_read_with_repeated_sections_as_elementpath_reads_it() -> None:
    visit = build_visit(random.Random(5), scenario="outpatient")
    root = etree.fromstring(envelope([visit]))
    about = root.find("THONGTINHOSO")
    empty = etree.Element("THONGTINHOSO")
    about.addprevious(empty)  # a first THONGTINHOSO without the list: the second's is read
    unit = etree.Element("THONGTINDONVI")
    root.insert(0, unit)
    data = bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))
    result = validate_bytes(data)
    assert result.facility == visit.facility and len(result.visits) == 1 and not result.errors


# --- the command line -------------------------------------------------------------------------------------

def test_validate_alone_parses_as_the_whole_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`healthbook validate` builds only its own parser; what it does not know, the whole parser reports."""
    with pytest.raises(SystemExit) as stopped:
        main(["validate", "somewhere.xml", "--bogus"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"usage: healthbook \[-h\]\s+\{validate,generate,", err)  # the whole parser's usage
    assert "error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["validate", "--standard", "999", "x.xml"])
    assert "usage: healthbook validate" in capsys.readouterr().err
