"""The one-command demo on LocalStack (``make demo``): template.yaml deployed, facilities uploading, receipts and
the health book arriving, the monthly report, a summary.

Steps: deploy the stack (``infra/localstack/deploy.sh``) pointing at a fake VNeID and a fake population service
run by this process; issue development certificates, trust their CA and register two facilities; generate and sign
a few hundred visits in multi-visit files (a few deliberately defective, one edited after signing, one dropped in
the other facility's folder); send them as the facilities would, one through S3 and the other through the portal
API (docs/portal-api.md) as its HIS would — after the province has uploaded its participant list and a
vaccination file for some of the same people (docs/enrolment.md), so their health books exist before their
visits arrive; follow receipts and deliveries; invoke the
report function for this month; download receipts and report files and write one citizen's health book as VNeID
shows it. LocalStack itself is started and stopped by ``infra/localstack/with-localstack.sh``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from healthbook.ingest.model import is_version_key
from healthbook.kernel import PORTAL_TZ
from healthbook.signing.receipt import receipt_codes
from healthbook.signing.xml_signer import sign_submission

from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.generate import build_visit, current_standard, facility_named, inject
from healthbook_dev.generate.writer import envelope
from healthbook_dev.pki import dev_pki
from healthbook_dev.portal_client import PortalClient, localstack_api_url

STACK, STAGE, REGION = "hb-demo", "demo", "us-east-1"
FACILITIES = {"01001": "00004", "79001": "26734"}  # code -> commune (the reports' roll-up since July 2025)
API_FACILITY = "79001"  # sends through the portal API, as its HIS would; the other uploads to S3
API_USER, API_PASSWORD = "bv79001-demo", "demo-password-" + uuid.uuid4().hex[:8]
VISITS_PER_FILE = 10
TERMINAL = ("DELIVERED", "NEEDS_RECONCILIATION", "DEADLINE_BREACHED", "SUPERSEDED")


@dataclass
class Upload:
    facility: str  # the facility that made it
    folder: str  # where it is uploaded (another facility's folder for the I501 case)
    path: Path
    label: str | None  # what is wrong with it, when something is
    visits: list[str] = field(default_factory=list)  # MA_LK
    channel: str = "s3"  # or "api": the portal API
    transaction_id: str | None = None  # the API's maGiaoDich, once sent
    patients: list[dict[str, str]] = field(default_factory=list, repr=False)  # each visit's XML1 (invented people)

    @property
    def receipt_key(self) -> str:
        name = f"{self.transaction_id}.xml" if self.transaction_id else self.path.name
        return f"receipts/{self.folder}/{name}.receipt.json"


class Clients:
    def __init__(self, endpoint: str) -> None:
        import boto3  # type: ignore[import-untyped]

        self._session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                              region_name=REGION)
        self.endpoint = endpoint

    def __call__(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self.endpoint)

    def table(self, name: str) -> Any:
        return self._session.resource("dynamodb", endpoint_url=self.endpoint).Table(name)


def repository_root() -> Path:
    from healthbook_dev.aws.sandbox import functions_dir

    folder = functions_dir()
    if folder is None:
        raise SystemExit("the LocalStack demo deploys template.yaml: run it from a checkout of the project")
    return folder.parent


def deploy(endpoint: str, *, stack: str = STACK, stage: str = STAGE, **parameters: str) -> dict[str, str]:
    """template.yaml built and deployed to LocalStack (``infra/localstack/deploy.sh``); the stack's outputs."""
    script = repository_root() / "infra" / "localstack" / "deploy.sh"
    done = subprocess.run([str(script), "--stack-name", stack, "--stage", stage,
                           *(f"{k}={v}" for k, v in parameters.items())],
                          env={**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": REGION},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"deploy failed:\n{done.stderr[-3000:]}")
    outputs: dict[str, str] = json.loads(done.stdout)
    return outputs


def prepare(aws: Clients, outputs: dict[str, str], pki: dict[str, Path], vneid: Any,
            facilities: dict[str, str] | None = None) -> None:
    """Trust the dev CA, register the facilities (code -> commune), give delivery VNeID's credentials, start
    the functions that cache trust and registry afresh."""
    from healthbook.aws.facilities import put_facility

    aws("ssm").put_parameter(Name=outputs["TrustBundleParameterName"], Value=pki["ca"].read_text(),
                             Type="String", Overwrite=True)
    table = aws.table(outputs["FacilitiesTableName"])
    for code, commune in (FACILITIES if facilities is None else facilities).items():
        _, name, province = facility_named(code)
        certificate = x509.load_pem_x509_certificates(pki[code].read_bytes())[0]
        put_facility(table, code, name, province, certificate, commune=commune)
        if code == API_FACILITY:  # what `healthbook facility add --portal-user` does
            from healthbook.aws.portal_store import PortalAccounts
            from healthbook.portal.credentials import password_md5

            try:
                PortalAccounts(aws("dynamodb"), outputs["PortalTableName"]).register(
                    API_USER, facility=code, province=province, password_md5=password_md5(API_PASSWORD),
                    now=datetime.now(UTC))
            except ValueError:  # an earlier run's account (a kept LocalStack): give it this run's password
                PortalAccounts(aws("dynamodb"), outputs["PortalTableName"]).rotate(
                    API_USER, password_md5=password_md5(API_PASSWORD), now=datetime.now(UTC))
    aws("secretsmanager").put_secret_value(SecretId=outputs["VneidCredentialsSecretArn"], SecretString=json.dumps(
        {"type": "oauth2", "token_url": vneid.token_url, "client_id": vneid.client_id,
         "client_secret": vneid.client_secret}))
    lam = aws("lambda")
    for output in ("IngestFunctionName", "SweepFunctionName"):  # warm ones may hold an older trust and registry
        config = lam.get_function_configuration(FunctionName=outputs[output])
        variables = dict(config["Environment"]["Variables"], HB_DEMO_RUN=uuid.uuid4().hex)
        lam.update_function_configuration(FunctionName=outputs[output], Environment={"Variables": variables})
        lam.get_waiter("function_updated_v2").wait(FunctionName=outputs[output])


def make_uploads(work: Path, pki: dict[str, Path], people: FakePopulation, *, visits: int,
                 seed: int) -> list[Upload]:
    """Signed multi-visit files per facility: about one file in eight has a visit with a labelled defect (a
    finding: the visit is still admitted), one a visit without the patient's name (H601: kept out of the health
    book), one is edited after signing (K404), one goes into the other facility's folder (I501)."""
    rng = random.Random(seed)
    codes = list(FACILITIES)
    uploads = []
    for number in range(-(-visits // VISITS_PER_FILE)):
        code = codes[number % len(codes)]
        facility = facility_named(code)
        batch = [build_visit(rng, facility=facility, standard=current_standard()) for _ in range(VISITS_PER_FILE)]
        known = FakePopulation.from_visits(batch, mismatch_rate=0.02, unknown_rate=0.02, seed=seed + number)
        for visit in batch:
            citizen = known.lookup(visit.tables["XML1"][0]["SO_CCCD"])
            if citizen is not None:
                people.add(citizen)
        label = None
        defect = inject(batch[0], rng) if number % 8 == 3 else None
        if defect is not None:
            label = f"a visit with a finding ({defect.label()['code']})"
        if number == 6:
            batch[1].tables["XML1"][0]["HO_TEN"] = ""
            label = "a visit without the patient's name (H601)"
        cert, *chain = x509.load_pem_x509_certificates(pki[code].read_bytes())
        key = serialization.load_pem_private_key(pki[f"{code}-key"].read_bytes(), password=None)
        data = sign_submission(envelope(batch, **(defect.envelope if defect else {})), key, cert,  # type: ignore[arg-type]
                               chain=chain)
        folder = code
        if number == 5:
            data = data.replace(b"<SOLUONGHOSO>", b"<SOLUONGHOSO> ", 1)
            label = "edited after signing"
        elif number == 9:
            folder = codes[(number + 1) % len(codes)]
            label = "another facility's folder"
        path = work / f"{code}_{number:04d}_{uuid.uuid4().hex[:6]}.xml"
        path.write_bytes(data)
        channel = "api" if code == API_FACILITY and folder == code else "s3"
        uploads.append(Upload(code, folder, path, label, [v.ma_lk for v in batch], channel=channel,
                              patients=[dict(v.tables["XML1"][0]) for v in batch]))
    return uploads


def portal_client(aws: Clients, outputs: dict[str, str]) -> PortalClient:
    _, _, province = facility_named(API_FACILITY)
    return PortalClient(localstack_api_url(aws.endpoint, outputs["PortalApiId"], STAGE), username=API_USER,
                        password=API_PASSWORD, province=province, facility=API_FACILITY)


def upload_all(aws: Clients, outputs: dict[str, str], uploads: list[Upload]) -> dict[str, float]:
    """As each facility would, four at a time: S3 as ``healthbook upload`` does (SSE-KMS, checksum), or the
    portal API as an HIS does (token, then the base64 file as a form)."""
    from healthbook_dev.aws.upload import Destination, upload_file

    destination = Destination(inbox_bucket=outputs["InboxBucketName"], receipts_bucket=outputs["ReceiptsBucketName"],
                              kms_key_id=outputs.get("DataKeyArn"))
    s3 = aws("s3")
    his = portal_client(aws, outputs)
    sent: dict[str, float] = {}

    def put(upload: Upload) -> None:
        if upload.channel == "api":
            reply = his.submit(upload.path.read_bytes())
            if reply.code != "200":
                raise SystemExit(f"the portal API refused {upload.path.name}: {reply.body}")
            upload.transaction_id = reply.body["maGiaoDich"]
        else:
            upload_file(s3, destination, upload.folder, upload.path)
        sent[upload.path.name] = time.monotonic()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, uploads))
    return sent


@dataclass
class Progress:
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name -> receipt
    counters: dict[str, int] = field(default_factory=dict)  # today's report counters, all facilities
    statuses: Counter[str] = field(default_factory=Counter)  # the accepted visits' final statuses
    looked_up: int = 0  # receipts the portal API's lookup (traCuuKetQua) returned, signed, for their transaction
    delivered_citizens: list[str] = field(default_factory=list)  # citizen keys with a delivered visit
    enrolment: dict[str, dict[str, int]] = field(default_factory=dict)  # list kind -> rows by outcome
    latencies_ms: list[int] = field(default_factory=list)
    citizen: str | None = None


def follow(aws: Clients, outputs: dict[str, str], uploads: list[Upload], *, timeout: float,
           show: Callable[[str], None]) -> Progress:
    """Receipts as they appear (one listing per poll), deliveries from the report counters (one read per
    facility): cheap enough to poll every 2 s without slowing the emulator down."""
    s3, ddb = aws("s3"), aws("dynamodb")
    progress = Progress()
    by_key = {u.receipt_key: u for u in uploads}
    give_up = time.monotonic() + timeout
    last = ""
    while time.monotonic() < give_up:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=outputs["ReceiptsBucketName"],
                                                                   Prefix="receipts/"):
            for listed in page.get("Contents", []):
                upload = by_key.get(listed["Key"])
                if upload is not None and upload.path.name not in progress.receipts:
                    body = s3.get_object(Bucket=outputs["ReceiptsBucketName"], Key=listed["Key"])["Body"].read()
                    progress.receipts[upload.path.name] = json.loads(body)
        progress.counters = _today(ddb, outputs)
        counters = progress.counters
        settled = sum(counters.get(name, 0) for name in ("delivered", "needs_reconciliation", "breached"))
        line = (f"receipts {len(progress.receipts)}/{len(uploads)}   visits accepted "
                f"{counters.get('visits_accepted', 0)}   delivered {counters.get('delivered', 0)}   "
                f"awaiting reconciliation {counters.get('needs_reconciliation', 0)}   "
                f"breached {counters.get('breached', 0)}")
        if line != last:
            show(line)
            last = line
        if len(progress.receipts) == len(uploads) and settled >= counters.get("visits_accepted", 0):
            break
        time.sleep(2)
    accepted = [(u.folder, v["ma_lk"]) for u in uploads
                for v in progress.receipts.get(u.path.name, {}).get("visits", []) if v.get("accepted")]
    _final_statuses(ddb, outputs["VisitsTableName"], accepted, progress)
    return progress


ENROLLED_PER_FACILITY = 15  # patients of the demo's visits on the province's participant list


def enrolment_people(uploads: list[Upload]) -> list[Any]:
    """Participants: patients of the first files of each facility (so some visits arrive for people whose book
    the list created), as the insurance database holds them."""
    from healthbook_dev.generate.enrolment import Person

    chosen: list[Any] = []
    for code in FACILITIES:
        summaries = [summary for upload in uploads if upload.facility == code and upload.label is None
                     for summary in upload.patients]
        for row in summaries[:ENROLLED_PER_FACILITY]:
            card = row["MA_THE_BHYT"]
            if not (card and row["SO_CCCD"]):
                continue
            chosen.append(Person(so_cccd=row["SO_CCCD"], ma_so_bhxh=card[-10:], ho_ten=row["HO_TEN"],
                                 ngay_sinh=row["NGAY_SINH"][:8], gioi_tinh=row["GIOI_TINH"],
                                 matinh=row["MATINH_CU_TRU"], maxa=row["MAXA_CU_TRU"], ma_the_bhyt=card,
                                 gt_the_tu=row["GT_THE_TU"], gt_the_den=row["GT_THE_DEN"], ma_dkbd=row["MA_DKBD"]))
    return chosen


def enrol(aws: Clients, outputs: dict[str, str], uploads: list[Upload], people: FakePopulation, *, seed: int,
          timeout: float = 240) -> dict[str, dict[str, int]]:
    """The province's participant list, then a vaccination file for the same people, uploaded under
    ``imports/<province>/`` as the province would; each waited for until its outcome summary is written."""
    from healthbook.aws.enrolment_runtime import list_id, outcome_keys

    from healthbook_dev.generate.enrolment import enrolment_csv, vaccination_csv, vaccination_rows

    listed = enrolment_people(uploads)
    for person in listed:
        people.add(person.citizen())
    province = facility_named(next(iter(FACILITIES)))[2]
    s3, bucket = aws("s3"), outputs["ImportsBucketName"]
    done: dict[str, dict[str, int]] = {}
    for kind, body in (("enrolment", enrolment_csv([p.row() for p in listed])),
                       ("vaccination", vaccination_csv(vaccination_rows(listed, seed=seed)))):
        key = f"imports/{province}/{kind}/demo-{uuid.uuid4().hex[:8]}.csv"
        version = s3.put_object(Bucket=bucket, Key=key, Body=body, ServerSideEncryption="aws:kms",
                                SSEKMSKeyId=outputs["DataKeyArn"]).get("VersionId")
        _, summary_key = outcome_keys(province, list_id(kind, key, version))
        give_up = time.monotonic() + timeout
        while True:
            try:
                summary = json.loads(s3.get_object(Bucket=bucket, Key=summary_key)["Body"].read())
                break
            except s3.exceptions.NoSuchKey:
                if time.monotonic() > give_up:
                    raise SystemExit(f"no outcome for the {kind} list after {timeout:.0f} s") from None
                time.sleep(2)
        done[kind] = {name: int(count) for name, count in summary.get("by_outcome", {}).items() if count}
    return done


def look_up(his: PortalClient, uploads: list[Upload]) -> int:
    """As the HIS would, ask the API for each transaction's result: the receipt, for that transaction."""
    found = 0
    for upload in uploads:
        if upload.transaction_id:
            reply = his.lookup(upload.transaction_id)
            receipt = reply.body.get("bienNhan") or {}
            found += reply.code == "200" and receipt.get("transaction_id") == upload.transaction_id
    return found


def _today(ddb: Any, outputs: dict[str, str]) -> dict[str, int]:
    """The day's counts of the demo's facilities, added up (what the daily report will read): the counter items'
    shards, the files and the deliveries."""
    from healthbook.aws.reports import DynamoCounters
    from healthbook.reports.aggregates import day, facility_scope, total

    counters = DynamoCounters(ddb, outputs["AggregatesTableName"], submissions_table=outputs["SubmissionsTableName"],
                              visits_table=outputs["VisitsTableName"], workers=1)
    return total(counters.period(facility_scope(code), day(datetime.now(UTC))) for code in FACILITIES)


def _final_statuses(ddb: Any, table: str, accepted: list[tuple[str, str]], progress: Progress) -> None:
    """Once, at the end: each accepted visit's status in force, and the delivered ones' latencies."""
    for folder, ma_lk in accepted:
        items = ddb.query(TableName=table, KeyConditionExpression="visit_id = :v",
                          ExpressionAttributeValues={":v": {"S": f"{folder}#{ma_lk}"}})["Items"]
        versions = [i for i in items if is_version_key(i["version"]["S"])]
        if not versions:
            progress.statuses["MISSING"] += 1
            continue
        latest = max(versions, key=lambda i: i["version"]["S"])
        status = latest["status"]["S"]
        progress.statuses[status] += 1
        if status == "DELIVERED":
            progress.latencies_ms.append(int(latest["latency_ms"]["N"]))
            progress.delivered_citizens.append(latest["citizen_key"]["S"])
            progress.citizen = progress.citizen or latest["citizen_key"]["S"]


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1000


def run(out: Path, *, endpoint: str, visits: int = 250, seed: int = 2026, timeout: float = 240) -> int:
    from healthbook_dev.fakes.population_server import FakePopulationServer
    from healthbook_dev.fakes.vneid import FakeVneid

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)

    def show(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {message}", flush=True)

    aws = Clients(endpoint)
    people = FakePopulation()
    with FakeVneid.start() as vneid, FakePopulationServer.start(people) as population:
        show(f"deploying template.yaml to LocalStack ({endpoint}) as stack {STACK}…")
        outputs = deploy(endpoint, VneidBaseUrl=vneid.url, PopulationBaseUrl=population.url)
        pki = dev_pki(out / "pki")
        prepare(aws, outputs, pki, vneid)
        show(f"deployed; facilities {', '.join(FACILITIES)} registered with development certificates")
        work = out / "submissions"
        work.mkdir(exist_ok=True)
        uploads = make_uploads(work, pki, people, visits=visits, seed=seed)
        show("the province uploads its participant list, then a vaccination file (the enrolment workflow)…")
        enrolment = enrol(aws, outputs, uploads, people, seed=seed)
        show("enrolment done: " + "; ".join(f"{kind} {counts}" for kind, counts in enrolment.items()))
        show(f"uploading {len(uploads)} signed files ({len(uploads) * VISITS_PER_FILE} visits) as the facilities "
             "would…")
        upload_all(aws, outputs, uploads)
        progress = follow(aws, outputs, uploads, timeout=timeout, show=show)
        progress.looked_up = look_up(portal_client(aws, outputs), uploads)
        progress.enrolment = enrolment
        # the citizen view: someone whose book the list created, who has vaccinations and a delivered visit
        progress.citizen = next((key for key in progress.delivered_citizens
                                 if vneid.profile(key) and vneid.vaccinations(key)), progress.citizen)
        show("building this month's report (the report function, as the monthly schedule would)…")
        month = f"{datetime.now(PORTAL_TZ):%Y-%m}"
        report = aws("lambda").invoke(FunctionName=outputs["ReportFunctionName"],
                                      Payload=json.dumps({"period": month}).encode())
        result = json.loads(report["Payload"].read())
        report_files = _download(aws, outputs, out, uploads, result.get("objects", []))
        citizen_page = None
        if progress.citizen:
            with urllib.request.urlopen(f"{vneid.url}/v1/citizens/{progress.citizen}/health-book.html",
                                        timeout=5) as page:
                citizen_page = out / "citizen.html"
                citizen_page.write_bytes(page.read())
    print(summary(uploads, progress, out, report_files, citizen_page, time.monotonic() - started))
    complete = len(progress.receipts) == len(uploads) and progress.statuses["PENDING"] == 0
    complete = complete and progress.looked_up == sum(1 for u in uploads if u.channel == "api")
    return 0 if complete and "FunctionError" not in report else 1


def _download(aws: Clients, outputs: dict[str, str], out: Path, uploads: list[Upload],
              report_keys: list[str]) -> list[Path]:
    s3 = aws("s3")
    for upload in uploads:
        target = out / upload.receipt_key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3.download_file(outputs["ReceiptsBucketName"], upload.receipt_key, str(target))
        except Exception:  # a missing receipt is reported in the summary
            continue
    files = []
    for key in report_keys:
        target = out / "report" / key.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(outputs["ReportsBucketName"], key, str(target))
        files.append(target)
    return files


def summary(uploads: list[Upload], progress: Progress, out: Path, report_files: list[Path],
            citizen_page: Path | None, elapsed: float) -> str:
    codes: Counter[str] = Counter()
    findings: Counter[str] = Counter()
    accepted_files = rejected_files = visits_accepted = visits_rejected = 0
    for receipt in progress.receipts.values():
        accepted_files += bool(receipt.get("accepted"))
        rejected_files += not receipt.get("accepted")
        blocking, found = receipt_codes(receipt)
        codes.update(blocking)
        findings.update(found)
        for visit in receipt.get("visits", []):
            visits_accepted += bool(visit.get("accepted"))
            visits_rejected += not visit.get("accepted")
    statuses, latencies = progress.statuses, progress.latencies_ms
    by_api = [u for u in uploads if u.channel == "api"]
    rows = [
        ("files sent", f"{len(uploads)}: {len(uploads) - len(by_api)} uploaded to S3, {len(by_api)} through the "
                       f"portal API ({API_FACILITY}'s HIS)"),
        ("portal API", f"{sum(1 for u in by_api if u.transaction_id)} maGiaoDich answered, {progress.looked_up} "
                       "receipts returned by traCuuKetQua"),
        ("initial health books", _outcomes(progress.enrolment.get("enrolment"))),
        ("vaccination records", _outcomes(progress.enrolment.get("vaccination"))),
        ("receipts", f"{len(progress.receipts)}  ({accepted_files} files wholly accepted, {rejected_files} not)"),
        ("visits accepted / rejected", f"{visits_accepted} / {visits_rejected}"),
        ("rejected by reason", ", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "-"),
        ("findings (admitted)", ", ".join(f"{c} {n}" for c, n in sorted(findings.items())) or "-"),
        ("delivered to VNeID", str(statuses["DELIVERED"])),
        ("awaiting identity reconciliation", str(statuses["NEEDS_RECONCILIATION"])),
        ("still pending", str(statuses["PENDING"])),
        ("deadline breaches", str(statuses["DEADLINE_BREACHED"])),
        ("receipt -> VNeID latency", f"p50 {_pct(latencies, .5):.1f} s, p95 {_pct(latencies, .95):.1f} s"
         if latencies else "-"),
        ("whole demo", f"{elapsed:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", *(f"{name:<{width}}  {value}" for name, value in rows), ""]
    lines.append(f"receipts:      {out / 'receipts'}/")
    lines.append(f"report files:  {', '.join(str(p) for p in report_files) or 'none (see the report function log)'}")
    if citizen_page:
        lines.append(f"citizen view:  {citizen_page}  (one citizen's health book as VNeID shows it)")
    labelled = [u for u in uploads if u.label]
    lines.append(f"deliberately bad files: {len(labelled)} (" + "; ".join(
        f"{u.path.name}: {u.label}" for u in labelled[:4]) + ("; …" if len(labelled) > 4 else "") + ")")
    return "\n".join(lines)


def _outcomes(counts: dict[str, int] | None) -> str:
    if not counts:
        return "-"
    return ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in counts.items())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoint", default="http://127.0.0.1:4566")
    parser.add_argument("--visits", type=int, default=250)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for receipts and deliveries")
    args = parser.parse_args(argv)
    return run(args.out, endpoint=args.endpoint, visits=args.visits, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
