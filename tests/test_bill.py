"""The whole bill's inputs and arithmetic (docs/cost.md): LocalStack's capacity meter as DynamoDB charges, the
stopwatch of the in-process handlers, and the pricing of what a run counted."""

from __future__ import annotations

import base64
import importlib.util
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from healthbook_dev import bill
from healthbook_dev.aws.stopwatch import Invocation, Stopwatch
from moto import mock_aws

METERING = Path(__file__).resolve().parents[1] / "infra" / "localstack" / "healthbook_localstack" / "metering.py"
REGION = "ap-southeast-1"


def _metering() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthbook_metering_under_test", METERING)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _context(user_agent: str = "Boto3/1 exec-env/AWS_Lambda_python3.13") -> Any:
    return SimpleNamespace(request=SimpleNamespace(headers={"User-Agent": user_agent}), internal_request_params=None)


@pytest.fixture
def table() -> Any:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "status", "AttributeType": "S"},
                                  {"AttributeName": "kind", "AttributeType": "S"}],
            GlobalSecondaryIndexes=[{"IndexName": "by-status", "KeySchema": [{"AttributeName": "status",
                                                                              "KeyType": "HASH"}],
                                     "Projection": {"ProjectionType": "ALL"}},
                                    {"IndexName": "by-kind", "KeySchema": [{"AttributeName": "kind",
                                                                            "KeyType": "HASH"}],
                                     "Projection": {"ProjectionType": "KEYS_ONLY"}}])
        from moto.dynamodb.models import dynamodb_backends

        yield ddb, dynamodb_backends["123456789012"][REGION]


def _serve(meter: Any, backend: Any, ddb: Any, operation: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """What the DynamoDB dispatch table does around moto: before, the request, after."""
    writes = meter.before(backend, operation, request)
    method = {"PutItem": ddb.put_item, "UpdateItem": ddb.update_item, "TransactWriteItems": ddb.transact_write_items,
              "GetItem": ddb.get_item, "Query": ddb.query, "BatchGetItem": ddb.batch_get_item}[operation]
    response: dict[str, Any] | None = None
    try:
        response = method(**request)
        return response
    finally:  # as the dispatch table: a refused write is charged too
        meter.after(backend, _context(), operation, request, response, writes)


def test_dynamodb_units_as_dynamodb_charges_them(table: Any) -> None:
    ddb, backend = table
    metering = _metering()
    counts = metering.Meter()
    meter = metering.CapacityMeter(counts)
    blob = "x" * 1500  # with the names and the key: a 1.5 KB item, 2 write units
    _serve(meter, backend, ddb, "PutItem", {"TableName": "t", "Item": {"pk": {"S": "a"}, "kind": {"S": "k"},
                                                                       "blob": {"S": blob}}})
    # not in by-status yet (no status); in by-kind with its keys only: 1 unit
    assert _total(counts, "write_units") == 2
    assert _total(counts, "index_write_units") == 1
    # entering by-status: the table's 2 and the index's 2 (the whole item is projected); by-kind's entry is
    # unchanged, so it costs nothing
    _serve(meter, backend, ddb, "UpdateItem", {"TableName": "t", "Key": {"pk": {"S": "a"}},
                                               "UpdateExpression": "SET #s = :s", "ExpressionAttributeNames":
                                                   {"#s": "status"}, "ExpressionAttributeValues": {":s": {"S": "P"}}})
    assert (_total(counts, "write_units"), _total(counts, "index_write_units")) == (4, 3)
    # a transaction writes twice; moving the index key is a delete and a put in the index (2 units each)
    _serve(meter, backend, ddb, "TransactWriteItems", {"TransactItems": [{"Update": {
        "TableName": "t", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET #s = :s",
        "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": {":s": {"S": "D"}}}}]})
    assert (_total(counts, "write_units"), _total(counts, "index_write_units")) == (8, 7)
    # an eventually consistent read of a 1.5 KB item: half a unit; a strong one, a whole unit
    _serve(meter, backend, ddb, "GetItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}})
    _serve(meter, backend, ddb, "GetItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}, "ConsistentRead": True})
    assert _total(counts, "read_units") == 1.5
    # a batch reads each key as a GetItem does: the item found by its size, a missing one a unit all the same
    # (half of each eventually consistent)
    _serve(meter, backend, ddb, "BatchGetItem", {"RequestItems": {"t": {"Keys": [
        {"pk": {"S": "a"}}, {"pk": {"S": "missing"}}, {"pk": {"S": "gone"}}], "ConsistentRead": True}}})
    _serve(meter, backend, ddb, "BatchGetItem", {"RequestItems": {"t": {"Keys": [{"pk": {"S": "none"}}]}}})
    assert _total(counts, "read_units") == 1.5 + 3 + 0.5
    # a refused conditional write is charged as well: the larger of the item before and after, 2 units
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        _serve(meter, backend, ddb, "PutItem", {"TableName": "t", "Item": {"pk": {"S": "a"}},
                                                "ConditionExpression": "attribute_not_exists(pk)"})
    assert _total(counts, "write_units") == 10
    assert _total(counts, "index_write_units") == 7  # nothing changed in an index
    by_operation = {r["operation"]: r["write_units"] + r["index_write_units"]
                    for r in counts.snapshot()["dynamodb_capacity"]}  # the bill names what each cost
    assert by_operation == {"PutItem": 5, "UpdateItem": 4, "TransactWriteItems": 8, "GetItem": 0, "BatchGetItem": 0}


def test_a_binary_value_is_sized_by_its_bytes_not_its_base64(table: Any) -> None:
    ddb, backend = table
    metering = _metering()
    counts = metering.Meter()
    meter = metering.CapacityMeter(counts)
    records = bytes(range(256)) * 3 + b"x" * 190  # 958 bytes: 1 write unit with the key, 1,278 as base64
    _serve(meter, backend, ddb, "PutItem", {"TableName": "t", "Item": {"pk": {"S": "a"}, "r": {"B": records}}})
    assert _total(counts, "write_units") == 1
    assert metering.item_size({"r": {"B": base64.b64encode(records).decode()}}) == 1 + 958
    assert metering.item_size({"r": {"B": records}, "s": {"BS": [b"ab", base64.b64encode(b"c").decode()]},
                               "m": {"M": {"k": {"B": base64.b64encode(b"xyzw").decode()}}},
                               "l": {"L": [{"S": "abc"}, {"N": "1"}]}}) == (
        (1 + 958) + (1 + 3) + (1 + 1 + 4) + (1 + 3 + 2))


def test_the_bytes_dynamodb_stores_follow_each_write_items_and_index_entries(table: Any) -> None:
    ddb, backend = table
    metering = _metering()
    counts = metering.Meter()
    meter = metering.CapacityMeter(counts)
    item = {"pk": {"S": "a"}, "kind": {"S": "k"}, "blob": {"S": "x" * 1500}}
    _serve(meter, backend, ddb, "PutItem", {"TableName": "t", "Item": item})
    entry = {"pk": {"S": "a"}, "kind": {"S": "k"}}  # by-kind projects the keys only
    item_bytes, entry_bytes = metering.item_size(item) + 100, metering.item_size(entry) + 100
    assert _total(counts, "stored_bytes") == item_bytes + entry_bytes
    # entering by-status (ALL): the item grows by the attribute, and by-status holds the whole item
    _serve(meter, backend, ddb, "UpdateItem", {"TableName": "t", "Key": {"pk": {"S": "a"}},
                                               "UpdateExpression": "SET #s = :s", "ExpressionAttributeNames":
                                                   {"#s": "status"}, "ExpressionAttributeValues": {":s": {"S": "P"}}})
    grown = metering.item_size({**item, "status": {"S": "P"}}) + 100
    assert _total(counts, "stored_bytes") == grown + entry_bytes + grown
    # leaving it, and shrinking: what was stored goes
    _serve(meter, backend, ddb, "UpdateItem", {"TableName": "t", "Key": {"pk": {"S": "a"}},
                                               "UpdateExpression": "REMOVE #s, #b",
                                               "ExpressionAttributeNames": {"#s": "status", "#b": "blob"}})
    assert _total(counts, "stored_bytes") == metering.item_size(entry) + 100 + entry_bytes
    # a refused write stores nothing
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        _serve(meter, backend, ddb, "PutItem", {"TableName": "t", "Item": item,
                                                "ConditionExpression": "attribute_not_exists(pk)"})
    assert _total(counts, "stored_bytes") == 2 * entry_bytes


def _total(counts: Any, kind: str) -> float:
    return sum(row[kind] for row in counts.snapshot()["dynamodb_capacity"])


def test_requests_are_counted_by_origin() -> None:
    metering = _metering()
    assert metering.origin_of(_context()) == "function"
    assert metering.origin_of(_context("Boto3/1 md/Botocore")) == "client"
    watcher = SimpleNamespace(request=SimpleNamespace(headers={"x-hb-observer": "1", "User-Agent": "x"}),
                              internal_request_params=None)
    assert metering.origin_of(watcher) == "observer"
    internal = SimpleNamespace(request=SimpleNamespace(headers={}), internal_request_params={
        "service_principal": "lambda"})
    assert metering.origin_of(internal) == "aws:lambda"


def test_log_events_are_counted_as_cloudwatch_logs_ingests_them_not_as_the_request_body() -> None:
    metering = _metering()
    events = [{"timestamp": 1, "message": 'START RequestId: r Version: $LATEST\n'},
              {"timestamp": 2, "message": '{"_aws":{"Metrics":[{"Name":"Ngày"}]},"Ngày":[1.0]}\n'}]
    expected = sum(len(e["message"].encode("utf-8")) + 26 for e in events)
    assert metering.log_event_bytes(events) == expected == 36 + 26 + (52 + 2) + 26  # "à": 2 bytes in UTF-8
    counted = []
    metering.METER = SimpleNamespace(count_request=lambda *args: counted.append(args))

    def answered(service: str, operation: str, body: dict[str, Any]) -> Any:
        return SimpleNamespace(service=SimpleNamespace(service_name=service),
                               operation=SimpleNamespace(name=operation), service_request=body,
                               request=SimpleNamespace(headers={}, content_length=999),
                               internal_request_params={"service_principal": "lambda"})

    metering.count_response(None, answered("logs", "PutLogEvents", {"logGroupName": "g", "logEvents": events}), None)
    metering.count_response(None, answered("sqs", "SendMessage", {"QueueUrl": "q"}), None)
    assert counted == [("logs", "PutLogEvents", "aws:lambda", expected), ("sqs", "SendMessage", "aws:lambda", 999)]


def _usage(**changes: Any) -> bill.Usage:
    profile = bill.FunctionProfile(invocations=2, units=20, own_s=0.4, waits_s=1.6)  # 100 ms per file
    base: dict[str, Any] = {
        "visits": 10, "files": 10, "invocations": {"ingest": 2}, "units": {"ingest": 10},
        "memory_mb": {"ingest": 1024}, "profiles": {"ingest": profile}, "express_executions": 0,
        "capacity": [{"table": "hb-visits", "origin": "function", "read_units": 8.0, "write_units": 16.0,
                      "index_write_units": 0.0, "stored_bytes": 30_000},
                     {"table": "hb-visits", "origin": "observer", "read_units": 1000.0, "write_units": 0.0,
                      "index_write_units": 0.0, "stored_bytes": 0}],
        "requests": [
            {"service": "s3", "operation": "PutObject", "origin": "client", "requests": 10, "request_bytes": 0},
            {"service": "s3", "operation": "PutObject", "origin": "function", "requests": 10, "request_bytes": 0},
            {"service": "s3", "operation": "GetObject", "origin": "function", "requests": 10, "request_bytes": 0},
            {"service": "s3", "operation": "GetObject", "origin": "observer", "requests": 500, "request_bytes": 0},
            {"service": "cloudwatch", "operation": "PutMetricData", "origin": "aws:internal", "requests": 99,
             "request_bytes": 0},
            {"service": "secretsmanager", "operation": "GetSecretValue", "origin": "function", "requests": 4,
             "request_bytes": 0},
            {"service": "logs", "operation": "CreateLogStream", "origin": "aws:internal", "requests": 4,
             "request_bytes": 0},
        ]}
    base.update(changes)
    return bill.Usage(**base)


def test_the_bill_prices_what_was_counted_and_leaves_out_the_rest() -> None:
    usage = _usage()
    lines = {(line.service, line.what.split()[0]): line for line in bill.bill(usage)}
    # two PUTs and one GET per visit; the observer's 500 GETs are not ours
    s3 = lines[("S3", "PUT-class")]
    assert s3.dollars == pytest.approx(20 * bill.S3_PUT_CLASS + 10 * bill.S3_GET_CLASS)
    assert bill.per_million(s3.dollars, 10) == pytest.approx(10.40)
    # Lambda's own metrics are free; four environments here, 0.002 at steady load: secrets scaled down
    assert lines[("CloudWatch", "logs")].dollars == pytest.approx(0.0)
    secrets = lines[("Secrets Manager, SSM", "0.00")]
    assert secrets.dollars == pytest.approx(4 * (2 / 1000 / 4) * bill.SECRETS_MANAGER_CALL)
    # GB-seconds: 10 files x 1 GB x (20 ms of our code, stretched at 1,024 MB to 1769/1024 of it, + 80 ms waiting)
    gb_s = next(line for line in bill.bill(usage) if line.service == "Lambda" and "GB-s" in line.what)
    assert gb_s.dollars == pytest.approx(10 * (0.020 * 1769 / 1024 + 0.080) * bill.LAMBDA_GB_SECOND_ARM)
    dynamo = next(line for line in bill.bill(usage) if line.service == "DynamoDB")
    assert dynamo.dollars == pytest.approx(16 * bill.DYNAMODB_WRU + 8 * bill.DYNAMODB_RRU)
    # what the run left stored, one month at the Standard class's price: 3 KB a visit, $0.70 a million
    kept = lines[("DynamoDB", "storage:")]
    assert kept.dollars == pytest.approx(30_000 / 1024 ** 3 * bill.DYNAMODB_GB_MONTH)
    assert bill.per_million(kept.dollars, 10) == pytest.approx(0.70, abs=0.01)
    rendered = bill.render(usage, bill.bill(usage))
    total = sum(line.dollars for line in bill.bill(usage))
    assert rendered[-1].startswith(f"whole bill per million visits: ${total * 1e6 / 10:.2f}")
    # beside it, not in it: the same units in provisioned capacity (16 writes and 8 reads at half their capacity
    # use 2 x (16 x $0.00065 + 8 x $0.00013) / 3600 for the hour's share they take)
    at_half = 2 * (16 * 0.00065 + 8 * 0.00013) / 3600
    assert bill.provisioned(16, 8, 0.5) == pytest.approx(at_half)
    assert bill.provisioned(16, 8, 0.5, reserved=True) == pytest.approx(at_half * 0.46, abs=at_half * 0.01)
    beside = rendered[-2]
    assert "provisioned, 50% used $" + f"{at_half * 1e5:.2f}" in beside
    assert f"whole bill ${(total - dynamo.dollars + at_half) * 1e5:.2f}" in beside


def test_alarms_are_priced_by_the_metric_a_month_not_by_the_emulators_evaluation() -> None:
    """LocalStack evaluates the template's alarms with DescribeAlarms and GetMetricData calls of its own; CloudWatch
    prices an alarm by its metrics a month, and the template's alarms watch 17 (a metric math alarm, each of its
    MetricStat entries)."""
    from healthbook_dev.template import alarm_metrics

    assert alarm_metrics() == 17
    evaluation = [{"service": "cloudwatch", "operation": operation, "origin": "aws:internal", "requests": n,
                   "request_bytes": 0} for operation, n in (("DescribeAlarms", 3), ("GetMetricData", 9))]
    quiet = {(line.service, line.what.split()[0]): line for line in bill.bill(_usage())}
    usage = _usage(alarm_metrics=17)
    usage.requests = [*usage.requests, *evaluation]
    lines = {(line.service, line.what.split()[0]): line for line in bill.bill(usage)}
    cloudwatch = lines[("CloudWatch", "logs")]
    assert "17 alarm metrics" in cloudwatch.what and "0 API calls" in cloudwatch.what
    assert cloudwatch.dollars - quiet[("CloudWatch", "logs")].dollars == pytest.approx(
        17 * 0.10 * 10 / bill.VISITS_PER_MONTH)


def test_provisioned_capacity_prices_only_the_tables_the_template_switches() -> None:
    """TablesCapacity PROVISIONED switches the template's submissions, visits and idempotency tables; the aggregates
    table stays on demand, so its units stay at the on-demand price in the figure beside the bill."""
    from healthbook_dev.template import provisioned_tables

    assert provisioned_tables() == {"submissions", "visits", "idempotency"}
    row = {"origin": "function", "index_write_units": 0.0, "stored_bytes": 0}
    usage = _usage(capacity=[{**row, "table": "hb-visits", "read_units": 8.0, "write_units": 16.0},
                             {**row, "table": "hb-aggregates", "read_units": 2.0, "write_units": 4.0}])
    assert bill.dynamodb_units(usage) == (20.0, 10.0)
    assert bill.dynamodb_units(usage, ["visits"]) == (16.0, 8.0)
    lines = bill.bill(usage)
    total = sum(line.dollars for line in lines)
    beside = bill.render(usage, lines)[-2]
    assert "the reads and writes of idempotency, submissions, visits," in beside
    at_half = bill.provisioned(16, 8, 0.5)
    whole = total - (16 * bill.DYNAMODB_WRU + 8 * bill.DYNAMODB_RRU) + at_half  # aggregates' units as they were
    assert f"provisioned, 50% used ${at_half * 1e5:.2f}, whole bill ${whole * 1e5:.2f}" in beside


def test_profiles_are_per_unit_of_work_with_the_cold_start_spread() -> None:
    records = [Invocation("ingest", units=10, cpu_s=1.3), Invocation("ingest", units=10, cpu_s=0.3),
               Invocation("ingest", units=5, cpu_s=0.15)]
    records[0].calls_of(records[0].thread)["dynamodb.PutItem"] = 10
    profile = bill.profile_invocations(records)["ingest"]
    assert profile.units == 25
    assert profile.cold_extra_s == pytest.approx(1.0)  # 1.3 s against 10 x the warm 30 ms per file
    assert profile.waits_s == pytest.approx(10 * bill.aws_latency_s("dynamodb.PutItem"))
    warm = (1.75 + profile.waits_s) / 25
    assert profile.billed_s_per_unit() == pytest.approx(warm + 1.0 / bill.INVOCATIONS_PER_COLD_START * 3 / 25)
    # At a quarter of a vCPU's memory our own time (and the cold start) takes four times as long; the waits do not.
    quarter = bill.FULL_VCPU_MB / 4
    assert profile.billed_s_per_unit(quarter) == pytest.approx(
        (1.75 * 4 + profile.waits_s) / 25 + 4.0 / bill.INVOCATIONS_PER_COLD_START * 3 / 25)
    assert profile.billed_s_per_unit(3008) == profile.billed_s_per_unit()  # more than a vCPU does not speed it up


def _spin(seconds: float) -> None:
    """Our code working (CPU), not waiting."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_the_stopwatch_keeps_aws_time_apart() -> None:
    watch = Stopwatch()
    with mock_aws(), watch.installed():
        client = boto3.client("s3", region_name=REGION)
        with watch.invocation("ingest", units=3):
            client.list_buckets()
            _spin(0.02)
            time.sleep(0.05)  # a wait: priced as one, not as our code's time
        client.list_buckets()  # outside an invocation: not counted
    (record,) = watch.invocations
    assert record.units == 3 and record.aws_calls == Counter({"s3.ListBuckets": 1})
    assert 0 < record.aws_s < record.wall_s and 0.019 <= record.own_s < 0.045
    assert bill.waits_s(record) == pytest.approx(bill.aws_latency_s("s3.ListBuckets") + 0.05)


def test_the_stopwatch_follows_an_invocation_into_its_pool_threads_and_their_waits_overlap() -> None:
    """A delivery task runs its visits on threads: each thread's calls are its own, the threads wait at once."""
    watch = Stopwatch()
    with mock_aws(), watch.installed():
        client = boto3.client("s3", region_name=REGION)

        together = threading.Barrier(4, timeout=10)  # four threads, one visit each

        def visit(calls: int) -> None:
            together.wait()
            for _ in range(calls):
                client.list_buckets()
            _spin(0.01)

        with watch.invocation("deliver", units=4), ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(visit, [1, 3, 2, 1]))
            client.list_buckets()  # the invocation's own thread, after its workers
    (record,) = watch.invocations
    assert record.aws_calls == Counter({"s3.ListBuckets": 8}) and record.own_s >= 0.039
    one = bill.aws_latency_s("s3.ListBuckets")
    assert bill.waits_s(record) == pytest.approx(one + 3 * one)  # its own call, then the longest worker's three


def test_a_second_measure_of_the_same_code_reuses_its_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench-e2e's two rounds run the same code: its handlers are timed in process once, not once a round."""
    from healthbook_dev.aws import stopwatch

    def not_again(**_: Any) -> Any:
        raise AssertionError("the in-process demo ran again")

    monkeypatch.setattr(stopwatch, "profile_demo", not_again)
    profiles = {"ingest": bill.FunctionProfile(invocations=2, units=20, own_s=0.4, waits_s=1.6)}
    usage = bill.measure(visits=10, files=10, meter={"requests": [], "dynamodb_capacity": []},
                         invocations={"ingest": 2}, emulator_billed_s={}, custom_metrics=0, profiles=profiles)
    assert usage.profiles is profiles
