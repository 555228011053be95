"""Bursts and backlog, end to end on LocalStack (issue 17): 50 facilities, a burst, a VNeID outage, the drain.

Deploys template.yaml (stack ``hb-load``) with the fake VNeID and population services of this process, registers
50 facilities (certificates issued for them by the development CA), and sends signed files as the facilities
would:

* **the files**: most facilities send HIS-shaped exports (``his_export_batch``: one visit per file, the measured
  shapes and planted defects of real exports) and small batches of 2-10 visits; a few hospitals send bigger
  files (30-150 visits). At least 500 files and 2,000 visits (``--files``, ``--visits``). Generated people only;
  the fake population knows them (1 % unknown, 1 % mismatched: awaiting reconciliation, a terminal state here);
* **the burst**: ``--burst`` of the files (default 60 %) uploaded within one minute by 8 threads, the rest spread
  evenly over ``--spread`` seconds;
* **the outage**: VNeID answers 503 for ``--outage`` seconds (default 180), starting ``--outage-at`` seconds after
  the first upload; deliveries retry in their execution, Settle defers them, the sweep (every 2 minutes, the
  template's minimum; lease 300 s, retries 5 s doubling to 30 s) restarts them: the drain;
* **transaction conflicts**: the emulator's conflict model (docs/faults.md) is on for the whole run, ``hold_ms``
  20, for this stack's tables.

It stops when every file has its receipt and every accepted visit is settled, or at ``--time-limit`` (seconds
from the start, deploy included; 900 by default, the issue's 15 minutes), then cleans up: the fault switchboard
cleared, the stack's buckets emptied and the stack deleted, the fakes stopped.

Definitions (both must be 0):

* **lost** = files uploaded without a receipt at ``receipts/<MACSKCB>/<file>.receipt.json``, plus accepted visits
  (``accepted`` in their file's receipt) whose version in force is not settled (DELIVERED, NEEDS_RECONCILIATION,
  DEADLINE_BREACHED or SUPERSEDED) or is missing, plus DELIVERED visits of which the fake VNeID holds no entry.
  A run that ends at its time limit counts what is still on its way as lost, and says how many were still PENDING.
* **duplicated** = visits the fake VNeID holds in more than one citizen's book (each extra counts), plus entries
  VNeID stored as new or replacing (its ``deliveries`` counter: 201/200 answers that stored, idempotent replays
  and 409s excluded) beyond the number of distinct visits it holds, plus receipt keys with more than one S3
  version whose contents differ in anything but ``platform_signature`` (a retried file re-signs the same receipt
  by design, with a new signing time and value: counted and printed, not a duplicate; nor is a file the inbox holds
  twice, an upload sent again by a client's retry, whose second receipt is a replay's I503: counted and printed).

Printed: files and visits, receipts, delivered, breached, lost and duplicated; the distinct citizens the report
counts (its province-month marker partitions) against those the delivered visits name; upload -> receipt (receipt
seen in a listing polled every second) and upload -> VNeID (the visit item's ``delivered_at``) p50/p95/p99;
throughput;
peak concurrency per function (from each REPORT line: its time and Duration); conflicts counted by the model and
retries the functions counted (their ``CounterConflictRetries`` EMF metric); Lambda invocations, Step Functions
executions and AWS requests per visit (LocalStack's request log, this process's own calls subtracted); where the
CPU went (LocalStack, each function's workers, this process); and, last, the whole bill per million visits
(healthbook_dev.bill: LocalStack's request meter, durations of our code timed in process; docs/cost.md).

Usage: python bench/load.py [--endpoint http://127.0.0.1:4566] [--time-limit 900]   (after `make localstack-up`)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from healthbook.ingest.model import is_version_key
from healthbook.parsing.safe_xml import decode_base64, parse
from healthbook.reports.aggregates import day, facility_scope
from healthbook.signing.xml_signer import sign_submission
from healthbook_dev import bill
from healthbook_dev.aws import metering
from healthbook_dev.aws.lambda_logs import log_events, report_fields, seconds
from healthbook_dev.aws.upload import Destination, upload_file
from healthbook_dev.demos.stack import Clients, deploy
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.population_server import FakePopulationServer
from healthbook_dev.fakes.vneid import FakeVneid
from healthbook_dev.generate import build_visit, current_standard, facility_named, his_export_batch
from healthbook_dev.generate.vocab import FACILITIES as KNOWN_FACILITIES
from healthbook_dev.generate.writer import envelope
from healthbook_dev.pki import dev_pki

STACK, STAGE = "hb-load", "test-load"
REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = metering.PATH_FUNCTIONS
COUNTERS_EVERY_S = 15
SETTLED = ("DELIVERED", "NEEDS_RECONCILIATION", "DEADLINE_BREACHED", "SUPERSEDED")
# The delivery timings of the run: the real 24 h deadline; sweep, lease and retries short so the drain is quick.
TIMING = {"DeadlineSeconds": "86400", "SafetyMarginSeconds": "3600", "LeaseSeconds": "300",
          "RetryBaseSeconds": "5", "RetryMaxSeconds": "30", "SweepEveryMinutes": "2"}
HOLD_MS = 20
RECEIPT_VOLATILE = ("platform_signature",)  # a receipt re-signed on a retry differs only here (docs/receipt.md)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def three(values: list[float]) -> str:
    return f"p50 {pct(values, .5):.1f} s  p95 {pct(values, .95):.1f} s  p99 {pct(values, .99):.1f} s  (n={len(values)})"


# --- facilities and their certificates ---------------------------------------------------------------------------

@dataclass
class Facility:
    code: str
    name: str
    province: str
    hospital: bool
    key: Any = None
    chain: list[x509.Certificate] = field(default_factory=list)


def facilities(n: int, hospitals: int) -> list[Facility]:
    """The vocabulary's facilities first, then made-up codes in their provinces (``facility_named``)."""
    codes = [code for code, _, _ in KNOWN_FACILITIES]
    provinces = sorted({province for _, _, province in KNOWN_FACILITIES})
    number = 100
    while len(codes) < n:
        number += 1
        codes.append(f"{provinces[number % len(provinces)]}{number:03d}")
    chosen = []
    for index, code in enumerate(codes[:n]):
        _, name, province = facility_named(code)
        chosen.append(Facility(code, name, province, hospital=index < hospitals))
    return chosen


def issue_certificates(pki: dict[str, Path], chosen: list[Facility]) -> None:
    """A certificate for each facility from the development root CA (RSA 2048; one in five ECDSA P-256), as
    healthbook_dev.pki issues its facility certificates."""
    ca = x509.load_pem_x509_certificates(pki["ca"].read_bytes())[0]
    ca_key = serialization.load_pem_private_key(pki["ca-key"].read_bytes(), password=None)
    now = datetime.now(UTC)
    for index, facility in enumerate(chosen):
        key: Any = (ec.generate_private_key(ec.SECP256R1()) if index % 5 == 4
                    else rsa.generate_private_key(public_exponent=65537, key_size=2048))
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, facility.name),
                             x509.NameAttribute(NameOID.COMMON_NAME, facility.name),
                             x509.NameAttribute(NameOID.USER_ID, f"MCSKCB:{facility.code}")])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=30)).not_valid_after(now + timedelta(days=730))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                               critical=False)
                .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        facility.key, facility.chain = key, [cert]


def register(aws: Clients, outputs: dict[str, str], pki: dict[str, Path], chosen: list[Facility],
             vneid: FakeVneid) -> None:
    """What healthbook_dev.demos.stack.prepare (and `healthbook facility add`) does, for every facility."""
    from healthbook.aws.facilities import put_facility

    aws("ssm").put_parameter(Name=outputs["TrustBundleParameterName"], Value=pki["ca"].read_text(),
                             Type="String", Overwrite=True)
    table = aws.table(outputs["FacilitiesTableName"])
    for facility in chosen:
        put_facility(table, facility.code, facility.name, facility.province, facility.chain[0], commune="")
    aws("secretsmanager").put_secret_value(SecretId=outputs["VneidCredentialsSecretArn"], SecretString=json.dumps(
        {"type": "oauth2", "token_url": vneid.token_url, "client_id": vneid.client_id,
         "client_secret": vneid.client_secret}))
    lam = aws("lambda")
    if os.environ.get("LAMBDA_LIMITS_CONCURRENT_EXECUTIONS"):
        # Concurrency capped as two cores run it (the Makefile): ingest keeps a share of its own, as many as its
        # SQS pollers, so that a drain of delivery tasks throttles them (the state machine retries) and not it.
        ingest = outputs["IngestFunctionName"]
        mapping, = lam.list_event_source_mappings(FunctionName=ingest)["EventSourceMappings"]
        lam.put_function_concurrency(FunctionName=ingest, ReservedConcurrentExecutions=int(
            mapping["ScalingConfig"]["MaximumConcurrency"]))
    for output in ("IngestFunctionName", "SweepFunctionName"):  # a kept LocalStack's warm workers: start afresh
        config = lam.get_function_configuration(FunctionName=outputs[output])
        variables = dict(config["Environment"]["Variables"], HB_LOAD_RUN=uuid.uuid4().hex)
        lam.update_function_configuration(FunctionName=outputs[output], Environment={"Variables": variables})
        lam.get_waiter("function_updated_v2").wait(FunctionName=outputs[output])


# --- the files ---------------------------------------------------------------------------------------------------

@dataclass
class Upload:
    facility: str
    path: Path
    kind: str  # "his-export", "batch", "hospital"
    visits: int
    uploaded: float = 0.0  # epoch seconds, once put
    receipt_seen: float = 0.0

    @property
    def receipt_key(self) -> str:
        return f"receipts/{self.facility}/{self.path.name}.receipt.json"


def _summary_of(body: bytes) -> dict[str, str]:
    """XML1 of a one-visit HIS export (base64 or inline), for the fake population."""
    root = parse(body, limit=len(body) + 1)
    for node in root.iter("FILEHOSO"):
        if (node.findtext("LOAIHOSO") or "").strip() != "XML1":
            continue
        content = node.find("NOIDUNGFILE")
        assert content is not None
        inner = next(iter(content), None)
        if inner is None:
            data = decode_base64(content.text, limit=len(body) + 1, table="XML1")
            inner = parse(data, limit=len(data) + 1)
        return {child.tag: (child.text or "").strip() for child in inner if isinstance(child.tag, str)}
    raise ValueError("no XML1 in the export")


def make_files(work: Path, chosen: list[Facility], people: FakePopulation, *, files: int, visits: int,
               seed: int) -> list[Upload]:
    """Clinics: one-visit HIS exports and batches of 2-10; hospitals: also files of 30-150 visits. At least
    ``files`` files and ``visits`` visits; MA_LK unique per facility (no resubmissions in this run)."""
    rng = random.Random(seed)
    clinics = [f for f in chosen if not f.hospital]
    hospitals = [f for f in chosen if f.hospital]
    plan: list[tuple[Facility, str, int]] = []
    big = max(4, len(hospitals) * 2)  # a few big files per hospital
    for number in range(big):
        plan.append((hospitals[number % len(hospitals)], "hospital", rng.randint(30, 150)))
    rest = files - big
    exports = rest * 55 // 100
    for _ in range(exports):
        plan.append((rng.choice(chosen), "his-export", 1))
    for _ in range(rest - exports):
        plan.append((rng.choice(clinics + hospitals), "batch", rng.randint(2, 10)))
    while sum(n for _, _, n in plan) < visits:  # top up with batches
        plan.append((rng.choice(chosen), "batch", rng.randint(2, 10)))

    by_facility: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for facility, kind, n in plan:
        by_facility[facility.code].append((kind, n))
    uploads: list[Upload] = []
    summaries: list[Any] = []
    seen: set[tuple[str, str]] = set()
    for facility in chosen:
        wanted = by_facility.get(facility.code, [])
        place = (facility.code, facility.name, facility.province)
        count = sum(1 for kind, _ in wanted if kind == "his-export")
        exports_of = iter(his_export_batch(rng, count, facility=place, inline_facility=place)) if count else iter(())
        for number, (kind, n) in enumerate(wanted):
            if kind == "his-export":
                export = next(exports_of)
                body = export.body
                summary = _summary_of(body)
                lks = [export.ma_lk]
                summaries.append(SimpleNamespace(tables={"XML1": [summary]}))
            else:
                batch = [build_visit(rng, facility=place, standard=current_standard()) for _ in range(n)]
                body = envelope(batch)
                lks = [v.ma_lk for v in batch]
                summaries.extend(batch)
            for lk in lks:
                if (facility.code, lk) in seen:
                    raise SystemExit(f"generated MA_LK twice for {facility.code}; change --seed")
                seen.add((facility.code, lk))
            signed = sign_submission(body, facility.key, facility.chain[0], chain=facility.chain[1:])
            path = work / f"{facility.code}_{number:04d}_{uuid.uuid4().hex[:6]}.xml"
            path.write_bytes(signed)
            uploads.append(Upload(facility.code, path, kind, len(lks)))
    known = FakePopulation.from_visits(summaries, mismatch_rate=0.01, unknown_rate=0.01, seed=seed)
    for citizen in known:
        people.add(citizen)
    rng.shuffle(uploads)
    return uploads


# --- what the run costs the machine ------------------------------------------------------------------------------

class CpuSampler(threading.Thread):
    """CPU seconds of LocalStack's own process, of each function's workers (its children, grouped by
    AWS_LAMBDA_FUNCTION_NAME) and of this process, sampled from /proc every 2 s; and the machine's idle share."""

    def __init__(self, localstack_pid: int | None) -> None:
        super().__init__(daemon=True, name="cpu-sampler")
        self.pid = localstack_pid
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.last: dict[int, tuple[str, float]] = {}
        self.used: Counter[str] = Counter()
        self.stop = threading.Event()
        self.machine_start = self._machine()
        self.machine_end = self.machine_start
        self.peak_workers: Counter[str] = Counter()

    @staticmethod
    def _machine() -> tuple[float, float]:
        with open("/proc/stat") as stat:
            fields = [float(v) for v in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    def _cpu(self, pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parts = stat.read().rsplit(")", 1)[1].split()
            return (float(parts[11]) + float(parts[12])) / self.ticks
        except OSError:
            return None

    def _group(self, pid: int) -> str:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return "other"
        for entry in environ:
            if entry.startswith(b"AWS_LAMBDA_FUNCTION_NAME="):
                return "lambda " + entry.split(b"=", 1)[1].decode().rsplit("-", 1)[-1]
        return "localstack children (other)"

    def sample(self) -> None:
        pids: dict[int, str] = {os.getpid(): "this process (fakes, uploads, polling)"}
        if self.pid:
            pids[self.pid] = "localstack (gateway, Step Functions, DynamoDB, S3, SQS, logs)"
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == self.pid:
                    pids[int(entry)] = self.last[int(entry)][0] if int(entry) in self.last else self._group(int(entry))
        workers: Counter[str] = Counter()
        for pid, group in pids.items():
            cpu = self._cpu(pid)
            if cpu is None:
                continue
            previous = self.last.get(pid)
            self.used[group] += cpu - (previous[1] if previous else 0.0)  # a new worker: all of its CPU
            self.last[pid] = (group, cpu)
            if group.startswith("lambda "):
                workers[group] += 1
        for group, n in workers.items():
            self.peak_workers[group] = max(self.peak_workers[group], n)
        self.machine_end = self._machine()

    def run(self) -> None:
        # The first sample only sets the baseline for processes already running (LocalStack, warm workers).
        if self.pid:
            cpu = self._cpu(self.pid)
            if cpu is not None:
                self.last[self.pid] = ("localstack (gateway, Step Functions, DynamoDB, S3, SQS, logs)", cpu)
        own = self._cpu(os.getpid())
        self.last[os.getpid()] = ("this process (fakes, uploads, polling)", own or 0.0)
        while not self.stop.wait(2.0):
            self.sample()
        self.sample()

    def busy_share(self) -> float:
        total = self.machine_end[0] - self.machine_start[0]
        idle = self.machine_end[1] - self.machine_start[1]
        return 1 - idle / total if total else float("nan")

    def busy_seconds(self) -> float:
        """CPU seconds the whole machine spent busy over the run (every process, this run's or not)."""
        total = self.machine_end[0] - self.machine_start[0]
        idle = self.machine_end[1] - self.machine_start[1]
        return (total - idle) / self.ticks


class OwnCalls:
    """This process's AWS requests by service.operation, to subtract from LocalStack's request log."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def attach(self, client: Any) -> Any:
        service = client.meta.service_model.service_name  # e.g. "s3", "dynamodb"

        def count(model: Any, **_: Any) -> None:
            with self.lock:
                self.calls[f"{service}.{model.name}"] += 1

        client.meta.events.register("before-call", lambda **kw: count(kw["model"]))
        return client


# --- the switchboard ------------------------------------------------------------------------------------------------

def state_dir(endpoint: str) -> Path:
    port = urlsplit(endpoint).port or 4566
    home = Path(os.environ.get("HB_LOCALSTACK_HOME") or REPO / "infra" / "localstack" / ".work")
    return Path(os.environ.get("HB_LOCALSTACK_STATE") or home / f"state-{port}")


class Switchboard:
    """The fault switchboard of the host-mode LocalStack (docs/faults.md), as tests/e2e/conftest.py writes it."""

    def __init__(self, endpoint: str) -> None:
        self.path = Path(os.environ.get("HB_FAULTS_FILE") or state_dir(endpoint) / "tmp" / "healthbook-faults.json")
        self.id = f"load-{uuid.uuid4().hex[:12]}"
        self.available = self.path.parent.is_dir()

    def write(self, document: dict[str, Any]) -> None:
        if not self.available:
            return
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document), encoding="utf-8")
        os.replace(temporary, self.path)

    def read(self, suffix: str) -> dict[str, Any]:
        try:
            counts = json.loads(self.path.with_name(self.path.name.removesuffix(".json") + suffix).read_text())
        except (OSError, ValueError):
            return {}
        return counts if counts.get("id") == self.id else {}


# --- logs ------------------------------------------------------------------------------------------------------------

def read_logs(logs: Any, since_ms: int) -> dict[str, Any]:
    """REPORT lines (invocations, intervals for concurrency, init durations) and EMF metrics per function."""
    invocations: Counter[str] = Counter()
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    metrics: dict[str, Counter[str]] = defaultdict(Counter)
    billed: Counter[str] = Counter()
    cold: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    series: set[str] = set()  # EMF metric series: what CloudWatch bills per month
    for function in FUNCTIONS:
        for event in log_events(logs, f"/aws/lambda/healthbook-{STAGE}-{function}", since_ms):
            message = event["message"]
            fields = report_fields(message)
            if fields is not None:
                invocations[function] += 1
                duration = seconds(fields, "Duration")
                billed[function] += seconds(fields, "Billed Duration")
                cold[function] += "Init Duration" in fields
                end = event["timestamp"] / 1000
                intervals[function].append((end - duration, end))
            elif '"_aws"' in message:
                for line in message.splitlines():
                    try:
                        document = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(document, dict) or "_aws" not in document:
                        continue
                    series |= metering.metric_series(document)
                    metrics[function].update(metering.metric_sums(document))
            elif '"level":"ERROR"' in message.replace(" ", "") or message.startswith("[ERROR]"):
                errors[function] += 1
    peaks = {}
    for function, spans in intervals.items():
        edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        level = peak = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        peaks[function] = peak
    return {"invocations": invocations, "peaks": peaks, "metrics": metrics, "billed": billed, "cold": cold,
            "errors": errors, "series": series}


REQUEST_LINE = re.compile(r"^(\S+)\s+INFO .*localstack\.request\.(?:aws|internal\.aws)\s*: "
                          r"AWS (\S+) => (\d+)(?: \((\w+)\))?")


def requests_in_log(endpoint: str, since: float, until: float) -> tuple[Counter[str], Counter[str]]:
    """LocalStack's request log (``AWS s3.PutObject => 200``) between two epoch times: by operation, and the
    refusals by operation and error code."""
    path = state_dir(endpoint) / "localstack.log"
    ok: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    if not path.is_file():
        return ok, refused
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            match = REQUEST_LINE.match(line)
            if not match:
                continue
            try:
                at = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S.%f").timestamp()  # local time, as logged
            except ValueError:
                continue
            if not since <= at <= until:
                continue
            if match[3].startswith("2"):
                ok[match[2]] += 1
            else:
                refused[f"{match[2]} {match[3]}{' ' + match[4] if match[4] else ''}"] += 1
    return ok, refused


# --- the run ---------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_endpoint = os.environ.get("AWS_ENDPOINT_URL") or \
        f"http://127.0.0.1:{os.environ.get('HB_LOCALSTACK_PORT', '4566')}"
    parser.add_argument("--endpoint", default=default_endpoint)
    parser.add_argument("--facilities", type=int, default=50)
    parser.add_argument("--hospitals", type=int, default=6, help="facilities that also send big files")
    parser.add_argument("--files", type=int, default=520)
    parser.add_argument("--visits", type=int, default=2000, help="at least this many visits in all")
    parser.add_argument("--burst", type=float, default=0.6, help="share of the files uploaded within one minute")
    parser.add_argument("--spread", type=float, default=240, help="seconds over which the rest are uploaded")
    parser.add_argument("--outage-at", type=float, default=60, help="seconds after the first upload")
    parser.add_argument("--outage", type=float, default=180, help="seconds of VNeID answering 503")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds from the start, deploy included")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--keep", action="store_true", help="leave the stack and its data (no clean-up)")
    args = parser.parse_args()
    if args.files < 500 or args.visits < 2000:
        print(f"note: {args.files} files / {args.visits} visits is below the issue's 500 / 2,000", file=sys.stderr)

    started = time.monotonic()
    wall_start = time.time()

    def show(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    aws = Clients(args.endpoint)
    own = OwnCalls()
    board = Switchboard(args.endpoint)
    pid_file = state_dir(args.endpoint) / "localstack.pid"
    localstack_pid = int(pid_file.read_text().strip()) if pid_file.is_file() else None
    people = FakePopulation()
    phases: dict[str, float] = {}
    with FakeVneid.start() as vneid, FakePopulationServer.start(people) as population, TemporaryDirectory() as tmp:
        work = Path(tmp)
        outputs = deploy(args.endpoint, stack=STACK, stage=STAGE, VneidBaseUrl=vneid.url,
                         PopulationBaseUrl=population.url, **TIMING)
        phases["deploy"] = time.monotonic() - started
        show(f"deployed {STACK} ({args.endpoint})")
        try:
            t0 = time.monotonic()
            pki = dev_pki(work / "pki")
            chosen = facilities(args.facilities, args.hospitals)
            issue_certificates(pki, chosen)
            register(aws, outputs, pki, chosen, vneid)
            phases["certificates and registration"] = time.monotonic() - t0
            limits = aws("lambda").get_account_settings()["AccountLimit"]
            reserved = aws("lambda").get_function_concurrency(FunctionName=outputs["IngestFunctionName"])
            show(f"Lambda concurrency: {limits['ConcurrentExecutions']} in all, ingest reserved "
                 f"{reserved.get('ReservedConcurrentExecutions', 'none')}")
            t0 = time.monotonic()
            (work / "files").mkdir()
            uploads = make_files(work / "files", chosen, people, files=args.files, visits=args.visits,
                                 seed=args.seed)
            phases["generating and signing"] = time.monotonic() - t0
            total_visits = sum(u.visits for u in uploads)
            kinds = Counter(u.kind for u in uploads)
            show(f"{len(chosen)} facilities registered; {len(uploads)} signed files, {total_visits} visits "
                 f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}; largest "
                 f"{max(u.visits for u in uploads)})")
            run(args, aws, own, board, outputs, vneid, uploads, show, started, wall_start, localstack_pid, phases)
        finally:
            board.write({})
            vneid.fail("5xx", seconds=0)
            keep_worker_logs(args.endpoint, show)
            if not args.keep:
                cleanup(aws, outputs, show)


def run(args: argparse.Namespace, aws: Clients, own: OwnCalls, board: Switchboard, outputs: dict[str, str],
        vneid: FakeVneid, uploads: list[Upload], show: Any, started: float, wall_start: float,
        localstack_pid: int | None, phases: dict[str, float]) -> None:
    # The bench's own polling and accounting are marked as the meter's observer, left out of the bill; the
    # uploads are the facilities' own, and in it.
    s3 = metering.observer(own.attach(aws("s3")))
    ddb = metering.observer(own.attach(aws("dynamodb")))
    facility_s3 = own.attach(aws("s3"))
    destination = Destination(inbox_bucket=outputs["InboxBucketName"], receipts_bucket=outputs["ReceiptsBucketName"],
                              kms_key_id=outputs.get("DataKeyArn"))
    board.write({"id": board.id, "dynamodb": {"conflicts": {"hold_ms": HOLD_MS,
                                                            "tables_prefix": f"healthbook-{STAGE}-"}}})
    show(f"conflict model on (hold {HOLD_MS} ms, tables healthbook-{STAGE}-*)" if board.available else
         "no fault switchboard (not a LocalStack started by up.sh): conflicts not modelled")
    sampler = CpuSampler(localstack_pid)
    sampler.start()
    metering.reset(args.endpoint)
    run_start = time.time()
    run_start_ms = int(run_start * 1000)
    t_first = time.monotonic()
    deadline = started + args.time_limit

    burst = uploads[:round(len(uploads) * args.burst)]
    spread = uploads[len(burst):]

    def put(upload: Upload) -> None:
        upload_file(facility_s3, destination, upload.facility, upload.path)
        upload.uploaded = time.time()

    outage = threading.Timer(args.outage_at, lambda: (vneid.fail("5xx", seconds=args.outage),
                                                      show(f"VNeID outage: 503 for {args.outage:.0f} s")))
    outage.daemon = True
    outage.start()

    def upload_all() -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, burst))
        show(f"burst: {len(burst)} files uploaded in {time.monotonic() - t_first:.1f} s")
        gap = args.spread / max(1, len(spread))
        for number, upload in enumerate(spread):
            wait = t_first + 60 + number * gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            put(upload)
        show(f"spread: {len(spread)} more files uploaded by {time.monotonic() - t_first:.0f} s")

    uploader = threading.Thread(target=upload_all, name="uploader", daemon=True)
    uploader.start()

    by_key = {u.receipt_key: u for u in uploads}
    receipts: dict[str, dict[str, Any]] = {}
    codes = sorted({u.facility for u in uploads})
    last_line, last_counters = "", 0.0
    counters: dict[str, int] = {}
    progress: list[tuple[float, int, int, int]] = []  # seconds, receipts, accepted, settled
    settled_all_at = None
    while time.monotonic() < deadline:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=destination.receipts_bucket,
                                                                   Prefix="receipts/"):
            for listed in page.get("Contents", []):
                upload = by_key.get(listed["Key"])
                if upload is not None and listed["Key"] not in receipts:
                    upload.receipt_seen = time.time()
                    body = s3.get_object(Bucket=destination.receipts_bucket, Key=listed["Key"])["Body"].read()
                    receipts[listed["Key"]] = json.loads(body)
        # What the report counts, read as the report reads it: since files and deliveries are counted from their
        # items, that is a Query of two indexes per facility, which moto answers by walking the table: every 15 s,
        # not 5, so that the benchmark's own reading does not load the emulator it measures.
        if time.monotonic() - last_counters > COUNTERS_EVERY_S:
            counters = day_counters(ddb, outputs, codes, run_start)
            last_counters = time.monotonic()
            settled = sum(counters.get(n, 0) for n in ("delivered", "needs_reconciliation", "breached"))
            accepted = counters.get("visits_accepted", 0)
            progress.append((time.monotonic() - t_first, len(receipts), accepted, settled))
            line = (f"receipts {len(receipts)}/{len(uploads)}  accepted {accepted}  delivered "
                    f"{counters.get('delivered', 0)}  awaiting reconciliation {counters.get('needs_reconciliation', 0)}"
                    f"  breached {counters.get('breached', 0)}  VNeID PUTs {vneid.counts().get('puts', 0)}")
            if line != last_line:
                show(line)
                last_line = line
            if len(receipts) == len(uploads) and not uploader.is_alive() and settled >= accepted:
                settled_all_at = time.monotonic()
                break
        time.sleep(1.0)
    run_end = time.time()
    meter = metering.snapshot(args.endpoint)
    ended = "everything settled" if settled_all_at else f"the time limit ({args.time_limit:.0f} s)"
    show(f"stopped: {ended}, {run_end - run_start:.0f} s after the first upload")
    outage.cancel()
    vneid.fail("5xx", seconds=0)
    sampler.stop.set()
    sampler.join()
    phases["uploads to settled" if settled_all_at else "uploads to the time limit"] = run_end - run_start

    # --- the accounting --------------------------------------------------------------------------------------------
    t0 = time.monotonic()
    accepted_visits: dict[str, Upload] = {}  # visit_id -> its file
    for key, receipt in receipts.items():
        for entry in receipt.get("visits", []):
            if entry.get("accepted"):
                accepted_visits[f"{by_key[key].facility}#{entry['ma_lk']}"] = by_key[key]
    versions = latest_versions(ddb, outputs["VisitsTableName"])
    statuses: Counter[str] = Counter()
    to_vneid: list[float] = []
    delivered_at: list[float] = []
    unsettled = 0
    citizens: set[str] = set()
    delivered_ids: set[str] = set()
    for visit_id, upload in accepted_visits.items():
        item = versions.get(visit_id)
        status = item["status"] if item else "MISSING"
        statuses[status] += 1
        if status not in SETTLED:
            unsettled += 1
        if item and item.get("citizen_key"):
            citizens.add(item["citizen_key"])
        if status == "DELIVERED":
            delivered_ids.add(visit_id)
            at = datetime.fromisoformat(item["delivered_at"].replace("Z", "+00:00")).timestamp()
            to_vneid.append(at - upload.uploaded)
            delivered_at.append(at)
    # Every citizen the stack stored a visit for (a file still in ingest at a time limit has delivered visits
    # but no receipt yet): what VNeID stored is compared with all of them.
    citizens.update(item["citizen_key"] for item in versions.values() if item.get("citizen_key"))
    held: Counter[str] = Counter()  # visit_id -> books holding it
    for citizen in citizens:
        for entry in vneid.entries(citizen):
            held[entry["visit_id"]] += 1
    vneid_counts = vneid.counts()
    in_two_books = sum(n - 1 for n in held.values() if n > 1)
    stored_beyond = max(0, vneid_counts.get("deliveries", 0) - len(held))
    missing_in_vneid = len(delivered_ids - set(held))
    citizens_recorded, citizens_reported = distinct_citizens(ddb, outputs["AggregatesTableName"], versions)
    rewritten, different, replayed = receipt_versions(s3, destination.receipts_bucket, by_key,
                                                      destination.inbox_bucket)
    queues = {}
    for name in ("IngestQueueUrl", "IngestDeadLetterQueueUrl"):
        if outputs.get(name):
            attributes = metering.observer(aws("sqs")).get_queue_attributes(QueueUrl=outputs[name], AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            queues[name.removesuffix("Url")] = (int(attributes["ApproximateNumberOfMessages"]),
                                                int(attributes["ApproximateNumberOfMessagesNotVisible"]))
    no_receipt = [u for u in uploads if u.receipt_key not in receipts]
    lost = len(no_receipt) + unsettled + missing_in_vneid
    duplicated = in_two_books + stored_beyond + different

    logs = read_logs(metering.observer(aws("logs")), run_start_ms)
    ok, refused = requests_in_log(args.endpoint, run_start - 1, time.time())
    mine = own.calls
    conflicts = board.read(".conflicts.json")
    throttles = board.read(".counters.json")
    phases["accounting"] = time.monotonic() - t0

    # --- the report ------------------------------------------------------------------------------------------------
    to_receipt = [u.receipt_seen - u.uploaded for u in uploads if u.receipt_seen]
    kinds = Counter(u.kind for u in uploads)
    accepted_n = len(accepted_visits)
    total_visits = sum(u.visits for u in uploads)
    elapsed_deliver = (max(delivered_at) - run_start) if delivered_at else float("nan")
    print()
    print(f"machine: {os.cpu_count()} cores; LocalStack {args.endpoint}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
          f"whole run {time.monotonic() - started:.0f} s")
    print("phases: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items()))
    print(f"files {len(uploads)} from {len({u.facility for u in uploads})} facilities "
          f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); visits {total_visits} "
          f"(largest file {max(u.visits for u in uploads)})")
    print(f"burst: {len(burst)} files within the first minute, {len(spread)} spread over {args.spread:.0f} s; "
          f"VNeID 503 from {args.outage_at:.0f} s for {args.outage:.0f} s")
    receipted_files = sum(1 for r in receipts.values() if r)
    print(f"receipts {receipted_files}/{len(uploads)}; visits accepted {accepted_n}, rejected "
          f"{sum(1 for r in receipts.values() for v in r.get('visits', []) if not v.get('accepted'))}")
    print(f"statuses of the accepted visits: {dict(sorted(statuses.items()))}")
    print(f"delivered {statuses['DELIVERED']}; breached {statuses['DEADLINE_BREACHED']}; awaiting reconciliation "
          f"{statuses['NEEDS_RECONCILIATION']}; still PENDING {statuses['PENDING']}")
    print(f"upload -> receipt  {three(to_receipt)}")
    print(f"upload -> VNeID    {three(to_vneid)}")
    print(f"throughput: {len(delivered_at) / elapsed_deliver:.2f} visits/s delivered (first upload to last delivery, "
          f"{elapsed_deliver:.0f} s); {settled_rate(progress)}")
    print(f"VNeID: PUTs {vneid_counts.get('puts', 0)}, stored {vneid_counts.get('deliveries', 0)}, idempotent replays "
          f"{vneid_counts.get('replays', 0)}, 409 {vneid_counts.get('conflicts', 0)}, 503 injected "
          f"{vneid_counts.get('injected_failures', 0)}; entries held {len(held)}")
    print("peak concurrency per function (REPORT intervals): "
          + ", ".join(f"{f} {logs['peaks'].get(f, 0)}" for f in FUNCTIONS)
          + "; most live workers seen: " + (", ".join(f"{g.split()[-1]} {n}" for g, n in
                                                    sorted(sampler.peak_workers.items())) or "-"))
    print(f"throttles: {throttles.get('dynamodb_throttled', 0)} (none configured; Lambda throttles: "
          f"{refused_matching(refused, 'TooManyRequests')})")
    retries = {f: m.get("CounterConflictRetries", 0) for f, m in logs["metrics"].items()
               if m.get("CounterConflictRetries")}
    print(f"TransactionConflict: {conflicts.get('conflicts', 0)} transactions cancelled of "
          f"{conflicts.get('transactions', 0)} considered (counted every 100; by table "
          f"{conflicts.get('conflicts_by_table', {})}); retried in the call (CounterConflictRetries) "
          f"{sum(retries.values())} {retries}; TransactWriteItems refused in LocalStack's log "
          f"{refused_matching(refused, 'TransactWriteItems')}")
    print(f"Lambda invocations: {dict(sorted(logs['invocations'].items()))}; cold starts "
          f"{dict(sorted(logs['cold'].items()))}")
    if accepted_n:
        per = {f: round(n / accepted_n, 3) for f, n in sorted(logs["invocations"].items())}
        print(f"per accepted visit: invocations {per} (all {sum(logs['invocations'].values()) / accepted_n:.2f})")
        emf = logs["metrics"]
        executions = emf.get("settle", Counter()).get("DeliveryExecutions", 0)
        print(f"per accepted visit: Step Functions executions {executions / accepted_n:.3f} ({executions}: "
              f"summaries; sweep started {emf.get('sweep', Counter()).get('SweepExecutions', 0)}, claiming "
              f"{emf.get('sweep', Counter()).get('SweepClaimed', 0)} visits)")
        billed = {f: round(s / accepted_n, 3) for f, s in sorted(logs["billed"].items())}
        print(f"per accepted visit: billed Lambda seconds {billed}")
        functions_only = ok - mine
        interesting = ("s3.PutObject", "s3.GetObject", "s3.HeadObject", "s3.CopyObject", "s3.DeleteObject",
                       "dynamodb.GetItem", "dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.Query",
                       "dynamodb.TransactWriteItems", "dynamodb.BatchGetItem", "dynamodb.BatchWriteItem",
                       "stepfunctions.StartExecution", "kms.Sign", "kms.Decrypt", "kms.GenerateDataKey",
                       "sqs.DeleteMessage", "sqs.ReceiveMessage", "secretsmanager.GetSecretValue", "sns.Publish",
                       "logs.PutLogEvents", "lambda.Invoke")
        print("per accepted visit, AWS requests by the stack (LocalStack's log minus this process's "
              f"{sum(mine.values())} calls): "
              + ", ".join(f"{op} {functions_only.get(op, 0) / accepted_n:.2f}" for op in interesting
                          if functions_only.get(op)))
        others = {op: n for op, n in functions_only.items() if op not in interesting}
        print(f"  other requests: {dict(sorted(others.items(), key=lambda kv: -kv[1])[:12])}")
        print(f"  refused: {dict(sorted(refused.items(), key=lambda kv: -kv[1])[:8])}")
    cpu = Counter(sampler.used)
    # Whatever else kept the machine busy (another LocalStack, a CI run, workers that ended between two samples).
    cpu["not this run's processes (or not sampled)"] = max(0.0, sampler.busy_seconds() - sum(cpu.values()))
    total_cpu = sum(cpu.values())
    print(f"CPU over the run ({run_end - run_start:.0f} s on {os.cpu_count()} cores, machine busy "
          f"{sampler.busy_share():.0%}): " + ", ".join(f"{g} {s:.0f} s ({s / total_cpu:.0%})"
                                                    for g, s in sorted(cpu.items(), key=lambda kv: -kv[1])))
    print(f"receipt keys written more than once: {rewritten} (with different content: {different}; files uploaded "
          f"twice, their second receipt a replay's: {replayed}); queues at the "
          f"stop (waiting, in flight): {queues}; visits stored of files without a receipt yet "
          f"{sum(1 for v in versions if v not in accepted_visits)}")
    # The report's distinct citizens are its marker partitions counted: each must hold exactly the citizens the
    # delivered visits name (a run stopped at its time limit may hold markers of visits still PENDING).
    print(f"distinct citizens per province and month: the report counts {citizens_reported} markers, the delivered "
          f"visits name {citizens_recorded} (exact: {'yes' if citizens_reported == citizens_recorded else 'NO'})")
    print(f"lost: files without a receipt {len(no_receipt)}, accepted visits not settled {unsettled}, delivered but "
          f"not in VNeID {missing_in_vneid}; duplicated: visits in two books {in_two_books}, entries stored beyond "
          f"the visits {stored_beyond}, receipts rewritten differently {different}")
    if accepted_n:
        usage = bill.measure(visits=accepted_n, files=len(uploads), meter=meter, invocations=logs["invocations"],
                             emulator_billed_s=dict(logs["billed"]), custom_metrics=len(logs["series"]),
                             visit_attempts=bill.visit_attempts(logs["metrics"].get("deliver", {})))
        print("\n".join(bill.render(usage, bill.bill(usage))))
    print(f"lost {lost} duplicated {duplicated}")


def settled_rate(progress: list[tuple[float, int, int, int]]) -> str:
    """The best settle rate over any minute of the run, from the polled counters."""
    best = 0.0
    for i, (at, _, _, settled) in enumerate(progress):
        for later_at, _, _, later in progress[i + 1:]:
            if later_at - at >= 60:
                best = max(best, (later - settled) / (later_at - at))
                break
    return f"best minute {best:.2f} visits/s settled"


def refused_matching(refused: Counter[str], text: str) -> int:
    return sum(n for key, n in refused.items() if text in key)


def day_counters(ddb: Any, outputs: dict[str, str], codes: list[str], since: float) -> dict[str, int]:
    """Today's (and, across midnight, yesterday's) counts of the run's facilities, added up as the report counts
    them: the counter items, the files and the delivered visits."""
    from healthbook.aws.reports import DynamoCounters

    counters = DynamoCounters(ddb, outputs["AggregatesTableName"], submissions_table=outputs["SubmissionsTableName"],
                              visits_table=outputs["VisitsTableName"], workers=1)
    days = {day(datetime.fromtimestamp(since, UTC)), day(datetime.now(UTC))}
    total: Counter[str] = Counter()
    for code in codes:
        for period in days:
            total.update(counters.period(facility_scope(code), period))
    return dict(total)


def distinct_citizens(ddb: Any, table: str, versions: dict[str, dict[str, str]]) -> tuple[int, int]:
    """Distinct citizens per province and Vietnam month: from the delivered visits, and as the report counts them
    (the province's month marker partition, DynamoCounters.count_many)."""
    from healthbook.aws.reports import DynamoCounters
    from healthbook.reports.aggregates import citizen_markers
    from healthbook.reports.build import MarkerRange

    named: dict[str, set[str]] = defaultdict(set)
    for visit_id, item in versions.items():
        if item["status"] != "DELIVERED" or not item.get("citizen_key"):
            continue
        facility = visit_id.split("#", 1)[0]
        at = datetime.fromisoformat(item["delivered_at"].replace("Z", "+00:00"))
        markers = citizen_markers(item["citizen_key"], at, facility=facility,
                                  province=item.get("province") or facility[:2], district=None)
        province_month = next(m.scope for m in markers if m.scope.startswith("P") and "#M#" in m.scope)
        named[province_month].add(item["citizen_key"])
    partitions = sorted(named)
    counted = DynamoCounters(ddb, table).count_many([MarkerRange(p) for p in partitions])
    return sum(len(named[p]) for p in partitions), sum(counted)


def latest_versions(ddb: Any, table: str) -> dict[str, dict[str, str]]:
    """visit_id -> its newest version's status, citizen, delivered_at, province (a Scan: once, at the end)."""
    newest: dict[str, dict[str, str]] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ProjectionExpression":
                              "visit_id, version, #s, citizen_key, delivered_at, province",
                              "ExpressionAttributeNames": {"#s": "status"}}
    while True:
        page = ddb.scan(**kwargs)
        for item in page["Items"]:
            plain = {k: next(iter(v.values())) for k, v in item.items()}
            if not is_version_key(plain["version"]):
                continue
            current = newest.get(plain["visit_id"])
            if current is None or plain["version"] > current["version"]:
                newest[plain["visit_id"]] = plain
        if "LastEvaluatedKey" not in page:
            return newest
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def receipt_versions(s3: Any, bucket: str, uploads: dict[str, Upload], inbox_bucket: str) -> tuple[int, int, int]:
    """Receipt keys with more than one version; of those the ones whose versions differ in content (the differing
    top-level fields are printed, never their values); and, not among them, the files the inbox holds more than
    once: an upload sent again (a client's retry under load) is a second S3 version of the same bytes, a replay
    that gets its own receipt by design (I503, docs/ingest.md), not a duplicate."""
    from healthbook.signing.receipt import receipt_codes
    from healthbook_dev.aws.upload import inbox_key

    versions: dict[str, list[str]] = defaultdict(list)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="receipts/"):
        for version in page.get("Versions", []):
            if version["Key"] in uploads:
                versions[version["Key"]].append(version["VersionId"])
    rewritten = different = replayed = 0
    for key, ids in versions.items():
        if len(ids) < 2:
            continue
        rewritten += 1
        documents = [json.loads(s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)["Body"].read())
                     for version_id in ids]
        fields = sorted({name for document in documents for name in document if name not in RECEIPT_VOLATILE
                         and any(other.get(name) != document.get(name) for other in documents)})
        if not fields:
            continue
        upload = uploads[key]
        sent = s3.list_object_versions(Bucket=inbox_bucket, Prefix=inbox_key(upload.facility, upload.path))
        uploaded_twice = len(sent.get("Versions", [])) > 1
        if uploaded_twice and any("I503" in receipt_codes(document)[0] for document in documents):
            replayed += 1
            print(f"receipt {key}: the file was uploaded {len(sent['Versions'])} times; a replay (I503)", flush=True)
            continue
        different += 1
        print(f"receipt {key}: {len(ids)} versions differ in {fields}", flush=True)
    return rewritten, different, replayed


def keep_worker_logs(endpoint: str, show: Any) -> None:
    """Every Lambda worker's log (START, the function's lines, REPORT; a worker killed at its timeout has a START and
    no REPORT) copied to .bench-cache/load-logs/<time>/ before the stack's deletion stops the workers and takes
    their folders: the evidence of a run that did not end clean."""
    import shutil

    workers = state_dir(endpoint) / "tmp" / "lambda-workers"
    target = REPO / ".bench-cache" / "load-logs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = sorted(workers.glob("*/worker.log")) if workers.is_dir() else []
    for log in logs:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target / f"{log.parent.name}.log")
    if logs:
        show(f"worker logs kept: {len(logs)} in {target.relative_to(REPO)}")


def cleanup(aws: Clients, outputs: dict[str, str], show: Any) -> None:
    """Empty the stack's buckets (every version) and delete the stack."""
    s3 = aws("s3")
    for name, bucket in outputs.items():
        if not name.endswith("BucketName"):
            continue
        try:
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                          for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                for start in range(0, len(doomed), 1000):
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start:start + 1000], "Quiet": True})
        except Exception as exc:  # a bucket already gone
            show(f"clean-up: {bucket}: {type(exc).__name__}")
    cloudformation = aws("cloudformation")
    cloudformation.delete_stack(StackName=STACK)
    try:
        cloudformation.get_waiter("stack_delete_complete").wait(StackName=STACK,
                                                                 WaiterConfig={"Delay": 5, "MaxAttempts": 60})
        show(f"clean-up: buckets emptied, stack {STACK} deleted")
    except Exception as exc:
        show(f"clean-up: stack {STACK} not deleted within 300 s ({type(exc).__name__}); buckets emptied")


if __name__ == "__main__":
    main()
