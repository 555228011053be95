"""Enrolment on LocalStack: a province's list of 20,000 people through the real workflow, and what it costs per row.

Deploys template.yaml (stack hb-bench, as bench/e2e.py) with the fake VNeID and population services of this
process, and runs in the same LocalStack, one after the other:

* baseline: a no-op Distributed Map over the same canonical CSV (the same ItemReader, ItemBatcher,
  MaxConcurrency and ResultWriter; each child a Pass state), so the time below reads as a multiple of what the
  emulator's Map itself costs;
* the list: uploaded under imports/<province>/enrolment/ as a province would, S3 -> EventBridge -> the Standard
  workflow -> Prepare -> the Distributed Map of Express children calling the batch function (population lookups,
  VNeID writes, the report counters) -> Summarise, until the outcome files are written.

It prints rows per second and the time, each against the baseline, and the dollars per million rows at list
prices (us-east-1, AWS's published prices as of 2025; other regions differ): Step Functions Standard transitions
(the parent's states and one per child execution the Map starts) and Express children (requests and duration),
Lambda requests and GB-seconds (arm64), S3 requests, DynamoDB writes and reads of the report counters.
Durations are the emulator's (2 shared cores), so the Lambda and Express duration terms are upper bounds; the
request and write terms are exact.

Usage: python bench/enrol.py [--people 20000] [--batch-size 100] [--concurrency 10]
       (after `make localstack-up`; `make bench-enrol` does both). Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import uuid
from collections import Counter
from typing import Any

from healthbook.aws.enrolment_runtime import list_id, outcome_keys
from healthbook.enrolment.reader import prepare
from healthbook.enrolment.schema import Kind
from healthbook_dev.demos.stack import Clients, deploy
from healthbook_dev.fakes.population_server import FakePopulationServer
from healthbook_dev.fakes.vneid import FakeVneid
from healthbook_dev.generate.enrolment import enrolment_csv, enrolment_list

STACK, STAGE, PROVINCE = "hb-bench", "test-bench", "01"

# List prices, us-east-1 (docs/cost.md, docs/enrolment.md "On AWS").
STANDARD_PER_TRANSITION = 25.00 / 1_000_000
EXPRESS_PER_REQUEST = 1.00 / 1_000_000
EXPRESS_PER_GB_SECOND = 0.00001667
EXPRESS_GB = 64 / 1024  # a child's state is a batch of rows: the first 64 MB step
LAMBDA_PER_REQUEST = 0.20 / 1_000_000
LAMBDA_PER_GB_SECOND_ARM = 0.0000133334
S3_PER_PUT_LIST = 0.005 / 1000  # PUT, COPY, POST, LIST
S3_PER_GET = 0.0004 / 1000  # GET, HEAD and the rest (DELETE is free)
DYNAMODB_PER_WRU = 0.625 / 1_000_000  # on demand
DYNAMODB_PER_RRU = 0.125 / 1_000_000
# One participant row written for the first time: count_citizen reads its 3 markers (province BOOK, commune BOOK,
# province "ever": one strongly consistent BatchGetItem, 3 RRU) and writes each, kept with its first day, in an
# UpdateItem of its own (1 WRU each; no counter, no transaction: a report counts the markers). A row found unchanged
# only reads.
WRU_PER_NEW_BOOK, RRU_PER_BOOK = 3, 3


def wait(what: str, probe: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def baseline_definition(bucket: str) -> str:
    """The enrolment Map (infra/statemachine/enrolment.asl.json's Rows), its child a Pass state."""
    from healthbook_dev.aws.sandbox import functions_dir

    folder = functions_dir()
    assert folder is not None
    text = (folder.parent / "infra" / "statemachine" / "enrolment.asl.json").read_text(encoding="utf-8")
    rows = json.loads(text.replace("${ImportsBucketName}", bucket))["States"]["Rows"]
    rows["ItemProcessor"]["States"] = {"Batch": {"Type": "Pass", "Result": {"rows": 0}, "End": True}}
    rows.pop("Catch")
    rows["Next"] = "Done"
    return json.dumps({"StartAt": "Rows", "States": {"Rows": rows, "Done": {"Type": "Succeed"}}})


def seconds_of(execution: dict[str, Any]) -> float:
    return float((execution["stopDate"] - execution["startDate"]).total_seconds())


def reports(logs: Any, group: str, since_ms: int) -> tuple[int, float]:
    """(invocations, GB-seconds billed) from a function's REPORT lines since ``since_ms``."""
    count, gb_s = 0, 0.0
    kwargs: dict[str, Any] = {"logGroupName": group, "startTime": since_ms, "filterPattern": "REPORT"}
    while True:
        try:
            page = logs.filter_log_events(**kwargs)
        except logs.exceptions.ResourceNotFoundException:
            return count, gb_s
        for event in page["events"]:
            if not event["message"].startswith("REPORT"):
                continue
            fields = dict(part.split(": ", 1) for part in event["message"].strip().split("\t")[1:] if ": " in part)
            count += 1
            gb_s += float(fields.get("Billed Duration", "0 ms").split()[0]) / 1000 * float(
                fields.get("Memory Size", "512 MB").split()[0]) / 1024
        if "nextToken" not in page:
            return count, gb_s
        kwargs["nextToken"] = page["nextToken"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    args = parser.parse_args()
    aws = Clients(args.endpoint)
    seed = int(time.time()) % 100_000  # new people: their markers start at nothing
    listed = enrolment_list(args.people, seed=seed, unknown_rate=0.02)
    registry = listed.population()
    body = enrolment_csv(listed.rows)

    with FakeVneid.start() as vneid, FakePopulationServer.start(registry) as population:
        started = time.monotonic()
        outputs = deploy(args.endpoint, stack=STACK, stage=STAGE, VneidBaseUrl=vneid.url,
                         PopulationBaseUrl=population.url, EnrolmentBatchSize=str(args.batch_size),
                         EnrolmentMaxConcurrency=str(args.concurrency), VneidRatePerSecond="10000",
                         PopulationRatePerSecond="10000")
        print(f"deployed {STACK} in {time.monotonic() - started:.0f} s")
        aws("secretsmanager").put_secret_value(SecretId=outputs["VneidCredentialsSecretArn"], SecretString=json.dumps(
            {"type": "oauth2", "token_url": vneid.token_url, "client_id": vneid.client_id,
             "client_secret": vneid.client_secret}))
        s3, sfn, bucket = aws("s3"), aws("stepfunctions"), outputs["ImportsBucketName"]

        # Baseline: the same Map over the same canonical CSV, doing nothing in its children.
        canonical = prepare(body, name="list.csv", kind=Kind.ENROLMENT)
        work = f"work/bench-baseline-{uuid.uuid4().hex[:8]}.csv"
        s3.put_object(Bucket=bucket, Key=work, Body=canonical.canonical_csv)
        name = f"healthbook-{STAGE}-enrolment-baseline"
        machines = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
        role = "arn:aws:iam::000000000000:role/bench-enrol-baseline"  # LocalStack does not enforce IAM
        if name in machines:
            sfn.update_state_machine(stateMachineArn=machines[name], definition=baseline_definition(bucket))
            machine = machines[name]
        else:
            machine = sfn.create_state_machine(name=name, definition=baseline_definition(bucket), roleArn=role,
                                               type="STANDARD")["stateMachineArn"]
        run = sfn.start_execution(stateMachineArn=machine, input=json.dumps({
            "work_key": work, "list_id": f"enrolment-{'0' * 20}", "kind": "enrolment", "province": PROVINCE,
            "batch_size": args.batch_size, "max_concurrency": args.concurrency,
            "tolerated_failure_percentage": 0.0}))["executionArn"]
        base = wait("the baseline Map", lambda: (d := sfn.describe_execution(executionArn=run))["status"] != "RUNNING"
                    and d, timeout=1800)
        assert base["status"] == "SUCCEEDED", base
        s3.delete_object(Bucket=bucket, Key=work)
        base_seconds = seconds_of(base)

        # The list, as a province uploads it.
        since_ms = int(time.time() * 1000)
        key = f"imports/{PROVINCE}/enrolment/bench-{uuid.uuid4().hex[:8]}.csv"
        version = s3.put_object(Bucket=bucket, Key=key, Body=body)["VersionId"]
        _, summary_key = outcome_keys(PROVINCE, list_id("enrolment", key, version))

        def done() -> dict[str, Any] | None:
            for execution in sfn.list_executions(stateMachineArn=outputs["EnrolmentStateMachineArn"])["executions"]:
                described = sfn.describe_execution(executionArn=execution["executionArn"])
                if key in described.get("input", "") and described["status"] != "RUNNING":
                    return dict(described)
            return None

        execution = wait(f"the workflow over {key}", done, timeout=3600, interval=2.0)
        assert execution["status"] == "SUCCEEDED", execution
        summary = json.loads(s3.get_object(Bucket=bucket, Key=summary_key)["Body"].read())
        history = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
        logs = aws("logs")
        functions = {step: reports(logs, f"/aws/lambda/healthbook-{STAGE}-enrolment-{step}", since_ms)
                     for step in ("prepare", "batch", "summarise")}

    rows = int(summary["rows"])
    seconds = seconds_of(execution)
    by_outcome = Counter({k: v for k, v in summary["by_outcome"].items() if v})
    children = math.ceil(int(summary.get("rows", rows)) / args.batch_size)
    parent_states = sum(1 for e in history if e["type"].endswith("StateEntered"))
    transitions = parent_states + children  # one per child execution the Distributed Map starts
    batch_calls, batch_gb_s = functions["batch"]
    invocations = sum(n for n, _ in functions.values())
    gb_s = sum(g for _, g in functions.values())
    # Express children: as long as their task (billed Lambda time, the emulator's), 64 MB.
    child_seconds = batch_gb_s / (512 / 1024) / max(batch_calls, 1)
    # S3 requests per list: upload PUT; Prepare HEAD, GET, 2 PUT; ItemReader GET; ResultWriter PUT of the
    # result file(s) and the manifest; Summarise LIST, GET manifest, GET result file(s), HEAD and GET problems,
    # 2 PUT, 4 LIST versions, 4 DELETE (free). Result files: one per status present, here SUCCEEDED.
    puts, gets = 1 + 2 + 2 + 2 + 1 + 4, 2 + 1 + 1 + 1 + 2
    written = by_outcome["created"] + by_outcome["updated"]
    wru = WRU_PER_NEW_BOOK * by_outcome["created"]
    rru = RRU_PER_BOOK * (by_outcome["created"] + by_outcome["updated"] + by_outcome["unchanged"])
    per_million = 1_000_000 / rows
    cost = {
        "Step Functions Standard (parent states + 1 per child)": transitions * STANDARD_PER_TRANSITION,
        "Step Functions Express children (requests)": children * EXPRESS_PER_REQUEST,
        "Step Functions Express children (duration, 64 MB)": children * child_seconds * EXPRESS_GB
        * EXPRESS_PER_GB_SECOND,
        "Lambda requests": invocations * LAMBDA_PER_REQUEST,
        "Lambda GB-seconds (arm64, billed here)": gb_s * LAMBDA_PER_GB_SECOND_ARM,
        "S3 requests": puts * S3_PER_PUT_LIST + gets * S3_PER_GET,
        "DynamoDB markers (on demand)": wru * DYNAMODB_PER_WRU + rru * DYNAMODB_PER_RRU,
    }
    print(f"\n{rows} rows ({dict(by_outcome)}), batches of {args.batch_size}, {args.concurrency} at once "
          f"(LocalStack {args.endpoint}, everything on this machine)")
    print(f"baseline: a no-op Distributed Map over the same CSV   {base_seconds:.1f} s   "
          f"{rows / base_seconds:.0f} rows/s   (= 1.0)")
    print(f"the list: upload -> outcome files                    {seconds:.1f} s   {rows / seconds:.0f} rows/s   "
          f"= {seconds / base_seconds:.1f}x the baseline's time")
    print(f"child executions {children}, parent states {parent_states}, Lambda invocations {invocations} "
          f"({functions['batch'][0]} batches), billed {gb_s:.0f} GB-s, rows written to VNeID {written}")
    print("$ per million rows (us-east-1 list prices, 2025):")
    for item, dollars in cost.items():
        print(f"  {item:<58} ${dollars * per_million:8.2f}")
    print(f"  {'total':<58} ${sum(cost.values()) * per_million:8.2f}")
    print(f"  {'  of which orchestration (Step Functions)':<58} "
          f"${sum(v for k, v in cost.items() if k.startswith('Step')) * per_million:8.2f}")


if __name__ == "__main__":
    main()
