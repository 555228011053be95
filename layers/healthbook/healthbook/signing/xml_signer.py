"""Signing a submission as a facility's HIS would (enveloped XML-DSig in CHUKYDONVI), with signxml.

Kept apart from the verification (healthbook.signing.xmldsig), which never needs signxml's code: the ingest
function does not load it. Used by the ``healthbook sign`` command, the demos and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureConstructionMethod, SignatureMethod
from signxml.signer import XMLSigner

from healthbook.parsing import safe_xml
from healthbook.parsing.safe_xml import XmlRejected
from healthbook.signing.xmldsig import DS, SIGNATURE_PARENT, PrivateKey
from healthbook.validation.issues import make_issue

# For signxml, after safe_xml.parse has vetted the same bytes (no DOCTYPE, UTF-8, size). It keeps comments
# and processing instructions so the facility's file comes back intact.
_SIGN_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True,
                               remove_comments=False, remove_pis=False, collect_ids=False)


def _ds(name: str) -> str:
    return f"{{{DS}}}{name}"


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def load_signing_material(key_pem: bytes | None = None, cert_pem: bytes | None = None, *, p12: bytes | None = None,
                          password: bytes | None = None) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
    """The private key, its certificate and the rest of the chain, from PEM files or a PKCS#12 bundle.

    The signer's certificate is the one matching the key, wherever it sits in the PEM or bundle.
    ``password`` opens the PKCS#12 file or an encrypted PEM key. Raises ValueError on anything unusable.
    """
    try:
        if p12 is not None:
            if key_pem is not None or cert_pem is not None:
                raise ValueError("give a PKCS#12 bundle or a key and a certificate, not both")
            key, first, extra = pkcs12.load_key_and_certificates(p12, password)
            certs = [c for c in (first, *extra) if c is not None]
        elif key_pem is not None and cert_pem is not None:
            key = serialization.load_pem_private_key(key_pem, password)
            certs = x509.load_pem_x509_certificates(cert_pem)
        else:
            raise ValueError("a private key and a certificate are both needed")
    except TypeError as exc:  # cryptography's way of saying "encrypted, but no password" (or the reverse)
        raise ValueError(str(exc)) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("only RSA and ECDSA keys can sign submissions")
    leaf = next((c for c in certs if _same_public_key(c, key)), None)
    if leaf is None:
        raise ValueError("no certificate matches the private key")
    return key, leaf, [c for c in certs if c is not leaf]


class _Signer(XMLSigner):
    @property
    def parser(self) -> etree.XMLParser:
        # signxml copies the tree through its parser; ours keeps huge text nodes (a NOIDUNGFILE over 10 MB).
        return _SIGN_PARSER


def sign_submission(data: bytes, key: PrivateKey, cert: x509.Certificate, *,
                    chain: Sequence[x509.Certificate] = ()) -> bytes:
    """Sign a GIAMDINHHS envelope (CHUKYDONVI created if absent) or a standalone document that carries its own
    CHUKYDONVI, as the check-in table does (CV 1245 §2.4): enveloped XML-DSig placed in CHUKYDONVI.

    RSA keys sign with rsa-sha256, EC keys with ecdsa-sha256; SHA-256 digest; C14N 1.0; the certificate
    and ``chain`` go into KeyInfo/X509Data. Raises ValueError for a file that is not an unsigned envelope.
    """
    try:
        safe_xml.parse(data, limit=max(len(data), 1))  # the same vetting as every received file; no size cap
    except XmlRejected as exc:
        issue = make_issue(exc.code, table=exc.table, **exc.params)
        raise ValueError(f"not signable: {issue.code} {issue.message_en}") from None
    # A namespace declaration that is not a URI (xmlns:xsi="…XMLSchema instance") is written back
    # percent-encoded: libxml2 can neither keep nor canonicalise it (docs/signatures.md).
    root, _ = safe_xml.repair_namespace_uris(data, _SIGN_PARSER)
    if root.tag != "GIAMDINHHS" and root.find(SIGNATURE_PARENT) is None:
        raise ValueError(f"expected a GIAMDINHHS envelope or a document with {SIGNATURE_PARENT}, found <{root.tag}>")
    if next(root.iter(_ds("Signature")), None) is not None:
        raise ValueError("the file is already signed")
    parents = root.findall(SIGNATURE_PARENT)
    if len(parents) > 1:
        raise ValueError(f"the envelope holds {len(parents)} {SIGNATURE_PARENT} elements")
    parent = parents[0] if parents else etree.SubElement(root, SIGNATURE_PARENT)
    # signxml's placeholder: it becomes the signature, in the place the portal expects it.
    etree.SubElement(parent, _ds("Signature"), {"Id": "placeholder"}, nsmap={"ds": DS})
    if isinstance(key, rsa.RSAPrivateKey):
        method = SignatureMethod.RSA_SHA256
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        method = SignatureMethod.ECDSA_SHA256
    else:
        raise ValueError("only RSA and ECDSA keys can sign submissions")
    signer = _Signer(method=SignatureConstructionMethod.enveloped, signature_algorithm=method,
                     digest_algorithm=DigestAlgorithm.SHA256,
                     c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_0)
    signed = signer.sign(root, key=key, cert=[cert, *chain])
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


