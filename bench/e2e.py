"""End-to-end figures on LocalStack: upload → receipt → VNeID, and what the orchestration costs per visit.

Deploys template.yaml (stack hb-bench) with the fake VNeID and population services of this process, uploads
a batch of signed one-visit files as a facility would, and measures:

* baseline: a no-op round trip through LocalStack in the same run (a Lambda invoke of the sweep with nothing
  due), so the latencies below read as multiples of what the emulator itself costs;
* upload → receipt and receipt → delivered (the visit item's latency_ms, S3 event time to VNeID's 2xx),
  p50/p95, and delivered visits per second over the batch;
* Lambda invocations per visit (from the functions' REPORT lines) and state transitions per visit (the states
  each visit and each execution passes, counted from the ASL's path and the observed invocations);
* dollars per million visits at list prices: the orchestration (Step Functions Express) against the US$5
  target, and the Lambda compute beside it;
* the whole bill (healthbook_dev.bill), twice: for a second round in which the same citizens come back the same
  month (new visits, their distinct-citizen markers already written: the cheapest case), then, last, for the
  first round, each visit its citizen's first (the dearest case, the headline). ``--no-returning`` leaves the
  second round out.

Usage: python bench/e2e.py [--files 60] [--no-returning] [--endpoint URL]  (after `make localstack-up`)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from healthbook.delivery.contracts import TASK_BATCH
from healthbook.signing.xml_signer import sign_submission
from healthbook_dev import bill
from healthbook_dev.aws import metering
from healthbook_dev.aws.lambda_logs import log_events, report_fields, seconds
from healthbook_dev.aws.upload import Destination, upload_file
from healthbook_dev.demos.stack import Clients, deploy, prepare
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.population_server import FakePopulationServer
from healthbook_dev.fakes.vneid import FakeVneid
from healthbook_dev.generate import Visit, build_visit
from healthbook_dev.generate.visit import returning_visit
from healthbook_dev.generate.writer import envelope
from healthbook_dev.pki import FACILITIES, dev_pki

STACK, STAGE, FACILITY = "hb-bench", "test-bench", "01001"
# The visits' lease: short, so that the outbox's lists come back within the run and the sweep's reading of them is
# in the bill (docs/delivery.md, *The outbox*), and longer than the ingest function's 120 s timeout, as in production
# (600 s), so that the sweep finds the invocation that listed them ended and lets them go at the first reading.
LEASE_SECONDS = 130
OUTBOX_WAIT_S = 60  # past the lease, for the queue's delayed messages to come due

# List prices, us-east-1 (docs/cost.md).
EXPRESS_PER_EXECUTION = 1.00 / 1_000_000
EXPRESS_PER_GB_SECOND = 0.00001667
EXPRESS_GB = 64 / 1024  # Express bills memory in 64 MB steps; a workflow passing keys stays in the first
LAMBDA_PER_REQUEST = 0.20 / 1_000_000
LAMBDA_PER_GB_SECOND_ARM = 0.0000133334
STANDARD_PER_TRANSITION = 25.00 / 1_000_000
# States passed: per batch of TASK_BATCH visits Deliver and Delivered; per execution Batches, the Map, Summarise,
# Breaches? and Done (docs/delivery.md).
STATES_PER_BATCH = 2
STATES_PER_EXECUTION = 5
# Batches of an execution delivered at once: the Map's MaxConcurrency.
MAP_CONCURRENCY = int(json.loads((Path(__file__).resolve().parents[1] / "infra" / "statemachine" /
                                  "delivery.asl.json").read_text(encoding="utf-8"))["States"]["Visits"]["MaxConcurrency"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--visits-per-file", type=int, default=1,
                        help="one file, one delivery execution; real HIS exports hold one visit per file")
    parser.add_argument("--seed", type=int, default=None, help="the visits' seed (default: a new one each run)")
    parser.add_argument("--no-returning", dest="returning", action="store_false",
                        help="leave out the second round (the same citizens again, the same month)")
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    args = parser.parse_args()
    aws = Clients(args.endpoint)

    people = FakePopulation()
    with FakeVneid.start() as vneid, FakePopulationServer.start(people) as population, TemporaryDirectory() as tmp:
        started = time.monotonic()
        outputs = deploy(args.endpoint, stack=STACK, stage=STAGE, VneidBaseUrl=vneid.url,
                         PopulationBaseUrl=population.url, LeaseSeconds=str(LEASE_SECONDS))
        print(f"deployed {STACK} in {time.monotonic() - started:.0f} s")
        work = Path(tmp)
        pki = dev_pki(work / "pki")
        prepare(aws, outputs, pki, vneid, facilities={FACILITY: ""})
        certificate = x509.load_pem_x509_certificates(pki[FACILITY].read_bytes())[0]
        key = serialization.load_pem_private_key(pki[f"{FACILITY}-key"].read_bytes(), password=None)
        name, province = FACILITIES[FACILITY]
        lam = aws("lambda")

        # Baseline: LocalStack's own round trip, a warm no-op invoke (nothing is due).
        lam.invoke(FunctionName=outputs["SweepFunctionName"], Payload=b"{}")
        baseline = []
        for _ in range(5):
            t0 = time.perf_counter()
            lam.invoke(FunctionName=outputs["SweepFunctionName"], Payload=b"{}")
            baseline.append(time.perf_counter() - t0)
        noop = statistics.median(baseline)

        # New people and visits every run (the stack and its tables are kept between runs): each visit of the
        # first round is its citizen's first, the dearest case for the distinct-citizen markers, and nothing
        # supersedes an earlier run's visit. The second round brings the same citizens back the same month.
        seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
        print(f"seed {seed}")
        rng = random.Random(seed)
        first_visits = [[build_visit(rng, scenario="outpatient", facility=(FACILITY, name, province))
                         for _ in range(args.visits_per_file)] for _ in range(args.files)]
        for batch in first_visits:
            known = FakePopulation.from_visits(batch, mismatch_rate=0.0, unknown_rate=0.0, seed=1)
            for visit in batch:
                citizen = known.lookup(visit.tables["XML1"][0]["SO_CCCD"])
                assert citizen is not None
                people.add(citizen)

        def signed_files(batches: list[list[Visit]]) -> list[Path]:
            paths = []
            for batch in batches:
                path = work / f"{FACILITY}_bench_{uuid.uuid4().hex[:10]}.xml"
                path.write_bytes(sign_submission(envelope(batch), key, certificate))  # type: ignore[arg-type]
                paths.append(path)
            return paths

        def run(files: list[Path]) -> Round:
            return run_round(args.endpoint, aws, outputs, vneid, files)

        first = run(signed_files(first_visits))
        print_latencies(first, noop, args.visits_per_file, args.endpoint)
        returning = None
        if args.returning:
            again = [[returning_visit(rng, visit, facility=(FACILITY, name, province)) for visit in batch]
                     for batch in first_visits]
            returning = run(signed_files(again))

    headline = first.usage()  # times our code in process once: the same code for both rounds
    if returning is not None:
        print(f"\nthe same citizens again, the same month ({returning.visits} visits: their markers already "
              "written; steady state lies between, docs/cost.md):")
        usage = returning.usage(headline.profiles)
        print("\n".join(bill.render(usage, bill.bill(usage))))
        print(f"(returning round: lost {returning.lost} duplicated {returning.duplicated})")
    print(f"\nthe first visits of new citizens ({first.visits} visits), the headline:")
    print("\n".join(bill.render(headline, bill.bill(headline))))
    rounds = [r for r in (first, returning) if r is not None]
    print(f"lost {sum(r.lost for r in rounds)} duplicated {sum(r.duplicated for r in rounds)}")


@dataclass
class Round:
    """One round of uploads, end to end, and what it used (the meter was reset when it began)."""

    files: list[Path]
    uploaded: dict[str, float]
    receipts: dict[str, float]
    accepted: int  # visits the receipts accept
    delivered: dict[str, dict[str, Any]]
    elapsed: float
    invocations: Counter[str]
    billed_gb_s: dict[str, float]
    meter: dict[str, Any]
    runs: dict[str, int]
    emulator_s: dict[str, float]
    series: int
    sums: dict[str, Counter[str]]
    duplicated: int

    @property
    def visits(self) -> int:
        return len(self.delivered)

    @property
    def lost(self) -> int:
        return len(self.files) - len(self.receipts) + self.accepted - self.visits

    def usage(self, profiles: Mapping[str, bill.FunctionProfile] | None = None) -> bill.Usage:
        return bill.measure(visits=self.visits, files=len(self.files), meter=self.meter, invocations=self.runs,
                            emulator_billed_s=self.emulator_s, custom_metrics=self.series,
                            visit_attempts=bill.visit_attempts(self.sums.get("deliver", {})), profiles=profiles)


def run_round(endpoint: str, aws: Clients, outputs: dict[str, str], vneid: FakeVneid, files: list[Path]) -> Round:
    """Upload ``files`` as the facility would, wait for every receipt and delivery, let the outbox's lists come
    back and sweep once, then read the meter and the logs."""
    s3, watch_s3 = aws("s3"), metering.observer(aws("s3"))
    lam = aws("lambda")
    destination = Destination(inbox_bucket=outputs["InboxBucketName"],
                              receipts_bucket=outputs["ReceiptsBucketName"], kms_key_id=outputs.get("DataKeyArn"))
    run_start_ms = int(time.time() * 1000)
    stored_before = vneid.delivery_count
    metering.reset(endpoint)  # the bill counts from here: the uploads, and all that follows them
    uploaded: dict[str, float] = {}
    t_start = time.monotonic()

    def put(path: Path) -> None:
        upload_file(s3, destination, FACILITY, path)
        uploaded[path.name] = time.monotonic()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, files))
    receipts: dict[str, float] = {}
    ma_lk: dict[str, str] = {}  # visit -> its file
    give_up = time.monotonic() + 300
    while len(receipts) < len(files) and time.monotonic() < give_up:
        for path in files:
            if path.name in receipts:
                continue
            try:
                body = watch_s3.get_object(Bucket=destination.receipts_bucket,
                                           Key=f"receipts/{FACILITY}/{path.name}.receipt.json")["Body"].read()
            except watch_s3.exceptions.NoSuchKey:
                continue
            receipts[path.name] = time.monotonic()
            for entry in json.loads(body)["visits"]:
                if entry["accepted"]:
                    ma_lk[entry["ma_lk"]] = path.name
        time.sleep(0.2)
    ddb = metering.observer(aws("dynamodb"))
    delivered: dict[str, dict[str, Any]] = {}
    while len(delivered) < len(ma_lk) and time.monotonic() < give_up:
        for lk, file_name in ma_lk.items():
            if lk in delivered:
                continue
            items = ddb.query(TableName=outputs["VisitsTableName"], KeyConditionExpression="visit_id = :v",
                              ExpressionAttributeValues={":v": {"S": f"{FACILITY}#{lk}"}})["Items"]
            done = [i for i in items if i.get("status", {}).get("S") == "DELIVERED"]
            if done:
                delivered[lk] = {"latency_ms": int(done[0]["latency_ms"]["N"]), "seen": time.monotonic(),
                                 "file": file_name}
        time.sleep(0.5)
    elapsed = max((d["seen"] for d in delivered.values()), default=time.monotonic()) - t_start

    # The outbox's lists come back once their delay is over: a sweep reads them, as the scheduled one would.
    time.sleep(max(0.0, max(receipts.values(), default=t_start) + LEASE_SECONDS + 2 - time.monotonic()))
    outbox_queue, sqs = outputs["OutboxQueueUrl"], metering.observer(aws("sqs"))
    listed_by = time.monotonic() + OUTBOX_WAIT_S
    while time.monotonic() < listed_by and int(sqs.get_queue_attributes(
            QueueUrl=outbox_queue, AttributeNames=["ApproximateNumberOfMessagesDelayed"])["Attributes"][
            "ApproximateNumberOfMessagesDelayed"]):
        time.sleep(2)
    swept = json.loads(lam.invoke(FunctionName=outputs["SweepFunctionName"], Payload=b"{}")["Payload"].read())
    print(f"outbox: {swept.get('outbox_lists')} lists read by the sweep ({swept.get('outbox_again')} to read "
          f"again), {swept.get('stranded')} visits stranded "
          f"(none expected: the fast path delivered them all)")

    invocations, billed_gb_s = count_invocations(aws("logs"), STAGE, run_start_ms)
    time.sleep(2)  # the last log batches and the receipts' notifications settle before the meter is read
    meter = metering.snapshot(endpoint)
    runs, emulator_s, series, sums = metering.function_logs(aws("logs"), STAGE, run_start_ms)
    stored_beyond = max(0, vneid.delivery_count - stored_before - len(delivered))

    return Round(files=files, uploaded=uploaded, receipts=receipts, accepted=len(ma_lk), delivered=delivered,
                 elapsed=elapsed, invocations=invocations, billed_gb_s=billed_gb_s, meter=meter, runs=runs,
                 emulator_s=emulator_s, series=series, sums=sums, duplicated=stored_beyond)


def print_latencies(measured: Round, noop: float, visits_per_file: int, endpoint: str) -> None:
    """The first round's latencies, invocations and orchestration, against LocalStack's own round trip."""
    visits, receipts, uploaded = measured.visits, measured.receipts, measured.uploaded
    invocations, billed_gb_s, meter = measured.invocations, measured.billed_gb_s, measured.meter
    if not visits:
        sys.exit("nothing was delivered; see the function logs")
    to_receipt = [receipts[n] - uploaded[n] for n in receipts]
    seen = [d["seen"] - uploaded[d["file"]] for d in measured.delivered.values()]  # upload -> seen DELIVERED (polled)
    to_vneid = [d["latency_ms"] / 1000 for d in measured.delivered.values()]
    # StartExecution as the meter counted it (the summary line is INFO, off by default in the delivery functions)
    executions = metering.express_executions(meter) or invocations["settle"]
    task_invocations = sum(invocations[f] for f in metering.TASK_FUNCTIONS)
    # a retried attempt enters the task state again (counted here as a batch)
    transitions = STATES_PER_BATCH * invocations["deliver"] + STATES_PER_EXECUTION * executions
    # An execution lasts about one task's time per wave of MAP_CONCURRENCY batches of TASK_BATCH visits.
    per_visit_path = billed_gb_s["path_seconds"] / visits
    per_task = billed_gb_s["path_seconds"] / max(1, task_invocations)
    per_execution = visits / executions

    def express_cost(visits_per_execution: float) -> float:
        duration = math.ceil(math.ceil(visits_per_execution / TASK_BATCH) / MAP_CONCURRENCY) * per_task
        return 1e6 / visits_per_execution * (EXPRESS_PER_EXECUTION + duration * EXPRESS_GB * EXPRESS_PER_GB_SECOND)

    express, batched = express_cost(per_execution), express_cost(50)
    requests = task_invocations * LAMBDA_PER_REQUEST
    lambda_cost = 1e6 / visits * (requests + billed_gb_s["gb_s"] * LAMBDA_PER_GB_SECOND_ARM)
    standard = 1e6 * transitions / visits * STANDARD_PER_TRANSITION

    print(f"\nfiles {len(measured.files)} x {visits_per_file} visits, receipts {len(receipts)}, "
          f"delivered {visits}  (LocalStack {endpoint})")
    print(f"baseline: no-op Lambda round trip through LocalStack  p50 {noop * 1000:.0f} ms  (= 1.0)")
    print(f"upload -> receipt      p50 {pct(to_receipt, .5):.2f} s  p95 {pct(to_receipt, .95):.2f} s   "
          f"= {pct(to_receipt, .5) / noop:.0f}x / {pct(to_receipt, .95) / noop:.0f}x baseline")
    print(f"receipt -> VNeID (item latency_ms)  p50 {pct(to_vneid, .5):.2f} s  p95 {pct(to_vneid, .95):.2f} s   "
          f"= {pct(to_vneid, .5) / noop:.0f}x / {pct(to_vneid, .95) / noop:.0f}x baseline")
    print(f"upload -> delivered (polled every 0.5 s)  p50 {pct(seen, .5):.2f} s  p95 {pct(seen, .95):.2f} s")
    print(f"throughput: {visits / measured.elapsed:.2f} visits/s delivered over {measured.elapsed:.0f} s "
          "(2 cores, everything local)")
    print(f"Lambda invocations: {dict(sorted(invocations.items()))} -> {task_invocations / visits:.2f} delivery "
          f"tasks per visit, + {invocations['ingest'] / visits:.2f} ingest")
    print(f"state transitions per visit: {transitions / visits:.2f} ({executions} executions); task time per "
          f"visit {per_visit_path * 1000:.0f} ms billed (LocalStack on 2 shared cores: expect far less on AWS)")
    print("$ per million visits (list prices):")
    print(f"  orchestration, Express as run here ({per_execution:.0f} visits per execution): ${express:.2f}   "
          "target <= $5.00")
    print(f"  orchestration, Express at 50 visits per execution:           ${batched:.2f}")
    print(f"  the same transitions on Standard workflows, for scale:        ${standard:.2f}")
    print(f"  Lambda compute for the delivery tasks (arm64, the emulator's billed ms): ${lambda_cost:.2f}")


def count_invocations(logs: Any, stage: str, since_ms: int) -> tuple[Counter[str], dict[str, float]]:
    """REPORT lines per function since ``since_ms``; GB-seconds billed, and the summed task time of the path."""
    counts: Counter[str] = Counter()
    gb_s = 0.0
    path_seconds = 0.0
    for function in metering.PATH_FUNCTIONS:
        for event in log_events(logs, f"/aws/lambda/healthbook-{stage}-{function}", since_ms):
            message = event["message"]
            fields = report_fields(message)
            if fields is None:
                continue
            counts[function] += 1
            billed = seconds(fields, "Billed Duration")
            memory = float(fields.get("Memory Size", "512 MB").split()[0]) / 1024
            if function in metering.TASK_FUNCTIONS:
                gb_s += billed * memory
                path_seconds += billed
    return counts, {"gb_s": gb_s, "path_seconds": path_seconds}


if __name__ == "__main__":
    main()
