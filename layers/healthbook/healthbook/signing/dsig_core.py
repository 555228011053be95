"""XML-DSig core validation (XML Signature 1.1, section 3.2): the SignatureValue over the canonical SignedInfo,
then each Reference's digest. Which algorithms, what a reference may cover and whom to trust is decided by
``xmldsig.py`` before this runs; here only the mathematics is checked.

Canonicalisation is libxml2's, through lxml, with one trap avoided. lxml canonicalises an element that is not
its document's root inside a temporary document whose namespace declarations are copies, and libxml2 then
writes ``xmlns=""`` on the grandchildren of an element in a default namespace. That is exactly the form .NET
``SignedXml``, the JDK and xmlsec1 write (``<Signature xmlns="http://www.w3.org/2000/09/xmldsig#">``), and
signxml 5.2 canonicalises ``SignedInfo`` that way, so every such signature failed with K403. Here a subtree
(SignedInfo, a referenced ds:Object) is canonicalised as the root of a document of its own, parsed from its
serialisation, which declares every namespace in scope; for inclusive canonicalisation the ``xml:``
attributes it inherits are added as the specifications require. The result is the document-subset canonical
form other implementations compute (checked against xmlsec1, .NET and the JDK in tests/test_signature_interop.py).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from lxml import etree

DS = "http://www.w3.org/2000/09/xmldsig#"
EC_NS = "http://www.w3.org/2001/10/xml-exc-c14n#"  # also the exclusive canonicalisation's own URI
XML_NS = "http://www.w3.org/XML/1998/namespace"

C14N_10 = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_11 = "http://www.w3.org/2006/12/xml-c14n11"
EXC_C14N = EC_NS
WITH_COMMENTS = "#WithComments"
ENVELOPED = f"{DS}enveloped-signature"

DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "http://www.w3.org/2001/04/xmlenc#sha256": hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashes.SHA384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashes.SHA512,
}
SIGNATURE_METHODS: dict[str, tuple[type[rsa.RSAPublicKey] | type[ec.EllipticCurvePublicKey],
                                   type[hashes.HashAlgorithm]]] = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": (rsa.RSAPublicKey, hashes.SHA256),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": (rsa.RSAPublicKey, hashes.SHA384),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": (rsa.RSAPublicKey, hashes.SHA512),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": (ec.EllipticCurvePublicKey, hashes.SHA256),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384": (ec.EllipticCurvePublicKey, hashes.SHA384),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512": (ec.EllipticCurvePublicKey, hashes.SHA512),
}
CANONICALIZATIONS = frozenset({C14N_10, C14N_10 + WITH_COMMENTS, C14N_11, C14N_11 + WITH_COMMENTS,
                               EXC_C14N, EXC_C14N + "WithComments"})

# Comments are kept so that a SignedInfo canonicalised #WithComments is seen as signed; references never
# include them (a same-document URI drops comments whatever the canonicalisation says). Processing
# instructions are part of what URI="" signs: the tree comes from safe_xml.parse_as_signed, which keeps both.
# This parser only re-reads lxml's own serialisation of a subtree (canonicalize), never the submitted bytes.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True,
                          remove_comments=False, remove_pis=False, collect_ids=False)


class CoreFailure(Exception):
    """The signature does not hold: K403 (SignatureValue), K404 (a digest) or K402 (unreadable)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def _ds(name: str) -> str:
    return f"{{{DS}}}{name}"


def _inclusive_prefixes(method: etree._Element) -> list[str]:
    """The exclusive canonicalisation's InclusiveNamespaces PrefixList ("#default" names the default one)."""
    listed = method.find(f"{{{EC_NS}}}InclusiveNamespaces")
    return (listed.get("PrefixList") or "").split() if listed is not None else []


def _inherited_xml_attributes(element: etree._Element, algorithm: str) -> dict[str, str]:
    """Inclusive canonicalisation of a document subset carries the ``xml:`` attributes of the omitted ancestors
    onto the apex: all of them in C14N 1.0; xml:lang and xml:space in C14N 1.1, which drops xml:id and joins
    xml:base (not supported here: refused rather than computed wrongly)."""
    found: dict[str, str] = {}
    for ancestor in element.iterancestors():
        for name, value in ancestor.attrib.items():
            if str(name).startswith(f"{{{XML_NS}}}") and name not in element.attrib and name not in found:
                found[str(name)] = str(value)
    if algorithm.startswith(C14N_11):
        if f"{{{XML_NS}}}base" in found:
            raise CoreFailure("K402", "xml:base above the signed element is not supported with C14N 1.1")
        found = {k: v for k, v in found.items() if k in (f"{{{XML_NS}}}lang", f"{{{XML_NS}}}space")}
    return found


def _escape_attribute(value: str) -> bytes:
    """An attribute value as canonical XML writes it (C14N 1.0, section 2.2)."""
    for plain, escaped in (("&", "&amp;"), ("<", "&lt;"), ('"', "&quot;"), ("\t", "&#x9;"), ("\n", "&#xA;"),
                           ("\r", "&#xD;")):
        value = value.replace(plain, escaped)
    return value.encode("utf-8")


def _restore(canonical: bytes, repaired: Mapping[str, str]) -> bytes:
    """Put back the namespace URIs safe_xml had to percent-encode to parse (``xmlns:xsi="…XMLSchema instance"``):
    the signer canonicalised the document as written. Only inside namespace declarations."""
    for encoded, original in repaired.items():
        declaration = re.compile(rb'( xmlns(?::[^\s="]+)?=")' + re.escape(encoded.encode("utf-8")) + rb'"')
        value = _escape_attribute(original)
        canonical = declaration.sub(lambda match: match.group(1) + value + b'"', canonical)  # noqa: B023 - used at once
    return canonical


def canonicalize(node: etree._Element | etree._ElementTree, algorithm: str, *, prefixes: Sequence[str] = (),
                 comments: bool | None = None, repaired: Mapping[str, str] | None = None) -> bytes:
    """The canonical form of a whole document (an ElementTree) or of an element's subtree as it stands in its
    document. ``comments`` None follows the algorithm's #WithComments. C14N 1.1 is computed as 1.0: they
    differ only in the inherited xml: attributes, handled here. ``repaired``: namespace URIs the parser had to
    percent-encode, {encoded: original}."""
    if algorithm not in CANONICALIZATIONS:
        raise CoreFailure("K402", f"unknown canonicalisation {algorithm}")
    exclusive = algorithm.startswith(EXC_C14N)
    with_comments = algorithm.endswith("WithComments") if comments is None else comments
    document: etree._Element | etree._ElementTree = node
    if isinstance(node, etree._Element):
        document = etree.fromstring(etree.tostring(node, with_tail=False), parser=_PARSER)
        if not exclusive:
            for name, value in _inherited_xml_attributes(node, algorithm).items():
                document.set(name, value)
    canonical = bytes(etree.tostring(document, method="c14n", exclusive=exclusive, with_comments=with_comments,
                                     inclusive_ns_prefixes=list(prefixes) if exclusive and prefixes else None))
    return _restore(canonical, repaired) if repaired else canonical


def _b64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise CoreFailure("K402", f"{what} is not base64") from None


def _check_signature_value(canonical_signed_info: bytes, value: bytes, method: str,
                           key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> None:
    family, digest = SIGNATURE_METHODS[method]
    if not isinstance(key, family):
        raise CoreFailure("K403", "the key does not fit the signature method")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(value, canonical_signed_info, padding.PKCS1v15(), digest())
        else:  # XML-DSig writes ECDSA as r || s, each half the size of the curve's order
            half = len(value) // 2
            if not value or len(value) % 2:
                raise CoreFailure("K403", "an ECDSA SignatureValue must be r || s")
            der = encode_dss_signature(int.from_bytes(value[:half], "big"), int.from_bytes(value[half:], "big"))
            key.verify(der, canonical_signed_info, ec.ECDSA(digest()))
    except InvalidSignature:
        raise CoreFailure("K403") from None


def _without_signature(signature: etree._Element) -> etree._ElementTree:
    """The enveloped-signature transform: the document without the signature element. Text after it (its
    lxml "tail") is a sibling node, not part of the signature, and stays. Changes the tree in place."""
    parent = signature.getparent()
    assert parent is not None
    tail, previous = signature.tail, signature.getprevious()
    parent.remove(signature)
    if tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    return parent.getroottree()


ID_ATTRIBUTES = ("Id", "ID", "id", f"{{{XML_NS}}}id")  # what a same-document "#id" reference may name


def element_ids(element: etree._Element) -> set[str]:
    return {value for name in ID_ATTRIBUTES if (value := element.get(name))}


def _referenced(root: etree._Element, signature: etree._Element, uri: str) -> etree._Element:
    """An ``#id`` reference: exactly one element of the document carries the id, inside this signature."""
    wanted = uri[1:]
    matches = [e for e in root.iter() if wanted in element_ids(e)]
    if len(matches) != 1 or signature not in matches[0].iterancestors():
        raise CoreFailure("K402", f"reference {uri!r} does not name one element inside the signature")
    return matches[0]


def verify_core(root: etree._Element, repaired: dict[str, str],
                key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> None:
    """Check the one ds:Signature of the document ``root`` (from safe_xml.parse_as_signed, with its namespace
    repairs) with ``key``: the SignatureValue first (K403), then every reference's digest (K404), as XML
    Signature Best Practices 1 advises. Takes the signature out of the tree (the enveloped transform).
    Raises CoreFailure."""
    signature = next(root.iter(_ds("Signature")), None)
    signed_info = signature.find(_ds("SignedInfo")) if signature is not None else None
    method = signed_info.find(_ds("CanonicalizationMethod")) if signed_info is not None else None
    signature_method = signed_info.find(_ds("SignatureMethod")) if signed_info is not None else None
    if signature is None or signed_info is None or method is None or signature_method is None:
        raise CoreFailure("K402", "no complete ds:Signature")
    algorithm = method.get("Algorithm", "")
    canonical = canonicalize(signed_info, algorithm, prefixes=_inclusive_prefixes(method), repaired=repaired)
    value = _b64(signature.findtext(_ds("SignatureValue")), "SignatureValue")
    _check_signature_value(canonical, value, signature_method.get("Algorithm", ""), key)

    # The whole-document reference goes last: its transform takes the signature out of the tree.
    references = sorted(signed_info.findall(_ds("Reference")), key=lambda r: r.get("URI") == "")
    for reference in references:
        uri = reference.get("URI")
        transforms = reference.findall(f"{_ds('Transforms')}/{_ds('Transform')}")
        c14n = next((t for t in transforms if t.get("Algorithm") != ENVELOPED), None)
        digest_method = reference.find(_ds("DigestMethod"))
        digest = DIGESTS.get(digest_method.get("Algorithm", "") if digest_method is not None else "")
        if uri is None or digest is None:
            raise CoreFailure("K402", "a reference without URI or with an unknown digest")
        expected = _b64(reference.findtext(_ds("DigestValue")), "DigestValue")
        if uri == "":
            if not any(t.get("Algorithm") == ENVELOPED for t in transforms):
                raise CoreFailure("K402", 'URI="" without the enveloped-signature transform')
            target: etree._Element | etree._ElementTree = _without_signature(signature)
        elif uri.startswith("#"):
            target = _referenced(root, signature, uri)
        else:
            raise CoreFailure("K402", f"reference {uri!r} is not a same-document reference")
        # A node-set without an explicit canonicalisation is serialised with C14N 1.0 (XML-DSig 4.4.3.2).
        algorithm = c14n.get("Algorithm", "") if c14n is not None else C14N_10
        prefixes = _inclusive_prefixes(c14n) if c14n is not None else []
        hasher = hashes.Hash(digest())
        hasher.update(canonicalize(target, algorithm, prefixes=prefixes, comments=False, repaired=repaired))
        if not hmac.compare_digest(hasher.finalize(), expected):
            raise CoreFailure("K404")
