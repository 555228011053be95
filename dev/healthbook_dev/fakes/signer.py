"""A receipt signer that counts what it signs, and a way to change one field of a receipt: for the tests of
receipts signed in windows (one signature per window, docs/receipt.md). Never deployed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from healthbook.signing.signer import LocalKeySigner


class CountingSigner:
    """Signs with ``inner`` and keeps every digest it was asked to sign: a window must cost exactly one."""

    def __init__(self, inner: LocalKeySigner) -> None:
        self.inner = inner
        self.digests: list[bytes] = []

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    @property
    def algorithm(self) -> str:
        return self.inner.algorithm

    @property
    def calls(self) -> int:
        return len(self.digests)

    def sign_digest(self, digest: bytes) -> bytes:
        self.digests.append(digest)
        return self.inner.sign_digest(digest)

    def public_key_pem(self) -> bytes:
        return self.inner.public_key_pem()


def change_at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A function that sets ``value`` at a dotted path of a receipt (``visits.0.accepted``), as a forger would."""

    def change(receipt: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = receipt
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change
