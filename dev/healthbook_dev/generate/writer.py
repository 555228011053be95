"""Serialise a Visit as the portal expects: inner table documents, base64 inside a GIAMDINHHS envelope."""

from __future__ import annotations

import base64
from datetime import datetime

from healthbook import standard as standards
from lxml import etree

from healthbook_dev.generate.visit import Visit

# Free text, which CDATA wraps when a HIS uses it.
FREE_TEXT = {"CHAN_DOAN_VAO", "CHAN_DOAN_RV", "LY_DO_VV", "DIEN_BIEN_LS", "QT_BENHLY", "TOMTAT_KQ", "MO_TA",
             "KET_LUAN", "DIA_CHI", "PP_DIEU_TRI", "PP_DIEUTRI", "LIEU_DUNG", "CACH_DUNG"}


def table_element(visit: Visit, table_id: str, *, cdata: bool = True) -> etree._Element:
    """One table as an element tree; empty values are empty (self-closing) elements."""
    spec = standards.load(visit.standard).tables[table_id]

    def fill(parent: etree._Element, row: dict[str, str]) -> None:
        for field in spec.fields:
            child = etree.SubElement(parent, field.name)
            value = row.get(field.name, "")
            if value:
                child.text = etree.CDATA(value) if cdata and field.name in FREE_TEXT else value
        for extra in row:  # defects may add elements the standard does not know
            if extra not in spec.by_name:
                etree.SubElement(parent, extra).text = row[extra]

    root = etree.Element(spec.root)
    rows = visit.tables[table_id]
    if spec.flat:
        fill(root, rows[0])
    else:
        listing = etree.SubElement(root, spec.list or "")
        for row in rows:
            fill(etree.SubElement(listing, spec.row or ""), row)
    return root


def table_document(visit: Visit, table_id: str, *, cdata: bool = True, declaration: bool = True,
                   pretty: bool = False) -> bytes:
    """One inner document, as NOIDUNGFILE carries it once decoded."""
    return bytes(etree.tostring(table_element(visit, table_id, cdata=cdata), xml_declaration=declaration,
                                encoding="utf-8", pretty_print=pretty))


def envelope(visits: list[Visit], *, facility: str | None = None, created: datetime | None = None,
             count: int | None = None, documents: dict[tuple[str, str], bytes] | None = None,
             inline: bool = False) -> bytes:
    """One GIAMDINHHS envelope; ``documents`` can replace the encoded payload of (ma_lk, table). ``inline`` writes
    each table as a child element of NOIDUNGFILE (CDATA inside) instead of base64, as some HIS do."""
    root = etree.Element("GIAMDINHHS", nsmap={"xsi": "http://www.w3.org/2001/XMLSchema-instance",
                                               "xsd": "http://www.w3.org/2001/XMLSchema"})
    etree.SubElement(etree.SubElement(root, "THONGTINDONVI"), "MACSKCB").text = facility or visits[0].facility
    info = etree.SubElement(root, "THONGTINHOSO")
    etree.SubElement(info, "NGAYLAP").text = (created or datetime.now()).strftime("%Y%m%d")
    etree.SubElement(info, "SOLUONGHOSO").text = str(len(visits) if count is None else count)
    listing = etree.SubElement(info, "DANHSACHHOSO")
    for visit in visits:
        hoso = etree.SubElement(listing, "HOSO")
        for table_id in sorted(visit.tables, key=lambda t: int(t[3:])):
            item = etree.SubElement(hoso, "FILEHOSO")
            etree.SubElement(item, "LOAIHOSO").text = table_id
            content = etree.SubElement(item, "NOIDUNGFILE")
            payload = (documents or {}).get((visit.ma_lk, table_id))
            if payload is None and inline:
                content.append(table_element(visit, table_id))
                continue
            encoded = payload if payload is not None else base64.b64encode(table_document(visit, table_id))
            content.text = encoded.decode("ascii")
    etree.SubElement(root, "CHUKYDONVI")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True))


def checkin_document(visit: Visit) -> bytes:
    """The visit's check-in record (XML0, ``CHI_TIEU_TRANG_THAI_KCB``) as the portal's check-in service takes it:
    one TRANG_THAI_KCB row from XML1's values and the first service ordered (XML3), and an empty CHUKYDONVI
    for the facility's signature."""
    spec = standards.load(visit.standard).tables["XML0"]
    summary, service = visit.tables["XML1"][0], visit.tables["XML3"][0]
    row = {name: summary.get(name, "") for name in spec.by_name} | {"STT": "1"} | {
        name: service.get(name, "") for name in ("MA_DICH_VU", "TEN_DICH_VU", "NGAY_YL")}
    root = etree.Element(spec.root)
    listing = etree.SubElement(etree.SubElement(root, spec.list or ""), spec.row or "")
    for field in spec.fields:
        etree.SubElement(listing, field.name).text = row[field.name] or None
    etree.SubElement(root, "CHUKYDONVI")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True))
