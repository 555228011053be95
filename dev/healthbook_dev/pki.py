"""A throw-away PKI for development and tests: a CA, facility certificates, and every kind of bad one.

DEVELOPMENT ONLY. Private keys are written unencrypted so that tests and demos need no passwords; nothing
here may sign a real submission. README.txt in the output folder says what each file is for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from healthbook.signing.registry import FacilityRegistry, certificate_sha256

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

FACILITIES = {  # code -> (name, province); the same as the synthetic generator's
    "01001": ("Bệnh viện Đa khoa Thành phố Hà Nội", "01"),
    "01002": ("Bệnh viện Hữu nghị Ba Đình", "01"),
    "79001": ("Bệnh viện Đa khoa Sài Gòn", "79"),
    "48001": ("Bệnh viện Đa khoa Đà Nẵng", "48"),
}


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: PrivateKey


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str, organisation: str, facility: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
             x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if facility:  # Vietnamese CAs put an identifier in UID (MST:... for a tax code); here the facility code
        parts.append(x509.NameAttribute(NameOID.USER_ID, f"MCSKCB:{facility}"))
    return x509.Name(parts)


def _certificate(subject: x509.Name, key: PrivateKey, issuer: _Issuer | None, not_before: datetime,
                 not_after: datetime, *, ca: bool, path_length: int | None = None) -> x509.Certificate:
    """``issuer`` None makes a self-signed root."""
    signer_key = issuer.key if issuer else key
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
                              critical=False))
    return builder.sign(signer_key, hashes.SHA256())


def _write_cert(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


_README = """\
Healthbook DEVELOPMENT PKI, made {now:%Y-%m-%d %H:%M} UTC. NOT FOR REAL SUBMISSIONS: keys are unencrypted.
Every X.pem (certificate) comes with X-key.pem (its private key, PKCS#8 PEM).

Trust anchor (give to `healthbook verify --trust`):
  ca.pem, ca-key.pem                  Healthbook DEV Root CA (RSA 2048), from 3 years ago to 10 years ahead
  intermediate.pem, -key.pem          DEV Issuing CA, issued by the root; issues facility-79001

Good facility certificates (registered in registry.json; sign with --key X-key.pem --cert X.pem):
  facility-01001.pem, -key.pem        01001, RSA 2048, issued by the root
  facility-79001.pem, -key.pem        79001, RSA 2048, issued by the intermediate (the .pem holds the chain)
  facility-48001-ec.pem, -key.pem     48001, ECDSA P-256, issued by the root

Bad ones, one per refusal:
  expired.pem, -key.pem               01001, expired a year ago (K408), registered for its old window
  revoked.pem, -key.pem               79001, revoked a day ago: in registry.json "revoked" and in crl.pem (K409)
  unregistered.pem, -key.pem          01002, trusted but registered for no facility (K410)
  weak.pem, -key.pem                  01001, RSA 1024: too weak a key (K406)
  rogue.pem, -key.pem                 claims 01001, issued by rogue-ca.pem which is not in ca.pem (K407)
  rogue-ca.pem, rogue-ca-key.pem      the rogue CA

  registry.json                       the facility registry (docs/signatures.md describes the format)
  crl.pem                             the root's CRL listing revoked.pem

The platform's receipt-signing key (KMS in production; `healthbook receipt make --key`):
  platform-key.pem, platform-public.pem   ECDSA P-256; verify receipts with --public-key platform-public.pem

Certificate SHA-256 fingerprints:
{fingerprints}
"""


def dev_pki(outdir: Path, *, now: datetime | None = None) -> dict[str, Path]:
    """Write the development PKI into ``outdir``; returns every file by its name without extension, and the
    good facility certificates also by facility code ("01001", "01001-key", "79001", "48001", ...)."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    outdir.mkdir(parents=True, exist_ok=True)
    start, day, year = now - timedelta(days=30), timedelta(days=1), timedelta(days=365)
    paths: dict[str, Path] = {}
    certs: dict[str, x509.Certificate] = {}

    def keep(stem: str, key: PrivateKey, *chain: x509.Certificate) -> None:
        paths[stem] = _write_cert(outdir / f"{stem}.pem", *chain)
        paths[f"{stem}-key"] = _write_key(outdir / f"{stem}-key.pem", key)
        certs[stem] = chain[0]

    root_key = _rsa()
    # The CAs predate the expired certificate, which must once have been good.
    ca_from = now - 3 * year
    root = _Issuer(_certificate(_name("Healthbook DEV Root CA", "Healthbook DEV"), root_key, None, ca_from,
                                now + 10 * year, ca=True), root_key)
    paths["ca"] = _write_cert(outdir / "ca.pem", root.cert)
    paths["ca-key"] = _write_key(outdir / "ca-key.pem", root_key)
    certs["ca"] = root.cert
    middle_key = _rsa()
    middle = _Issuer(_certificate(_name("Healthbook DEV Issuing CA", "Healthbook DEV"), middle_key, root, ca_from,
                                  now + 5 * year, ca=True, path_length=0), middle_key)
    keep("intermediate", middle_key, middle.cert)

    def facility_cert(stem: str, code: str, issuer: _Issuer, key: PrivateKey, not_before: datetime = start,
                      not_after: datetime = now + 2 * year) -> x509.Certificate:
        name, _ = FACILITIES[code]
        cert = _certificate(_name(name, name, code), key, issuer, not_before, not_after, ca=False)
        keep(stem, key, cert, *([issuer.cert] if issuer is middle else []))
        return cert

    facility_cert("facility-01001", "01001", root, _rsa())
    facility_cert("facility-79001", "79001", middle, _rsa())
    facility_cert("facility-48001-ec", "48001", root, ec.generate_private_key(ec.SECP256R1()))
    facility_cert("expired", "01001", root, _rsa(), now - 2 * year, now - year)
    revoked = facility_cert("revoked", "79001", root, _rsa())
    facility_cert("unregistered", "01002", root, _rsa())
    facility_cert("weak", "01001", root, rsa.generate_private_key(public_exponent=65537, key_size=1024))
    rogue_key = _rsa()
    rogue = _Issuer(_certificate(_name("Healthbook DEV Root CA", "Healthbook DEV"), rogue_key, None, start,
                                 now + 10 * year, ca=True), rogue_key)  # the same name as the real root
    keep("rogue-ca", rogue_key, rogue.cert)
    facility_cert("rogue", "01001", rogue, _rsa())

    revoked_at = now - day
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.cert.subject)
           .last_update(revoked_at).next_update(now + 30 * day)
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(revoked.serial_number)
                                    .revocation_date(revoked_at).build())
           .sign(root_key, hashes.SHA256()))
    paths["crl"] = outdir / "crl.pem"
    paths["crl"].write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    registry = FacilityRegistry()
    for stem, code in (("facility-01001", "01001"), ("facility-79001", "79001"), ("facility-48001-ec", "48001"),
                       ("expired", "01001"), ("revoked", "79001")):
        registry.register(code, *FACILITIES[code], certs[stem])
    registry.revoke(certificate_sha256(revoked), revoked_at)
    paths["registry"] = outdir / "registry.json"
    paths["registry"].write_text(registry.dumps(), encoding="utf-8")

    for stem, code in (("facility-01001", "01001"), ("facility-79001", "79001"), ("facility-48001-ec", "48001")):
        paths[code], paths[f"{code}-key"] = paths[stem], paths[f"{stem}-key"]
    platform = ec.generate_private_key(ec.SECP256R1())  # stands in for the KMS receipt-signing key
    paths["platform-key"] = _write_key(outdir / "platform-key.pem", platform)
    paths["platform-public"] = outdir / "platform-public.pem"
    paths["platform-public"].write_bytes(platform.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    fingerprints = "\n".join(f"  {stem:<22}{certificate_sha256(cert)}" for stem, cert in certs.items())
    paths["README"] = outdir / "README.txt"
    paths["README"].write_text(_README.format(now=now, fingerprints=fingerprints), encoding="utf-8")
    return paths
