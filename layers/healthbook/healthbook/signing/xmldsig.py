"""The facility's signature on a GIAMDINHHS submission: W3C XML-DSig, enveloped, inside CHUKYDONVI.

signxml signs (``healthbook sign``); ``dsig_core`` checks the mathematics of a received signature in any
form real signers write (``ds:`` prefix or default namespace). This module decides what is acceptable (where
the signature sits, which algorithms, what it covers) and whom to trust (a chain to the configured anchors,
validity at the receipt time, revocation, the facility registry), in a fixed order, so that every failure is
reported with exactly one K code. See docs/signatures.md.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature as CryptographyInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

from healthbook.kernel import MAX_FILE_BYTES, utc
from healthbook.parsing import safe_xml
from healthbook.parsing.safe_xml import XmlRejected
from healthbook.signing import dsig_core
from healthbook.signing.registry import FacilityRegistry, certificate_sha256
from healthbook.validation.issues import Issue, make_issue

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DS = dsig_core.DS
SIGNATURE_PARENT = "CHUKYDONVI"
ENVELOPED = dsig_core.ENVELOPED

# Everything the core can check is accepted: SHA-2 only (SHA-1 and MD5 never), RSA PKCS#1 v1.5 and ECDSA.
ACCEPTED_SIGNATURE_METHODS = frozenset(dsig_core.SIGNATURE_METHODS)
ACCEPTED_DIGESTS = frozenset(dsig_core.DIGESTS)
# C14N 1.1 is accepted too: as strong as 1.0, and the default of signxml and other current signers.
ACCEPTED_CANONICALIZATIONS = dsig_core.CANONICALIZATIONS
ACCEPTED_TRANSFORMS = ACCEPTED_CANONICALIZATIONS | {ENVELOPED}
MIN_RSA_BITS = 2048  # NIST SP 800-57's floor, and what licensed CAs issue
ACCEPTED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})

_MAX_CHAIN = 8  # intermediates between a leaf and its anchor; real Vietnamese chains have one or two

def _ds(name: str) -> str:
    return f"{{{DS}}}{name}"


# --- verifying ---------------------------------------------------------------------------------------------


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


@dataclass(frozen=True)
class Trust:
    """What the receiving side trusts: CA certificates, optionally a facility registry and CRLs."""

    anchors: tuple[x509.Certificate, ...]
    registry: FacilityRegistry | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    @classmethod
    def from_files(cls, ca_pem: Path, registry: Path | None = None, crls: Sequence[Path] = ()) -> Trust:
        """Load a PEM CA bundle, a registry JSON and CRLs (PEM or DER). Raises ValueError or OSError."""
        anchors = tuple(x509.load_pem_x509_certificates(Path(ca_pem).read_bytes()))  # ValueError when none
        return cls(anchors=anchors, registry=FacilityRegistry.load(registry) if registry else None,
                   crls=tuple(_load_crl(Path(p).read_bytes()) for p in crls))


# Short names for support staff; an algorithm not listed is shown by its URI.
_ALGORITHM_NAMES = {
    dsig_core.C14N_10: "c14n", dsig_core.C14N_10 + dsig_core.WITH_COMMENTS: "c14n#WithComments",
    dsig_core.C14N_11: "c14n11", dsig_core.C14N_11 + dsig_core.WITH_COMMENTS: "c14n11#WithComments",
    dsig_core.EXC_C14N: "exc-c14n", dsig_core.EXC_C14N + "WithComments": "exc-c14n#WithComments",
    ENVELOPED: "enveloped-signature",
    **{uri: uri.rsplit("#", 1)[1] for uri in (*dsig_core.SIGNATURE_METHODS, *dsig_core.DIGESTS)},
    f"{DS}rsa-sha1": "rsa-sha1", f"{DS}sha1": "sha1", "http://www.w3.org/2001/04/xmldsig-more#md5": "md5",
}


def _algorithm_name(uri: str | None) -> str | None:
    return _ALGORITHM_NAMES.get(uri, uri) if uri is not None else None


@dataclass(frozen=True)
class SignatureForm:
    """How the signature was written, so support staff can answer a vendor without the file: the namespace
    form (``xmlns="…xmldsig#"`` as .NET, the JDK and xmlsec1 write it by default, or a prefix), the
    canonicalisation, the signature method, each reference's URI, transforms and digest, the key, and what
    KeyInfo/X509Data holds."""

    namespace: str
    canonicalization: str | None
    signature_method: str | None
    references: tuple[tuple[str | None, tuple[str | None, ...], str | None], ...]
    key_info: tuple[str, ...]
    key: str | None = None

    @classmethod
    def of(cls, signature: etree._Element) -> SignatureForm:
        def algorithm(element: etree._Element | None) -> str | None:
            return _algorithm_name(element.get("Algorithm")) if element is not None else None

        signed_info = signature.find(_ds("SignedInfo"))
        references = signed_info.findall(_ds("Reference")) if signed_info is not None else []
        return cls(
            namespace=f"prefix {signature.prefix}" if signature.prefix else "default",
            canonicalization=algorithm(signature.find(f"{_ds('SignedInfo')}/{_ds('CanonicalizationMethod')}")),
            signature_method=algorithm(signature.find(f"{_ds('SignedInfo')}/{_ds('SignatureMethod')}")),
            references=tuple((r.get("URI"), tuple(algorithm(t) for t in r.iterfind(f"{_ds('Transforms')}/*")),
                              algorithm(r.find(_ds("DigestMethod")))) for r in references),
            key_info=tuple(etree.QName(e).localname for e in signature.iterfind(f"{_ds('KeyInfo')}/*/*")
                           if isinstance(e.tag, str)))

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "canonicalization": self.canonicalization,
                "signature_method": self.signature_method,
                "references": [{"uri": uri, "transforms": list(transforms), "digest": digest}
                               for uri, transforms, digest in self.references],
                "key": self.key, "key_info": list(self.key_info)}


def _key_description(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__.removesuffix("PublicKey")


@dataclass
class SignatureCheck:
    valid: bool
    issues: list[Issue]
    certificate_sha256: str | None = None
    subject: str | None = None
    registered_facilities: list[str] = field(default_factory=list)
    form: SignatureForm | None = None  # set once the signature is found, refused or not

    def require_facility(self, facility: str | None) -> None:
        """K411 unless the certificate is registered for ``facility`` (the file's MACSKCB): the last check, made
        once the file has been read. Nothing to check without a registry (no registered facilities)."""
        if self.valid and facility is not None and self.registered_facilities \
                and facility not in self.registered_facilities:
            self.valid = False
            self.issues.append(make_issue("K411", facility=facility))

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "issues": [i.to_dict() for i in self.issues],
                "certificate_sha256": self.certificate_sha256, "subject": self.subject,
                "registered_facilities": self.registered_facilities,
                "form": self.form.to_dict() if self.form is not None else None}


class _Refused(Exception):
    """One failed check: its catalogue code and message parameters."""

    def __init__(self, code: str, **params: Any) -> None:
        super().__init__(code, params)
        self.code = code
        self.params = params


def _locate(root: etree._Element) -> etree._Element:
    """The one ds:Signature, which must be a child of CHUKYDONVI (a child of the root)."""
    signatures = list(root.iter(_ds("Signature")))
    if len(signatures) > 1:
        raise _Refused("K402", detail=f"{len(signatures)} ds:Signature elements, only one is allowed")
    if not signatures:
        holders = [p for p in root.findall(SIGNATURE_PARENT) if p.findall("*") or (p.text or "").strip()]
        if holders:  # something sits there, just not an XML-DSig signature (wrong namespace, say)
            raise _Refused("K402", detail=f"{SIGNATURE_PARENT} holds no ds:Signature in the XML-DSig namespace")
        raise _Refused("K401")
    signature = signatures[0]
    parent = signature.getparent()
    if parent is None or parent.tag != SIGNATURE_PARENT or parent.getparent() is not root:
        raise _Refused("K402", detail=f"ds:Signature must be a child of {root.tag}/{SIGNATURE_PARENT}")
    return signature


@cache
def _dsig_schema() -> etree.XMLSchema:
    """The XML-DSig schema signxml ships and validates with (xmldsig1-schema.xsd and what it imports), read from
    its data files without importing signxml: only signing needs signxml's code (healthbook.signing.xml_signer)."""
    spec = importlib.util.find_spec("signxml")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("signxml (its XML-DSig schema files) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "schemas" / "xmldsig1-schema.xsd"
    return etree.XMLSchema(etree.parse(str(path)))


def _check_structure(signature: etree._Element) -> list[x509.Certificate]:
    """The XML-DSig schema, plus what we require beyond it; returns the KeyInfo certificates."""
    try:
        _dsig_schema().assertValid(signature)
    except etree.DocumentInvalid as exc:
        raise _Refused("K402", detail=str(exc).split(", line ")[0].replace(f"{{{DS}}}", "ds:")[:200]) from None
    texts = [e.text or "" for e in signature.findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", {"ds": DS})]
    if not texts:
        raise _Refused("K402", detail="no KeyInfo/X509Data/X509Certificate")
    certs: list[x509.Certificate] = []
    for text in texts:
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(text))
        except (ValueError, binascii.Error):
            raise _Refused("K402", detail="an X509Certificate is not a DER certificate in base64") from None
        if cert not in certs:
            certs.append(cert)
    return certs


def _check_algorithms(signature: etree._Element, leaf: x509.Certificate) -> None:
    """Every algorithm named in SignedInfo must be one we accept (SHA-1 and MD5 never are), and the key strong
    enough: RSA of at least 2048 bits, ECDSA on a NIST prime curve of at least 256 bits."""
    signed_info = signature.find(_ds("SignedInfo"))
    assert signed_info is not None  # the schema requires it
    allowed = {_ds("CanonicalizationMethod"): ACCEPTED_CANONICALIZATIONS,
               _ds("SignatureMethod"): ACCEPTED_SIGNATURE_METHODS,
               _ds("Transform"): ACCEPTED_TRANSFORMS, _ds("DigestMethod"): ACCEPTED_DIGESTS}
    for element in signed_info.iter(*allowed):
        algorithm = element.get("Algorithm", "")
        if algorithm not in allowed[str(element.tag)]:
            raise _Refused("K406", algorithm=algorithm)
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise _Refused("K406", algorithm=f"RSA-{key.key_size}")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in ACCEPTED_CURVES:
        raise _Refused("K406", algorithm=f"ECDSA {key.curve.name}")
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _Refused("K406", algorithm=f"a {type(key).__name__.removesuffix('PublicKey')} key")


def _ids_inside_objects(signature: etree._Element) -> set[str]:
    return {value for obj in signature.findall(_ds("Object")) for e in obj.iter()
            for value in dsig_core.element_ids(e)}


def _check_scope(signature: etree._Element) -> None:
    """One reference must cover the whole document; others may only sign the signature's own ds:Object
    (signing-time properties some signing tools add)."""
    references = signature.findall("ds:SignedInfo/ds:Reference", {"ds": DS})
    whole = [r for r in references if r.get("URI") == ""]
    if not whole:
        raise _Refused("K405")
    if len(whole) > 1:
        raise _Refused("K402", detail='several references with URI=""')
    transforms = [t.get("Algorithm") for t in whole[0].findall("ds:Transforms/ds:Transform", {"ds": DS})]
    if not transforms or transforms[0] != ENVELOPED or len(transforms) > 2 or ENVELOPED in transforms[1:]:
        raise _Refused("K405")
    own = _ids_inside_objects(signature)
    for reference in references:
        uri = reference.get("URI")
        if uri != "" and (uri is None or not uri.startswith("#") or uri[1:] not in own):
            raise _Refused("K402", detail=f"reference {uri!r} points outside the signature's own ds:Object")


def _signing_certificate(certs: list[x509.Certificate]) -> x509.Certificate:
    """The certificate no other one in KeyInfo was issued by (XML-DSig implies no order)."""
    leaves = [c for c in certs if not any(o is not c and o.issuer == c.subject for o in certs)]
    if len(leaves) != 1:
        raise _Refused("K402", detail="cannot tell which X509Certificate is the signer's")
    return leaves[0]


def _check_cryptography(root: etree._Element, repaired: dict[str, str], leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # _check_algorithms refused the rest
    try:
        dsig_core.verify_core(root, repaired, key)
    except dsig_core.CoreFailure as failure:
        raise _Refused(failure.code, **({"detail": failure.detail} if failure.code == "K402" else {})) from None
    except etree.C14NError:  # libxml2 cannot canonicalise relative namespace URIs (xmlns:a="http;//...")
        raise _Refused("K402", detail="the document cannot be canonicalised (relative namespace URI?)") from None
    except (ValueError, TypeError, etree.LxmlError) as exc:
        raise _Refused("K402", detail=str(exc)[:200]) from None


def _directly_issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)  # issuer name and signature
    except (ValueError, TypeError, CryptographyInvalidSignature):
        return False
    return True


def _valid_at(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _usable_ca(cert: x509.Certificate, at: datetime, intermediates_below: int) -> bool:
    """A CA certificate may issue at ``at``: valid then, basic constraints CA with room in its path length,
    and allowed to sign certificates if it restricts its key usage."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca or (constraints.path_length is not None and constraints.path_length < intermediates_below):
        return False
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            return False
    except x509.ExtensionNotFound:
        pass
    return _valid_at(cert, at)


def _check_chain(leaf: x509.Certificate, presented: list[x509.Certificate], anchors: Sequence[x509.Certificate],
                 at: datetime) -> x509.Certificate:
    """Walk from the leaf to an anchor through the presented certificates; return the leaf's issuer."""
    current, below, leaf_issuer = leaf, 0, None
    pool = [c for c in presented if c is not leaf]
    for _ in range(_MAX_CHAIN + 1):
        anchor = next((a for a in anchors if _directly_issued(current, a) and _usable_ca(a, at, below)), None)
        if anchor is not None:
            return leaf_issuer or anchor
        step = next((c for c in pool if _directly_issued(current, c) and _usable_ca(c, at, below)), None)
        if step is None:
            break
        pool.remove(step)  # each certificate once: no loops through self-signed ones
        leaf_issuer = leaf_issuer or step
        current, below = step, below + int(step.subject != step.issuer)
    raise _Refused("K407")


def _revoked_by_crl(leaf: x509.Certificate, issuer: x509.Certificate,
                    crls: Sequence[x509.CertificateRevocationList], at: datetime) -> bool:
    """Only a CRL the leaf's own issuer signed counts."""
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return False
    for crl in crls:
        if crl.issuer != leaf.issuer or not crl.is_signature_valid(key):
            continue
        entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
        if entry is not None and entry.revocation_date_utc <= at:
            return True
    return False


def _window(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} – {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def verify_submission(data: bytes, *, trust: Trust, facility: str | None, at: datetime,
                      limit: int = MAX_FILE_BYTES) -> SignatureCheck:
    """Check the facility's signature as of ``at`` (the receipt time, timezone-aware).

    ``facility`` is the envelope's MACSKCB; with a registry in ``trust`` the certificate must be
    registered for it (None skips that one check). The first failure ends the check with one issue.
    """
    at = utc(at)
    check = SignatureCheck(valid=False, issues=[])
    try:
        try:
            root, repaired = safe_xml.parse_as_signed(data, limit=limit)  # the one parse of the check
        except XmlRejected as exc:
            check.issues.append(make_issue(exc.code, table=exc.table, **exc.params))
            return check
        first = next(root.iter(_ds("Signature")), None)
        form = SignatureForm.of(first) if first is not None else None
        check.form = form  # named even when the signature is misplaced
        signature = _locate(root)
        assert form is not None and signature is first  # _locate found exactly one
        presented = _check_structure(signature)
        leaf = _signing_certificate(presented)
        check.certificate_sha256 = certificate_sha256(leaf)
        check.subject = leaf.subject.rfc4514_string()
        check.form = replace(form, key=_key_description(leaf))
        _check_algorithms(signature, leaf)
        _check_scope(signature)
        _check_cryptography(root, repaired, leaf)  # last of the tree's checks: it takes the signature out
        issuer = _check_chain(leaf, presented, trust.anchors, at)
        if not _valid_at(leaf, at):
            raise _Refused("K408", detail=_window(leaf))
        registry = trust.registry
        if (registry is not None and registry.is_revoked(check.certificate_sha256, at)) or _revoked_by_crl(
                leaf, issuer, trust.crls, at):
            raise _Refused("K409")
        if registry is not None:
            check.registered_facilities = registry.facilities_for(check.certificate_sha256, at)
            if not check.registered_facilities:
                raise _Refused("K410")
    except _Refused as refused:
        check.issues.append(make_issue(refused.code, **refused.params))
        return check
    check.valid = True
    check.require_facility(facility)
    return check
