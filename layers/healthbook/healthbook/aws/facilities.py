"""The facility registry in DynamoDB (the `facilities` table of docs/data-model.md).

The ingest function reads the whole table into a FacilityRegistry (hundreds of items at most); the ops
command ``healthbook facility add`` writes one facility with ``put_facility``. Items are turned into the
registry's JSON format and parsed by ``FacilityRegistry.loads``, so the table is checked exactly as a
registry file would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509

from healthbook.aws.settings import error_code
from healthbook.kernel import iso_utc
from healthbook.kernel import utc as _utc
from healthbook.signing.registry import FORMAT, Facility, FacilityRegistry, RegisteredCertificate


@dataclass(frozen=True)
class FacilityEntry(Facility):
    """One item of the table, as the ops command lists it: the registry's facility and what the table adds."""

    revoked: dict[str, datetime] = field(default_factory=dict)  # certificate sha256 -> revoked_at (UTC)
    principal_arn: str | None = None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class ConcurrentChange(RuntimeError):
    """The facility changed between read and write (two operators at once); run the command again."""


class FacilitiesRepository:
    """Over a boto3 DynamoDB ``Table`` resource (Python values in and out), the kind the ops commands hold."""

    def __init__(self, table: Any) -> None:
        self._table = table

    # --- reading ----------------------------------------------------------------------------------------

    def _items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page: dict[str, Any] = self._table.scan(ConsistentRead=True)
        items.extend(page.get("Items", []))
        while "LastEvaluatedKey" in page:
            page = self._table.scan(ConsistentRead=True, ExclusiveStartKey=page["LastEvaluatedKey"])
            items.extend(page.get("Items", []))
        return items

    @staticmethod
    def _registry(items: list[dict[str, Any]]) -> FacilityRegistry:
        """Items -> the registry JSON -> FacilityRegistry.loads, which checks them as it checks a file."""
        facilities: dict[str, Any] = {}
        revoked: dict[str, str] = {}
        for item in items:
            certificates = [{name: _text(cert.get(name)) for name in ("sha256", "not_before", "not_after")}
                            for cert in item.get("certificates") or [] if isinstance(cert, dict)]
            facilities[_text(item.get("facility"))] = {"name": _text(item.get("name")),
                                                      "province": _text(item.get("province")),
                                                      "district": _text(item.get("district")),
                                                      "commune": _text(item.get("commune")),
                                                      "certificates": certificates}
            revoked.update({str(k): _text(v) for k, v in (item.get("revoked") or {}).items()})
        return FacilityRegistry.loads(json.dumps({"format": FORMAT, "facilities": facilities, "revoked": revoked}))

    def load_registry(self) -> FacilityRegistry:
        """The whole table as one registry; ValueError (naming the item) when an item is malformed."""
        return self._registry(self._items())

    def list_facilities(self) -> list[FacilityEntry]:
        items = self._items()
        registry = self._registry(items)
        entries = []
        for item in items:
            facility = registry.facilities[_text(item.get("facility"))]
            own = set(item.get("revoked") or {})
            entries.append(FacilityEntry(code=facility.code, name=facility.name, province=facility.province,
                                         certificates=facility.certificates, district=facility.district,
                                         commune=facility.commune,
                                         revoked={s: at for s, at in registry.revoked.items() if s in own},
                                         principal_arn=_text(item.get("principal_arn")) or None))
        return sorted(entries, key=lambda e: e.code)

    # --- writing ----------------------------------------------------------------------------------------

    def _get(self, code: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"facility": code}, ConsistentRead=True).get("Item")
        return dict(item) if item else None

    def put_facility(self, code: str, name: str, province: str, certificate: x509.Certificate,
                     principal_arn: str | None = None, district: str | None = None,
                     commune: str | None = None) -> RegisteredCertificate:
        """Create or update a facility and register ``certificate`` for it (its validity window). Other
        certificates of the facility stay; the same certificate again only refreshes its window."""
        current = self._get(code)
        registry = self._registry([current] if current else [])
        # register() checks the code
        registered = registry.register(code, name, province, certificate, district=district, commune=commune)
        item: dict[str, Any] = {
            **(current or {}), "facility": code, "name": name, "province": province,
            "certificates": [{"sha256": c.sha256, "not_before": iso_utc(c.not_before),
                              "not_after": iso_utc(c.not_after)} for c in registry.facilities[code].certificates],
        }
        if principal_arn:
            item["principal_arn"] = principal_arn
        for place in ("district", "commune"):
            if getattr(registry.facilities[code], place):
                item[place] = getattr(registry.facilities[code], place)
        self._conditional_put(item, current)
        return registered

    def revoke_certificate(self, code: str, sha256: str, at: datetime) -> None:
        """Record a revocation on the facility that registered the certificate (effective from ``at``)."""
        current = self._get(code)
        if current is None:
            raise ValueError(f"facility {code} is not registered")
        registry = FacilityRegistry()
        registry.revoke(sha256, at)  # normalises and checks the fingerprint
        ((fingerprint, moment),) = registry.revoked.items()
        item = {**current, "revoked": {**(current.get("revoked") or {}), fingerprint: iso_utc(_utc(moment))}}
        self._conditional_put(item, current)

    def _conditional_put(self, item: dict[str, Any], current: dict[str, Any] | None) -> None:
        # Optimistic locking on a revision counter: a read-modify-write must not drop another's certificate.
        revision = int((current or {}).get("revision", 0))
        item = {**item, "revision": revision + 1}
        if current is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(facility)"}
        elif "revision" in current:
            condition = {"ConditionExpression": "revision = :r", "ExpressionAttributeValues": {":r": revision}}
        else:
            condition = {"ConditionExpression": "attribute_not_exists(revision)"}
        try:
            self._table.put_item(Item=item, **condition)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ConcurrentChange(f"facility {item['facility']} changed meanwhile; try again") from exc
            raise


# --- for the ops commands (healthbook facility add|list) ---------------------------------------------------

def put_facility(table: Any, code: str, name: str, province: str, certificate: x509.Certificate,
                 principal_arn: str | None = None, district: str | None = None,
                 commune: str | None = None) -> RegisteredCertificate:
    """``table``: a boto3 DynamoDB Table resource. ``district``/``commune`` None keep the recorded ones."""
    return FacilitiesRepository(table).put_facility(code, name, province, certificate, principal_arn=principal_arn,
                                                    district=district, commune=commune)


def list_facilities(table: Any) -> list[FacilityEntry]:
    return FacilitiesRepository(table).list_facilities()
