"""The delivery workflow as deployed: infra/statemachine/delivery.asl.json on moto's Step Functions interpreter
(``execute_state_machine``), its task states calling the real handlers of functions/delivery in process, the
real DynamoDB/SNS adapters on moto, and the fake VNeID and population services over HTTP.

Deadlines are seconds here (DEADLINE_SECONDS and friends); the Retry waits of the ASL are compressed tenfold.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.aws.records import DynamoRecords
from healthbook.delivery.model import VisitRef
from healthbook.delivery.service import version_ms
from healthbook.ingest.model import VisitVersion, version_key
from healthbook.ingest.service import pack_records
from healthbook.kernel import citizen_key, iso_utc
from healthbook.projection import dumps, projection_id
from healthbook.reports.aggregates import total
from healthbook.validation import validate_bytes
from healthbook_dev.aws.sandbox import (
    MOTO_CONFIG,
    LambdaContext,
    create_delivery,
    create_tables,
    lambdas_in_process,
    load_function,
)
from healthbook_dev.aws.stopwatch import Stopwatch, timing
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.population_server import FakePopulationServer
from healthbook_dev.fakes.vneid import FakeVneid
from healthbook_dev.generate import Visit, build_visit, submission
from healthbook_dev.generate.visit import set_everywhere
from healthbook_dev.template import template_resources

moto = pytest.importorskip("moto")
# The Map runs its items in threads of this one process, so handlers share Powertools' module-level Metrics and
# one flush can take another's metrics; in Lambda each invocation has its own process.
pytestmark = [pytest.mark.slow,  # moto's Step Functions interpreter with real waits
              pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")]

ROOT = Path(__file__).resolve().parents[1]
REGION = "ap-southeast-1"
PEPPER = "workflow-pepper-0123456789"
VISITS = "healthbook-wf-visits"
MAPPING = ROOT / "layers" / "healthbook" / "healthbook" / "projection" / "mapping.json"
AGGREGATES = "healthbook-wf-aggregates"
TIMING = {"DEADLINE_SECONDS": "12", "SAFETY_MARGIN_SECONDS": "3", "LEASE_SECONDS": "2", "RETRY_BASE_SECONDS": "0.5",
          "RETRY_MAX_SECONDS": "1"}


@dataclass
class World:
    aws: SimpleNamespace
    machine_arn: str
    vneid: FakeVneid
    population: FakePopulationServer
    people: FakePopulation
    calls: list[str]
    inbox: str  # the SQS queue subscribed to the deadline topic

    def visits(self) -> DynamoVisitStatus:
        return DynamoVisitStatus(self.aws.ddb, visits_table=VISITS)

    def run(self, refs: list[VisitRef], name: str) -> dict[str, Any]:
        """One execution, to its end: its status and output."""
        arn = self.aws.sfn.start_execution(stateMachineArn=self.machine_arn, name=name,
                                           input=json.dumps({"visits": [r.to_dict() for r in refs]}))["executionArn"]
        give_up = time.monotonic() + 60
        while True:
            done = self.aws.sfn.describe_execution(executionArn=arn)
            if done["status"] != "RUNNING":
                return {"status": done["status"], "output": json.loads(done.get("output") or "null"),
                        "error": done.get("error")}
            assert time.monotonic() < give_up, "the execution did not finish"
            time.sleep(0.05)

    def item(self, ref: VisitRef) -> dict[str, Any]:
        item = self.aws.ddb.get_item(TableName=VISITS, Key={"visit_id": {"S": ref.visit_id},
                                                            "version": {"S": ref.version}})["Item"]
        return {k: next(iter(v.values())) for k, v in item.items() if k != "records"}

    def notifications(self) -> list[dict[str, Any]]:
        found = []
        for message in self.aws.sqs.receive_message(QueueUrl=self.inbox, MaxNumberOfMessages=10).get("Messages", []):
            found.append(json.loads(json.loads(message["Body"])["Message"]))
        return found

    def counters(self, scope: str = "F#", period: str = "D#") -> dict[str, int]:
        """What the report counts for every scope and period that start so (default: facility days): the counter
        items, every shard, and the delivered visits; never the distinct-citizen markers."""
        from healthbook.aws.reports import counted_by_day, counters_by_period

        summed = counters_by_period(self.aws.ddb.scan(TableName=AGGREGATES)["Items"])
        delivered = counted_by_day(self.aws.ddb.scan(TableName=VISITS)["Items"])
        return total(counts for (of, at), counts in [*summed.items(), *delivered.items()]
                     if of.startswith(scope) and at.startswith(period))

    def markers(self) -> dict[str, int]:
        """The distinct-citizen markers per partition: what a report counts."""
        from healthbook.aws.reports import markers_by_partition

        counted = markers_by_partition(self.aws.ddb.scan(TableName=AGGREGATES)["Items"])
        return {partition: sum(days.values()) for partition, days in counted.items()}

    def sweep(self) -> dict[str, Any]:
        result: dict[str, Any] = load_function("delivery").sweep_handler({}, LambdaContext(function_name="sweep"))
        return result


def _compress_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    monkeypatch.setattr(retrier_decl, "time", SimpleNamespace(sleep=lambda seconds: time.sleep(seconds / 10)))


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION, "POWERTOOLS_TRACE_DISABLED": "true",
                        "POWERTOOLS_METRICS_NAMESPACE": "Healthbook", **TIMING}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _compress_retry_waits(monkeypatch)
    people = FakePopulation()
    with mock_aws(config=MOTO_CONFIG), FakeVneid.start() as vneid, FakePopulationServer.start(people) as population:
        aws = SimpleNamespace(**{name: boto3.client(service) for name, service in (
            ("ddb", "dynamodb"), ("s3", "s3"), ("sfn", "stepfunctions"), ("sns", "sns"), ("sqs", "sqs"),
            ("secrets", "secretsmanager"))})
        create_tables(aws.ddb, {"SUBMISSIONS_TABLE": "healthbook-wf-submissions", "VISITS_TABLE": VISITS,
                                "FACILITIES_TABLE": "healthbook-wf-facilities",
                                "IDEMPOTENCY_TABLE": "healthbook-wf-idempotency", "AGGREGATES_TABLE": AGGREGATES})
        pepper = aws.secrets.create_secret(Name="wf/pepper", SecretString=json.dumps({"pepper": PEPPER}))["ARN"]
        stack = create_delivery("healthbook-wf", visits_table=VISITS, pepper_secret=pepper, vneid_url=vneid.url,
                                population_url=population.url, aggregates_table=AGGREGATES, vneid_credentials={
                                    "type": "oauth2", "token_url": vneid.token_url, "client_id": vneid.client_id,
                                    "client_secret": vneid.client_secret})
        inbox = aws.sqs.create_queue(QueueName="deadline-inbox")["QueueUrl"]
        inbox_arn = aws.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        aws.sns.subscribe(TopicArn=stack.topic_arn, Protocol="sqs", Endpoint=inbox_arn)
        for name, value in {**stack.environment, "VNEID_TIMEOUT_SECONDS": "2"}.items():
            monkeypatch.setenv(name, value)
        module, machine, handlers = load_function("delivery"), stack.machine_arn, stack.handlers
        module.reset()
        with lambdas_in_process(handlers) as calls:
            yield World(aws=aws, machine_arn=machine, vneid=vneid, population=population, people=people, calls=calls,
                        inbox=inbox)
        module.reset()


def _visit(seed: int, scenario: str = "outpatient", *, without_id: bool = False) -> Visit:
    """``without_id``: SO_CCCD left empty (admitted on the insurance card, found by its social-insurance number)."""
    visit = build_visit(random.Random(seed), scenario=scenario)
    if without_id:
        set_everywhere(visit, "SO_CCCD", "")
    return visit


def store(world: World, visit: Visit, *, received: datetime | None = None, known: bool = True,
          lease: timedelta = timedelta(0)) -> VisitRef:
    """Write an accepted visit the way ingest does (DynamoRecords), received ``received`` (default: now)."""
    received = received or datetime.now(UTC).replace(microsecond=0)
    result = validate_bytes(submission(visit))
    assert result.accepted, [i.code for i in result.issues]
    accepted = result.visits[0]
    if known:
        for citizen in FakePopulation.from_visits([visit], mismatch_rate=0.0, unknown_rate=0.0, seed=1):
            world.people.add(citizen)
    sid = hashlib.sha256(f"{accepted.ma_lk}@{received.isoformat()}".encode()).hexdigest()
    version = version_key(received, sid)
    deadline = received + timedelta(seconds=float(TIMING["DEADLINE_SECONDS"]))
    written = VisitVersion(visit_id=f"{visit.facility}#{accepted.ma_lk}", version=version, submission_id=sid,
                           received_at=iso_utc(received), standard=accepted.standard, digest="0" * 64,
                           deadline_at=iso_utc(deadline), citizen_key=citizen_key(PEPPER.encode(), "x"),
                           records=pack_records(accepted), next_attempt_at=iso_utc(received + lease))
    DynamoRecords(world.aws.ddb, submissions_table="healthbook-wf-submissions",
                  visits_table=VISITS).save_visit(written)
    return written.ref


def key_of(world: World, ref: VisitRef) -> str:
    return str(world.item(ref)["citizen_key"])


# --- the fast path -----------------------------------------------------------------------------------------

def test_matched_visits_are_delivered_and_an_unknown_citizen_waits_for_reconciliation(world: World) -> None:
    delivered = [store(world, _visit(1)), store(world, _visit(2, without_id=True))]
    unknown = store(world, _visit(3), known=False)
    run = world.run([*delivered, unknown], "fast-path")
    assert run["status"] == "SUCCEEDED", run
    assert run["output"]["counts"] == {"DELIVERED": 2, "NEEDS_RECONCILIATION": 1}
    for ref in delivered:
        item = world.item(ref)
        assert item["status"] == "DELIVERED" and "next_attempt_at" not in item
        assert int(item["latency_ms"]) >= 0 and item["delivered_at"] >= item["received_at"]
        entries = world.vneid.entries(key_of(world, ref))
        assert [e["entry"]["visit_id"] for e in entries] == [ref.visit_id]
    parked = world.item(unknown)
    reasons = ["UNKNOWN_ID", "UNKNOWN_SOCIAL_INSURANCE"]  # neither the ID nor the card's number is known
    assert parked["status"] == "NEEDS_RECONCILIATION" and parked["reconciliation_reasons"] == reasons
    assert parked["status_shard"].startswith("NEEDS_RECONCILIATION#")
    assert world.vneid.delivery_count == 2
    assert world.notifications() == []
    counters = world.counters()
    assert {k: v for k, v in counters.items() if not k.startswith("latency#")} == {
        "delivered": 2, "delivered_in_time": 2, "needs_reconciliation": 1, "reconciliation#UNKNOWN_ID": 1,
        "reconciliation#UNKNOWN_SOCIAL_INSURANCE": 1}
    assert sum(v for k, v in counters.items() if k.startswith("latency#")) == 2
    assert world.counters("P34#") == {} and world.counters("F#", "M#") == {}  # distinct citizens: markers only
    markers = world.markers()
    for kind in ("ALL", "VISIT"):  # two books, each with a visit (provinces 01 and 79)
        assert sum(n for partition, n in markers.items() if partition.endswith(f"#{kind}")) == 2
    assert sum(n for partition, n in markers.items() if partition.startswith("F#") and "#M#" in partition) == 2


def test_a_second_execution_for_the_same_visits_changes_nothing(world: World) -> None:
    ref = store(world, _visit(4))
    assert world.run([ref], "first")["output"]["counts"] == {"DELIVERED": 1}
    again = world.run([ref], "duplicate-start")
    assert again["output"]["counts"] == {"SKIPPED": 1}
    assert world.vneid.delivery_count == 1 and world.counters()["delivered"] == 1


def test_a_short_vneid_outage_is_ridden_out_by_the_retries(world: World) -> None:
    ref = store(world, _visit(5))
    world.vneid.respond_next(503, times=2)
    run = world.run([ref], "short-outage")
    assert run["output"]["counts"] == {"DELIVERED": 1}
    assert world.calls.count("healthbook-wf-deliver") == 3  # two 503s, then stored
    assert len(world.vneid.entries(key_of(world, ref))) == 1


def test_an_execution_delivers_ten_visits_an_invocation_and_a_retried_batch_stores_each_visit_once(
        world: World) -> None:
    """Batches of TASK_BATCH (docs/cost.md, row 22): twelve visits are two Deliver invocations. A batch with one
    visit refused by a VNeID 503 is retried whole: the visits its first attempt stored are SKIPPED by the retry,
    none is stored twice."""
    refs = [store(world, _visit(100 + n)) for n in range(12)]
    assert world.run(refs, "two-batches")["output"]["counts"] == {"DELIVERED": 12}
    assert world.calls.count("healthbook-wf-deliver") == 2
    more = [store(world, _visit(200 + n)) for n in range(3)]
    world.vneid.respond_next(503, times=1)
    counts = world.run(more, "one-refused")["output"]["counts"]
    assert world.calls.count("healthbook-wf-deliver") == 4  # the batch, then its retry
    assert counts.get("DELIVERED", 0) >= 1 and counts.get("DELIVERED", 0) + counts.get("SKIPPED", 0) == 3, counts
    assert world.vneid.delivery_count == 15
    assert all(world.item(ref)["status"] == "DELIVERED" for ref in refs + more)


def test_a_referral_reaches_vneid_with_its_paper(world: World) -> None:
    ref = store(world, _visit(6, "referral"))
    assert world.run([ref], "referral")["output"]["counts"] == {"DELIVERED": 1}
    entry = world.vneid.entries(key_of(world, ref))[0]["entry"]
    assert entry["referral"], "the referral paper (XML13) is part of the entry"


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def function_statements(logical_id: str) -> list[dict[str, Any]]:
    """The policy statements of one function of template.yaml."""
    policies = template_resources()[logical_id]["Properties"]["Policies"]
    return [statement for policy in policies if isinstance(policy, dict) for statement in policy["Statement"]]


def test_deliver_builds_the_entry_in_memory_and_the_item_keeps_its_digests_not_a_copy(world: World) -> None:
    """No S3 call on the whole path (the hand-off through a projections bucket is gone), and the delivered item
    identifies exactly what VNeID received: its projection id, the SHA-256 of its bytes and of the mapping."""
    ref = store(world, _visit(13))
    watch = Stopwatch()
    with timing(watch):  # the sandbox's Lambdas report each invocation's AWS calls to it
        run = world.run([ref], "in-memory")
    assert run["output"]["counts"] == {"DELIVERED": 1}
    calls: dict[str, Counter[str]] = {}
    for invocation in watch.invocations:
        calls.setdefault(invocation.function, Counter()).update(invocation.aws_calls)
    assert sorted(calls) == ["deliver", "settle"]  # settle: the execution's Summarise
    # the step reads the version and its records (one request), and which version it supersedes: from DynamoDB
    assert calls["deliver"]["dynamodb.BatchGetItem"] >= 1 and calls["deliver"]["dynamodb.Query"] == 1
    assert [call for made in calls.values() for call in made if call.startswith("s3.")] == []
    # Every call each function made is one its policy in template.yaml allows (LocalStack and moto check no IAM).
    for function, made in calls.items():
        granted = {action for statement in function_statements(f"{function.capitalize()}Function")
                   if statement["Effect"] == "Allow" for action in as_list(statement["Action"])}
        # IAM authorises a transaction by each of its items' own actions (PutItem, UpdateItem...), not by name.
        missing = {call for call in made if call.replace(".", ":", 1) not in granted
                   and call not in {"dynamodb.TransactWriteItems", "dynamodb.TransactGetItems"}}
        assert not missing, f"{function} calls what its policy does not grant: {sorted(missing)}"
    (received,) = world.vneid.entries(key_of(world, ref))
    item = world.item(ref)
    assert item["projection_id"] == received["entry"]["projection_id"] == projection_id(ref.visit_id,
                                                                                      version_ms(ref.version))
    assert item["projection_sha256"] == hashlib.sha256(dumps(received["entry"]).encode("utf-8")).hexdigest()
    assert item["mapping_sha256"] == hashlib.sha256(MAPPING.read_bytes()).hexdigest()


# --- resubmission ------------------------------------------------------------------------------------------

def test_a_resubmission_replaces_the_entry_in_vneid(world: World) -> None:
    visit = _visit(7)
    first_at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    first = store(world, visit, received=first_at)
    world.run([first], "original")
    second = store(world, visit, received=first_at + timedelta(seconds=1))
    history = world.item(first)  # the replaced version is history: SUPERSEDED, with when it was delivered
    assert history["status"] == "SUPERSEDED" and history["superseded_by"] == second.version
    assert history["delivered_at"]
    assert world.run([second], "resubmission")["output"]["counts"] == {"DELIVERED": 1}
    entries = world.vneid.entries(key_of(world, second))
    assert len(entries) == 1
    entry = entries[0]["entry"]
    assert entry["version"] == version_ms(second.version)
    assert entry["supersedes"] == projection_id(first.visit_id, version_ms(first.version))


def test_a_version_superseded_before_delivery_is_skipped(world: World) -> None:
    visit = _visit(8)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    old = store(world, visit, received=at)
    new = store(world, visit, received=at + timedelta(seconds=1))
    run = world.run([old, new], "both")
    assert run["output"]["counts"] == {"DELIVERED": 1, "SKIPPED": 1}
    assert world.item(old)["status"] == "SUPERSEDED"
    assert [e["entry"]["version"] for e in world.vneid.entries(key_of(world, new))] == [
        int((at + timedelta(seconds=1)).timestamp() * 1000)]


# --- stragglers, the sweep and the deadline ----------------------------------------------------------------

def test_vneid_down_then_back_before_the_deadline_is_delivered_once_by_the_sweep(world: World) -> None:
    ref = store(world, _visit(9))
    world.vneid.fail("5xx", seconds=3)  # longer than the retries inside one execution (1.4 s at most)
    run = world.run([ref], "outage")
    assert run["output"]["counts"] == {"DEFERRED": 1}
    deferred = world.item(ref)
    assert deferred["status"] == "PENDING" and deferred["last_error"] == "RetryableDeliveryError"
    assert int(deferred["attempts"]) == 1
    give_up = time.monotonic() + 9
    while world.item(ref)["status"] == "PENDING":
        assert time.monotonic() < give_up, "the sweep never delivered it"
        world.sweep()
        _wait_for_executions(world)
        time.sleep(0.3)
    assert world.item(ref)["status"] == "DELIVERED"
    assert len(world.vneid.entries(key_of(world, ref))) == 1
    assert world.notifications() == []


def test_vneid_down_past_the_cutoff_breaches_and_notifies(world: World) -> None:
    ref = store(world, _visit(10))
    world.vneid.fail("5xx", seconds=60)
    give_up = time.monotonic() + 20
    while world.item(ref)["status"] == "PENDING":
        assert time.monotonic() < give_up, "the deadline never escalated"
        world.sweep()
        _wait_for_executions(world)
        time.sleep(0.3)
    item = world.item(ref)
    assert item["status"] == "DEADLINE_BREACHED" and item["status_shard"].startswith("DEADLINE_BREACHED#")
    assert item["breached_at"] < item["deadline_at"]  # escalated at the cutoff, before the deadline itself
    notices = world.notifications()
    assert [n["breached"] for n in notices] == [[ref.visit_id]]
    assert world.vneid.delivery_count == 0 and world.counters() == {"breached": 1}


def test_the_sweep_breaches_a_visit_no_execution_ever_settled(world: World) -> None:
    long_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    ref = store(world, _visit(11), received=long_ago)  # its deadline passed with no workflow at all
    report = world.sweep()
    assert report["breached"] == [ref.visit_id] and report["executions"] == 0
    assert world.item(ref)["status"] == "DEADLINE_BREACHED"
    assert world.notifications()[0]["breached"] == [ref.visit_id]


def test_the_sweep_leaves_leased_visits_alone(world: World) -> None:
    ref = store(world, _visit(12), lease=timedelta(seconds=30))
    assert world.sweep()["claimed"] == 0
    assert world.item(ref)["status"] == "PENDING"


def _wait_for_executions(world: World) -> None:
    give_up = time.monotonic() + 30
    while world.aws.sfn.list_executions(stateMachineArn=world.machine_arn, statusFilter="RUNNING")["executions"]:
        assert time.monotonic() < give_up
        time.sleep(0.05)

