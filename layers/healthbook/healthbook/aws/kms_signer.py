"""A receipt Signer backed by an asymmetric AWS KMS key (KeyUsage SIGN_VERIFY); the private key never leaves KMS.

boto3 is imported only when no client is given, so importing this module costs nothing in tests and tools.
"""

from __future__ import annotations

import base64
from typing import Any

from healthbook.signing.signer import ALGORITHMS, ECDSA_SHA_256, RSASSA_PSS_SHA_256, check_digest

# The first one the key supports wins: ECDSA signatures are small and cheap; PSS is the sounder RSA padding.
PREFERRED = (ECDSA_SHA_256, RSASSA_PSS_SHA_256)


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


class KmsSigner:
    """Signs with ``kms:Sign`` (MessageType=DIGEST); needs ``kms:Sign`` and ``kms:GetPublicKey`` on the key.

    One GetPublicKey call, made on first use and cached, gives the public key, the key's ARN (receipts name
    the key by ARN, not by a movable alias) and, unless ``algorithm`` is given, the algorithm to use.
    """

    def __init__(self, key_id: str, client: Any = None, algorithm: str | None = None) -> None:
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise ValueError(f"unknown signing algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
        if client is None:
            import boto3  # type: ignore[import-untyped]  # no stubs installed; adapters alone use boto3

            client = boto3.client("kms")
        self._client = client
        self._requested_id = key_id
        self._requested_algorithm = algorithm
        self._described: dict[str, Any] | None = None

    def _describe(self) -> dict[str, Any]:
        if self._described is None:
            response = self._client.get_public_key(KeyId=self._requested_id)
            if response.get("KeyUsage", "SIGN_VERIFY") != "SIGN_VERIFY":
                raise ValueError(f"KMS key {self._requested_id} is not a signing key (KeyUsage "
                                 f"{response.get('KeyUsage')})")
            supported = [a for a in response.get("SigningAlgorithms", []) if a in ALGORITHMS]
            wanted = self._requested_algorithm
            if wanted is None:
                wanted = next((a for a in PREFERRED if a in supported), supported[0] if supported else None)
            if wanted is None or wanted not in supported:
                raise ValueError(f"KMS key {self._requested_id} offers {response.get('SigningAlgorithms')}; "
                                 f"receipts need {wanted or ' or '.join(ALGORITHMS)}")
            self._described = {"key_id": str(response.get("KeyId") or self._requested_id), "algorithm": wanted,
                               "pem": _pem(bytes(response["PublicKey"]))}
        return self._described

    @property
    def key_id(self) -> str:
        return str(self._describe()["key_id"])

    @property
    def algorithm(self) -> str:
        return str(self._describe()["algorithm"])

    def sign_digest(self, digest: bytes) -> bytes:
        check_digest(digest)
        response = self._client.sign(KeyId=self.key_id, Message=digest, MessageType="DIGEST",
                                     SigningAlgorithm=self.algorithm)
        return bytes(response["Signature"])

    def public_key_pem(self) -> bytes:
        return bytes(self._describe()["pem"])
