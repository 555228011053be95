"""What a hospital's HIS logs in with, and how we keep it.

BHXH's web service takes ``password`` as the upper-case hex MD5 of the password (CV 1245, section 1.2), and
later calls send the same MD5 again in the ``passwordHash`` header. The MD5 is therefore what the HIS holds and
what an attacker would need: it is the secret, and we store only an argon2id hash of it (argon2-cffi's
``PasswordHasher``, RFC 9106 low-memory profile: 64 MiB, 3 passes). A username that does not exist is verified
against a dummy hash of the same parameters, so the time of a refusal does not tell whether the user exists.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# What a username may be; anything else is refused without looking it up (and never logged).
USERNAME = re.compile(r"[A-Za-z0-9._@-]{3,64}")
MD5_HEX = re.compile(r"[0-9A-Fa-f]{32}")


def is_username(text: str) -> bool:
    return USERNAME.fullmatch(text) is not None


def normalise_md5(text: str) -> str | None:
    """The MD5 as the HIS should send it (32 hex digits), upper-cased; None when it is not one."""
    return text.upper() if MD5_HEX.fullmatch(text) else None


def password_md5(password: str) -> str:
    """What an HIS computes from the password it was given: the upper-case hex MD5 of its UTF-8 bytes."""
    return hashlib.md5(password.encode("utf-8"), usedforsecurity=False).hexdigest().upper()


class SecretHasher:
    """argon2id over the normalised MD5. ``hasher`` defaults to argon2-cffi's defaults; tests pass cheaper
    parameters (verification reads the parameters from the stored hash, so both kinds verify)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()

    def hash(self, md5_hex: str) -> str:
        md5 = normalise_md5(md5_hex)
        if md5 is None:
            raise ValueError("the secret must be an MD5 in hex (32 digits)")
        return self._hasher.hash(md5)

    @cached_property
    def _dummy(self) -> str:
        return self._hasher.hash(secrets.token_hex(16).upper())

    def verify(self, stored_hash: str | None, md5_hex: str) -> bool:
        """True when ``md5_hex`` is the secret ``stored_hash`` was made from. ``stored_hash`` None (no such
        user) or ``md5_hex`` malformed still costs one argon2 verification, and is False."""
        md5 = normalise_md5(md5_hex)
        try:
            matched = self._hasher.verify(stored_hash or self._dummy, md5 or "-")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return matched and stored_hash is not None and md5 is not None


_default = SecretHasher()


def hash_secret(md5_hex: str) -> str:
    """The argon2id PHC string kept for an account (``secret_hash``)."""
    return _default.hash(md5_hex)


def verify_secret(stored_hash: str, md5_hex: str) -> bool:
    return _default.verify(stored_hash, md5_hex)
