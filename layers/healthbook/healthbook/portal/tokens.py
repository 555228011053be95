"""The portal's tokens: ``v1.<base64url payload>.<base64url HMAC-SHA256>``, stateless.

The payload names the user, the facility and province the account belongs to, the account's generation (a
password rotation increments it, which revokes every token issued before), the token id (``jti``, returned to
the HIS as ``id_token`` and sent back as the ``tokenId`` header), when it was issued and when it expires, and a
keyed fingerprint of the password MD5, so the ``passwordHash`` header of later calls is checked in constant
time without an argon2 verification per request.

Two keys are derived from the one secret (Secrets Manager, ``TOKEN_KEY_SECRET``): one signs tokens, the other
makes fingerprints; the signature covers the version prefix and the payload. Everything is compared with
``hmac.compare_digest``; the payload is read only once its signature is good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

VERSION = "v1"
MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 2048  # ours are about 400; anything longer is refused before it is decoded
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class InvalidToken(ValueError):
    """The token is not one of ours, or no longer valid; ``reason`` is for the logs (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    username: str
    facility: str
    province: str
    generation: int
    jti: str  # the id_token
    iat: int  # epoch seconds
    exp: int
    pwf: str  # keyed fingerprint of the password MD5

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.exp, UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidToken("malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed") from None


class TokenKey:
    """Issues and verifies tokens with one secret of at least 32 bytes."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(f"the token key must be at least {MIN_KEY_BYTES} bytes")
        self._sign_key = hmac.new(secret, b"healthbook-portal/token-signature/v1", hashlib.sha256).digest()
        self._fingerprint_key = hmac.new(secret, b"healthbook-portal/password-fingerprint/v1",
                                         hashlib.sha256).digest()

    def fingerprint(self, md5_upper: str) -> str:
        return _b64(hmac.new(self._fingerprint_key, md5_upper.encode("ascii"), hashlib.sha256).digest())

    def matches_password(self, claims: Claims, md5_upper: str | None) -> bool:
        """Whether ``md5_upper`` (normalised; None when malformed) is the MD5 the token was issued for."""
        candidate = self.fingerprint(md5_upper) if md5_upper is not None else ""
        return hmac.compare_digest(candidate.encode("ascii"), claims.pwf.encode("ascii"))

    def _signature(self, signed: str) -> bytes:
        return hmac.new(self._sign_key, signed.encode("ascii"), hashlib.sha256).digest()

    def issue(self, *, username: str, facility: str, province: str, generation: int, jti: str,
              md5_upper: str, now: datetime, ttl: timedelta) -> tuple[str, Claims]:
        issued = int(now.timestamp())
        claims = Claims(username=username, facility=facility, province=province, generation=generation, jti=jti,
                        iat=issued, exp=issued + int(ttl.total_seconds()), pwf=self.fingerprint(md5_upper))
        payload = _b64(json.dumps(asdict(claims), separators=(",", ":"), sort_keys=True).encode("utf-8"))
        signed = f"{VERSION}.{payload}"
        return f"{signed}.{_b64(self._signature(signed))}", claims

    def verify(self, token: str, now: datetime) -> Claims:
        """The claims of a token this key signed that has not expired at ``now``; else InvalidToken."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("malformed")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            raise InvalidToken("malformed")
        signature = _unb64(parts[2])
        if not hmac.compare_digest(signature, self._signature(f"{parts[0]}.{parts[1]}")):
            raise InvalidToken("bad signature")
        claims = _claims(_unb64(parts[1]))
        moment = int(now.timestamp())
        if moment >= claims.exp:
            raise InvalidToken("expired")
        if claims.iat > moment + 300:  # issued in the future (beyond clock skew): not a token we issued now
            raise InvalidToken("not yet valid")
        return claims


def _claims(payload: bytes) -> Claims:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise InvalidToken("malformed") from None
    if not isinstance(data, dict):
        raise InvalidToken("malformed")
    texts = ("username", "facility", "province", "jti", "pwf")
    numbers = ("generation", "iat", "exp")
    if set(data) != set(texts) | set(numbers) \
            or not all(isinstance(data[name], str) for name in texts) \
            or not all(type(data[name]) is int for name in numbers):
        raise InvalidToken("malformed")
    return Claims(**data)
