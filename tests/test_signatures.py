"""The facility's XML-DSig signature in CHUKYDONVI: every K code, tampering, the registry and the CLI.

``CASES`` is the matrix: each case starts from a validly signed generated submission (or signs one the
wrong way), makes one mistake and expects exactly that code and nothing else.
``test_every_signature_code_has_a_case`` keeps the catalogue and the matrix in step.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from healthbook.signing.registry import FacilityRegistry, certificate_sha256
from healthbook.signing.xml_signer import load_signing_material, sign_submission
from healthbook.signing.xmldsig import DS, PrivateKey, SignatureCheck, Trust, verify_submission
from healthbook.validation.catalogue import RULES
from healthbook_dev.cli import main
from healthbook_dev.commands.signing import envelope_facility
from healthbook_dev.generate import build_visit, submission
from healthbook_dev.generate.vocab import FACILITIES
from healthbook_dev.pki import dev_pki
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureConstructionMethod, SignatureMethod
from signxml.signer import XMLSigner

NOW = datetime(2025, 6, 1, 9, 30, tzinfo=UTC)  # every check runs "as of" this receipt time
NS = {"ds": DS}
FACILITY = {code: (code, name, province) for code, name, province in FACILITIES}
SIGNATURE_CODES = {code for code in RULES if code.startswith("K")}


# --- fixtures and helpers --------------------------------------------------------------------------------


@dataclass
class Kit:
    pki: dict[str, Path]
    trust: Trust  # the CA bundle and the registry; no CRL
    _signed: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def material(self, stem: str) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
        return load_signing_material(self.pki[f"{stem}-key"].read_bytes(), self.pki[stem].read_bytes())

    def cert(self, stem: str) -> x509.Certificate:
        return self.material(stem)[1]

    def signed(self, stem: str = "facility-01001", code: str = "01001") -> bytes:
        if (stem, code) not in self._signed:
            key, cert, chain = self.material(stem)
            self._signed[(stem, code)] = sign_submission(unsigned(code), key, cert, chain=chain)
        return self._signed[(stem, code)]


@cache
def unsigned(code: str = "01001", seed: int = 7) -> bytes:
    visit = build_visit(random.Random(seed), scenario="outpatient", facility=FACILITY[code],
                        start=datetime(2025, 5, 30, 8))
    return submission(visit)


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    pki = dev_pki(tmp_path_factory.mktemp("pki"), now=NOW)
    return Kit(pki=pki, trust=Trust.from_files(pki["ca"], pki["registry"]))


def verify(data: bytes, trust: Trust, *, facility: str | None = "", at: datetime = NOW) -> SignatureCheck:
    """facility "" means: the envelope's own MACSKCB, as the CLI does."""
    return verify_submission(data, trust=trust, facility=envelope_facility(data) if facility == "" else facility, at=at)


def codes(check: SignatureCheck) -> list[str]:
    return [issue.code for issue in check.issues]


def edit(data: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(data)
    change(root)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def signature_of(root: etree._Element) -> etree._Element:
    found = root.find("CHUKYDONVI/ds:Signature", NS)
    assert found is not None
    return found


def one(root: etree._Element, path: str) -> etree._Element:
    found = signature_of(root).find(path, NS)
    assert found is not None, path
    return found


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


class _LegacySigner(XMLSigner):
    """What old HIS software still sends: signxml refuses SHA-1 unless told otherwise (tests only)."""

    def check_deprecated_methods(self) -> None:
        pass


def sign_with(data: bytes, key: PrivateKey, cert: x509.Certificate, *, signature: SignatureMethod,
              digest: DigestAlgorithm, reference_uri: str | None = None,
              prepare: Callable[[etree._Element], None] | None = None) -> bytes:
    """Sign the way sign_submission does (placeholder in CHUKYDONVI) but with any algorithm or reference."""
    root = etree.fromstring(data)
    if prepare:
        prepare(root)
    chuky = root.find("CHUKYDONVI")
    assert chuky is not None
    etree.SubElement(chuky, f"{{{DS}}}Signature", {"Id": "placeholder"}, nsmap={"ds": DS})
    signer = _LegacySigner(method=SignatureConstructionMethod.enveloped, signature_algorithm=signature,
                           digest_algorithm=digest, c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_0)
    signed = signer.sign(root, key=key, cert=[cert], reference_uri=reference_uri)
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


# --- the valid side --------------------------------------------------------------------------------------


def test_signed_submission_verifies(kit: Kit) -> None:
    data = kit.signed()
    check = verify(data, kit.trust)
    assert check.valid and check.issues == []
    assert check.certificate_sha256 == certificate_sha256(kit.cert("facility-01001"))
    assert check.registered_facilities == ["01001"]
    assert check.subject and "MCSKCB:01001" in check.subject
    assert check.to_dict() == {"valid": True, "issues": [], "certificate_sha256": check.certificate_sha256,
                               "subject": check.subject, "registered_facilities": ["01001"],
                               "form": {"namespace": "prefix ds", "canonicalization": "c14n",
                                        "signature_method": "rsa-sha256", "key": "RSA 2048",
                                        "references": [{"uri": "", "transforms": ["enveloped-signature", "c14n"],
                                                        "digest": "sha256"}],
                                        "key_info": ["X509Certificate"]}}
    # where the portal expects it, and with the algorithms the brief fixes
    root = etree.fromstring(data)
    assert [e.tag for e in root.find("CHUKYDONVI")] == [f"{{{DS}}}Signature"]  # type: ignore[union-attr]
    assert one(root, "ds:SignedInfo/ds:SignatureMethod").get("Algorithm") == SignatureMethod.RSA_SHA256.value
    assert one(root, "ds:SignedInfo/ds:Reference").get("URI") == ""


@pytest.mark.parametrize(("stem", "code", "method"), [
    ("facility-48001-ec", "48001", SignatureMethod.ECDSA_SHA256),  # ECDSA P-256
    ("facility-79001", "79001", SignatureMethod.RSA_SHA256),  # leaf issued by the intermediate, chain in KeyInfo
])
def test_ecdsa_and_intermediate_chain(kit: Kit, stem: str, code: str, method: SignatureMethod) -> None:
    data = kit.signed(stem, code)
    check = verify(data, kit.trust)
    assert check.valid, check.issues
    assert check.registered_facilities == [code]
    root = etree.fromstring(data)
    assert one(root, "ds:SignedInfo/ds:SignatureMethod").get("Algorithm") == method.value
    presented = signature_of(root).findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
    assert len(presented) == (2 if stem == "facility-79001" else 1)


def test_chukydonvi_is_created_when_absent(kit: Kit) -> None:
    data = unsigned().replace(b"<CHUKYDONVI/>", b"")
    key, cert, _ = kit.material("facility-01001")
    assert verify(sign_submission(data, key, cert), kit.trust).valid


def test_signing_refuses_a_signed_file_and_a_hostile_one(kit: Kit) -> None:
    key, cert, _ = kit.material("facility-01001")
    with pytest.raises(ValueError, match="already signed"):
        sign_submission(kit.signed(), key, cert)
    with pytest.raises(ValueError, match="E004"):
        sign_submission(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "x">]><GIAMDINHHS/>', key, cert)


def test_receipt_time_decides_not_now(kit: Kit) -> None:
    """A certificate that expired or was revoked after the file arrived still counts as valid for it."""
    revoked = kit.signed("revoked", "79001")
    assert codes(verify(revoked, kit.trust)) == ["K409"]
    assert verify(revoked, kit.trust, at=NOW - timedelta(days=2)).valid
    expired = kit.signed("expired", "01001")
    assert codes(verify(expired, kit.trust)) == ["K408"]
    assert verify(expired, kit.trust, at=NOW - timedelta(days=500)).valid
    with pytest.raises(ValueError, match="timezone"):
        verify(kit.signed(), kit.trust, at=datetime(2025, 6, 1))


def test_without_registry_any_trusted_certificate_is_enough(kit: Kit) -> None:
    bare = Trust(anchors=kit.trust.anchors)
    check = verify(kit.signed("unregistered", "01002"), bare)
    assert check.valid and check.registered_facilities == []


# --- the matrix: one mistake, one code -------------------------------------------------------------------


@dataclass
class Attempt:
    data: bytes
    trust: Trust | None = None  # None: the kit's (CA + registry)
    facility: str | None = ""  # "": the envelope's MACSKCB


def _two_signatures(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        signature = signature_of(root)
        signature.getparent().append(etree.fromstring(etree.tostring(signature)))  # type: ignore[union-attr]
    return Attempt(edit(kit.signed(), change))


def _signature_outside(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        root.find("THONGTINDONVI").append(signature_of(root))  # type: ignore[union-attr]
    return Attempt(edit(kit.signed(), change))


def _no_key_info(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        signature_of(root).remove(one(root, "ds:KeyInfo"))
    return Attempt(edit(kit.signed(), change))


def _no_signed_info(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        signature_of(root).remove(one(root, "ds:SignedInfo"))
    return Attempt(edit(kit.signed(), change))


def _signature_without_namespace(kit: Kit) -> Attempt:
    return Attempt(kit.signed().replace(f'ds:Signature xmlns:ds="{DS}"'.encode(), b"ds:Signature xmlns:ds=\"urn:x\""))


def _garbage_certificate(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        one(root, "ds:KeyInfo/ds:X509Data/ds:X509Certificate").text = base64.b64encode(b"not a certificate").decode()
    return Attempt(edit(kit.signed(), change))


def _certificate_swapped(stem: str) -> Callable[[Kit], Attempt]:
    def make(kit: Kit) -> Attempt:
        def change(root: etree._Element) -> None:
            one(root, "ds:KeyInfo/ds:X509Data/ds:X509Certificate").text = der_b64(kit.cert(stem))
        return Attempt(edit(kit.signed(), change))
    return make


def _signature_value_altered(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        value = one(root, "ds:SignatureValue")
        raw = bytearray(base64.b64decode(value.text or ""))
        raw[17] ^= 0x01
        value.text = base64.b64encode(bytes(raw)).decode()
    return Attempt(edit(kit.signed(), change))


def _signed_info_altered(kit: Kit) -> Attempt:
    """MACSKCB edited and DigestValue set to the edited document's true digest: only SignedInfo's signature fails."""
    def edited(root: etree._Element) -> None:
        root.find("THONGTINDONVI/MACSKCB").text = "79001"  # type: ignore[union-attr]

    def strip(root: etree._Element) -> None:
        signature = signature_of(root)
        signature.getparent().remove(signature)  # type: ignore[union-attr]
        edited(root)

    key, cert, _ = kit.material("facility-01001")
    honest = etree.fromstring(sign_submission(edit(kit.signed(), strip), key, cert))

    def change(root: etree._Element) -> None:
        edited(root)
        path = "ds:SignedInfo/ds:Reference/ds:DigestValue"
        one(root, path).text = one(honest, path).text
    return Attempt(edit(kit.signed(), change))


def _replayed_under_other_facility(kit: Kit) -> Attempt:
    """A validly signed file of 01001 with 79001 written into MACSKCB: the envelope changed."""
    def change(root: etree._Element) -> None:
        root.find("THONGTINDONVI/MACSKCB").text = "79001"  # type: ignore[union-attr]
    return Attempt(edit(kit.signed(), change))


def _legacy(signature: SignatureMethod, digest: DigestAlgorithm) -> Callable[[Kit], Attempt]:
    def make(kit: Kit) -> Attempt:
        key, cert, _ = kit.material("facility-01001")
        return Attempt(sign_with(unsigned(), key, cert, signature=signature, digest=digest))
    return make


def _algorithm_edited(path: str, uri: str) -> Callable[[Kit], Attempt]:
    def make(kit: Kit) -> Attempt:
        def change(root: etree._Element) -> None:
            one(root, path).set("Algorithm", uri)
        return Attempt(edit(kit.signed(), change))
    return make


def _xpath_transform(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        transforms = one(root, "ds:SignedInfo/ds:Reference/ds:Transforms")
        xpath = etree.SubElement(transforms, f"{{{DS}}}Transform",
                                 Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116")
        etree.SubElement(xpath, f"{{{DS}}}XPath").text = "ancestor-or-self::THONGTINDONVI"
    return Attempt(edit(kit.signed(), change))


def _reference_to_sub_element(kit: Kit) -> Attempt:
    """Genuinely signed, but only THONGTINHOSO: the envelope (MACSKCB, ...) could be swapped freely."""
    key, cert, _ = kit.material("facility-01001")

    def prepare(root: etree._Element) -> None:
        root.find("THONGTINHOSO").set("Id", "hoso")  # type: ignore[union-attr]
    return Attempt(sign_with(unsigned(), key, cert, signature=SignatureMethod.RSA_SHA256,
                             digest=DigestAlgorithm.SHA256, reference_uri="#hoso", prepare=prepare))


def _reference_uri_edited(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        one(root, "ds:SignedInfo/ds:Reference").set("URI", "#THONGTINDONVI")
    return Attempt(edit(kit.signed(), change))


def _no_enveloped_transform(kit: Kit) -> Attempt:
    def change(root: etree._Element) -> None:
        transforms = one(root, "ds:SignedInfo/ds:Reference/ds:Transforms")
        transforms.remove(transforms[0])
    return Attempt(edit(kit.signed(), change))


def _revoked_by_crl(kit: Kit) -> Attempt:
    crl = x509.load_pem_x509_crl(kit.pki["crl"].read_bytes())
    return Attempt(kit.signed("revoked", "79001"), trust=Trust(anchors=kit.trust.anchors, crls=(crl,)))


def _wrong_facility(kit: Kit) -> Attempt:
    """01001's file, checked as if 79001 had submitted it (the registration check uses ``facility``)."""
    return Attempt(kit.signed(), facility="79001")


CASES: dict[str, tuple[str, Callable[[Kit], Attempt]]] = {
    "unsigned": ("K401", lambda kit: Attempt(unsigned())),
    "two signatures": ("K402", _two_signatures),
    "signature outside CHUKYDONVI": ("K402", _signature_outside),
    "no KeyInfo": ("K402", _no_key_info),
    "no SignedInfo": ("K402", _no_signed_info),
    "Signature in another namespace": ("K402", _signature_without_namespace),
    "X509Certificate not a certificate": ("K402", _garbage_certificate),
    "certificate swapped for another facility's": ("K403", _certificate_swapped("facility-79001")),
    "certificate swapped for an EC one": ("K403", _certificate_swapped("facility-48001-ec")),
    "SignatureValue altered": ("K403", _signature_value_altered),
    "SignedInfo altered": ("K403", _signed_info_altered),
    "replayed under another MACSKCB": ("K404", _replayed_under_other_facility),
    "SHA-1 signature (rsa-sha1)": ("K406", _legacy(SignatureMethod.RSA_SHA1, DigestAlgorithm.SHA1)),
    "SHA-1 digest only": ("K406", _legacy(SignatureMethod.RSA_SHA256, DigestAlgorithm.SHA1)),
    "MD5 digest URI": ("K406", _algorithm_edited("ds:SignedInfo/ds:Reference/ds:DigestMethod",
                                                 "http://www.w3.org/2001/04/xmldsig-more#md5")),
    "SHA-224 digest (not accepted)": ("K406", _algorithm_edited("ds:SignedInfo/ds:Reference/ds:DigestMethod",
                                                                DigestAlgorithm.SHA224.value)),
    "XPath transform": ("K406", _xpath_transform),
    "RSA-1024 key": ("K406", lambda kit: Attempt(kit.signed("weak", "01001"))),
    "reference to a sub-element (signed)": ("K405", _reference_to_sub_element),
    "reference URI edited": ("K405", _reference_uri_edited),
    "no enveloped transform": ("K405", _no_enveloped_transform),
    "rogue CA": ("K407", lambda kit: Attempt(kit.signed("rogue", "01001"))),
    "CA bundle without the intermediate's root": (
        "K407", lambda kit: Attempt(kit.signed("facility-79001", "79001"),
                                    trust=Trust(anchors=(kit.cert("rogue-ca"),), registry=kit.trust.registry))),
    "expired": ("K408", lambda kit: Attempt(kit.signed("expired", "01001"))),
    "revoked in the registry": ("K409", lambda kit: Attempt(kit.signed("revoked", "79001"))),
    "revoked in a CRL": ("K409", _revoked_by_crl),
    "unregistered": ("K410", lambda kit: Attempt(kit.signed("unregistered", "01002"))),
    "registered to another facility": ("K411", _wrong_facility),
}


@pytest.mark.parametrize("name", CASES)
def test_one_mistake_one_code(kit: Kit, name: str) -> None:
    expected, make = CASES[name]
    attempt = make(kit)
    check = verify(attempt.data, attempt.trust or kit.trust, facility=attempt.facility)
    assert not check.valid
    assert codes(check) == [expected], [i.message_en for i in check.issues]


def test_every_signature_code_has_a_case() -> None:
    assert {code for code, _ in CASES.values()} == SIGNATURE_CODES


def test_messages_carry_their_parameters(kit: Kit) -> None:
    (weak,) = verify(CASES["SHA-1 digest only"][1](kit).data, kit.trust).issues
    assert DigestAlgorithm.SHA1.value in weak.message_en
    (expired,) = verify(kit.signed("expired", "01001"), kit.trust).issues
    assert "2023-" in expired.message_en and "UTC" in expired.message_vi  # the certificate's window
    (wrong,) = verify(kit.signed(), kit.trust, facility="79001").issues
    assert "79001" in wrong.message_vi


# --- tampering: no change to the signed content ever verifies ----------------------------------------------

# Digest, signature, or no longer XML at all; K402 only for a namespace URI made relative ("http;//"),
# which no canonicaliser accepts, so nobody could have signed it either.
ACCEPTABLE_FOR_TAMPERING = {"K404", "K403", "E003", "E005", "K402"}


def test_tampering_any_byte_of_the_envelope(kit: Kit) -> None:
    data = kit.signed()
    start = data.index(b"?>") + 2  # the XML declaration is not part of the signed content
    sig_from, sig_to = data.index(b"<ds:Signature"), data.index(b"</ds:Signature>") + len(b"</ds:Signature>")
    end = data.index(b"</GIAMDINHHS>") + len(b"</GIAMDINHHS>")
    signed_positions = [p for p in range(start, end) if not sig_from <= p < sig_to]
    rng = random.Random(2024)
    # the whole head of the envelope byte by byte, the long base64 payload by sample, and the tail
    positions = sorted(set(signed_positions[:600] + rng.sample(signed_positions, 400)
                           + [p for p in signed_positions if p >= sig_to]))
    outcomes: dict[str, int] = {}
    for position in positions:
        for flip in (0x01, 0x20):
            tampered = bytearray(data)
            tampered[position] ^= flip
            check = verify(bytes(tampered), kit.trust, facility="01001")
            assert not check.valid, f"byte {position} ^ {flip:#x} still verifies"
            (issue,) = check.issues
            assert issue.code in ACCEPTABLE_FOR_TAMPERING, (position, flip, issue.message_en)
            assert issue.code != "K402" or "canonicalised" in issue.message_en, (position, flip, issue.message_en)
            code = issue.code
            outcomes[code] = outcomes.get(code, 0) + 1
    assert outcomes["K404"] > len(positions)  # most changes are well-formed and caught by the digest


def test_tampering_a_decoded_inner_value(kit: Kit) -> None:
    data = kit.signed()
    root = etree.fromstring(data)
    item = root.find("THONGTINHOSO/DANHSACHHOSO/HOSO/FILEHOSO/NOIDUNGFILE")
    assert item is not None and item.text
    encoded = item.text.encode()
    inner = base64.b64decode(encoded)
    rng = random.Random(7)
    for position in rng.sample(range(len(inner)), 150):
        changed = bytearray(inner)
        changed[position] = (changed[position] + 1) % 256 or 1
        tampered = data.replace(encoded, base64.b64encode(bytes(changed)), 1)
        assert codes(verify(tampered, kit.trust)) == ["K404"], position


def test_not_xml_reports_the_parse_error(kit: Kit) -> None:
    assert codes(verify(kit.signed()[:-40], kit.trust, facility="01001")) == ["E005"]
    assert codes(verify(b"", kit.trust, facility=None)) == ["E001"]


# --- the registry ------------------------------------------------------------------------------------------


def test_registry_round_trip_and_questions(kit: Kit) -> None:
    text = kit.pki["registry"].read_text(encoding="utf-8")
    registry = FacilityRegistry.loads(text)
    assert registry.dumps() == text
    assert FacilityRegistry.load(kit.pki["registry"]) == registry
    document = json.loads(text)
    assert set(document) == {"format", "facilities", "revoked"}
    assert set(document["facilities"]) == {"01001", "48001", "79001"}
    cert = kit.cert("facility-01001")
    sha = certificate_sha256(cert)
    assert registry.facilities_for(sha, NOW) == ["01001"]
    assert registry.facilities_for(sha, cert.not_valid_before_utc - timedelta(seconds=1)) == []
    # a narrower registration window; and one certificate shared by two facilities (a hospital group)
    registered = registry.register("79002", "Bệnh viện Quận 1", "79", cert, not_before=NOW,
                                   not_after=NOW + timedelta(days=1))
    assert (registered.sha256, registered.not_before) == (sha, NOW)
    assert registry.facilities_for(sha, NOW) == ["01001", "79002"]
    assert registry.facilities_for(sha, NOW - timedelta(hours=1)) == ["01001"]
    assert not registry.is_revoked(sha, NOW)
    registry.revoke(sha, NOW)
    assert registry.is_revoked(sha, NOW) and not registry.is_revoked(sha, NOW - timedelta(seconds=1))
    assert FacilityRegistry.loads(registry.dumps()) == registry


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "format"),
    ('{"format": "healthbook-facility-registry/1", "facilities": {"1001": {}}}', "5 digits"),
    ('{"format": "healthbook-facility-registry/1", "facilities": {"01001": {"certificates": [{"sha256": "ab"}]}}}',
     "64 hex"),
    ('{"format": "healthbook-facility-registry/1", "revoked": {"' + "a" * 64 + '": "2025-01-01T00:00:00"}}',
     "timezone"),
    ("{", "not JSON"),
])
def test_registry_mistakes_are_value_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FacilityRegistry.loads(text)


# --- the command line --------------------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    return main(argv)  # through the real CLI wiring


def test_sign_with_pem_and_with_pkcs12(kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.xml"
    source.write_bytes(unsigned("79001"))
    pem_out, p12_out = tmp_path / "pem.xml", tmp_path / "p12.xml"
    assert run(["sign", "--key", str(kit.pki["facility-79001-key"]), "--cert", str(kit.pki["facility-79001"]),
                str(source), str(pem_out)]) == 0
    key, cert, chain = kit.material("facility-79001")
    bundle = tmp_path / "facility.p12"
    bundle.write_bytes(pkcs12.serialize_key_and_certificates(
        b"79001", key, cert, chain, serialization.BestAvailableEncryption(b"m\xe1\xba\xadt kh\xe1\xba\xa9u")))
    monkeypatch.setenv("HB_P12_PASSWORD", "mật khẩu")
    assert run(["sign", "--p12", str(bundle), "--password-env", "HB_P12_PASSWORD", str(source), str(p12_out)]) == 0
    assert certificate_sha256(cert) in capsys.readouterr().out
    for out in (pem_out, p12_out):
        check = verify(out.read_bytes(), kit.trust)
        assert check.valid and check.registered_facilities == ["79001"]

    monkeypatch.setenv("HB_P12_PASSWORD", "wrong")
    assert run(["sign", "--p12", str(bundle), "--password-env", "HB_P12_PASSWORD", str(source), str(p12_out)]) == 2
    assert run(["sign", "--p12", str(bundle), "--password-env", "HB_UNSET_VARIABLE", str(source), str(p12_out)]) == 2
    assert run(["sign", "--key", str(kit.pki["facility-79001-key"]), str(source), str(p12_out)]) == 2
    assert run(["sign", "--key", str(kit.pki["facility-01001-key"]), "--cert", str(kit.pki["facility-79001"]),
                str(source), str(p12_out)]) == 2  # the key does not match the certificate
    assert "healthbook sign:" in capsys.readouterr().err


def test_verify_json_shape_and_exit_codes(kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "good.xml").write_bytes(kit.signed())
    (folder / "ec.xml").write_bytes(kit.signed("facility-48001-ec", "48001"))
    trust = ["--trust", str(kit.pki["ca"]), "--registry", str(kit.pki["registry"]), "--at", NOW.isoformat()]

    assert run(["verify", "--json", *trust, str(folder)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"files"}
    entries = {Path(f["path"]).name: f for f in document["files"]}
    assert set(entries["good.xml"]) == {"path", "valid", "facility", "certificate_sha256", "issues", "form"}
    assert entries["good.xml"]["valid"] and entries["good.xml"]["facility"] == "01001"
    assert entries["ec.xml"]["form"]["signature_method"] == "ecdsa-sha256"
    assert entries["ec.xml"]["form"]["key"] == "ECDSA secp256r1"
    assert entries["ec.xml"]["certificate_sha256"] == certificate_sha256(kit.cert("facility-48001-ec"))

    (folder / "revoked.xml").write_bytes(kit.signed("revoked", "79001"))
    assert run(["verify", "--json", *trust, str(folder)]) == 1
    entries = {Path(f["path"]).name: f for f in json.loads(capsys.readouterr().out)["files"]}
    (issue,) = entries["revoked.xml"]["issues"]
    assert set(issue) == {"code", "severity", "blocks", "table", "ma_lk", "field", "value", "message_vi",
                          "message_en", "basis"}
    assert issue["code"] == "K409" and issue["blocks"] == "file" and entries["good.xml"]["valid"]
    # the CRL alone says the same; before the revocation the file is fine
    crl_only = ["--trust", str(kit.pki["ca"]), "--crl", str(kit.pki["crl"])]
    assert run(["verify", *crl_only, "--at", NOW.isoformat(), str(folder / "revoked.xml")]) == 1
    assert "K409" in capsys.readouterr().out
    earlier = (NOW - timedelta(days=2)).isoformat()
    assert run(["verify", *crl_only, "--at", earlier, str(folder / "revoked.xml")]) == 0
    assert "1/1 file(s) validly signed" in capsys.readouterr().out

    assert run(["verify", *trust, str(tmp_path / "missing.xml")]) == 2
    assert run(["verify", "--trust", str(kit.pki["ca"]), "--at", "2025-06-01T09:30", str(folder)]) == 2
    assert run(["verify", "--trust", str(tmp_path / "no-ca.pem"), str(folder)]) == 2
    assert run(["verify", "--trust", str(kit.pki["ca-key"]), str(folder)]) == 2  # a key, not a certificate
    assert "needs a timezone" in capsys.readouterr().err


def test_dev_pki_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["dev-pki", str(tmp_path / "pki")]) == 0
    readme = (tmp_path / "pki" / "README.txt").read_text(encoding="utf-8")
    assert "DEVELOPMENT" in readme and "rogue-ca.pem" in readme
    assert (tmp_path / "pki" / "facility-01001-key.pem").stat().st_mode & 0o077 == 0
    assert "unencrypted" in capsys.readouterr().out


def test_dev_pki_names_good_certificates_by_facility_code(kit: Kit) -> None:
    for code, stem in (("01001", "facility-01001"), ("79001", "facility-79001"), ("48001", "facility-48001-ec")):
        assert (kit.pki[code], kit.pki[f"{code}-key"]) == (kit.pki[stem], kit.pki[f"{stem}-key"])
