"""``healthbook receipt verify|show|make``: check a receipt offline, print it, or make one with a local key.

``verify`` needs only the receipt and the platform's public key, whatever the receipt's version: a version 3
receipt carries its own path to the root its window's one signature signs (docs/receipt.md). ``make`` signs the
file's receipt alone (a window of one).

Exit status: 0 valid (verify) / written for an accepted file (make) / shown; 1 invalid receipt, or a receipt
written for a file that was not wholly accepted; 2 on a usage or I/O error. Errors are handled here rather
than by cli.main so the commands behave the same however they are wired.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healthbook_dev.cli_support import UsageError, guarded

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


_Usage = UsageError  # this module raises it as _Usage


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    receipt = subparsers.add_parser("receipt", help="verify, show or make a signed submission receipt",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = receipt.add_subparsers(dest="action", required=True)

    verify = actions.add_parser("verify", help="check a receipt's signature, proofs and consistency offline")
    verify.add_argument("receipt", metavar="RECEIPT", help="the receipt JSON file")
    verify.add_argument("--public-key", required=True, metavar="PEM",
                        help="the platform's public key (or certificate) in PEM")
    verify.add_argument("--submission", metavar="FILE",
                        help="also re-validate this submitted XML and check the receipt describes it")
    verify.set_defaults(func=guarded(cmd_verify, name="receipt"))

    show = actions.add_parser("show", help="print a receipt for people (Vietnamese and English)")
    show.add_argument("receipt", metavar="RECEIPT")
    show.set_defaults(func=guarded(cmd_show, name="receipt"))

    make = actions.add_parser("make", help="validate a submission and write its receipt signed with a local key "
                                           "(demos and facility tests)")
    make.add_argument("submission", metavar="SUBMISSION.xml")
    make.add_argument("--key", required=True, metavar="KEY.pem", help="private key: RSA >= 2048 bits or EC P-256")
    make.add_argument("--object-key", help="where the file was stored (default: the file name)")
    make.add_argument("--submission-id", help="default: a new UUID")
    make.add_argument("--received-at", metavar="ISO", help="e.g. 2025-03-01T08:30:00+07:00 (default: now)")
    make.add_argument("--out", metavar="RECEIPT.json", help="default: standard output")
    make.add_argument("--trust", metavar="CA.pem",
                      help="verify the facility's signature against these anchors (default: not checked)")
    make.add_argument("--registry", metavar="FILE", help="facility registry JSON (with --trust)")
    make.add_argument("--crl", action="append", default=[], metavar="FILE", help="a CRL (with --trust; repeatable)")
    make.set_defaults(func=guarded(cmd_make, name="receipt"))



def _load_receipt(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Usage(f"{path} is not a JSON receipt: {exc}") from exc
    if not isinstance(data, dict):
        raise _Usage(f"{path} is not a JSON receipt (expected an object)")
    return data


def cmd_verify(args: argparse.Namespace) -> int:
    from healthbook.signing.receipt import compare_with_submission, verify_receipt
    from healthbook.signing.signer import load_public_key

    receipt = _load_receipt(args.receipt)
    pem = Path(args.public_key).read_bytes()
    try:
        load_public_key(pem)
    except ValueError as exc:
        raise _Usage(f"{args.public_key}: {exc}") from exc
    problems = verify_receipt(receipt, pem)
    if not problems and args.submission:
        from healthbook.validation import validate_path

        problems = compare_with_submission(receipt, validate_path(args.submission))
    if problems:
        print(f"INVALID  {args.receipt}")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_INVALID
    visits = receipt.get("visits") or []
    matches = ", matches the submitted file" if args.submission else ""
    batch = receipt["platform_signature"].get("batch")  # version 3: signed once for its window
    window = f" (one signature for a window of {batch['leaves']} receipt(s))" if isinstance(batch, dict) else ""
    print(f"VALID  {args.receipt}: submission {receipt.get('submission_id')}, facility {receipt.get('facility')}, "
          f"{receipt.get('visits_accepted')}/{len(visits)} visit(s) accepted, signed by "
          f"{receipt['platform_signature'].get('key_id')}{window}{matches}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from healthbook.signing.receipt import render_receipt

    sys.stdout.write(render_receipt(_load_receipt(args.receipt)))
    return EXIT_OK


def cmd_make(args: argparse.Namespace) -> int:
    from healthbook.kernel import MAX_FILE_BYTES
    from healthbook.pipeline import process_submission
    from healthbook.signing.signer import LocalKeySigner
    from healthbook.signing.xmldsig import Trust

    try:
        signer = LocalKeySigner.from_file(args.key)
    except ValueError as exc:
        raise _Usage(f"{args.key}: {exc}") from exc
    received = datetime.now(UTC)
    if args.received_at:
        try:
            received = datetime.fromisoformat(args.received_at)
        except ValueError as exc:
            raise _Usage(f"--received-at {args.received_at!r} is not an ISO 8601 time") from exc
        if received.tzinfo is None:
            raise _Usage("--received-at needs a time zone, e.g. Z or +07:00")
    if not Path(args.submission).is_file():
        raise _Usage(f"no such file: {args.submission}")
    trust = None
    if args.trust:
        try:
            trust = Trust.from_files(Path(args.trust), registry=Path(args.registry) if args.registry else None,
                                     crls=[Path(c) for c in args.crl])
        except ValueError as exc:
            raise _Usage(f"--trust/--registry/--crl: {exc}") from exc
    elif args.registry or args.crl:
        raise _Usage("--registry and --crl need --trust")
    with open(args.submission, "rb") as fh:  # the size limit is enforced by the validator on these bytes
        data = fh.read(MAX_FILE_BYTES + 1)
    receipt = process_submission(data, object_key=args.object_key or Path(args.submission).name,
                                 received_at=received, signer=signer, trust=trust,
                                 submission_id=args.submission_id or str(uuid.uuid4())).receipt
    text = json.dumps(receipt, ensure_ascii=False, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}: {receipt['visits_accepted']}/{len(receipt['visits'])} visit(s) accepted, "
              f"signed by {signer.key_id}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK if receipt["accepted"] else EXIT_INVALID
