"""Who signs receipts: a Signer signs a SHA-256 digest the way AWS KMS does with MessageType=DIGEST.

Pure: the KMS-backed signer lives in healthbook.aws.kms_signer so that nothing here needs boto3. Algorithm
names are KMS's, so a receipt signed by a local key and one signed by KMS are verified by the same code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

RSASSA_PSS_SHA_256 = "RSASSA_PSS_SHA_256"
RSASSA_PKCS1_V1_5_SHA_256 = "RSASSA_PKCS1_V1_5_SHA_256"
ECDSA_SHA_256 = "ECDSA_SHA_256"
ALGORITHMS = (ECDSA_SHA_256, RSASSA_PSS_SHA_256, RSASSA_PKCS1_V1_5_SHA_256)
RSA_ALGORITHMS = (RSASSA_PSS_SHA_256, RSASSA_PKCS1_V1_5_SHA_256)
DIGEST_SIZE = 32
# KMS's RSASSA_PSS_SHA_256 uses MGF1-SHA-256 and a 256-bit salt; verifying with exactly that keeps local and
# KMS signatures interchangeable and rejects anything KMS would not have produced.
PSS_SALT_LENGTH = 32

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class Signer(Protocol):
    """Properties rather than plain attributes, so a signer may resolve them lazily (KMS)."""

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest (the message is not hashed again); DER for ECDSA, as KMS returns it."""
        ...

    def public_key_pem(self) -> bytes: ...


def check_digest(digest: bytes) -> None:
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"expected a {DIGEST_SIZE}-byte SHA-256 digest, got {len(digest)} bytes")


def load_public_key(pem: bytes) -> PublicKey:
    """A PEM public key, or a certificate's; ValueError for anything else (including other key types)."""
    try:
        if b"BEGIN CERTIFICATE" in pem:
            from cryptography import x509

            key: object = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key or certificate: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"unsupported key type {type(key).__name__}: receipts use RSA or EC P-256 keys")
    return key


def fingerprint(public_key_pem: bytes) -> str:
    """First 16 hex digits of SHA-256 over the DER SubjectPublicKeyInfo: names a local key."""
    spki = load_public_key(public_key_pem).public_bytes(serialization.Encoding.DER,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()[:16]


def verify_digest_signature(public_key_pem: bytes, algorithm: str, digest: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``algorithm``'s signature of the SHA-256 ``digest``.

    False for a wrong signature, digest or a key that does not fit the algorithm; ValueError for an unknown
    algorithm or a key that cannot be loaded (those are usage errors, not forged receipts).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown signing algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    key = load_public_key(public_key_pem)
    if len(digest) != DIGEST_SIZE:
        return False
    prehashed = Prehashed(hashes.SHA256())
    try:
        if algorithm == ECDSA_SHA_256:
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
                return False
            key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            key.verify(signature, digest, _rsa_padding(algorithm), prehashed)
    except InvalidSignature:
        return False
    return True


def _rsa_padding(algorithm: str) -> padding.AsymmetricPadding:
    if algorithm == RSASSA_PSS_SHA_256:
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
    return padding.PKCS1v15()


class LocalKeySigner:
    """A private key in a PEM file: for demos, facility tests and offline tools, never the production key."""

    def __init__(self, private_key: PrivateKey, *, key_id: str | None = None, algorithm: str | None = None) -> None:
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            if not isinstance(private_key.curve, ec.SECP256R1):
                raise ValueError(f"EC keys must be on P-256 (KMS ECC_NIST_P256), not {private_key.curve.name}")
            chosen = algorithm or ECDSA_SHA_256
            if chosen != ECDSA_SHA_256:
                raise ValueError(f"an EC P-256 key signs with {ECDSA_SHA_256}, not {chosen}")
        elif isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < 2048:
                raise ValueError(f"RSA keys must have at least 2048 bits, not {private_key.key_size}")
            chosen = algorithm or RSASSA_PSS_SHA_256
            if chosen not in RSA_ALGORITHMS:
                raise ValueError(f"an RSA key signs with one of {', '.join(RSA_ALGORITHMS)}, not {chosen}")
        else:
            raise ValueError(f"unsupported key type {type(private_key).__name__}: use RSA or EC P-256")
        self._key = private_key
        self._pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
        self._algorithm = chosen
        self._key_id = key_id or f"local:{fingerprint(self._pem)}"

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str | None = None, *, password: bytes | None = None,
                 algorithm: str | None = None) -> LocalKeySigner:
        try:
            key = serialization.load_pem_private_key(pem, password=password)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a usable PEM private key: {exc}") from exc
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"unsupported key type {type(key).__name__}: use RSA or EC P-256")
        return cls(key, key_id=key_id, algorithm=algorithm)

    @classmethod
    def from_file(cls, path: str | Path, key_id: str | None = None, *, password: bytes | None = None,
                  algorithm: str | None = None) -> LocalKeySigner:
        return cls.from_pem(Path(path).read_bytes(), key_id, password=password, algorithm=algorithm)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def sign_digest(self, digest: bytes) -> bytes:
        check_digest(digest)
        prehashed = Prehashed(hashes.SHA256())
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(digest, ec.ECDSA(prehashed))
        return self._key.sign(digest, _rsa_padding(self._algorithm), prehashed)

    def public_key_pem(self) -> bytes:
        return self._pem
