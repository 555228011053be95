"""Hostile-input-safe XML and base64 decoding.

No DTD is ever processed: a DOCTYPE in the prolog is refused before libxml2 sees the bytes, and the
parser itself loads no DTD, resolves no entity and touches no network. Sizes are checked before any
parsing or decoding, so a hostile file costs milliseconds and ends in one clear error code.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from lxml import etree

DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_inner_bytes: int = DEFAULT_MAX_FILE_BYTES


class XmlRejected(Exception):
    """Raised with an error code from the catalogue and its message parameters."""

    def __init__(self, code: str, **params: object) -> None:
        super().__init__(code, params)
        self.code = code
        self.params = params


_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
    huge_tree=False, remove_comments=True, remove_pis=True, strip_cdata=True, collect_ids=False,
)
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_PROLOG_SKIP = re.compile(rb"\s*(<\?.*?\?>|<!--.*?-->)", re.S)
_UTF8_NAMES = {b"utf-8", b"utf8"}


def _check_prolog(data: bytes) -> None:
    """Refuse DOCTYPE (and with it every DTD and entity declaration) before parsing."""
    position = 0
    while True:
        match = _PROLOG_SKIP.match(data, position)
        if not match:
            break
        position = match.end()
    while position < len(data) and data[position : position + 1].isspace():
        position += 1
    if data[position : position + 9].upper() == b"<!DOCTYPE":
        raise XmlRejected("E004")


def _check_encoding(data: bytes) -> bytes:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and (data[0] == 0 or data[1] == 0)):
        raise XmlRejected("E003", detail="UTF-16/UTF-32")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    declared = _DECLARED_ENCODING.match(data[:200])
    if declared and declared.group(1).lower() not in _UTF8_NAMES:
        raise XmlRejected("E003", detail=f"encoding={declared.group(1).decode('ascii')}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XmlRejected("E003", detail=f"byte {exc.start}") from None
    return data


def parse(data: bytes, *, limit: int) -> etree._Element:
    """Parse one XML document (an envelope or an inner table) and return its root element."""
    if len(data) > limit:
        raise XmlRejected("E002", size=len(data), limit=limit)
    if not data.strip():
        raise XmlRejected("E001")
    data = _check_encoding(data)
    _check_prolog(data)
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        message = str(exc.msg or exc).split("\n")[0][:200]
        raise XmlRejected("E005", detail=f"{message} (line {exc.lineno})") from None
    if root is None:
        raise XmlRejected("E005", detail="no root element")
    if root.getroottree().docinfo.doctype:
        raise XmlRejected("E004")
    return root


_WHITESPACE = bytes.maketrans(b"", b"")
_WS_CHARS = b" \t\r\n"


def decode_base64(text: str | None, *, limit: int, table: str) -> bytes:
    """Strict base64: only the standard alphabet and padding; line breaks between groups are tolerated."""
    if text is None or not text.strip():
        raise XmlRejected("E016", table=table)
    raw = text.encode("ascii", errors="replace").translate(_WHITESPACE, _WS_CHARS)
    if len(raw) // 4 * 3 > limit:
        raise XmlRejected("E018", table=table, size=len(raw) // 4 * 3, limit=limit)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise XmlRejected("E012", table=table, detail=str(exc)[:120]) from None
