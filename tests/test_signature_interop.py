"""Signatures as real HIS software makes them: .NET SignedXml (under Mono), the JDK, xmlsec1 and signxml.

``MATRIX`` is the signer × variation table that docs/signatures.md shows to HIS vendors. Each offered cell is
signed by that signer (the small .NET and Java programs in tests/interop/ are compiled here), checked by
``xmlsec1 --verify`` as an independent witness that the file is well signed, verified here (valid, with the
form the receipt reports), and a copy with one byte of signed content changed is refused with K404. The other
direction: ``healthbook sign`` output verifies in xmlsec1, .NET ``SignedXml.CheckSignature`` and the JDK.
A property test signs random submissions with xmlsec1 in random forms.

A missing toolchain skips these tests on a workstation and fails them under CI=true (.ci/run installs
xmlsec1, Mono and the JDK from Debian's packages).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12
from healthbook.signing.xml_signer import load_signing_material, sign_submission
from healthbook.signing.xmldsig import DS, SignatureCheck, Trust, verify_submission
from healthbook_dev.generate import SCENARIOS, build_visit, checkin_document, submission
from healthbook_dev.generate.vocab import FACILITIES
from healthbook_dev.pki import dev_pki
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

pytestmark = pytest.mark.slow  # compiles and runs the .NET, Java and xmlsec1 signers

ROOT = Path(__file__).resolve().parents[1]
INTEROP = ROOT / "tests" / "interop"
NOW = datetime(2025, 6, 1, 9, 30, tzinfo=UTC)
XMLSEC_TIME = ["--verification-gmt-time", f"{NOW:%Y-%m-%d %H:%M:%S}"]  # certificates judged at NOW, not today
FACILITY = {code: (code, name, province) for code, name, province in FACILITIES}
PASSWORD = "interop"

C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N11 = "http://www.w3.org/2006/12/xml-c14n11"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = f"{DS}enveloped-signature"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = f"{DS}rsa-sha1"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA1 = f"{DS}sha1"
NAMES = {C14N: "c14n", C14N11: "c14n11", EXC_C14N: "exc-c14n"}


# --- the matrix ------------------------------------------------------------------------------------------

SIGNERS = {
    "dotnet": ".NET `SignedXml` (Mono 6.8)",
    "jdk": "JDK 17 `XMLSignatureFactory`",
    "xmlsec1": "xmlsec1 1.2 (template)",
    "signxml": "`healthbook sign` (signxml)",
}
DEFAULT_FORMS = {  # what each signer writes when nothing is asked of it
    "dotnet": "default namespace, C14N 1.0, enveloped transform only, RSA-SHA256, SHA-256, UTF-8 BOM",
    "jdk": "default namespace, C14N 1.0, enveloped transform only, RSA- or ECDSA-SHA256 by key, SHA-256",
    "xmlsec1": "as the template says; here: default namespace, C14N 1.0, enveloped transform only",
    "signxml": "`ds:` prefix, C14N 1.0, enveloped + C14N transforms, RSA- or ECDSA-SHA256 by key, SHA-256",
}
VARIATIONS = {
    "default": "the signer's default form, on a pretty-printed envelope with `xmlns:xsi`/`xmlns:xsd` on the root",
    "ds-prefix": "`<ds:Signature xmlns:ds=…>`",
    "exclusive-c14n": "exclusive C14N for SignedInfo and as the reference's second transform",
    "c14n-1.1": "C14N 1.1",
    "no-xsi-xsd": "root without `xmlns:xsi` / `xmlns:xsd`",
    "crlf": "pretty-printed with CRLF line ends (before and after signing)",
    "compact": "no whitespace between elements",
    "intermediate": "intermediate CA certificate beside the leaf in `X509Data`",
    "keyinfo-extra": "`X509SubjectName` and `X509IssuerSerial` beside the certificate",
    "ecdsa-p256": "ECDSA P-256 key, ecdsa-sha256",
    "signing-time": "a second reference to a signing time in the signature's own `Object`",
    "check-in": "a check-in document (`CHI_TIEU_TRANG_THAI_KCB`, XML0) signed the same way",
    "xsi-uri-with-space": '`xmlns:xsi="http://www.w3.org/2001/XMLSchema instance"` on the root, as real exports '
                          "write it in inner tables (not a URI; witness: the other signer's verifier)",
}
NOT_OFFERED = {  # (signer, variation): why the signer cannot produce it
    ("dotnet", "ds-prefix"): "SignedXml writes no prefix",
    ("dotnet", "c14n-1.1"): "SignedXml has no C14N 1.1",
    ("dotnet", "ecdsa-p256"): "SignedXml has no ecdsa-sha256 (and Mono cannot use EC keys)",
    ("signxml", "exclusive-c14n"): "`healthbook sign` uses C14N 1.0",
    ("signxml", "c14n-1.1"): "`healthbook sign` uses C14N 1.0",
    ("signxml", "keyinfo-extra"): "`healthbook sign` writes certificates only",
    ("signxml", "signing-time"): "`healthbook sign` adds no Object",
    ("xmlsec1", "xsi-uri-with-space"): "libxml2 cannot canonicalise it",
    ("signxml", "xsi-uri-with-space"): "`healthbook sign` writes the URI percent-encoded",
}
CELLS = [(s, v) for v in VARIATIONS for s in SIGNERS if (s, v) not in NOT_OFFERED]
# What each signer writes by default, as the receipt's form reports it: (namespace, canonicalisation).
DEFAULT_NAMESPACE = {"dotnet": "default", "jdk": "default", "xmlsec1": "default", "signxml": "prefix ds"}


VERIFIES = "✅ verifies; 1 byte changed: K404"


def matrix_markdown() -> str:
    """The table docs/signatures.md must contain (test_docs_show_the_matrix keeps them equal)."""
    head = "| variation | " + " | ".join(SIGNERS.values()) + " |"
    lines = [head, "|---" * (len(SIGNERS) + 1) + "|"]
    for variation, description in VARIATIONS.items():
        cells = [f"— ({NOT_OFFERED[(s, variation)]})" if (s, variation) in NOT_OFFERED else VERIFIES for s in SIGNERS]
        lines.append(f"| **{variation}**: {description} | " + " | ".join(cells) + " |")
    forms = "\n".join(f"- {SIGNERS[s]}: {form}" for s, form in DEFAULT_FORMS.items())
    return "\n".join(lines) + "\n\nDefault forms:\n" + forms + "\n"


def test_docs_show_the_matrix() -> None:
    docs = (ROOT / "docs" / "signatures.md").read_text(encoding="utf-8")
    assert matrix_markdown() in docs, "docs/signatures.md must contain, verbatim:\n\n" + matrix_markdown()


# --- toolchains ------------------------------------------------------------------------------------------


def _require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check signatures with {', '.join(missing)}, but it is not installed")
        pytest.skip(f"{', '.join(missing)} not installed (see .ci/run for the Debian packages)")


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def xmlsec1() -> str:
    _require("xmlsec1")
    return "xmlsec1"


@pytest.fixture(scope="session")
def dotnet(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The .NET tool, compiled with mcs: the command that runs a jobs file."""
    _require("mcs", "mono")
    exe = tmp_path_factory.mktemp("dotnet") / "XmlDsigTool.exe"
    built = _run("mcs", f"-out:{exe}", "-r:System.Security.dll", "-r:System.Xml.dll",
                 str(INTEROP / "dotnet" / "XmlDsigTool.cs"))
    assert built.returncode == 0, built.stdout + built.stderr
    return ["mono", str(exe)]


@pytest.fixture(scope="session")
def jdk(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Java tool, compiled with javac: the command that runs a jobs file."""
    _require("javac", "java")
    classes = tmp_path_factory.mktemp("jdk")
    built = _run("javac", "-d", str(classes), str(INTEROP / "java" / "XmlDsigTool.java"))
    assert built.returncode == 0, built.stdout + built.stderr
    return ["java", "-cp", str(classes), "XmlDsigTool"]


def run_jobs(command: list[str], jobs: list[list[str]], workdir: Path) -> list[str]:
    """One process for many jobs (a JVM or Mono start costs more than a signature): one result line each."""
    jobs_file = workdir / f"jobs-{len(list(workdir.glob('jobs-*')))}.tsv"
    jobs_file.write_text("".join("\t".join(job) + "\n" for job in jobs), encoding="utf-8")
    result = _run(*command, str(jobs_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(jobs), result.stdout + result.stderr
    return lines


# --- keys and documents ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    pki: dict[str, Path]
    trust: Trust
    workdir: Path

    def p12(self, stem: str) -> Path:
        """A PKCS#12 file with the key, its certificate and its chain, in the legacy encryption Mono reads
        (PBE-SHA1-3DES, SHA-1 MAC: ``openssl pkcs12 -export -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES``)."""
        path = self.workdir / f"{stem}.p12"
        if not path.exists():
            key, cert, chain = load_signing_material(self.pki[f"{stem}-key"].read_bytes(), self.pki[stem].read_bytes())
            legacy = (PrivateFormat.PKCS12.encryption_builder().kdf_rounds(2048)
                      .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(hashes.SHA1())
                      .build(PASSWORD.encode()))
            path.write_bytes(pkcs12.serialize_key_and_certificates(stem.encode(), key, cert, chain or None, legacy))
        return path

    def chain_der(self, stem: str) -> list[Path]:
        """The certificates after the leaf, as DER files (the .NET tool's chain=FILE)."""
        paths = []
        for number, cert in enumerate(x509.load_pem_x509_certificates(self.pki[stem].read_bytes())[1:]):
            path = self.workdir / f"{stem}-chain-{number}.der"
            path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
            paths.append(path)
        return paths

    def leaf(self, stem: str) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.pki[stem].read_bytes())[0]


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    pki = dev_pki(tmp_path_factory.mktemp("pki"), now=NOW)
    return Keys(pki=pki, trust=Trust.from_files(pki["ca"], pki["registry"], [pki["crl"]]),
                workdir=tmp_path_factory.mktemp("keys"))


STEM = {"01001": "facility-01001", "79001": "facility-79001", "48001": "facility-48001-ec"}


def facility_for(variation: str) -> str:
    return {"intermediate": "79001", "ecdsa-p256": "48001"}.get(variation, "01001")


@cache
def unsigned(code: str, shape: str = "envelope", seed: int = 11, scenario: str = "inpatient") -> bytes:
    """A generated visit of facility ``code``: its envelope (pretty-printed, xmlns:xsi/xsd on the root, as the
    portal's sample) or its check-in document, reshaped: "no-xsi-xsd", "compact", "crlf", "check-in"."""
    visit = build_visit(random.Random(seed), scenario=scenario, facility=FACILITY[code], start=datetime(2025, 5, 20, 8))
    data = checkin_document(visit) if shape == "check-in" else submission(visit)
    if shape == "no-xsi-xsd":
        data = re.sub(rb'<GIAMDINHHS[^>]*>', b"<GIAMDINHHS>", data, count=1)
    elif shape == "xsi-uri-with-space":
        data = data.replace(b"XMLSchema-instance", b"XMLSchema instance", 1)
    elif shape == "compact":
        parser = etree.XMLParser(remove_blank_text=True)
        data = etree.tostring(etree.fromstring(data, parser), xml_declaration=True, encoding="UTF-8")
    elif shape == "crlf":
        data = to_crlf(data)
    return data


def to_crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def shape_of(variation: str) -> str:
    return variation if variation in ("no-xsi-xsd", "compact", "crlf", "check-in", "xsi-uri-with-space") else "envelope"


def tamper(data: bytes) -> bytes:
    """One byte of signed content changed: the last digit of the facility code (or of MA_LK in a check-in)."""
    match = re.search(rb"<(MACSKCB|MA_LK)>(\d+)<", data)
    assert match is not None
    position = match.end(2) - 1
    return data[:position] + (b"2" if data[position:position + 1] != b"2" else b"3") + data[position + 1:]


def verify(data: bytes, keys: Keys, facility: str) -> SignatureCheck:
    return verify_submission(data, trust=keys.trust, facility=facility, at=NOW)


def codes(check: SignatureCheck) -> list[str]:
    return [issue.code for issue in check.issues]


# --- xmlsec1 templates -----------------------------------------------------------------------------------


def template(*, prefix: str | None = None, c14n: str = C14N, transforms: tuple[str, ...] = (ENVELOPED,),
             method: str = RSA_SHA256, digest: str = SHA256, keyinfo_extra: x509.Certificate | None = None,
             signing_time: bool = False, pretty: bool = False) -> bytes:
    """An XML-DSig template as a facility's signing tool writes it, for ``xmlsec1 --sign`` to fill in."""
    p = f"{prefix}:" if prefix else ""
    declaration = f' xmlns:{prefix}="{DS}"' if prefix else f' xmlns="{DS}"'
    steps = "".join(f'<{p}Transform Algorithm="{t}"/>' for t in transforms)
    extra = ""
    if keyinfo_extra is not None:  # xmlsec1 does not fill these in: the signing tool writes them
        extra = (f"<{p}X509SubjectName>{keyinfo_extra.subject.rfc4514_string()}</{p}X509SubjectName>"
                 f"<{p}X509IssuerSerial><{p}X509IssuerName>{keyinfo_extra.issuer.rfc4514_string()}</{p}X509IssuerName>"
                 f"<{p}X509SerialNumber>{keyinfo_extra.serial_number}</{p}X509SerialNumber></{p}X509IssuerSerial>")
    second = obj = ""
    if signing_time:
        second = (f'<{p}Reference URI="#signing-time"><{p}DigestMethod Algorithm="{digest}"/>'
                  f"<{p}DigestValue/></{p}Reference>")
        obj = f'<{p}Object Id="signing-time"><SigningTime>2025-06-01T16:00:00+07:00</SigningTime></{p}Object>'
    text = (f"<{p}Signature{declaration}><{p}SignedInfo><{p}CanonicalizationMethod Algorithm=\"{c14n}\"/>"
            f"<{p}SignatureMethod Algorithm=\"{method}\"/><{p}Reference URI=\"\"><{p}Transforms>{steps}</{p}Transforms>"
            f"<{p}DigestMethod Algorithm=\"{digest}\"/><{p}DigestValue/></{p}Reference>{second}</{p}SignedInfo>"
            f"<{p}SignatureValue/><{p}KeyInfo><{p}X509Data>{extra}<{p}X509Certificate/></{p}X509Data></{p}KeyInfo>"
            f"{obj}</{p}Signature>")
    if pretty:  # a template laid out on lines, as in most vendors' samples: whitespace inside SignedInfo too
        text = re.sub(r"><", ">\n  <", text)
    return text.encode()


def with_template(data: bytes, signature: bytes) -> bytes:
    filled, count = re.subn(rb"<CHUKYDONVI\s*/>|<CHUKYDONVI>\s*</CHUKYDONVI>",
                            b"<CHUKYDONVI>" + signature.replace(b"\\", b"\\\\") + b"</CHUKYDONVI>", data, count=1)
    assert count == 1
    return filled


def xmlsec1_sign(xmlsec1: str, keys: Keys, stem: str, source: bytes, workdir: Path, name: str) -> bytes:
    unsigned_path, signed_path = workdir / f"{name}.template.xml", workdir / f"{name}.xml"
    unsigned_path.write_bytes(source)
    id_attr = ["--id-attr:Id", f"{DS}:Object"] if b'Id="signing-time"' in source else []
    result = _run(xmlsec1, "--sign", *id_attr, "--pkcs12", str(keys.p12(stem)), "--pwd", PASSWORD,
                  "--output", str(signed_path), str(unsigned_path), timeout=60)
    assert result.returncode == 0, result.stderr
    return signed_path.read_bytes()


def xmlsec1_verifies(xmlsec1: str, keys: Keys, data: bytes, workdir: Path, name: str) -> bool:
    path = workdir / f"{name}.check.xml"
    path.write_bytes(data)
    return _run(xmlsec1, "--verify", "--trusted-pem", str(keys.pki["ca"]), *XMLSEC_TIME, str(path),
                timeout=60).returncode == 0


# --- signing the matrix ----------------------------------------------------------------------------------


def xmlsec1_template_for(variation: str, keys: Keys) -> bytes:
    code = facility_for(variation)
    return template(prefix="ds" if variation == "ds-prefix" else None,
                    c14n={"exclusive-c14n": EXC_C14N, "c14n-1.1": C14N11}.get(variation, C14N),
                    transforms=(ENVELOPED, EXC_C14N) if variation == "exclusive-c14n" else (ENVELOPED,),
                    method=ECDSA_SHA256 if variation == "ecdsa-p256" else RSA_SHA256,
                    keyinfo_extra=keys.leaf(STEM[code]) if variation == "keyinfo-extra" else None,
                    signing_time=variation == "signing-time", pretty=variation == "crlf")


def tool_options(signer: str, variation: str, keys: Keys) -> str:
    options = {"ds-prefix": ["ds"], "exclusive-c14n": ["exc-c14n"], "c14n-1.1": ["c14n11"],
               "keyinfo-extra": ["keyinfo-extra"], "signing-time": ["signing-time"]}.get(variation, [])
    if variation == "intermediate":
        options = ["chain"] if signer == "jdk" else [f"chain={p}" for p in keys.chain_der(STEM["79001"])]
    return ",".join(options) or "-"


@pytest.fixture(scope="session")
def matrix_files(keys: Keys, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
                 ) -> dict[tuple[str, str], bytes | str]:
    """Every offered cell signed by its signer: the signed bytes, or the signer's error text. The .NET and
    Java tools sign all their cells in one process each."""
    workdir = tmp_path_factory.mktemp("matrix")
    out: dict[tuple[str, str], bytes | str] = {}
    for tool in ("dotnet", "jdk"):
        cells = [(s, v) for s, v in CELLS if s == tool]
        command: list[str] = request.getfixturevalue(tool)
        jobs = []
        for signer, variation in cells:
            source = workdir / f"{signer}-{variation}.in.xml"
            source.write_bytes(unsigned(facility_for(variation), shape_of(variation)))
            jobs.append(["sign", str(source), str(workdir / f"{signer}-{variation}.xml"),
                         str(keys.p12(STEM[facility_for(variation)])), PASSWORD, tool_options(signer, variation, keys)])
        for (signer, variation), line in zip(cells, run_jobs(command, jobs, workdir), strict=True):
            out[(signer, variation)] = (workdir / f"{signer}-{variation}.xml").read_bytes() if line == "ok" else line
    xmlsec = request.getfixturevalue("xmlsec1")
    for signer, variation in CELLS:
        code = facility_for(variation)
        if signer == "xmlsec1":
            source = with_template(unsigned(code, shape_of(variation)), xmlsec1_template_for(variation, keys))
            out[(signer, variation)] = xmlsec1_sign(xmlsec, keys, STEM[code], source, workdir, f"xmlsec1-{variation}")
        elif signer == "signxml":
            key, cert, chain = load_signing_material(keys.pki[f"{STEM[code]}-key"].read_bytes(),
                                                     keys.pki[STEM[code]].read_bytes())
            out[(signer, variation)] = sign_submission(unsigned(code, shape_of(variation)), key, cert, chain=chain)
    for cell, data in out.items():  # signers write LF; the file as a Windows tool may pass it on
        if cell[1] == "crlf" and isinstance(data, bytes):
            out[cell] = to_crlf(data)
    return out


@pytest.mark.parametrize(("signer", "variation"), CELLS, ids=[f"{s}-{v}" for s, v in CELLS])
def test_signed_by_real_signers_verifies(signer: str, variation: str, matrix_files: dict[tuple[str, str], bytes | str],
                                         keys: Keys, xmlsec1: str, tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
    data = matrix_files[(signer, variation)]
    assert isinstance(data, bytes), f"{signer} could not sign: {data}"
    if variation == "xsi-uri-with-space":  # libxml2 (xmlsec1) cannot read it: the other signer's verifier witnesses
        witness = request.getfixturevalue("jdk" if signer == "dotnet" else "dotnet")
        path = tmp_path / "witness.xml"
        path.write_bytes(data)
        assert run_jobs(witness, [["verify", str(path)]], tmp_path) == ["valid"], "the witness refuses the file"
    else:
        assert xmlsec1_verifies(xmlsec1, keys, data, tmp_path, "witness"), "xmlsec1 refuses the signer's own file"
    code = facility_for(variation)
    check = verify(data, keys, code)
    assert check.valid, [(i.code, i.message_en) for i in check.issues]
    assert check.registered_facilities == [code]

    form = check.form
    assert form is not None
    namespace = "prefix ds" if variation == "ds-prefix" else DEFAULT_NAMESPACE[signer]
    assert form.namespace == namespace
    assert form.canonicalization == {"exclusive-c14n": "exc-c14n", "c14n-1.1": "c14n11"}.get(variation, "c14n")
    assert form.signature_method == ("ecdsa-sha256" if variation == "ecdsa-p256" else "rsa-sha256")
    assert form.key == ("ECDSA secp256r1" if variation == "ecdsa-p256" else "RSA 2048")
    assert form.key_info.count("X509Certificate") == (2 if variation == "intermediate" else 1)
    if variation == "keyinfo-extra":
        assert {"X509SubjectName", "X509IssuerSerial"} <= set(form.key_info)
    assert len(form.references) == (2 if variation == "signing-time" else 1)
    if variation == "crlf":
        assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")

    assert codes(verify(tamper(data), keys, code)) == ["K404"]
    if variation == "signing-time":
        backdated = data.replace(b"2025-06-01T16:00", b"2025-05-01T16:00", 1)
        assert codes(verify(backdated, keys, code)) == ["K404"]


# --- refused as before, whoever signs --------------------------------------------------------------------

REFUSALS = [  # (signer, case, stem, tool options or xmlsec1 template arguments, expected code)
    ("dotnet", "untrusted CA", "rogue", "-", "K407"),
    ("jdk", "untrusted CA", "rogue", "-", "K407"),
    ("dotnet", "expired certificate", "expired", "-", "K408"),
    ("jdk", "expired certificate", "expired", "-", "K408"),
    ("dotnet", "revoked certificate", "revoked", "-", "K409"),
    ("jdk", "revoked certificate", "revoked", "-", "K409"),
    ("jdk", "SHA-1", "facility-01001", "sha1", "K406"),
    ("xmlsec1", "SHA-1", "facility-01001", "sha1", "K406"),
    ("jdk", "a second reference outside the signature", "facility-01001", "second-ref", "K402"),
    ("dotnet", "signature outside CHUKYDONVI", "facility-01001", "outside", "K402"),
    ("jdk", "signature outside CHUKYDONVI", "facility-01001", "outside", "K402"),
]
REFUSAL_FACILITY = {"rogue": "01001", "expired": "01001", "revoked": "79001", "facility-01001": "01001"}


@pytest.fixture(scope="session")
def refused_files(keys: Keys, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
                  ) -> dict[tuple[str, str], bytes | str]:
    workdir = tmp_path_factory.mktemp("refused")
    out: dict[tuple[str, str], bytes | str] = {}
    for tool in ("dotnet", "jdk"):
        cases = [r for r in REFUSALS if r[0] == tool]
        jobs = []
        for signer, _, stem, options, _ in cases:
            source = workdir / f"{signer}-{stem}-{options}.in.xml"
            source.write_bytes(unsigned(REFUSAL_FACILITY[stem]))
            jobs.append(["sign", str(source), str(workdir / f"{signer}-{stem}-{options}.xml"), str(keys.p12(stem)),
                         PASSWORD, options])
        for (signer, case, stem, options, _), line in zip(cases, run_jobs(request.getfixturevalue(tool), jobs, workdir),
                                                          strict=True):
            path = workdir / f"{signer}-{stem}-{options}.xml"
            out[(signer, case)] = path.read_bytes() if line == "ok" else line
    xmlsec = request.getfixturevalue("xmlsec1")
    sha1 = template(method=RSA_SHA1, digest=SHA1)
    out[("xmlsec1", "SHA-1")] = xmlsec1_sign(xmlsec, keys, "facility-01001", with_template(unsigned("01001"), sha1),
                                            workdir, "xmlsec1-sha1")
    return out


@pytest.mark.parametrize(("signer", "case", "stem", "expected"), [(s, c, k, e) for s, c, k, _, e in REFUSALS],
                         ids=[f"{s}-{c}" for s, c, *_ in REFUSALS])
def test_refused_whoever_signs(signer: str, case: str, stem: str, expected: str, keys: Keys,
                               refused_files: dict[tuple[str, str], bytes | str]) -> None:
    data = refused_files[(signer, case)]
    assert isinstance(data, bytes), f"{signer} could not sign: {data}"
    check = verify(data, keys, REFUSAL_FACILITY[stem])
    assert codes(check) == [expected], [(i.code, i.message_en) for i in check.issues]
    assert check.form is not None and check.form.namespace == "default"  # the receipt still names the form


def test_xmlsec1_refuses_what_we_refuse(xmlsec1: str, keys: Keys, tmp_path: Path) -> None:
    """The rogue CA's and the expired certificate's files fail in xmlsec1 too (K407, K408 here)."""
    for stem in ("rogue", "expired"):
        key, cert, chain = load_signing_material(keys.pki[f"{stem}-key"].read_bytes(), keys.pki[stem].read_bytes())
        assert not xmlsec1_verifies(xmlsec1, keys, sign_submission(unsigned("01001"), key, cert, chain=chain),
                                    tmp_path, stem)


def test_comments_are_not_signed_as_in_xmlsec1(xmlsec1: str, keys: Keys, tmp_path: Path) -> None:
    """URI="" drops comments even under C14N #WithComments: an edited comment breaks neither side."""
    source = with_template(unsigned("01001"), template(transforms=(ENVELOPED, C14N + "#WithComments")))
    source = source.replace(b"<CHUKYDONVI>", b"<!-- exported by HIS --><CHUKYDONVI>", 1)
    signed = xmlsec1_sign(xmlsec1, keys, "facility-01001", source, tmp_path, "comments")
    edited = signed.replace(b"exported by HIS", b"edited later", 1)
    for data in (signed, edited):
        assert verify(data, keys, "01001").valid
        assert xmlsec1_verifies(xmlsec1, keys, data, tmp_path, "comments")


# --- the other direction: what healthbook sign writes ----------------------------------------------------

OURS = ["default", "no-xsi-xsd", "compact", "crlf", "intermediate", "ecdsa-p256", "check-in"]


@pytest.fixture(scope="session")
def ours(matrix_files: dict[tuple[str, str], bytes | str], tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, tuple[Path, Path]]:
    """healthbook sign's files of the matrix and their tampered copies, on disk."""
    workdir = tmp_path_factory.mktemp("ours")
    paths = {}
    for variation in OURS:
        data = matrix_files[("signxml", variation)]
        assert isinstance(data, bytes)
        good, bad = workdir / f"{variation}.xml", workdir / f"{variation}-tampered.xml"
        good.write_bytes(data)
        bad.write_bytes(tamper(data))
        paths[variation] = (good, bad)
    return paths


@pytest.mark.parametrize("tool", ["dotnet", "jdk"])
def test_healthbook_sign_verifies_in_dotnet_and_the_jdk(tool: str, ours: dict[str, tuple[Path, Path]],
                                                        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    variations = [v for v in OURS if not (tool == "dotnet" and v == "ecdsa-p256")]  # Mono has no ECDSA
    jobs = [["verify", str(path)] for v in variations for path in ours[v]]
    results = run_jobs(request.getfixturevalue(tool), jobs, tmp_path)
    assert results == ["valid", "invalid"] * len(variations), list(zip(jobs, results, strict=True))


def test_healthbook_sign_verifies_in_xmlsec1(xmlsec1: str, keys: Keys, ours: dict[str, tuple[Path, Path]],
                                             tmp_path: Path) -> None:
    for variation, (good, bad) in ours.items():
        assert xmlsec1_verifies(xmlsec1, keys, good.read_bytes(), tmp_path, variation), variation
        assert not xmlsec1_verifies(xmlsec1, keys, bad.read_bytes(), tmp_path, variation), variation


# --- property: random submissions in random forms --------------------------------------------------------

_TEXT = re.compile(rb">([^<>\s][^<>]*)<")


def signed_text_positions(data: bytes) -> Iterator[int]:
    """Byte positions of ASCII letters and digits in element text outside the signature: changing one changes
    the signed content, whatever the canonicalisation."""
    end = data.find(b"Signature")
    end = data.rfind(b"<", 0, end)
    for match in _TEXT.finditer(data, 0, end):
        for offset in range(match.start(1), match.end(1)):
            if data[offset:offset + 1].isalnum() and data[offset] < 0x80:
                yield offset


@st.composite
def signing_forms(draw: Callable[..., object]) -> dict[str, object]:
    return {
        "seed": draw(st.integers(0, 10_000)),
        "scenario": draw(st.sampled_from(sorted(SCENARIOS))),
        "shape": draw(st.sampled_from(["envelope", "no-xsi-xsd", "compact", "crlf", "check-in"])),
        "prefix": draw(st.sampled_from([None, "ds", "dsig"])),
        "c14n": draw(st.sampled_from([C14N, EXC_C14N, C14N11])),
        "c14n_transform": draw(st.booleans()),
        "pretty_template": draw(st.booleans()),
        "key": draw(st.sampled_from(["01001", "48001", "79001"])),
        "flip": draw(st.randoms(use_true_random=False)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=signing_forms())
def test_random_submissions_in_random_forms(form: dict[str, object], xmlsec1: str, keys: Keys, tmp_path: Path) -> None:
    code = str(form["key"])
    data = unsigned(code, str(form["shape"]), seed=int(str(form["seed"])), scenario=str(form["scenario"]))
    c14n = str(form["c14n"])
    signature = template(prefix=form["prefix"] if isinstance(form["prefix"], str) else None, c14n=c14n,
                         transforms=(ENVELOPED, c14n) if form["c14n_transform"] else (ENVELOPED,),
                         method=ECDSA_SHA256 if code == "48001" else RSA_SHA256, pretty=bool(form["pretty_template"]))
    signed = xmlsec1_sign(xmlsec1, keys, STEM[code], with_template(data, signature), tmp_path, "random")
    if form["shape"] == "crlf":
        signed = to_crlf(signed)
    check = verify(signed, keys, code)
    assert check.valid, ([(i.code, i.message_en) for i in check.issues], form)
    rng = form["flip"]
    assert isinstance(rng, random.Random)
    position = rng.choice(list(signed_text_positions(signed)))
    original = signed[position:position + 1]
    replacement = rng.choice([c for c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                              if bytes([c]) != original])
    flipped = signed[:position] + bytes([replacement]) + signed[position + 1:]
    assert codes(verify(flipped, keys, code)) == ["K404"], (position, form)
