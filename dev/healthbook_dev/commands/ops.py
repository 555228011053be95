"""``healthbook facility add|list|portal-account`` and ``healthbook report`` (operations), ``healthbook upload``
(facilities).

AWS is reached through boto3, which honours ``AWS_ENDPOINT_URL`` (moto server, LocalStack); ``--localstack``
resolves LocalStack's endpoints with localstack-client when no endpoint URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healthbook.reports.model import LEVELS

from healthbook_dev.cli_support import UsageError, xml_files

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    facility = subparsers.add_parser("facility", help="register facilities and their certificates (operations)")
    actions = facility.add_subparsers(dest="action", required=True)

    add = actions.add_parser("add", help="register a facility and its certificate, create its tagged principal")
    add.add_argument("code", metavar="MACSKCB")
    add.add_argument("--name", required=True)
    add.add_argument("--province", required=True, help="2-digit province code")
    add.add_argument("--district", help="district code, for the district roll-up of reports before July 2025 "
                                        "(default: keep)")
    add.add_argument("--commune", help="commune (xã/phường) code, for the commune roll-up of reports from July 2025 "
                                       "(default: keep)")
    add.add_argument("--cert", required=True, metavar="CERT.pem", help="the facility's signing certificate")
    add.add_argument("--no-principal", action="store_true", help="only register the certificate")
    add.add_argument("--portal-user", metavar="USER",
                     help="also give the facility an account on the portal API (docs/portal-api.md)")
    add.add_argument("--portal-password-env", metavar="VAR",
                     help="the environment variable holding that account's password (never a command-line argument)")
    add.add_argument("--portal-table", default=os.environ.get("HEALTHBOOK_PORTAL_TABLE"),
                     help="the portal table (default: from --stack)")
    add.add_argument("--credentials-out", metavar="FILE",
                     help="write the new access key here (mode 0600) instead of printing it")
    _aws_options(add, tables=True)
    add.set_defaults(func=_guard(cmd_facility_add))

    account = actions.add_parser("portal-account", help="a facility's portal API account: new password, unlock, "
                                                        "disable (docs/portal-api.md)")
    account.add_argument("action", choices=("rotate", "unlock", "disable"))
    account.add_argument("user", metavar="USER")
    account.add_argument("--password-env", metavar="VAR", help="rotate: the variable holding the new password")
    account.add_argument("--portal-table", default=os.environ.get("HEALTHBOOK_PORTAL_TABLE"),
                         help="the portal table (default: from --stack)")
    _aws_options(account, tables=False)
    account.set_defaults(func=_guard(cmd_portal_account))

    listing = actions.add_parser("list", help="list registered facilities and certificates")
    listing.add_argument("--json", action="store_true")
    _aws_options(listing, tables=True)
    listing.set_defaults(func=_guard(cmd_facility_list))

    report = subparsers.add_parser("report", help="build a period's report from the aggregates (as the report "
                                                 "function does) and write its files to a folder")
    report.add_argument("--period", required=True, help="YYYY-MM (month), YYYY-MM-DD (day) or YYYY-H1/H2")
    report.add_argument("--level", choices=LEVELS,
                        help="print this level and write only its CSV (default: every file, provinces printed)")
    report.add_argument("--out", required=True, type=Path, metavar="DIR")
    report.add_argument("--aggregates-table", default=os.environ.get("HEALTHBOOK_AGGREGATES_TABLE"),
                        help="default: from --stack")
    report.add_argument("--submissions-table", default=os.environ.get("HEALTHBOOK_SUBMISSIONS_TABLE"),
                        help="where files are counted (its by-facility-month index); default: from --stack")
    report.add_argument("--visits-table", default=os.environ.get("HEALTHBOOK_VISITS_TABLE"),
                        help="where deliveries are counted (its by-facility-delivered index); default: from --stack")
    _aws_options(report, tables=True)
    report.set_defaults(func=_guard(cmd_report))

    upload = subparsers.add_parser("upload", help="upload signed submissions to the inbox (facilities)")
    upload.add_argument("paths", nargs="+", metavar="PATH")
    upload.add_argument("--facility", required=True, metavar="MACSKCB")
    upload.add_argument("--inbox-bucket", default=os.environ.get("HEALTHBOOK_INBOX_BUCKET"))
    upload.add_argument("--receipts-bucket", default=os.environ.get("HEALTHBOOK_RECEIPTS_BUCKET"))
    upload.add_argument("--kms-key-id", default=os.environ.get("HEALTHBOOK_KMS_KEY_ID"))
    upload.add_argument("--wait", action="store_true", help="wait for each receipt and print the outcome")
    upload.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per receipt")
    _aws_options(upload, tables=False)
    upload.set_defaults(func=_guard(cmd_upload))


def _aws_options(parser: argparse.ArgumentParser, *, tables: bool) -> None:
    parser.add_argument("--profile", help="AWS named profile")
    parser.add_argument("--endpoint-url", help="e.g. http://127.0.0.1:4566 (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--localstack", action="store_true", help="resolve LocalStack endpoints (localstack-client)")
    parser.add_argument("--region", default=None)
    parser.add_argument("--stack", help="read bucket, table and policy names from this stack's outputs")
    if tables:
        parser.add_argument("--stage", default="dev", help="stage used in principal names")
        parser.add_argument("--table", default=os.environ.get("HEALTHBOOK_FACILITIES_TABLE"),
                            help="the facilities table (default: from --stack)")
        parser.add_argument("--policy-arn", default=None, help="facility policy (default: from --stack)")


def _guard(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = command(args)
            return code
        except (UsageError, ValueError, OSError) as exc:
            print(f"healthbook {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return run


class _Clients:
    """boto3 clients for one command, from a profile, an endpoint URL or LocalStack's defaults."""

    def __init__(self, args: argparse.Namespace) -> None:
        endpoint = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if args.localstack and not endpoint:
            import localstack_client.session

            self._session: Any = localstack_client.session.Session(region_name=args.region or "ap-southeast-1")
            self._endpoint = None
        else:
            import boto3  # type: ignore[import-untyped]

            self._session = boto3.Session(profile_name=args.profile, region_name=args.region)
            self._endpoint = endpoint

    def client(self, service: str) -> Any:
        if self._endpoint:
            return self._session.client(service, endpoint_url=self._endpoint)
        return self._session.client(service)

    def resource(self, service: str) -> Any:
        if self._endpoint:
            return self._session.resource(service, endpoint_url=self._endpoint)
        return self._session.resource(service)


def _stack_outputs(clients: _Clients, stack: str | None) -> dict[str, str]:
    if not stack:
        return {}
    described = clients.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def _facilities_table(clients: _Clients, args: argparse.Namespace, outputs: dict[str, str]) -> Any:
    name = args.table or outputs.get("FacilitiesTableName")
    if not name:
        raise UsageError("give --table or --stack (or set HEALTHBOOK_FACILITIES_TABLE)")
    return clients.resource("dynamodb").Table(name)


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from healthbook.aws.reports import DynamoCounters, build
    from healthbook.reports.model import Period
    from healthbook.reports.render import summary_lines

    period = Period.parse(args.period)  # ValueError -> usage error, before any AWS call
    middle = "commune" if period.after_reform else "district"
    if args.level in ("district", "commune") and args.level != middle:
        raise UsageError(f"period {period.label} reports by {middle}: districts until June 2025, communes from "
                         "July 2025 (docs/reports.md)")
    clients = _Clients(args)
    outputs_of_stack = _stack_outputs(clients, args.stack)
    aggregates = args.aggregates_table or outputs_of_stack.get("AggregatesTableName")
    submissions = args.submissions_table or outputs_of_stack.get("SubmissionsTableName")
    visits = args.visits_table or outputs_of_stack.get("VisitsTableName")
    if not aggregates or not submissions or not visits:
        raise UsageError("give --aggregates-table, --submissions-table and --visits-table, or --stack (or set "
                         "HEALTHBOOK_AGGREGATES_TABLE, HEALTHBOOK_SUBMISSIONS_TABLE and HEALTHBOOK_VISITS_TABLE)")
    # No clock: closed days not rolled up are read item by item, nothing is written (read access is enough)
    counters = DynamoCounters(clients.client("dynamodb"), aggregates, submissions_table=submissions,
                              visits_table=visits)
    report = build(period, counters=counters, facilities_table=_facilities_table(clients, args, outputs_of_stack),
                   generated_at=datetime.now(UTC))
    written = write_report(report, args.out, level=args.level)
    for line in summary_lines(report, args.level or "province"):
        print(line)
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


def write_report(report: Any, out: Path, *, level: str | None = None) -> list[Path]:
    """The report function's files, in ``out`` instead of the bucket; with ``level`` only that level's CSV."""
    from healthbook.reports.render import outputs

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (body, _) in sorted(outputs(report).items()):
        if level is None or name == f"{level}.csv":
            (out / name).write_bytes(body)
            written.append(out / name)
    return written


def cmd_facility_add(args: argparse.Namespace) -> int:
    from cryptography import x509
    from healthbook.aws.facilities import put_facility
    from healthbook.signing.registry import certificate_sha256

    from healthbook_dev.aws.principals import create_facility_principal

    certificate = x509.load_pem_x509_certificate(Path(args.cert).read_bytes())
    if bool(args.portal_user) != bool(args.portal_password_env):
        raise UsageError("--portal-user and --portal-password-env go together")
    password = _password_from(args.portal_password_env) if args.portal_user else None
    clients = _Clients(args)
    outputs = _stack_outputs(clients, args.stack)
    table = _facilities_table(clients, args, outputs)
    accounts = _portal_accounts(clients, args, outputs) if password is not None else None
    principal = None
    if not args.no_principal:
        principal = create_facility_principal(args.code, stage=args.stage, iam=clients.client("iam"),
                                              policy_arn=args.policy_arn or outputs.get("FacilityPolicyArn"))
    put_facility(table, args.code, args.name, args.province, certificate,
                 principal_arn=principal.arn if principal else None, district=args.district,
                 commune=args.commune)
    print(f"registered {args.code} ({args.name}, province {args.province}{_place_text(args)}); certificate "
          f"{certificate_sha256(certificate)} valid {certificate.not_valid_before_utc:%Y-%m-%d} to "
          f"{certificate.not_valid_after_utc:%Y-%m-%d}")
    if accounts is not None and password is not None:
        from healthbook.portal.credentials import password_md5

        accounts.register(args.portal_user, facility=args.code, province=args.province,
                          password_md5=password_md5(password), now=datetime.now(UTC))
        print(f"portal API account {args.portal_user} for {args.code} (province {args.province})")
    if principal is not None:
        print(f"principal {principal.arn} tagged facility={args.code}")
        if principal.access_key_id:
            credentials = {"aws_access_key_id": principal.access_key_id,
                           "aws_secret_access_key": principal.secret_access_key}
            if args.credentials_out:
                path = Path(args.credentials_out)
                path.touch(mode=0o600, exist_ok=True)
                path.chmod(0o600)
                path.write_text(json.dumps(credentials, indent=1) + "\n", encoding="utf-8")
                print(f"access key written to {path} (shown nowhere else; hand it over securely)")
            else:
                print("access key (shown once; hand it over securely):")
                print(json.dumps(credentials, indent=1))
    return EXIT_OK


def _password_from(variable: str) -> str:
    password = os.environ.get(variable, "")
    if len(password) < 12:
        raise UsageError(f"${variable} must hold the password, at least 12 characters")
    return password


def _portal_accounts(clients: _Clients, args: argparse.Namespace, outputs: dict[str, str]) -> Any:
    from healthbook.aws.portal_store import PortalAccounts

    name = args.portal_table or outputs.get("PortalTableName")
    if not name:
        raise UsageError("give --portal-table or --stack (or set HEALTHBOOK_PORTAL_TABLE)")
    return PortalAccounts(clients.client("dynamodb"), name)


def cmd_portal_account(args: argparse.Namespace) -> int:
    clients = _Clients(args)
    accounts = _portal_accounts(clients, args, _stack_outputs(clients, args.stack))
    if args.action == "rotate":
        from healthbook.portal.credentials import password_md5

        if not args.password_env:
            raise UsageError("rotate needs --password-env VAR")
        try:
            generation = accounts.rotate(args.user, password_md5=password_md5(_password_from(args.password_env)),
                                         now=datetime.now(UTC))
        except KeyError:
            raise UsageError(f"no portal account {args.user!r}") from None
        print(f"{args.user}: new password (generation {generation}); tokens taken before are refused from now on")
    elif args.action == "unlock":
        accounts.unlock(args.user)
        print(f"{args.user}: unlocked, failed logins forgotten")
    else:
        accounts.disable(args.user)
        print(f"{args.user}: disabled; its tokens are refused from now on")
    return EXIT_OK


def cmd_facility_list(args: argparse.Namespace) -> int:
    from healthbook.aws.facilities import list_facilities

    clients = _Clients(args)
    table = _facilities_table(clients, args, _stack_outputs(clients, args.stack))
    facilities = list_facilities(table)
    if args.json:
        json.dump([_facility_json(f) for f in facilities], sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    for facility in facilities:
        print(f"{facility.code}  {facility.name}  (province {facility.province}{_place_text(facility)})")
        for cert in facility.certificates:
            print(f"    {cert.sha256}  {cert.not_before:%Y-%m-%d} → {cert.not_after:%Y-%m-%d}")
    print(f"{len(facilities)} facilit{'y' if len(facilities) == 1 else 'ies'}")
    return EXIT_OK


def _place_text(facility: Any) -> str:
    return "".join(f", {unit} {getattr(facility, unit)}" for unit in ("district", "commune")
                   if getattr(facility, unit, None))


def _facility_json(facility: Any) -> dict[str, Any]:
    return {"code": facility.code, "name": facility.name, "province": facility.province,
            "district": facility.district or None, "commune": facility.commune or None,
            "certificates": [{"sha256": c.sha256, "not_before": c.not_before.isoformat(),
                              "not_after": c.not_after.isoformat()} for c in facility.certificates]}


def _progress(done: int, total: int) -> None:
    if total > 1:
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {done}/{total} uploaded")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_upload(args: argparse.Namespace) -> int:
    from healthbook_dev.aws.upload import Destination, upload_file, wait_for_receipt

    if not (len(args.facility) == 5 and args.facility.isdigit()):
        raise UsageError(f"a facility code is 5 digits, not {args.facility!r}")
    files = xml_files(args.paths, verb="upload")
    clients = _Clients(args)
    outputs = _stack_outputs(clients, args.stack)
    inbox = args.inbox_bucket or outputs.get("InboxBucketName")
    receipts = args.receipts_bucket or outputs.get("ReceiptsBucketName")
    if not inbox or (args.wait and not receipts):
        raise UsageError("give --inbox-bucket (and --receipts-bucket with --wait), or --stack")
    destination = Destination(inbox_bucket=inbox, receipts_bucket=receipts or "",
                              kms_key_id=args.kms_key_id or outputs.get("DataKeyArn"))
    s3 = clients.client("s3")
    for number, path in enumerate(files, start=1):
        upload_file(s3, destination, args.facility, path)
        _progress(number, len(files))
    print(f"uploaded {len(files)} file(s) to s3://{inbox}/inbox/{args.facility}/")
    if not args.wait:
        return EXIT_OK
    rejected = 0
    for path in files:
        receipt = wait_for_receipt(s3, destination, args.facility, path, timeout=args.timeout)
        if receipt is None:
            print(f"TIMEOUT   {path.name}: no receipt after {args.timeout:.0f} s")
            rejected += 1
            continue
        accepted = bool(receipt.get("accepted"))
        rejected += not accepted
        codes = sorted({e.get("code") for e in receipt.get("errors", [])} |
                       {e.get("code") for v in receipt.get("visits", []) for e in v.get("errors", [])} - {None})
        state = "ACCEPTED" if accepted else "REJECTED"
        print(f"{state:<9} {path.name}: {receipt.get('visits_accepted', 0)}/{len(receipt.get('visits', []))} "
              f"visit(s) accepted" + (f"; codes {', '.join(codes)}" if codes else ""))
    return EXIT_OK if rejected == 0 else EXIT_REJECTED
