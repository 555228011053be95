"""The facility registry: which certificate may sign for which facility, and when.

Like the portal's "Danh mục chứng thư số": a facility registers the certificates it signs with; a file
signed with a certificate registered to another facility is refused (K411) even when the certificate is
trusted. Certificates are identified by the SHA-256 of their DER encoding, so the registry holds no keys
and can be published. The JSON format is documented in docs/signatures.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from healthbook.kernel import is_facility_code, utc

FORMAT = "healthbook-facility-registry/1"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def certificate_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 over the DER encoding: the fingerprint every browser and `openssl x509 -fingerprint` shows."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any, where: str) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected an ISO 8601 string")
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _check_sha256(text: Any, where: str) -> str:
    value = text.lower().replace(":", "") if isinstance(text, str) else ""
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"{where}: expected 64 hex digits (SHA-256 of the certificate's DER)")
    return value


@dataclass(frozen=True)
class RegisteredCertificate:
    sha256: str
    not_before: datetime
    not_after: datetime

    def covers(self, at: datetime) -> bool:
        return self.not_before <= utc(at) <= self.not_after


@dataclass(frozen=True)
class Facility:
    code: str
    name: str
    province: str
    certificates: tuple[RegisteredCertificate, ...] = ()
    district: str = ""  # for the district roll-up of reports before 1 July 2025; "" when not recorded
    commune: str = ""  # for the commune roll-up of reports from 1 July 2025; "" when not recorded


@dataclass
class FacilityRegistry:
    facilities: dict[str, Facility] = field(default_factory=dict)
    revoked: dict[str, datetime] = field(default_factory=dict)  # certificate sha256 -> revoked_at (UTC)

    # --- reading and writing ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> FacilityRegistry:
        return cls.loads(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def loads(cls, text: str) -> FacilityRegistry:
        """Parse and check the JSON; any mistake is a ValueError naming where it is."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"registry is not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f'registry must be a JSON object with "format": "{FORMAT}"')
        facilities_in = document.get("facilities", {})
        revoked_in = document.get("revoked", {})
        if not isinstance(facilities_in, dict) or not isinstance(revoked_in, dict):
            raise ValueError('"facilities" and "revoked" must be JSON objects')
        registry = cls()
        for code, entry in facilities_in.items():
            where = f"facilities.{code}"
            if not is_facility_code(code) or not isinstance(entry, dict):
                raise ValueError(f"{where}: facility codes are 5 digits and map to an object")
            certificates = []
            for index, cert in enumerate(entry.get("certificates", [])):
                at = f"{where}.certificates[{index}]"
                if not isinstance(cert, dict):
                    raise ValueError(f"{at}: expected an object")
                registered = RegisteredCertificate(
                    sha256=_check_sha256(cert.get("sha256"), f"{at}.sha256"),
                    not_before=_parse_time(cert.get("not_before"), f"{at}.not_before"),
                    not_after=_parse_time(cert.get("not_after"), f"{at}.not_after"))
                if registered.not_after < registered.not_before:
                    raise ValueError(f"{at}: not_after is before not_before")
                certificates.append(registered)
            registry.facilities[code] = Facility(code=code, name=str(entry.get("name", "")),
                                                 province=str(entry.get("province", "")),
                                                 certificates=tuple(certificates),
                                                 district=str(entry.get("district", "")),
                                                 commune=str(entry.get("commune", "")))
        for sha256, revoked_at in revoked_in.items():
            registry.revoked[_check_sha256(sha256, f"revoked.{sha256}")] = _parse_time(revoked_at,
                                                                                      f"revoked.{sha256}")
        return registry

    def dumps(self) -> str:
        document = {
            "format": FORMAT,
            "facilities": {
                code: {"name": f.name, "province": f.province, **({"district": f.district} if f.district else {}),
                       **({"commune": f.commune} if f.commune else {}),
                       "certificates": [{"sha256": c.sha256, "not_before": _iso(c.not_before),
                                         "not_after": _iso(c.not_after)} for c in f.certificates]}
                for code, f in sorted(self.facilities.items())
            },
            "revoked": {sha256: _iso(at) for sha256, at in sorted(self.revoked.items())},
        }
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"

    # --- changes ---------------------------------------------------------------------------------------

    def register(self, code: str, name: str, province: str, certificate: x509.Certificate,
                 not_before: datetime | None = None, not_after: datetime | None = None, *,
                 district: str | None = None, commune: str | None = None) -> RegisteredCertificate:
        """Register (or re-register with a new window) a certificate for a facility; ``district`` and ``commune``
        None keep the recorded ones."""
        if not is_facility_code(code):
            raise ValueError(f"facility code must be 5 digits, got {code!r}")
        registered = RegisteredCertificate(
            sha256=certificate_sha256(certificate),
            not_before=utc(not_before or certificate.not_valid_before_utc),
            not_after=utc(not_after or certificate.not_valid_after_utc))
        existing = self.facilities.get(code)
        others = tuple(c for c in (existing.certificates if existing else ()) if c.sha256 != registered.sha256)
        kept_district = district if district is not None else (existing.district if existing else "")
        kept_commune = commune if commune is not None else (existing.commune if existing else "")
        self.facilities[code] = Facility(code=code, name=name, province=province, certificates=(*others, registered),
                                         district=kept_district, commune=kept_commune)
        return registered

    def revoke(self, sha256: str, at: datetime) -> None:
        self.revoked[_check_sha256(sha256, "sha256")] = utc(at)

    # --- questions -------------------------------------------------------------------------------------

    def facilities_for(self, sha256: str, at: datetime) -> list[str]:
        """Codes of the facilities this certificate is registered for at ``at`` (revocation aside)."""
        return sorted(code for code, facility in self.facilities.items()
                      if any(c.sha256 == sha256 and c.covers(at) for c in facility.certificates))

    def is_revoked(self, sha256: str, at: datetime) -> bool:
        """Revoked on or before ``at``: a file received before the revocation keeps its signature."""
        revoked_at = self.revoked.get(sha256)
        return revoked_at is not None and revoked_at <= utc(at)
