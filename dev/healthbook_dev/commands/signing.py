"""`healthbook sign`, `healthbook verify` and `healthbook dev-pki`.

``verify --json`` prints ``{"files": [{"path", "valid", "facility", "certificate_sha256", "issues"}]}``;
exit status 0 when every file is validly signed, 1 when any is not, 2 on a usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from healthbook_dev.cli_support import UsageError, guarded, xml_files

if TYPE_CHECKING:  # the signing modules load when a command runs, not when the CLI starts (0.17 s)
    from healthbook.signing.xmldsig import SignatureCheck

EXIT_OK, EXIT_INVALID = 0, 1  # usage errors: cli_support.EXIT_USAGE, through guarded()


_Usage = UsageError  # this module raises it as _Usage


def _password(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    if variable not in os.environ:
        raise _Usage(f"environment variable {variable} is not set")
    return os.environ[variable].encode("utf-8")


def cmd_sign(args: argparse.Namespace) -> int:
    from healthbook.signing.registry import certificate_sha256
    from healthbook.signing.xml_signer import load_signing_material, sign_submission

    password = _password(args.password_env)
    if args.p12 and not (args.key or args.cert):
        key, cert, chain = load_signing_material(p12=Path(args.p12).read_bytes(), password=password)
    elif args.key and args.cert and not args.p12:
        key, cert, chain = load_signing_material(Path(args.key).read_bytes(), Path(args.cert).read_bytes(),
                                                 password=password)
    else:
        raise _Usage("give --key and --cert, or --p12")
    signed = sign_submission(Path(args.input).read_bytes(), key, cert, chain=chain)
    Path(args.output).write_bytes(signed)
    print(f"signed {args.input} -> {args.output} (certificate {certificate_sha256(cert)}, "
          f"{cert.subject.rfc4514_string()})")
    return EXIT_OK


def _receipt_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Usage(f"--at {text!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise _Usage(f"--at {text!r} needs a timezone, e.g. {text}+07:00 or {text}Z")
    return moment


def envelope_facility(data: bytes) -> str | None:
    """The facility the file names (the validator's reading: the envelope's MACSKCB, or a standalone check-in
    document's MA_CSKCB), or None when the file cannot be read (verify reports why)."""
    from healthbook.validation.engine import identify

    return identify(data).facility


def _print_check(path: Path, facility: str | None, check: SignatureCheck) -> None:
    from healthbook.signing.receipt import signature_form_line

    write = sys.stdout.write
    if check.valid:
        registered = f"; registered for {', '.join(check.registered_facilities)}" if check.registered_facilities else ""
        write(f"VALID    {path}  (facility {facility or '?'}; certificate {check.certificate_sha256}{registered})\n")
    else:
        write(f"INVALID  {path}  (facility {facility or '?'}; certificate {check.certificate_sha256 or '-'})\n")
    if check.form is not None:
        write(f"    form: {signature_form_line(check.form.to_dict())}\n")
    for issue in check.issues:
        write(f"    {issue.severity:<7} {issue.code} {issue.message_vi}\n            {issue.message_en}\n")


def cmd_verify(args: argparse.Namespace) -> int:
    from healthbook.signing.xmldsig import Trust, verify_submission

    at = _receipt_time(args.at)
    trust = Trust.from_files(Path(args.trust), Path(args.registry) if args.registry else None,
                             [Path(p) for p in args.crl or []])
    results = []
    for path in xml_files(args.paths, verb="verify"):
        data = path.read_bytes()
        facility = envelope_facility(data)
        results.append((path, facility, verify_submission(data, trust=trust, facility=facility, at=at)))
    if args.json:
        files = [{"path": str(path), "valid": check.valid, "facility": facility,
                  "certificate_sha256": check.certificate_sha256, "issues": [i.to_dict() for i in check.issues],
                  "form": check.form.to_dict() if check.form is not None else None}
                 for path, facility, check in results]
        json.dump({"files": files}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for path, facility, check in results:
            _print_check(path, facility, check)
        valid = sum(check.valid for _, _, check in results)
        sys.stdout.write(f"\n{valid}/{len(results)} file(s) validly signed (as of {at.isoformat()})\n")
    return EXIT_OK if all(check.valid for _, _, check in results) else EXIT_INVALID


def cmd_dev_pki(args: argparse.Namespace) -> int:
    from healthbook_dev.pki import dev_pki

    paths = dev_pki(Path(args.outdir))
    print(f"wrote {len(set(paths.values()))} files to {args.outdir} (DEVELOPMENT ONLY, unencrypted keys; see "
          f"{paths['README']})")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add sign, verify and dev-pki; each sets ``func`` to a callable returning the exit status."""
    sign = subparsers.add_parser("sign", help="sign a submission: XML-DSig (enveloped) in CHUKYDONVI")
    sign.add_argument("input", metavar="IN", help="the unsigned GIAMDINHHS file")
    sign.add_argument("output", metavar="OUT", help="where to write the signed file")
    sign.add_argument("--key", metavar="KEY.pem", help="private key (PEM; encrypted needs --password-env)")
    sign.add_argument("--cert", metavar="CERT.pem", help="the key's certificate, optionally followed by its chain")
    sign.add_argument("--p12", metavar="FILE", help="a PKCS#12 bundle instead of --key and --cert")
    sign.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    sign.set_defaults(func=guarded(cmd_sign, name="sign", also=(ValueError,)))

    verify = subparsers.add_parser("verify", help="verify facility signatures (exit 0 all valid, 1 any not)")
    verify.add_argument("paths", nargs="+", metavar="PATH", help="a file, or a folder (all *.xml inside)")
    verify.add_argument("--json", action="store_true", help="one JSON document on stdout")
    verify.add_argument("--trust", required=True, metavar="CA.pem", help="trusted CA certificates (PEM bundle)")
    verify.add_argument("--registry", metavar="FILE", help="facility registry JSON (docs/signatures.md)")
    verify.add_argument("--crl", action="append", metavar="FILE", help="a CRL (PEM or DER); repeatable")
    verify.add_argument("--at", metavar="ISO8601", help="receipt time with timezone (default: now)")
    verify.set_defaults(func=guarded(cmd_verify, name="verify", also=(ValueError,)))

    pki = subparsers.add_parser("dev-pki", help="write a development CA, facility certificates and a registry")
    pki.add_argument("outdir", metavar="OUTDIR")
    pki.set_defaults(func=guarded(cmd_dev_pki, name="dev-pki", also=(ValueError,)))
