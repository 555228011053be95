"""The whole bill per million visits, at list prices, from what a run counted (docs/cost.md).

Inputs, each from where it can be measured honestly:

* **requests by service and operation**, DynamoDB's read and write units and the bytes it stores, from LocalStack's
  meter
  (``infra/localstack/healthbook_localstack/metering.py``): what our functions, the facilities' uploads and the AWS
  services acting for us (S3 notifying SQS, Lambda polling SQS and writing logs, Step Functions invoking tasks)
  asked for. A benchmark's own polling marks itself (``healthbook_dev.aws.metering.observer``) and is left out;
* **Lambda invocations** from the functions' REPORT lines in that run;
* **Lambda durations** from our own code timed in process (``healthbook_dev.aws.stopwatch``, ``lambda_profile``):
  the time moto and the local fakes took is taken out and replaced by a stated latency per AWS call and per HTTP
  call (``AWS_LATENCY_MS``, ``HTTP_LATENCY_MS``). The emulator's billed milliseconds are kept beside it, labelled:
  they describe two shared cores running LocalStack, every worker and the benchmark.

Prices: AWS list prices, us-east-1 (the reference region of docs/cost.md), as published on 2026-12-06. The
Singapore region (ap-southeast-1), nearest to Vietnam, is dearer for some services (docs/cost.md says which).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from healthbook_dev.aws.metering import TASK_FUNCTIONS
from healthbook_dev.aws.stopwatch import HTTP, MAIN_THREAD, Invocation

REGION, PRICE_DATE = "us-east-1", "2026-12-06"
MILLION = 1_000_000

# --- list prices (us-east-1) --------------------------------------------------------------------------------------
S3_PUT_CLASS = 0.005 / 1000  # PUT, COPY, POST, LIST
S3_GET_CLASS = 0.0004 / 1000  # GET, HEAD and the rest
S3_STANDARD_GB_MONTH = 0.023
SQS_REQUEST = 0.40 / MILLION  # standard queue, per 64 KB chunk
LAMBDA_REQUEST = 0.20 / MILLION
LAMBDA_GB_SECOND_ARM = 0.0000133334
EXPRESS_EXECUTION = 1.00 / MILLION
EXPRESS_GB_SECOND = 0.00001667
EXPRESS_GB = 64 / 1024  # billed in 64 MB steps; a workflow that passes keys stays in the first
EXPRESS_MIN_SECONDS = 0.1
STANDARD_TRANSITION = 25.00 / MILLION
DYNAMODB_WRU = 0.625 / MILLION  # on-demand, since 2024-11-01
DYNAMODB_RRU = 0.125 / MILLION
DYNAMODB_GB_MONTH = 0.25  # Standard table class (Standard-IA: $0.10, and its reads and writes 25 % dearer)
# Provisioned capacity, not what the template deploys (docs/cost.md, *Decision*): priced beside the bill only.
DYNAMODB_WCU_HOUR = 0.00065
DYNAMODB_RCU_HOUR = 0.00013
DYNAMODB_RESERVED_1Y = (150 / 8760 + 0.0128) / 100 / DYNAMODB_WCU_HOUR  # 100 WCU: $150 upfront, $0.0128 an hour
KMS_SYMMETRIC = 0.03 / 10_000
KMS_ASYMMETRIC = 0.15 / 10_000  # "asymmetric requests except RSA 2048": Sign and GetPublicKey with an ECC key
SECRETS_MANAGER_CALL = 0.05 / 10_000
CLOUDWATCH_LOGS_GB = 0.50  # ingestion (standard class)
CLOUDWATCH_METRIC_MONTH = 0.30  # per custom metric (EMF included), first 10,000
CLOUDWATCH_API = 0.01 / 1000  # PutMetricData, GetMetricData...
CLOUDWATCH_ALARM_METRIC_MONTH = 0.10  # per metric of a standard-resolution alarm
XRAY_TRACE = 5.00 / MILLION  # recorded
SNS_PUBLISH = 0.50 / MILLION
API_GATEWAY_REST = 3.50 / MILLION

# National volume, to spread what is billed per month (custom metrics) over the visits of a month.
VISITS_PER_MONTH = 15_000_000  # 180 million a year (docs/capacity.md)
# X-Ray's default rule: the first request each second, then 5 %; at the national average of 14 files a second.
XRAY_SAMPLED = (1 + 0.05 * (14 - 1)) / 14
# A cold start per this many invocations: warm environments are reused at steady national load (an estimate: the
# emulator cannot give Lambda's cold-start rate).
INVOCATIONS_PER_COLD_START = 1000

# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html). Our code is timed on one full core
# here, so below that memory its own time stretches by this ratio; waiting on AWS and HTTP does not.
FULL_VCPU_MB = 1769

# Latency our functions wait for, per call, on AWS (stated, not measured here: moto answers in process).
AWS_LATENCY_MS: dict[str, float] = {
    "dynamodb": 6, "dynamodb.TransactWriteItems": 15, "dynamodb.TransactGetItems": 10, "dynamodb.Query": 8,
    "s3": 20, "s3.PutObject": 30, "s3.CopyObject": 40, "kms.Sign": 20, "secretsmanager": 15, "ssm": 10,
    "stepfunctions.StartExecution": 25, "sqs": 10, "sns": 15, "cloudwatch": 10,
}
HTTP_LATENCY_MS = 120.0  # VNeID and the population service, one attempt (assumed; docs/vneid-contract.md)
DEFAULT_AWS_LATENCY_MS = 10.0

S3_PUT_OPERATIONS = frozenset({"PutObject", "CopyObject", "PostObject", "ListObjects", "ListObjectsV2",
                               "ListObjectVersions", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
                               "CompleteMultipartUpload", "PutObjectTagging", "PutObjectAcl",
                               "PutObjectRetention", "PutObjectLegalHold", "ListBuckets", "RestoreObject"})
S3_FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})
KMS_ASYMMETRIC_OPERATIONS = frozenset({"Sign", "Verify", "GetPublicKey"})
NOT_BILLED_ORIGINS = frozenset({"observer"})
# AWS's own calls that are free: Lambda's metrics, events S3 and CloudFormation publish, role sessions.
# CloudWatch's evaluation of the alarms is priced by the alarm a month (below), not by the calls the emulator makes.
FREE_AWS_CALLS = frozenset({"cloudwatch.PutMetricData", "events.PutEvents", "sts.AssumeRole", "logs.CreateLogGroup",
                            "logs.CreateLogStream", "lambda.Invoke",  # invocations are counted from REPORT lines
                            "cloudwatch.DescribeAlarms", "cloudwatch.GetMetricData"})
# Calls a function makes once per execution environment (a secret, the signing key's public half, a queue's URL):
# LocalStack starts far more environments for a small run than AWS keeps at steady load, so these are scaled to
# one environment per INVOCATIONS_PER_COLD_START invocations.
PER_ENVIRONMENT_CALLS = frozenset({"secretsmanager.GetSecretValue", "kms.GetPublicKey", "ssm.GetParameter",
                                   "sqs.GetQueueUrl"})


def aws_latency_s(call: str) -> float:
    service = call.split(".", 1)[0]
    return AWS_LATENCY_MS.get(call, AWS_LATENCY_MS.get(service, DEFAULT_AWS_LATENCY_MS)) / 1000


@dataclass
class FunctionProfile:
    """One function's invocations timed in process: our code's seconds and the calls it waited for, per unit of
    work (a file for ingest; a visit, or an execution for settle, for the delivery tasks)."""

    invocations: int = 0
    units: int = 0
    own_s: float = 0.0
    waits_s: float = 0.0  # the stated AWS and HTTP latencies of its calls
    cold_extra_s: float = 0.0  # the first invocation beyond a warm one (lazy imports, clients)
    calls: Counter[str] = field(default_factory=Counter)

    def billed_s_per_unit(self, memory_mb: int = FULL_VCPU_MB) -> float:
        """Seconds billed per unit of work at ``memory_mb``: our code's time stretched by the CPU share that memory
        buys (``FULL_VCPU_MB``), the waits as they are, a cold start spread over INVOCATIONS_PER_COLD_START."""
        if not self.units:
            return 0.0
        stretch = max(1.0, FULL_VCPU_MB / memory_mb)
        per_invocation_cold = self.cold_extra_s * stretch / INVOCATIONS_PER_COLD_START
        return (self.own_s * stretch + self.waits_s) / self.units + per_invocation_cold * self.invocations / self.units


def waits_s(record: Invocation) -> float:
    """What an invocation waited: its own thread's waits, then its pool threads' at once (the longest). A thread
    waits a call after another: its AWS calls and HTTP attempts at their stated latencies, and its sleeps."""

    def of(thread: int) -> float:
        calls = record.thread_calls.get(thread, Counter())
        return record.thread_slept_s.get(thread, 0.0) + sum(
            n * (HTTP_LATENCY_MS / 1000 if call == HTTP else aws_latency_s(call)) for call, n in calls.items())

    workers = {*record.thread_calls, *record.thread_slept_s} - {MAIN_THREAD}
    return of(MAIN_THREAD) + max((of(thread) for thread in workers), default=0.0)


def profile_invocations(invocations: Iterable[Any]) -> dict[str, FunctionProfile]:
    """Per function, from ``stopwatch.Invocation`` records (the first of each function is its cold one)."""
    by_function: dict[str, list[Any]] = defaultdict(list)
    for record in invocations:
        by_function[record.function].append(record)
    profiles = {}
    for function, records in by_function.items():
        profile = FunctionProfile(invocations=len(records))
        for record in records:
            profile.units += record.units
            profile.own_s += record.own_s
            profile.waits_s += waits_s(record)
            profile.calls.update(record.aws_calls)
        if len(records) > 1:
            warm = sorted(r.own_s / r.units for r in records[1:])[len(records[1:]) // 2]
            profile.cold_extra_s = max(0.0, records[0].own_s - warm * records[0].units)
        profiles[function] = profile
    return profiles


@dataclass
class Usage:
    """What one run counted, for ``visits`` visits (accepted and settled) in ``files`` files."""

    visits: int
    files: int
    requests: list[dict[str, Any]]  # the meter's "requests"
    capacity: list[dict[str, Any]]  # the meter's "dynamodb_capacity"
    invocations: Mapping[str, int]  # REPORT lines, by function (ingest, deliver, ...)
    units: Mapping[str, int]  # work done, by function: files for ingest, visits for deliver, invocations otherwise
    memory_mb: Mapping[str, int]  # template.yaml's MemorySize, by function
    profiles: Mapping[str, FunctionProfile]  # measured in process
    express_executions: int
    emulator_billed_s: Mapping[str, float] = field(default_factory=dict)  # REPORT lines' Billed Duration sums
    custom_metrics: int = 0  # distinct EMF metric series seen in the logs
    alarm_metrics: int = 0  # the metrics the template's alarms watch


@dataclass
class Line:
    service: str
    what: str
    dollars: float  # for the run's visits


def _billed(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["origin"] not in NOT_BILLED_ORIGINS]


def environments(usage: Usage) -> tuple[int, float]:
    """(execution environments LocalStack started, the number AWS would at steady load for these invocations):
    one log stream per environment."""
    started = sum(r["requests"] for r in usage.requests
                  if r["service"] == "logs" and r["operation"] == "CreateLogStream")
    return started, sum(usage.invocations.values()) / INVOCATIONS_PER_COLD_START


def bill(usage: Usage) -> list[Line]:
    lines: list[Line] = []
    requests = _billed(usage.requests)
    by_service: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # counts, scaled where said
    put_bytes = 0
    log_bytes = 0
    started, steady = environments(usage)
    scale = min(1.0, steady / started) if started else 1.0
    for row in requests:
        call = f"{row['service']}.{row['operation']}"
        if row["origin"].startswith("aws:") and call in FREE_AWS_CALLS:
            continue
        count = row["requests"] * (scale if call in PER_ENVIRONMENT_CALLS else 1.0)
        by_service[row["service"]][row["operation"]] += count
        if row["service"] == "s3" and row["operation"] == "PutObject":
            put_bytes += row["request_bytes"]
        if row["service"] == "logs" and row["operation"] == "PutLogEvents":
            log_bytes += row["request_bytes"]

    s3 = by_service.get("s3", {})
    puts = sum(n for op, n in s3.items() if op in S3_PUT_OPERATIONS)
    gets = sum(n for op, n in s3.items() if op not in S3_PUT_OPERATIONS and op not in S3_FREE)
    detail = ", ".join(f"{op} {n}" for op, n in sorted(s3.items()) if op not in S3_FREE)
    lines.append(Line("S3", f"PUT-class {puts}, GET-class {gets} ({detail})",
                      puts * S3_PUT_CLASS + gets * S3_GET_CLASS))
    lines.append(Line("S3", f"storage: {put_bytes / 1024:.0f} KiB written, one month in Standard",
                      put_bytes / 1024 ** 3 * S3_STANDARD_GB_MONTH))

    sqs = sum(by_service.get("sqs", {}).values())
    lines.append(Line("SQS", f"{sqs:.0f} requests ({_top(by_service.get('sqs'))})", sqs * SQS_REQUEST))

    invocations = sum(usage.invocations.values())
    lines.append(Line("Lambda", f"{invocations} invocations", invocations * LAMBDA_REQUEST))
    gb_s = 0.0
    parts = []
    for function, units in sorted(usage.units.items()):
        profile = usage.profiles.get(function)
        if profile is None or not units:
            continue
        memory_mb = usage.memory_mb.get(function, 512)
        per_unit = profile.billed_s_per_unit(memory_mb)
        gb_s += units * per_unit * memory_mb / 1024
        parts.append(f"{function} {units}x{per_unit * 1000:.0f} ms@{memory_mb} MB")
    lines.append(Line("Lambda", f"{gb_s:.2f} GB-s, our code timed in process ({'; '.join(parts)})",
                      gb_s * LAMBDA_GB_SECOND_ARM))

    executions = usage.express_executions
    task_s = sum(usage.units.get(f, 0) * usage.profiles[f].billed_s_per_unit(usage.memory_mb.get(f, 512))
                 for f in TASK_FUNCTIONS if f in usage.profiles)
    express_s = max(task_s, executions * EXPRESS_MIN_SECONDS)
    lines.append(Line("Step Functions", f"{executions} Express executions, {express_s:.1f} s at 64 MB",
                      executions * EXPRESS_EXECUTION + express_s * EXPRESS_GB * EXPRESS_GB_SECOND))

    writes, reads = dynamodb_units(usage)
    tables: Counter[str] = Counter()
    operations: dict[str, Counter[str]] = defaultdict(Counter)
    for r in _billed(usage.capacity):
        table, units = _table(r), r["write_units"] + r["index_write_units"]
        tables[table] += units
        operations[table][r.get("operation", "?")] += units
    detail = "; ".join(f"{table} {units:.0f}: {_top(operations[table])}"
                       for table, units in tables.most_common(4) if units)
    lines.append(Line("DynamoDB", f"{writes:.0f} write units ({detail}), {reads:.0f} read units",
                      writes * DYNAMODB_WRU + reads * DYNAMODB_RRU))
    # What the run left stored (items and index entries, 100 bytes each more), billed for one month as S3's is.
    kept: Counter[str] = Counter()
    for r in _billed(usage.capacity):
        kept[r["table"].rsplit("-", 1)[-1]] += r["stored_bytes"]
    stored = sum(kept.values())
    detail = ", ".join(f"{table} {size / 1024:.0f}" for table, size in kept.most_common() if size)
    lines.append(Line("DynamoDB", f"storage: {stored / 1024:.0f} KiB kept ({detail}), one month in Standard",
                      max(0, stored) / 1024 ** 3 * DYNAMODB_GB_MONTH))

    kms = by_service.get("kms", {})
    asymmetric = sum(n for op, n in kms.items() if op in KMS_ASYMMETRIC_OPERATIONS)
    symmetric = sum(n for op, n in kms.items() if op not in KMS_ASYMMETRIC_OPERATIONS)
    lines.append(Line("KMS", f"{asymmetric:.0f} asymmetric, {symmetric:.0f} symmetric ({_top(kms)})",
                      asymmetric * KMS_ASYMMETRIC + symmetric * KMS_SYMMETRIC))

    secrets = sum(by_service.get("secretsmanager", {}).values())
    ssm = sum(by_service.get("ssm", {}).values())
    lines.append(Line("Secrets Manager, SSM", f"{secrets:.2f} secret reads, {ssm:.2f} parameter reads (standard: "
                      f"free), once per environment: {started} started here, {steady:.2f} at steady load",
                      secrets * SECRETS_MANAGER_CALL))

    cloudwatch = sum(by_service.get("cloudwatch", {}).values())
    monthly = usage.custom_metrics * CLOUDWATCH_METRIC_MONTH + usage.alarm_metrics * CLOUDWATCH_ALARM_METRIC_MONTH
    metrics_share = monthly * usage.visits / VISITS_PER_MONTH
    lines.append(Line("CloudWatch", f"logs {log_bytes / 1024:.0f} KiB ingested; {usage.custom_metrics} metric series "
                      f"and {usage.alarm_metrics} alarm metrics (a month's price spread over {VISITS_PER_MONTH:,} "
                      f"visits); {cloudwatch:.0f} API calls",
                      log_bytes / 1024 ** 3 * CLOUDWATCH_LOGS_GB + metrics_share + cloudwatch * CLOUDWATCH_API))

    traces = (usage.invocations.get("ingest", 0) + executions) * XRAY_SAMPLED
    lines.append(Line("X-Ray", f"{traces:.1f} traces ({XRAY_SAMPLED:.0%} sampled: 1/s then 5 %, at 14 files/s)",
                      traces * XRAY_TRACE))
    sns = sum(by_service.get("sns", {}).values())
    if sns:
        lines.append(Line("SNS", f"{sns} publishes", sns * SNS_PUBLISH))
    return lines


def dynamodb_units(usage: Usage, tables: Collection[str] | None = None) -> tuple[float, float]:
    """(write units, read units) the run's billed requests consumed, indexes included; only of ``tables`` (by the
    name's last word: ``visits``) when given."""
    billed = [r for r in _billed(usage.capacity) if tables is None or _table(r) in tables]
    return (sum(r["write_units"] + r["index_write_units"] for r in billed), sum(r["read_units"] for r in billed))


def _table(row: Mapping[str, Any]) -> str:
    return str(row["table"]).rsplit("-", 1)[-1]


def provisioned(writes: float, reads: float, utilisation: float, *, reserved: bool = False) -> float:
    """What ``writes`` and ``reads`` would cost in provisioned capacity used at ``utilisation`` on average (a
    capacity unit an hour serves 3,600 units at 100 %), with one-year reserved capacity for all of it or not."""
    hourly = (writes * DYNAMODB_WCU_HOUR + reads * DYNAMODB_RCU_HOUR) / 3600 / utilisation
    return hourly * (DYNAMODB_RESERVED_1Y if reserved else 1.0)


def _top(counts: Mapping[str, float] | None, n: int = 4) -> str:
    if not counts:
        return "-"
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:n]
    return ", ".join(f"{name} {value:.0f}" for name, value in ranked)


# What Deliver counts for each visit of a batch it ran, one metric a visit (healthbook.aws.delivery_runtime.run_batch:
# the domain counts a delivery, the runtime the other outcomes and a failure).
VISIT_OUTCOME_METRICS = ("VisitsDelivered", "DeliveryStepsSkipped", "VisitsSupersededAtVneid",
                         "VisitsNeedingReconciliation", "DeliveryStepFailures")


def visit_attempts(deliver_metrics: Mapping[str, int]) -> int:
    """How many visits Deliver worked on, retries included, from the sums of its EMF metrics."""
    return sum(int(deliver_metrics.get(name, 0)) for name in VISIT_OUTCOME_METRICS)


def measure(*, visits: int, files: int, meter: dict[str, Any], invocations: Mapping[str, int],
            emulator_billed_s: Mapping[str, float], custom_metrics: int, visit_attempts: int = 0,
            profile_visits: int = 60, profiles: Mapping[str, FunctionProfile] | None = None) -> Usage:
    """A run's usage: the meter and the logs as counted, the template's memory, and durations timed in process
    (the in-process demo of ``profile_visits`` visits, run now, unless ``profiles`` of an earlier measure of the
    same code are given). Deliver works on batches of visits and is timed per visit: its units are
    ``visit_attempts`` (``visit_attempts()`` of its metrics), else one a visit."""
    from healthbook_dev.aws.metering import express_executions
    from healthbook_dev.aws.stopwatch import profile_demo
    from healthbook_dev.template import alarm_metrics, function_limits

    if profiles is None:
        profiles = profile_invocations(profile_demo(visits=profile_visits))
    memory = {f: function_limits(f"{f.capitalize()}Function")[0] for f in invocations}
    units = {f: (files if f == "ingest" else n) for f, n in invocations.items()}
    if "deliver" in units:
        units["deliver"] = visit_attempts or visits
    return Usage(visits=visits, files=files, requests=meter["requests"], capacity=meter["dynamodb_capacity"],
                 invocations=invocations, units=units, memory_mb=memory, profiles=profiles,
                 express_executions=express_executions(meter), emulator_billed_s=emulator_billed_s,
                 custom_metrics=custom_metrics, alarm_metrics=alarm_metrics())


def per_million(dollars: float, visits: int) -> float:
    return dollars * MILLION / visits if visits else math.nan


def render(usage: Usage, lines: list[Line]) -> list[str]:
    """The per-service table and, last, the whole bill line."""
    from healthbook_dev.template import provisioned_tables

    out = [f"whole bill, $ per million visits at list prices ({REGION}, {PRICE_DATE}); "
           f"{usage.visits} visits in {usage.files} files:"]
    services: dict[str, float] = defaultdict(float)
    for line in lines:
        services[line.service] += line.dollars
        out.append(f"  {line.service:<22}{per_million(line.dollars, usage.visits):>8.2f}  {line.what}")
    out.append("  by service: " + ", ".join(f"{s} {per_million(d, usage.visits):.2f}"
                                           for s, d in sorted(services.items(), key=lambda i: -i[1])))
    if usage.emulator_billed_s:
        gb_s = sum(seconds * usage.memory_mb.get(f, 512) / 1024 for f, seconds in usage.emulator_billed_s.items())
        out.append(f"  (for scale, not in the bill: the emulator's billed Lambda time, {gb_s:.1f} GB-s, would be "
                   f"${per_million(gb_s * LAMBDA_GB_SECOND_ARM, usage.visits):.2f} per million: LocalStack on two "
                   "shared cores, not our code)")
    total = sum(line.dollars for line in lines)
    switched = sorted(provisioned_tables())
    writes, reads = dynamodb_units(usage, switched)
    on_demand = writes * DYNAMODB_WRU + reads * DYNAMODB_RRU
    if on_demand:
        priced = [(f"provisioned, {u:.0%} used", provisioned(writes, reads, u)) for u in (0.7, 0.5)]
        priced.append(("one-year reserved, 50% used", provisioned(writes, reads, 0.5, reserved=True)))
        out.append("  (not in the bill: with TablesCapacity PROVISIONED, the reads and writes of "
                   f"{', '.join(switched)}, on demand here, priced at provisioned capacity, the other tables' as "
                   "they are: "
                   + "; ".join(f"{label} ${per_million(dollars, usage.visits):.2f}, whole bill "
                               f"${per_million(total - on_demand + dollars, usage.visits):.2f}"
                               for label, dollars in priced)
                   + ". The utilisation is assumed: only a day's traffic on AWS can give it)")
    out.append(f"whole bill per million visits: ${per_million(total, usage.visits):.2f}   (target <= $20.00; "
               "floor: the upload and the receipt, two S3 PUTs, $10.00)")
    return out
