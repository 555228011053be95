"""Interoperability with xmlsec1, the reference XML-DSig implementation most signing tools build on.

Files signed by `xmlsec1 --sign` must verify here, and files signed here must verify with
`xmlsec1 --verify --trusted-pem ca.pem`. Skipped when xmlsec1 is missing, except in CI (which installs
it), where a missing xmlsec1 fails.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from healthbook.generate import build_visit, submission
from healthbook.generate.vocab import FACILITIES
from healthbook.signing.pki import dev_pki
from healthbook.signing.xmldsig import DS, Trust, load_signing_material, sign_submission, verify_submission

NOW = datetime(2025, 6, 1, 9, 30, tzinfo=UTC)
XMLSEC_TIME = ["--verification-gmt-time", f"{NOW:%Y-%m-%d %H:%M:%S}"]  # certificates judged at NOW, not today
FACILITY = {code: (code, name, province) for code, name, province in FACILITIES}

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"


@pytest.fixture(scope="session")
def xmlsec1() -> str:
    found = shutil.which("xmlsec1")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check interoperability with xmlsec1, but it is not installed")
        pytest.skip("xmlsec1 is not installed (apt-get install xmlsec1)")
    return found


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return dev_pki(tmp_path_factory.mktemp("pki"), now=NOW)


@pytest.fixture(scope="session")
def trust(pki: dict[str, Path]) -> Trust:
    return Trust.from_files(pki["ca"], pki["registry"], [pki["crl"]])


@cache
def unsigned(code: str) -> bytes:
    visit = build_visit(random.Random(11), scenario="inpatient", facility=FACILITY[code],
                        start=datetime(2025, 5, 20, 8))
    return submission(visit)


def template(method: str, transforms: list[str], *, signing_time: bool = False) -> bytes:
    """An XML-DSig template as signing tools write it: empty DigestValue/SignatureValue/X509Certificate."""
    steps = "".join(f'\n          <ds:Transform Algorithm="{t}"/>' for t in transforms)
    extra_reference = obj = ""
    if signing_time:  # a second reference to the signature's own signed properties, as some VN tools add
        extra_reference = f"""
      <ds:Reference URI="#signing-time">
        <ds:DigestMethod Algorithm="{SHA256}"/>
        <ds:DigestValue/>
      </ds:Reference>"""
        obj = """
    <ds:Object Id="signing-time"><SigningTime>2025-06-01T16:00:00+07:00</SigningTime></ds:Object>"""
    return f"""<ds:Signature xmlns:ds="{DS}">
    <ds:SignedInfo>
      <ds:CanonicalizationMethod Algorithm="{C14N}"/>
      <ds:SignatureMethod Algorithm="{method}"/>
      <ds:Reference URI="">
        <ds:Transforms>{steps}
        </ds:Transforms>
        <ds:DigestMethod Algorithm="{SHA256}"/>
        <ds:DigestValue/>
      </ds:Reference>{extra_reference}
    </ds:SignedInfo>
    <ds:SignatureValue/>
    <ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data></ds:KeyInfo>{obj}
  </ds:Signature>""".encode()


def run_xmlsec1(xmlsec1: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([xmlsec1, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("stem", "code", "method", "transforms", "signing_time"), [
    # .NET SignedXml style: only the enveloped transform, so C14N 1.0 is implied
    ("facility-01001", "01001", RSA_SHA256, [ENVELOPED], False),
    ("facility-48001-ec", "48001", ECDSA_SHA256, [ENVELOPED, EXC_C14N], False),
    ("facility-01001", "01001", RSA_SHA256, [ENVELOPED, C14N], True),
], ids=["rsa-enveloped-only", "ecdsa-exclusive-c14n", "rsa-with-signing-time"])
def test_signed_by_xmlsec1_verifies_here(xmlsec1: str, pki: dict[str, Path], trust: Trust, tmp_path: Path,
                                         stem: str, code: str, method: str, transforms: list[str],
                                         signing_time: bool) -> None:
    source = tmp_path / "template.xml"
    filled = b"<CHUKYDONVI>" + template(method, transforms, signing_time=signing_time) + b"</CHUKYDONVI>"
    source.write_bytes(unsigned(code).replace(b"<CHUKYDONVI/>", filled, 1))
    signed = tmp_path / "signed.xml"
    id_attr = ["--id-attr:Id", f"{DS}:Object"] if signing_time else []
    result = run_xmlsec1(xmlsec1, "--sign", *id_attr, "--privkey-pem", f"{pki[stem + '-key']},{pki[stem]}",
                         "--output", str(signed), str(source))
    assert result.returncode == 0, result.stderr

    data = signed.read_bytes()
    check = verify_submission(data, trust=trust, facility=code, at=NOW)
    assert check.valid, [i.message_en for i in check.issues]
    assert check.registered_facilities == [code]
    tampered = data.replace(f"<MACSKCB>{code}</MACSKCB>".encode(), b"<MACSKCB>79002</MACSKCB>", 1)
    assert [i.code for i in verify_submission(tampered, trust=trust, facility=code, at=NOW).issues] == ["K404"]
    if signing_time:  # the second reference is checked too
        assert data.count(b"<ds:DigestValue>") == 2
        backdated = data.replace(b"2025-06-01T16:00", b"2025-05-01T16:00", 1)
        assert [i.code for i in verify_submission(backdated, trust=trust, facility=code, at=NOW).issues] == ["K404"]


def test_comments_are_not_signed_as_in_xmlsec1(xmlsec1: str, pki: dict[str, Path], trust: Trust,
                                               tmp_path: Path) -> None:
    """URI="" drops comments even under C14N #WithComments: an edited comment breaks neither side."""
    signature = template(RSA_SHA256, [ENVELOPED, C14N + "#WithComments"])
    filled = b"<!-- exported by HIS --><CHUKYDONVI>" + signature + b"</CHUKYDONVI>"
    source, signed = tmp_path / "template.xml", tmp_path / "signed.xml"
    source.write_bytes(unsigned("01001").replace(b"<CHUKYDONVI/>", filled, 1))
    result = run_xmlsec1(xmlsec1, "--sign", "--privkey-pem",
                         f"{pki['facility-01001-key']},{pki['facility-01001']}", "--output", str(signed), str(source))
    assert result.returncode == 0, result.stderr
    edited = tmp_path / "edited.xml"
    edited.write_bytes(signed.read_bytes().replace(b"exported by HIS", b"edited later", 1))
    for path in (signed, edited):
        assert verify_submission(path.read_bytes(), trust=trust, facility="01001", at=NOW).valid
        result = run_xmlsec1(xmlsec1, "--verify", "--trusted-pem", str(pki["ca"]), *XMLSEC_TIME, str(path))
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("stem", "code"), [
    ("facility-01001", "01001"),
    ("facility-48001-ec", "48001"),
    ("facility-79001", "79001"),  # the intermediate travels in KeyInfo; xmlsec1 must build the chain from it
])
def test_signed_here_verifies_with_xmlsec1(xmlsec1: str, pki: dict[str, Path], tmp_path: Path, stem: str,
                                           code: str) -> None:
    key, cert, chain = load_signing_material(pki[f"{stem}-key"].read_bytes(), pki[stem].read_bytes())
    signed = sign_submission(unsigned(code), key, cert, chain=chain)
    good, bad = tmp_path / "good.xml", tmp_path / "bad.xml"
    good.write_bytes(signed)
    bad.write_bytes(signed.replace(f"<MACSKCB>{code}</MACSKCB>".encode(), b"<MACSKCB>79002</MACSKCB>", 1))

    result = run_xmlsec1(xmlsec1, "--verify", "--trusted-pem", str(pki["ca"]), *XMLSEC_TIME, str(good))
    assert result.returncode == 0, result.stderr
    result = run_xmlsec1(xmlsec1, "--verify", "--trusted-pem", str(pki["ca"]), *XMLSEC_TIME, str(bad))
    assert result.returncode != 0 and "FAIL" in result.stdout + result.stderr


def test_xmlsec1_refuses_what_we_refuse(xmlsec1: str, pki: dict[str, Path], tmp_path: Path) -> None:
    """The rogue CA's and the expired certificate's files fail in xmlsec1 too (K407, K408 here)."""
    for stem in ("rogue", "expired"):
        key, cert, chain = load_signing_material(pki[f"{stem}-key"].read_bytes(), pki[stem].read_bytes())
        path = tmp_path / f"{stem}.xml"
        path.write_bytes(sign_submission(unsigned("01001"), key, cert, chain=chain))
        result = run_xmlsec1(xmlsec1, "--verify", "--trusted-pem", str(pki["ca"]), *XMLSEC_TIME, str(path))
        assert result.returncode != 0, stem
