"""Hostile-input-safe XML and base64 decoding.

No DTD is ever processed: a DOCTYPE in the prolog is refused before libxml2 sees the bytes, and the
parser itself loads no DTD, resolves no entity and touches no network. Sizes are checked before any
parsing or decoding, so a hostile file costs milliseconds and ends in one clear error code.
"""

from __future__ import annotations

import binascii
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from healthbook.kernel import MAX_FILE_BYTES, MAX_VISITS_PER_FILE


@dataclass(frozen=True, slots=True)
class Limits:
    max_file_bytes: int = MAX_FILE_BYTES
    max_inner_bytes: int = MAX_FILE_BYTES
    max_visits: int = MAX_VISITS_PER_FILE


class XmlRejected(Exception):
    """Raised with an error code from the catalogue and its message parameters.

    The table a rejection concerns is kept apart from ``params``: callers name the table of their Issue
    themselves (``make_issue(code, table=..., **params)``) and a second ``table`` would crash them.
    """

    def __init__(self, code: str, *, table: str | None = None, **params: Any) -> None:
        super().__init__(code, table, params)
        self.code = code
        self.table = table
        self.params = params


# huge_tree: our own size limit (checked first) is the bound on input. Without it libxml2 caps one text
# node at 10 MB, so the NOIDUNGFILE of a file well inside max_file_bytes failed as "malformed" (E005).
# Nesting stays capped by libxml2 (2048 levels with huge_tree, 256 without), and no DTD ever gets in.
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
    huge_tree=True, remove_comments=True, remove_pis=True, strip_cdata=True, collect_ids=False,
)


class _NoExternal(etree.Resolver):
    """Answer every external DTD or entity request with an empty document.

    load_dtd=False alone does not stop libxml2 from opening the file of an external subset
    (<!DOCTYPE x SYSTEM "file:///...">) or of a parameter entity; should a DOCTYPE ever slip past
    _check_prolog, nothing local or remote is read and the doctype check after parsing still says E004.
    """

    def resolve(self, system_url: str, public_id: str, context: object) -> object:  # type: ignore[override]
        return self.resolve_string("", context, base_url=None)


_PARSER.resolvers.add(_NoExternal())
# The same safety, keeping comments and processing instructions: what an enveloped signature covers
# (healthbook.signing), so the signature check reads the file once, as it was signed.
_AS_SIGNED = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=True, remove_comments=False, remove_pis=False, collect_ids=False)
_AS_SIGNED.resolvers.add(_NoExternal())
_DECLARED_ENCODING = re.compile(rb"""\sencoding\s*=\s*["']([^"']*)["']""")
# A second byte-order mark counts as blank: we strip the first, libxml2 then skips the next one, and a
# DOCTYPE behind it must not go unseen.
_PROLOG_BLANK = re.compile(rb"(?:\s|\xef\xbb\xbf)*")
_PROLOG_SKIP = re.compile(rb"(?:\s|\xef\xbb\xbf)*(<\?.*?\?>|<!--.*?-->)", re.S)
# What nearly every document starts with: at most an XML declaration, blanks, then an element's start tag (a '<'
# followed by neither '!' nor '?'). Such a prolog holds no DOCTYPE: one match instead of the walk below.
_PLAIN_PROLOG = re.compile(rb"(?:<\?xml[^>]*?\?>)?\s*<[^!?]")
_UTF8_NAMES = {b"utf-8", b"utf8"}


def _check_prolog(data: bytes) -> None:
    """Refuse DOCTYPE (and with it every DTD and entity declaration) before parsing."""
    if _PLAIN_PROLOG.match(data):
        return
    position = 0
    while True:
        match = _PROLOG_SKIP.match(data, position)
        if not match:
            break
        position = match.end()
    position = _PROLOG_BLANK.match(data, position).end()  # type: ignore[union-attr]
    if data[position : position + 9].upper() == b"<!DOCTYPE":
        raise XmlRejected("E004")


# XML declarations already read and found to declare UTF-8 or no encoding: a handful in practice (each HIS writes
# one), so most documents are not searched again; bounded, whatever the files hold.
_UTF8_DECLARATIONS: set[bytes] = set()
_UTF8_DECLARATIONS_KEPT = 64


def _check_encoding(data: bytes) -> bytes:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and (data[0] == 0 or data[1] == 0)):
        raise XmlRejected("E003", detail="UTF-16/UTF-32")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # The whole XML declaration, however much whitespace pads it (a fixed window let
    # '<?xml version="1.0"      ...      encoding="ISO-8859-1"?>' through as mojibake).
    end = data.find(b"?>") if data.startswith(b"<?xml") else -1
    if end > 0:
        declaration = data[:end]
        if declaration in _UTF8_DECLARATIONS:
            return data
        declared = _DECLARED_ENCODING.search(declaration)
        if declared and declared.group(1).lower() not in _UTF8_NAMES:
            name = declared.group(1)[:40].decode("ascii", errors="replace")
            raise XmlRejected("E003", detail=f"encoding={name}")
        if len(_UTF8_DECLARATIONS) < _UTF8_DECLARATIONS_KEPT:
            _UTF8_DECLARATIONS.add(declaration)
    return data  # the bytes themselves are checked by libxml2 as it parses (see _not_utf8)


def _not_utf8(data: bytes) -> XmlRejected | None:
    """Called only when parsing failed: libxml2 rejects invalid UTF-8, but E003 must say so precisely."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return XmlRejected("E003", detail=f"byte {exc.start}")
    return None


# libxml2 refuses a namespace declaration whose value is not a URI. Real exports declare
# xmlns:xsi="http://www.w3.org/2001/XMLSchema instance" (a space for the hyphen) in about half their inner
# documents, unused, and every HIS and the portal live with it: such a value is percent-encoded and parsed again
# (docs/conformance.md). Nothing else about the document is relaxed.
_NOT_A_URI = re.compile(r"xmlns(?::[^:\s]+)?: '(.*)' is not a valid URI")
_MAX_REPAIRS = 8
_URI_SAFE = ":/?#[]@!$&'()*+,;=%-._~"


def _quoted(value: bytes) -> Callable[[re.Match[bytes]], bytes]:
    """A replacement for ``(xmlns…=)(quote)old(quote)`` that keeps the declaration and its quotes."""
    return lambda match: match.group(1) + match.group(2) + value + match.group(2)


def repair_namespace_uris(data: bytes, parser: etree.XMLParser) -> tuple[etree._Element, dict[str, str]]:
    """Parse ``data`` with ``parser``; where libxml2 refuses a namespace URI, percent-encode that value in the
    namespace declarations and parse again. Returns the root and {encoded: original} for what was changed (a
    verifier needs the original spelling back: it is what the signer canonicalised). Raises XMLSyntaxError."""
    repaired: dict[str, str] = {}
    while True:
        try:
            return etree.fromstring(data, parser=parser), repaired
        except etree.XMLSyntaxError as exc:
            match = _NOT_A_URI.match(str(exc.msg or ""))
            if match is None or len(repaired) >= _MAX_REPAIRS:
                raise
            original = match.group(1)
            encoded = urllib.parse.quote(original, safe=_URI_SAFE)
            declaration = re.compile(rb"""(\sxmlns(?::[^\s=:]+)?\s*=\s*)(["'])""" + re.escape(original.encode())
                                     + rb"\2")
            data, count = declaration.subn(_quoted(encoded.encode()), data)
            if count == 0 or encoded == original:
                raise
            repaired[encoded] = original


def parse(data: bytes, *, limit: int) -> etree._Element:
    """Parse one XML document (an envelope or an inner table) and return its root element."""
    root, _ = _parse(data, limit, _PARSER)
    return root


def parse_as_signed(data: bytes, *, limit: int) -> tuple[etree._Element, dict[str, str]]:
    """The document with the same checks as :func:`parse`, its comments and processing instructions kept (a
    signature covers them), and the namespace URIs repaired to be read (``repair_namespace_uris``)."""
    return _parse(data, limit, _AS_SIGNED)


def _blank(data: bytes) -> bool:
    """``not data.strip()`` without copying a document to learn that it is not blank."""
    return not data or data.isspace()


def _parse(data: bytes, limit: int, parser: etree.XMLParser) -> tuple[etree._Element, dict[str, str]]:
    if len(data) > limit:
        raise XmlRejected("E002", size=len(data), limit=limit)
    if _blank(data):
        raise XmlRejected("E001")
    data = _check_encoding(data)
    if _blank(data):
        raise XmlRejected("E001")  # a byte-order mark and nothing else
    _check_prolog(data)
    try:
        root, repaired = repair_namespace_uris(data, parser)
    except etree.XMLSyntaxError as exc:
        encoding_problem = _not_utf8(data)
        if encoding_problem is not None:
            raise encoding_problem from None
        message = str(exc.msg or exc).split("\n")[0][:200]
        raise XmlRejected("E005", detail=f"{message} (line {exc.lineno})") from None
    if root is None:
        raise XmlRejected("E005", detail="no root element")
    if root.getroottree().docinfo.doctype:  # type: ignore[attr-defined]  # lxml-stubs lag behind lxml
        raise XmlRejected("E004")
    return root, repaired


_WHITESPACE = bytes.maketrans(b"", b"")
_WS_CHARS = b" \t\r\n"


def decode_base64(text: str | None, *, limit: int, table: str) -> bytes:
    """Strict base64: only the standard alphabet and padding; line breaks between groups are tolerated."""
    if text is None or not text.strip():
        raise XmlRejected("E016", table=table)
    # Most encoders write one line: the text is decoded as it stands when it fits (strict mode refuses any blank,
    # and any character beyond ASCII), without copying it to bytes or dropping blanks first, which cost more than
    # the decoding. Blanks only lengthen a text, so one within the limit with them is within it without them.
    # Anything else is decided below, as ever.
    if len(text) // 4 * 3 - text[-2:].count("=") <= limit:
        try:
            return binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    raw = text.encode("ascii", errors="replace").translate(_WHITESPACE, _WS_CHARS)
    size = len(raw) // 4 * 3 - raw[-2:].count(b"=")  # padding carries no bytes: exact for valid input
    if size > limit:
        raise XmlRejected("E018", table=table, size=size, limit=limit)
    try:
        # strict_mode: C-level check of alphabet, padding and excess data (b64decode's validate is a regex).
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise XmlRejected("E012", table=table, detail=str(exc)[:120]) from None
