"""Hostile submissions: every one ends in a catalogue code, never in an exception, a file read or a socket.

"Fast" is asserted by behaviour, not by the clock: the parser or the base64 decoder is replaced by a
tripwire where a check must come first, local files hold a secret that must never reach the result, and
a loopback listener records any connection attempt.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from healthbook.kernel import MAX_FILE_BYTES
from healthbook.parsing import safe_xml
from healthbook.parsing.safe_xml import Limits
from healthbook.validation import engine
from healthbook.validation.catalogue import RULES
from healthbook.validation.engine import Options, validate_bytes, validate_path
from healthbook.validation.issues import Issue
from healthbook.validation.results import FileResult, VisitResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

SECRET = "S3CR3T-hostile-input-canary-7f3a"
VALID_INNER = b"<TONG_HOP><MA_LK>123</MA_LK></TONG_HOP>"
XI = "http://www.w3.org/2001/XInclude"
DEFAULT_MAX = MAX_FILE_BYTES


# --- helpers --------------------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def envelope(noidungfile: str | None = None, *, more_files: str = "", prolog: str = "",
             donvi_extra: str = "", macskcb: str = "01001") -> bytes:
    """The minimal claim envelope with one HOSO; NOIDUNGFILE of XML1 defaults to VALID_INNER."""
    content = b64(VALID_INNER) if noidungfile is None else noidungfile
    return (
        f"{prolog}<GIAMDINHHS><THONGTINDONVI><MACSKCB>{macskcb}</MACSKCB>{donvi_extra}</THONGTINDONVI>"
        "<THONGTINHOSO><NGAYLAP>20240101</NGAYLAP><SOLUONGHOSO>1</SOLUONGHOSO><DANHSACHHOSO><HOSO>"
        f"<FILEHOSO><LOAIHOSO>XML1</LOAIHOSO><NOIDUNGFILE>{content}</NOIDUNGFILE></FILEHOSO>{more_files}"
        "</HOSO></DANHSACHHOSO></THONGTINHOSO><CHUKYDONVI/></GIAMDINHHS>"
    ).encode("utf-8", errors="surrogatepass")


def file_of(loai: str, inner: bytes) -> str:
    return f"<FILEHOSO><LOAIHOSO>{loai}</LOAIHOSO><NOIDUNGFILE>{b64(inner)}</NOIDUNGFILE></FILEHOSO>"


VALID = envelope()


def file_codes(result: FileResult) -> list[str]:
    return [i.code for i in result.errors]


def only_visit(result: FileResult) -> VisitResult:
    assert result.errors == [], file_codes(result)
    assert len(result.visits) == 1
    return result.visits[0]


def visit_codes(result: FileResult) -> list[str]:
    return [i.code for i in only_visit(result).issues]


def issue_with(result: FileResult, code: str) -> Issue:
    found = [i for i in only_visit(result).issues if i.code == code]
    assert found, f"{code} not in {visit_codes(result)}"
    return found[0]


def as_json(result: FileResult) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False)


def assert_no_leak(result: FileResult) -> None:
    assert SECRET not in as_json(result)
    assert SECRET not in repr(result)


def options(max_file: int = DEFAULT_MAX, max_inner: int = DEFAULT_MAX) -> Options:
    return Options(limits=Limits(max_file_bytes=max_file, max_inner_bytes=max_inner))


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n", encoding="utf-8")
    return path


@pytest.fixture
def secret_xml(tmp_path: Path) -> Path:
    path = tmp_path / "secret.xml"
    path.write_text(f"<MA_LK>{SECRET}</MA_LK>", encoding="utf-8")
    return path


@pytest.fixture
def bad_dtd(tmp_path: Path) -> Path:
    """Not a DTD at all: if libxml2 ever reads it, parsing fails with 'Content error in the ... subset'."""
    path = tmp_path / "bad.dtd"
    path.write_text(f"{SECRET} this is not a DTD <<<", encoding="utf-8")
    return path


class Canary:
    """A loopback listener: any URL pointing at it reveals a connection attempt (libxml2 opens sockets in C)."""

    def __init__(self, server: socket.socket) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{server.getsockname()[1]}/evil.dtd"

    def contacted(self) -> bool:
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True


@pytest.fixture
def canary() -> Iterator[Canary]:
    try:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
    except OSError as exc:  # pragma: no cover - sandbox without loopback
        pytest.skip(f"no loopback socket: {exc}")
    try:
        yield Canary(server)
    finally:
        server.close()


@pytest.fixture
def no_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call into libxml2 fails the test: the check under test must come before parsing."""

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("the XML parser was called")

    monkeypatch.setattr(etree, "fromstring", tripwire)  # the very module safe_xml parses with


@pytest.fixture
def no_b64decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("base64 decoding was attempted")

    monkeypatch.setattr(base64, "b64decode", tripwire)


def test_baseline_envelope_is_parsed() -> None:
    result = validate_bytes(VALID)
    assert result.kind == "claim"
    assert result.facility == "01001"
    visit = only_visit(result)
    assert visit.ma_lk == "123"
    assert not {"E003", "E004", "E005", "E012", "E016", "E018"} & set(visit_codes(result))


# --- 1. XXE ---------------------------------------------------------------------------------------------

def _xxe_doctype(root: str, uri: str) -> str:
    return f'<!DOCTYPE {root} [<!ENTITY xxe SYSTEM "{uri}">]>'


@pytest.mark.parametrize("prefix", [
    "", '<?xml version="1.0" encoding="UTF-8"?>', "<!-- a comment -->\n", '<?pi data?>\n  ', "\n\t ",
    "\ufeff", "\ufeff\ufeff",  # one BOM is stripped; a second one must not hide the DOCTYPE
], ids=["bare", "xml-decl", "comment", "pi", "whitespace", "bom", "double-bom"])
def test_xxe_local_file_in_envelope(secret_file: Path, no_parser: None, prefix: str) -> None:
    data = envelope(prolog=prefix + _xxe_doctype("GIAMDINHHS", secret_file.as_uri()), macskcb="&xxe;")
    result = validate_bytes(data)
    assert file_codes(result) == ["E004"]
    assert result.visits == []
    assert_no_leak(result)


def test_xxe_lowercase_doctype_in_envelope(secret_file: Path, no_parser: None) -> None:
    data = envelope(prolog=f'<!doctype GIAMDINHHS [<!ENTITY xxe SYSTEM "{secret_file.as_uri()}">]>',
                    macskcb="&xxe;")
    assert file_codes(validate_bytes(data)) == ["E004"]


def test_xxe_local_file_in_inner_xml1(secret_file: Path) -> None:
    inner = (_xxe_doctype("TONG_HOP", secret_file.as_uri()) + "<TONG_HOP><MA_LK>&xxe;</MA_LK></TONG_HOP>").encode()
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E004"]
    assert issue_with(result, "E004").table == "XML1"
    assert_no_leak(result)


def test_xxe_local_file_in_inner_xml2(secret_file: Path) -> None:
    inner = (_xxe_doctype("CHITIEU_CHITIET_THUOC", secret_file.as_uri())
             + "<CHITIEU_CHITIET_THUOC><DSACH_CHI_TIET_THUOC><CHI_TIET_THUOC><MA_LK>123</MA_LK>"
               "<TEN_THUOC>&xxe;</TEN_THUOC></CHI_TIET_THUOC></DSACH_CHI_TIET_THUOC></CHITIEU_CHITIET_THUOC>").encode()
    result = validate_bytes(envelope(more_files=file_of("XML2", inner)))
    issue = issue_with(result, "E004")
    assert (issue.table, issue.ma_lk) == ("XML2", "123")
    assert "XML2" not in only_visit(result).tables
    assert_no_leak(result)


def test_xxe_in_attribute_value(secret_file: Path) -> None:
    doctype = _xxe_doctype("TONG_HOP", secret_file.as_uri())
    inner = (doctype + '<TONG_HOP a="&xxe;"><MA_LK>1</MA_LK></TONG_HOP>').encode()
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E004"]
    assert_no_leak(result)


# --- 2. entity expansion bombs --------------------------------------------------------------------------

def billion_laughs(root: str, body: str) -> str:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    return f"<!DOCTYPE {root} [{entities}]>{body}"


def quadratic_blowup(root: str, body_template: str) -> str:
    return f'<!DOCTYPE {root} [<!ENTITY a "{"x" * 50_000}">]>' + body_template.format(refs="&a;" * 50_000)


def test_billion_laughs_in_envelope(no_parser: None) -> None:
    data = billion_laughs("GIAMDINHHS", envelope(macskcb="&lol9;").decode()).encode()
    result = validate_bytes(data)
    assert file_codes(result) == ["E004"]
    assert len(as_json(result)) < 2_000


def test_quadratic_blowup_in_envelope(no_parser: None) -> None:
    data = quadratic_blowup("GIAMDINHHS", envelope(macskcb="{refs}").decode()).encode()
    result = validate_bytes(data)
    assert file_codes(result) == ["E004"]
    assert len(as_json(result)) < 2_000


def test_billion_laughs_in_inner_document() -> None:
    inner = billion_laughs("TONG_HOP", "<TONG_HOP><MA_LK>&lol9;</MA_LK></TONG_HOP>").encode()
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E004"]
    assert issue_with(result, "E004").table == "XML1"


def test_quadratic_blowup_in_inner_document() -> None:
    inner = quadratic_blowup("TONG_HOP", "<TONG_HOP><MA_LK>1</MA_LK><GHI_CHU>{refs}</GHI_CHU></TONG_HOP>").encode()
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E004"]
    assert len(as_json(result)) < 5_000


def test_parser_alone_does_not_expand_a_bomb() -> None:
    """Defence in depth: even without the prolog check, libxml2 is configured not to expand entities."""
    bomb = billion_laughs("q", "<q>&lol9;</q>").encode()
    try:
        root = etree.fromstring(bomb, parser=safe_xml._PARSER)
    except etree.XMLSyntaxError:
        return  # refused by libxml2's amplification limit: also fine
    assert len(etree.tostring(root)) < 1_000


# --- 3. parameter entities, external DTD, XInclude ------------------------------------------------------

def test_parameter_entity_in_envelope(secret_file: Path, no_parser: None) -> None:
    data = envelope(prolog=f'<!DOCTYPE GIAMDINHHS [<!ENTITY % p SYSTEM "{secret_file.as_uri()}"> %p;]>')
    result = validate_bytes(data)
    assert file_codes(result) == ["E004"]
    assert_no_leak(result)


def test_error_based_parameter_entity_exfiltration(secret_file: Path) -> None:
    doctype = (f'<!DOCTYPE TONG_HOP [<!ENTITY % file SYSTEM "{secret_file.as_uri()}">'
               "<!ENTITY % eval \"<!ENTITY &#x25; error SYSTEM 'file:///nonexistent/%file;'>\">%eval;%error;]>")
    result = validate_bytes(envelope(b64((doctype + "<TONG_HOP><MA_LK>1</MA_LK></TONG_HOP>").encode())))
    assert visit_codes(result) == ["E004"]
    assert_no_leak(result)


@pytest.mark.parametrize("kind", ["SYSTEM", "PUBLIC"])
def test_external_dtd_over_network_in_envelope(canary: Canary, no_parser: None, kind: str) -> None:
    public = ' "-//EVIL//DTD X//EN"' if kind == "PUBLIC" else ""
    data = envelope(prolog=f'<!DOCTYPE GIAMDINHHS {kind}{public} "{canary.url}">')
    assert file_codes(validate_bytes(data)) == ["E004"]
    assert not canary.contacted()


def test_external_dtd_over_network_in_inner_document(canary: Canary) -> None:
    inner = f'<!DOCTYPE TONG_HOP SYSTEM "{canary.url}"><TONG_HOP><MA_LK>1</MA_LK></TONG_HOP>'.encode()
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E004"]
    assert not canary.contacted()


def test_external_dtd_local_file_in_envelope(bad_dtd: Path, no_parser: None) -> None:
    data = envelope(prolog=f'<!DOCTYPE GIAMDINHHS SYSTEM "{bad_dtd.as_uri()}">')
    result = validate_bytes(data)
    assert file_codes(result) == ["E004"]
    assert_no_leak(result)


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE q SYSTEM "{uri}">',
    '<!DOCTYPE q [<!ENTITY % p SYSTEM "{uri}"> %p;]>',
    '<!DOCTYPE q PUBLIC "-//X//DTD X//EN" "{uri}">',
], ids=["external-subset", "parameter-entity", "public-id"])
def test_parser_alone_opens_no_local_dtd(bad_dtd: Path, doctype: str) -> None:
    """Defence in depth: should a DOCTYPE ever reach libxml2, it must not read the referenced file.

    bad.dtd is not a DTD, so had libxml2 read it the parse would fail with a 'Content error'.
    """
    data = (doctype.format(uri=bad_dtd.as_uri()) + "<q/>").encode()
    root = etree.fromstring(data, parser=safe_xml._PARSER)
    assert root.getroottree().docinfo.doctype  # ... and parse() turns a surviving doctype into E004


def test_parser_alone_opens_no_network_dtd(canary: Canary) -> None:
    data = f'<!DOCTYPE q SYSTEM "{canary.url}"><!-- --><q/>'.encode()
    with contextlib.suppress(etree.XMLSyntaxError):  # refusing is fine too; connecting is not
        etree.fromstring(data, parser=safe_xml._PARSER)
    assert not canary.contacted()


def test_parser_alone_does_not_resolve_external_entity(secret_file: Path) -> None:
    data = (_xxe_doctype("q", secret_file.as_uri()) + "<q>&xxe;</q>").encode()
    root = etree.fromstring(data, parser=safe_xml._PARSER)
    assert SECRET not in etree.tostring(root, encoding="unicode")


def test_xinclude_in_envelope_is_not_processed(secret_file: Path, secret_xml: Path, canary: Canary) -> None:
    includes = (f'<xi:include xmlns:xi="{XI}" href="{secret_file.as_uri()}" parse="text"/>'
                f'<xi:include xmlns:xi="{XI}" href="{secret_xml.as_uri()}"/>'
                f'<xi:include xmlns:xi="{XI}" href="{canary.url}" parse="text"/>')
    result = validate_bytes(envelope(donvi_extra=includes))
    assert result.errors == []
    assert result.facility == "01001"
    assert only_visit(result).ma_lk == "123"
    assert_no_leak(result)
    assert not canary.contacted()


def test_xinclude_in_inner_document_is_not_processed(secret_file: Path, secret_xml: Path) -> None:
    inner = (f'<TONG_HOP xmlns:xi="{XI}"><MA_LK>123</MA_LK>'
             f'<xi:include href="{secret_file.as_uri()}" parse="text"/>'
             f'<xi:include href="{secret_xml.as_uri()}"/></TONG_HOP>').encode()
    result = validate_bytes(envelope(b64(inner)))
    visit = only_visit(result)
    assert visit.ma_lk == "123"
    unknown = issue_with(result, "S101")  # the include element is reported as an unknown element, not run
    assert unknown.field == f"{{{XI}}}include"
    assert not {"E004", "E005"} & set(visit_codes(result))
    assert_no_leak(result)
    assert all(SECRET not in value for row in visit.tables["XML1"].raw for value in row.values())


def test_xinclude_as_inner_root_is_not_processed(secret_xml: Path) -> None:
    inner = f'<xi:include xmlns:xi="{XI}" href="{secret_xml.as_uri()}"/>'.encode()
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E006"]
    assert_no_leak(result)


# --- 4. truncated files, binary garbage, empty ----------------------------------------------------------

@pytest.mark.parametrize("cut", [1, 2, 11, 12, 50, 100, len(VALID) // 2, len(VALID) - 14, len(VALID) - 2,
                                 len(VALID) - 1])
def test_truncated_envelope(cut: int) -> None:
    result = validate_bytes(VALID[:cut])
    assert file_codes(result) == ["E005"]
    assert result.visits == []


def test_every_truncation_of_the_envelope_is_malformed() -> None:
    for cut in range(1, len(VALID)):
        assert file_codes(validate_bytes(VALID[:cut])) == ["E005"], cut
    assert file_codes(validate_bytes(VALID[:0])) == ["E001"]


def test_truncated_inside_a_multibyte_character() -> None:
    data = VALID.replace(b"<CHUKYDONVI/>", "<GHI_CHU>Nguyễn</GHI_CHU><CHUKYDONVI/>".encode())
    cut = data.index("ễ".encode()) + 1
    result = validate_bytes(data[:cut])
    assert file_codes(result) == ["E003"]


@pytest.mark.parametrize("cut", [5, 20, len(VALID_INNER) - 1])
def test_truncated_inner_document(cut: int) -> None:
    result = validate_bytes(envelope(b64(VALID_INNER[:cut])))
    assert visit_codes(result) == ["E005"]
    assert issue_with(result, "E005").table == "XML1"


def test_truncated_base64() -> None:
    result = validate_bytes(envelope(b64(VALID_INNER)[:-3]))
    assert visit_codes(result) == ["E012"]


@pytest.mark.parametrize("seed", range(30))
def test_binary_garbage(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(1, 4096))
    result = validate_bytes(data)
    assert len(result.errors) == 1
    assert result.errors[0].code in {"E003", "E005"}
    assert result.visits == []


@pytest.mark.parametrize("seed", range(10))
def test_printable_garbage(seed: int) -> None:
    rng = random.Random(seed)
    data = bytes(rng.choice(b"abcdefXYZ<>/&;=\"' 0123456789") for _ in range(rng.randint(1, 2000)))
    result = validate_bytes(b"x" + data)
    assert file_codes(result) == ["E005"]


def test_binary_garbage_inner_document() -> None:
    result = validate_bytes(envelope(b64(random.Random(7).randbytes(500))))
    assert visit_codes(result)[0] in {"E003", "E005"}
    assert len(visit_codes(result)) == 1


@pytest.mark.parametrize("data", [b"", b" ", b"\n", b"\r\n\t  \n", b" " * 5000],
                         ids=["empty", "space", "newline", "mixed", "many-spaces"])
def test_empty_and_whitespace_only(data: bytes) -> None:
    result = validate_bytes(data)
    assert file_codes(result) == ["E001"]
    assert result.visits == []


def test_empty_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "empty.xml"
    path.write_bytes(b"")
    assert file_codes(validate_path(str(path))) == ["E001"]


def test_empty_inner_document() -> None:
    result = validate_bytes(envelope(b64(b"   \n ")))
    assert visit_codes(result) == ["E001"]


# --- 5. encodings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_are_refused(codec: str, no_parser: None) -> None:
    data = VALID.decode().encode(codec)
    if codec == "utf-16-be":
        data = "\ufeff".encode(codec) + data  # explicit big-endian BOM
    result = validate_bytes(data)
    assert file_codes(result) == ["E003"]


@pytest.mark.parametrize("name", ["windows-1258", "ISO-8859-1", "latin1", "UTF-16", "us-ascii", "windows 1258"])
def test_declared_non_utf8_encoding_is_refused(name: str, no_parser: None) -> None:
    data = envelope(prolog=f'<?xml version="1.0" encoding="{name}"?>')
    result = validate_bytes(data)
    assert file_codes(result) == ["E003"]
    assert name in result.errors[0].message_en


def test_declared_encoding_behind_padding_is_refused(no_parser: None) -> None:
    """The declaration may hold any amount of whitespace; the encoding must be found wherever it is."""
    data = envelope(prolog='<?xml version="1.0"' + " " * 300 + ' encoding="windows-1258"?>')
    assert file_codes(validate_bytes(data)) == ["E003"]
    data = envelope(prolog="<?xml version='1.0'\n" + "\t" * 1000 + "encoding  =  'ISO-8859-1'  ?>")
    assert file_codes(validate_bytes(data)) == ["E003"]


@pytest.mark.parametrize("name", ["UTF-8", "utf-8", "utf8"])
def test_declared_utf8_is_accepted(name: str) -> None:
    result = validate_bytes(envelope(prolog=f"<?xml version='1.0' encoding='{name}' standalone='yes'?>"))
    assert only_visit(result).ma_lk == "123"


def test_latin1_bytes_are_refused() -> None:
    data = VALID.replace(b"<CHUKYDONVI/>", "<GHI_CHU>Café Hà Nội</GHI_CHU><CHUKYDONVI/>".encode("latin-1", "replace"))
    result = validate_bytes(data)
    assert file_codes(result) == ["E003"]
    assert "byte" in result.errors[0].message_en


def test_utf8_bom_is_accepted() -> None:
    result = validate_bytes(b"\xef\xbb\xbf" + VALID)
    assert result.kind == "claim"
    assert "E003" not in file_codes(result)
    assert only_visit(result).ma_lk == "123"


def test_utf8_bom_with_declaration_is_accepted() -> None:
    result = validate_bytes(b"\xef\xbb\xbf" + envelope(prolog='<?xml version="1.0" encoding="UTF-8"?>\n'))
    assert only_visit(result).ma_lk == "123"


def test_vietnamese_utf8_text_comes_through() -> None:
    inner = "<TONG_HOP><MA_LK>123</MA_LK><HO_TEN>Nguyễn Thị Ánh</HO_TEN></TONG_HOP>".encode()
    result = validate_bytes(envelope(b64(inner)))
    assert only_visit(result).tables["XML1"].raw[0]["HO_TEN"] == "Nguyễn Thị Ánh"


@pytest.mark.parametrize("inner", [
    VALID_INNER.decode().encode("utf-16"),
    b'<?xml version="1.0" encoding="windows-1258"?>' + VALID_INNER,
    "<TONG_HOP><MA_LK>123</MA_LK><HO_TEN>Hà Nội</HO_TEN></TONG_HOP>".encode("latin-1", "replace"),
], ids=["utf16", "declared-1258", "latin1-bytes"])
def test_inner_document_wrong_encoding(inner: bytes) -> None:
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E003"]
    assert issue_with(result, "E003").table == "XML1"


# --- 6. huge inputs and base64 --------------------------------------------------------------------------

SMALL_FILE = options(max_file=1000)


@pytest.mark.parametrize("payload", [
    VALID + b" " * 1000,
    billion_laughs("GIAMDINHHS", "<GIAMDINHHS>&lol9;</GIAMDINHHS>").encode() + b" " * 1000,
    (VALID + b" " * 600).decode().encode("utf-16"),
    random.Random(1).randbytes(5000),
    b"<a>" * 10_000,
], ids=["padded-valid", "bomb", "utf16", "garbage", "deep"])
def test_file_over_the_limit_is_refused_before_parsing(payload: bytes, no_parser: None) -> None:
    assert len(payload) > 1000
    result = validate_bytes(payload, options=SMALL_FILE)
    assert file_codes(result) == ["E002"]
    assert result.size == len(payload)
    assert f"{len(payload)} bytes, limit 1000 bytes" in result.errors[0].message_en


def test_file_at_the_limit_is_parsed() -> None:
    data = VALID + b" " * (1000 - len(VALID))
    assert len(data) == 1000
    assert only_visit(validate_bytes(data, options=SMALL_FILE)).ma_lk == "123"
    assert file_codes(validate_bytes(data + b" ", options=SMALL_FILE)) == ["E002"]


def test_validate_path_over_the_limit_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(VALID + b" " * 2000)

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("the oversized file was opened")

    monkeypatch.setattr(engine, "open", tripwire, raising=False)  # shadows the builtin inside the engine
    result = validate_path(str(path), options=SMALL_FILE)
    assert file_codes(result) == ["E002"]
    assert result.size == path.stat().st_size
    assert result.path == str(path)


def test_validate_path_within_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "ok.xml"
    path.write_bytes(VALID)
    assert only_visit(validate_path(str(path), options=SMALL_FILE)).ma_lk == "123"


def _inner_of_size(size: int) -> bytes:
    head, tail = b"<TONG_HOP><MA_LK>123</MA_LK>", b"</TONG_HOP>"
    return head + b" " * (size - len(head) - len(tail)) + tail


def test_inner_over_the_limit_is_refused_before_decoding(no_b64decode: None) -> None:
    result = validate_bytes(envelope(b64(_inner_of_size(200))), options=options(max_inner=100))
    assert visit_codes(result) == ["E018"]
    issue = issue_with(result, "E018")
    assert issue.table == "XML1"
    assert "limit 100 bytes" in issue.message_en


@pytest.mark.parametrize("size", [100, 101, 102])  # 100 and 101 bytes end in base64 padding, 102 does not
def test_inner_at_the_limit_is_decoded(size: int) -> None:
    inner = _inner_of_size(size)
    at_limit = validate_bytes(envelope(b64(inner)), options=options(max_inner=size))
    assert only_visit(at_limit).ma_lk == "123"
    assert "E018" not in visit_codes(at_limit)
    over = validate_bytes(envelope(b64(inner)), options=options(max_inner=size - 1))
    assert visit_codes(over) == ["E018"]
    assert f"{size} bytes, limit {size - 1} bytes" in issue_with(over, "E018").message_en


def test_inner_over_the_limit_in_a_second_table() -> None:
    row = b"<CHI_TIET_THUOC><MA_LK>123</MA_LK></CHI_TIET_THUOC>"
    rows = b"<DSACH_CHI_TIET_THUOC>" + row * 20 + b"</DSACH_CHI_TIET_THUOC>"
    xml2 = b"<CHITIEU_CHITIET_THUOC>" + rows + b"</CHITIEU_CHITIET_THUOC>"
    result = validate_bytes(envelope(more_files=file_of("XML2", xml2)), options=options(max_inner=500))
    issue = issue_with(result, "E018")
    assert (issue.table, issue.ma_lk) == ("XML2", "123")


@pytest.mark.parametrize("content", [
    "@@@@", "PFRPTkdfSE9QPg==!", "PFRP*05HX0hPUD4=", "PFRPTkdfSE9QPg", "PFRPTkdfSE9QPg=", "PFRPTkdf-E9QPg==",
    "PFRPTkdf_E9QPg==", "PFRPTkdfSE9QPg==é", "ẞẞẞẞ", "====", "PFRPTkdfSE9QPg==PFRP",
], ids=["at-signs", "bang", "star", "no-padding", "short-padding", "urlsafe-dash", "urlsafe-underscore",
        "non-ascii", "non-ascii-only", "padding-only", "data-after-padding"])
def test_invalid_base64(content: str) -> None:
    result = validate_bytes(envelope(content))
    assert visit_codes(result) == ["E012"]
    assert issue_with(result, "E012").table == "XML1"


def test_invalid_base64_in_a_second_table() -> None:
    more = "<FILEHOSO><LOAIHOSO>XML2</LOAIHOSO><NOIDUNGFILE>%%%%</NOIDUNGFILE></FILEHOSO>"
    result = validate_bytes(envelope(more_files=more))
    issue = issue_with(result, "E012")
    assert (issue.table, issue.ma_lk) == ("XML2", "123")


@pytest.mark.parametrize("element", [
    "<NOIDUNGFILE></NOIDUNGFILE>", "<NOIDUNGFILE/>", "<NOIDUNGFILE>  \n\t </NOIDUNGFILE>",
    "<NOIDUNGFILE><![CDATA[]]></NOIDUNGFILE>",
])
def test_empty_noidungfile(element: str) -> None:
    data = VALID.replace(f"<NOIDUNGFILE>{b64(VALID_INNER)}</NOIDUNGFILE>".encode(), element.encode())
    assert data != VALID
    result = validate_bytes(data)
    assert visit_codes(result) == ["E016"]
    assert issue_with(result, "E016").table == "XML1"


def test_empty_noidungfile_in_a_second_table() -> None:
    more = "<FILEHOSO><LOAIHOSO>XML2</LOAIHOSO><NOIDUNGFILE/></FILEHOSO>"
    issue = issue_with(validate_bytes(envelope(more_files=more)), "E016")
    assert (issue.table, issue.ma_lk) == ("XML2", "123")


LONG_INNER = ("<TONG_HOP><MA_LK>123</MA_LK><HO_TEN>" + "Nguyễn Văn An " * 40 + "</HO_TEN></TONG_HOP>").encode()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_base64_with_line_breaks_every_76_chars(newline: str) -> None:
    encoded = base64.encodebytes(LONG_INNER).decode("ascii").replace("\n", newline)
    assert encoded.count(newline) > 5
    assert all(len(line) <= 76 for line in encoded.split(newline))
    result = validate_bytes(envelope(f"{newline}      {encoded}    "))
    visit = only_visit(result)
    assert visit.ma_lk == "123"
    assert visit.tables["XML1"].raw[0]["HO_TEN"] == ("Nguyễn Văn An " * 40).strip()
    assert "E012" not in visit_codes(result)


def test_big_noidungfile_within_the_limits_is_decoded() -> None:
    """A NOIDUNGFILE of more than 10 MB of base64 (libxml2's default cap on one text node) inside a file
    under max_file_bytes is decoded, not reported as malformed."""
    inner = b"<TONG_HOP><MA_LK>123</MA_LK><PAD>" + b"x" * 8_000_000 + b"</PAD></TONG_HOP>"
    data = envelope(b64(inner))
    assert 10_000_000 < len(data) < MAX_FILE_BYTES
    result = validate_bytes(data)
    assert only_visit(result).ma_lk == "123"
    assert not {"E002", "E005", "E012", "E018"} & set(visit_codes(result))


# --- 7. deep nesting ------------------------------------------------------------------------------------

def test_deeply_nested_envelope() -> None:
    data = b"<GIAMDINHHS>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</GIAMDINHHS>"
    result = validate_bytes(data)  # no RecursionError, no stack overflow
    assert file_codes(result) == ["E005"]
    assert "depth" in result.errors[0].message_en.lower()


def test_deeply_nested_unclosed_envelope() -> None:
    result = validate_bytes(b"<GIAMDINHHS>" + b"<THONGTINHOSO>" * 100_000)
    assert file_codes(result) == ["E005"]


def test_deeply_nested_inner_document() -> None:
    inner = b"<TONG_HOP><MA_LK>1</MA_LK><X>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</X></TONG_HOP>"
    result = validate_bytes(envelope(b64(inner)))
    assert visit_codes(result) == ["E005"]
    assert "depth" in issue_with(result, "E005").message_en.lower()


def test_nesting_deeper_than_python_recursion_limit_but_allowed_by_libxml2() -> None:
    depth = sys.getrecursionlimit() + 200
    assert depth < 2048
    inner = b"<TONG_HOP><MA_LK>123</MA_LK><HO_TEN>" + b"<a>" * depth + b"</a>" * depth + b"</HO_TEN></TONG_HOP>"
    result = validate_bytes(envelope(b64(inner)))
    assert only_visit(result).ma_lk == "123"
    nested = issue_with(result, "S103")
    assert nested.field == "HO_TEN"
    json.dumps(result.to_dict())


# --- 8. properties --------------------------------------------------------------------------------------

def assert_sound(result: FileResult) -> None:
    assert isinstance(result, FileResult)
    assert result.errors or result.visits
    issues = [*result.errors, *(i for v in result.visits for i in v.issues)]
    assert all(i.code in RULES for i in issues)
    json.dumps(result.to_dict(), ensure_ascii=False)


PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

SNIPPETS = ["<", ">", "</", "/>", "&", ";", "&amp;", "&#0;", "&#x10FFFF;", "&undefined;", "]]>", "<![CDATA[",
            "<!--", "-->", "<?", "?>", "<!DOCTYPE x>", '<!ENTITY e "x">', "\x00", "\ufeff", "\udcff", "é", "ễ",
            "<HOSO>", "</HOSO>", "<FILEHOSO>", "</FILEHOSO>", "<LOAIHOSO>XML2</LOAIHOSO>", "XML1", "XML99",
            "<NOIDUNGFILE>", "</NOIDUNGFILE>", "<NOIDUNGFILE/>", "====", "\n", " " * 40, "1",
            '<?xml version="1.0" encoding="latin1"?>', 'xmlns:a="u"', "<a:b>"]


@st.composite
def mutations(draw: st.DrawFn, base: str) -> str:
    text = base
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "swapcase"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 60)))
        piece = draw(st.one_of(st.text(max_size=20), st.sampled_from(SNIPPETS)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "replace":
            text = text[:i] + piece + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + text[i:j].swapcase() + text[j:]
    return text


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")  # lone surrogates become invalid UTF-8: also hostile


@PROPERTY
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert_sound(validate_bytes(data))


@PROPERTY
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_with_small_limits_never_raise(data: bytes) -> None:
    assert_sound(validate_bytes(data, options=options(max_file=300, max_inner=50)))


@PROPERTY
@given(mutations(VALID.decode()))
def test_mutated_envelope_never_raises(text: str) -> None:
    assert_sound(validate_bytes(_utf8(text)))


@PROPERTY
@given(mutations(VALID_INNER.decode()))
def test_mutated_inner_document_never_raises(text: str) -> None:
    assert_sound(validate_bytes(envelope(b64(_utf8(text)))))


@PROPERTY
@given(mutations(b64(VALID_INNER)), st.sampled_from(["XML1", "XML2", "XML3", "XML13", "XML0", "xml1", ""]))
def test_mutated_noidungfile_never_raises(text: str, loai: str) -> None:
    content = escape(text)  # well-formed envelope, hostile base64 (control characters still break the XML)
    more = f"<FILEHOSO><LOAIHOSO>{loai}</LOAIHOSO><NOIDUNGFILE>{content}</NOIDUNGFILE></FILEHOSO>"
    for data in (envelope(content), envelope(more_files=more)):
        assert_sound(validate_bytes(data))
        assert_sound(validate_bytes(data, options=options(max_inner=30)))


# --- 9. CDATA -------------------------------------------------------------------------------------------

def test_cdata_in_inner_document() -> None:
    inner = ("<TONG_HOP><MA_LK><![CDATA[123]]></MA_LK>"
             "<HO_TEN><![CDATA[Nguyễn <Văn> & \"An\"]]></HO_TEN></TONG_HOP>").encode()
    result = validate_bytes(envelope(b64(inner)))
    visit = only_visit(result)
    assert visit.ma_lk == "123"
    assert visit.tables["XML1"].raw[0]["HO_TEN"] == 'Nguyễn <Văn> & "An"'
    assert not {"E005", "S103"} & set(visit_codes(result))


def test_cdata_mixed_with_text_in_inner_document() -> None:
    inner = b"<TONG_HOP><MA_LK>1<![CDATA[2]]>3</MA_LK></TONG_HOP>"
    assert only_visit(validate_bytes(envelope(b64(inner)))).ma_lk == "123"


def test_cdata_noidungfile_and_envelope_fields() -> None:
    data = envelope(f"<![CDATA[{b64(VALID_INNER)}]]>", macskcb="<![CDATA[01001]]>")
    result = validate_bytes(data)
    assert result.facility == "01001"
    assert only_visit(result).ma_lk == "123"


def test_cdata_does_not_smuggle_markup_into_the_envelope() -> None:
    data = envelope(macskcb="<![CDATA[<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>]]>")
    result = validate_bytes(data)
    assert [i.code for i in result.errors] == ["E008"]  # a wrong facility code, taken as plain text
