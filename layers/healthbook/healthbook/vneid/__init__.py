"""Delivery of health-book entries to the citizen's VNeID app (client) and a fake VNeID for tests and the demo.

The client needs ``requests`` (the ``aws`` extra); the fake is stdlib only. Contract: docs/vneid-contract.md.
"""

from __future__ import annotations

from healthbook.vneid.client import (
    Delivery,
    DeliveryError,
    MutualTLS,
    OAuth2ClientCredentials,
    PermanentDeliveryError,
    RetryableDeliveryError,
    VneidClient,
    credentials_from_secret,
)

__all__ = [
    "Delivery",
    "DeliveryError",
    "MutualTLS",
    "OAuth2ClientCredentials",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "VneidClient",
    "credentials_from_secret",
]
