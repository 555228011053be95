"""The structure of the insurance card number (MA_THE_BHYT): what identifies a person in it.

A card is 15 characters: a 2-letter group, a benefit-level digit, a 2-digit province and the person's
10-digit social-insurance number (mã số BHXH), the number citizens link in VNeID. It is the identity of the
one visit in five that has no citizen ID (SO_CCCD); see docs/conformance.md and docs/reconciliation.md.
"""

from __future__ import annotations

SOCIAL_INSURANCE_DIGITS = 10


def social_insurance_numbers(cards: str) -> list[str]:
    """The social-insurance numbers of MA_THE_BHYT (several cards separated by ';'): the last 10 characters of
    each card, when they are digits, in order and without repeats."""
    found: list[str] = []
    for card in cards.split(";"):
        tail = card.strip()[-SOCIAL_INSURANCE_DIGITS:]
        if len(tail) == SOCIAL_INSURANCE_DIGITS and tail.isascii() and tail.isdigit() and tail not in found:
            found.append(tail)
    return found
