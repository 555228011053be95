"""Sharded report counters and DynamoDB's TransactionConflict (docs/reports.md, docs/faults.md, docs/capacity.md).

The shard key format and reading a period back across its shards (and items written before sharding); the
emulator's conflict model, its cancellation shape and its counts; bounded retries that never count twice; and a
burst of concurrent files and their deliveries in one province on one day, with the model on, whose counts must come
out exact. Since 2026-12-07 neither a file nor a delivery commits a counter (the report counts the submission items
and the delivered visits), so that burst makes no transaction at all; the events that still do (a visit parked for
reconciliation, a breach) show the model and the retries on one facility's day item.
"""

from __future__ import annotations

import importlib.util
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.aws.records import (
    ConflictRetry,
    DynamoRecords,
    TransactionConflicts,
    cancellation_reasons,
    conditional_write,
    counter_update,
)
from healthbook.aws.reports import DynamoCounters, counters_by_period
from healthbook.delivery.model import DeliveredEntry
from healthbook.ingest.model import PENDING, SubmissionRecord, VisitRef
from healthbook.kernel import iso_utc
from healthbook.reports.aggregates import (
    COUNTER_SHARDS,
    CounterUpdate,
    citizen_markers,
    for_reconciliation,
    period_high,
    shard_key,
    unsharded,
)
from healthbook.reports.build import MarkerRange, Place, build_report
from healthbook.reports.model import Period
from healthbook_dev.aws.sandbox import (
    NAMES,
    SerialisedClient,
    create_tables,
    moto_transactions_copy_tables_once,
    transaction_conflicts,
)
from moto import mock_aws

REGION = "ap-southeast-1"
AGGREGATES, VISITS, SUBMISSIONS = NAMES["AGGREGATES_TABLE"], NAMES["VISITS_TABLE"], NAMES["SUBMISSIONS_TABLE"]
AT = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)  # 11:00 in Vietnam, 22 November 2026: the 34 provinces
DAY, MONTH, HALF = "D#2026-11-22", "M#2026-11", "S#2026-H2"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ddb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        create_tables(client, {"AGGREGATES_TABLE": AGGREGATES, "VISITS_TABLE": VISITS})
        yield client


def _put(ddb: Any, scope: str, period: str, **counts: int) -> None:
    ddb.put_item(TableName=AGGREGATES, Item={"scope": {"S": scope}, "period": {"S": period},
                                             **{k: {"N": str(v)} for k, v in counts.items()}})


# --- the key ------------------------------------------------------------------------------------------------

def test_a_shard_is_a_suffix_of_the_period_that_sorts_between_the_period_and_its_high_bound() -> None:
    assert shard_key(DAY, 7) == "D#2026-11-22#s07" and shard_key(MONTH, 0) == "M#2026-11#s00"
    assert unsharded("D#2026-11-22#s07") == DAY and unsharded(DAY) == DAY and unsharded("S#2026-H2#s15") == HALF
    for period, following in ((DAY, "D#2026-11-23"), ("D#2026-11-30", "D#2026-12-01"), (MONTH, "M#2026-12"),
                              (HALF, "S#2027-H1")):
        keys = [shard_key(period, n) for n in range(100)]
        assert all(period < key <= period_high(period) < following for key in keys), period
        assert sorted(keys) == keys  # two digits: shard order is key order
    with pytest.raises(ValueError):
        shard_key(DAY, 100)
    with pytest.raises(ValueError):
        shard_key(DAY, -1)
    with pytest.raises(ValueError):
        ConflictRetry(shards=0)


def test_counter_update_writes_the_shard_it_is_given(ddb: Any) -> None:
    update = CounterUpdate("P34#79", DAY, {"new_citizens": 1, "citizens_visited": 1})
    for shard in (3, 3, 12):
        ddb.transact_write_items(TransactItems=[counter_update(AGGREGATES, update, shard=shard)])
    keys = sorted(i["period"]["S"] for i in ddb.scan(TableName=AGGREGATES)["Items"])
    assert keys == [shard_key(DAY, 3), shard_key(DAY, 12)]
    assert ConflictRetry().shards == COUNTER_SHARDS == 16
    assert {ConflictRetry(shards=4).shard() for _ in range(200)} == {0, 1, 2, 3}


# --- reading --------------------------------------------------------------------------------------------------

def test_a_period_reads_as_the_sum_of_its_shards_and_of_an_item_written_before_sharding(ddb: Any) -> None:
    _put(ddb, "F#79001", "D#2026-11-01", delivered=1)  # written before sharding
    _put(ddb, "F#79001", shard_key("D#2026-11-01", 3), delivered=2, breached=1)
    _put(ddb, "F#79001", shard_key("D#2026-11-30", 15), delivered=4)
    _put(ddb, "F#79001", "D#2026-11-30", delivered=8)
    _put(ddb, "F#79001", shard_key("D#2026-12-01", 0), delivered=16)  # the next month
    _put(ddb, "F#79001", shard_key("D#2026-10-31", 9), delivered=32)  # the month before
    _put(ddb, "F#79001", shard_key(MONTH, 5), citizens=64)  # not a day
    counters = DynamoCounters(ddb, AGGREGATES)
    assert counters.period("F#79001", "D#2026-11-01") == {"delivered": 3, "breached": 1}
    assert counters.period("F#79001", "D#2026-11-30") == {"delivered": 12}
    assert counters.sum("F#79001", "D#2026-11-01", period_high("D#2026-11-30")) == {"delivered": 15, "breached": 1}
    assert counters.period("F#79001", MONTH) == {"citizens": 64}
    by_period = counters_by_period(ddb.scan(TableName=AGGREGATES)["Items"])
    assert by_period[("F#79001", "D#2026-11-01")] == {"delivered": 3, "breached": 1}
    assert by_period[("F#79001", "D#2026-11-30")] == {"delivered": 12}
    assert len(by_period) == 5


def test_the_report_adds_up_every_shard_of_every_day_and_of_the_old_kept_counts(ddb: Any) -> None:
    for shard in range(COUNTER_SHARDS):
        ddb.transact_write_items(TransactItems=[
            counter_update(AGGREGATES, CounterUpdate("F#79001", DAY, {"files_received": 1, "delivered": 1}),
                           shard=shard),
            counter_update(AGGREGATES, CounterUpdate("F#79001", MONTH, {"citizens": 1}), shard=shard),
            counter_update(AGGREGATES, CounterUpdate("P34#79", "D#2026-11-30", {"new_citizens": 2}), shard=shard)])
    _put(ddb, "P34#79", "D#2026-11-02", new_citizens=5)  # an old, unsharded item counts as a shard
    store = DynamoVisitStatus(ddb, visits_table=VISITS, aggregates_table=AGGREGATES)
    for citizen in ("k1", "k2", "k3"):
        store.count_citizen(citizen_markers(citizen, AT, facility="79001", province="79", district=None))
    report = build_report(Period.month_of(AT.date()), [Place("79001", "BV 79001", "79")],
                          DynamoCounters(ddb, AGGREGATES), generated_at=AT)
    (facility,) = report.level("facility")
    (province,) = report.level("province")
    # citizens: the markers, not the old "citizens" counters; coverage: the old counts and the new markers
    assert (facility.current.files_received, facility.current.delivered, facility.current.citizens) == (16, 16, 3)
    assert province.current.citizens == 3 and province.citizens_with_book == 2 * 16 + 5 + 3


# --- the conflict model ---------------------------------------------------------------------------------------

def _add(scope: str, period: str = DAY) -> dict[str, Any]:
    return {"Update": {"TableName": AGGREGATES, "Key": {"scope": {"S": scope}, "period": {"S": period}},
                       "UpdateExpression": "ADD n :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}}


def _event(name: str) -> dict[str, Any]:
    return {"Put": {"TableName": AGGREGATES, "Item": {"scope": {"S": "event"}, "period": {"S": name}},
                    "ConditionExpression": "attribute_not_exists(#p)", "ExpressionAttributeNames": {"#p": "period"}}}


def test_the_model_cancels_a_transaction_that_names_a_held_item_as_dynamodb_does(ddb: Any) -> None:
    # Held for 600 ms from its start: moto's own transaction (it copies the tables) must not use up the window on a
    # slow machine before the second one names the item (a clean-clone CI run met that at 150 ms).
    with transaction_conflicts(hold_ms=600) as model:
        ddb.transact_write_items(TransactItems=[_event("a"), _add("hot")])
        with pytest.raises(ddb.exceptions.TransactionCanceledException) as cancelled:
            ddb.transact_write_items(TransactItems=[_event("b"), _add("cold"), _add("hot")])
        reasons = cancelled.value.response["CancellationReasons"]
        assert [r["Code"] for r in reasons] == ["None", "None", "TransactionConflict"]
        assert cancellation_reasons(cancelled.value) == ["None", "None", "TransactionConflict"]
        assert reasons[2]["Message"] == "Transaction is ongoing for the item"
        ddb.transact_write_items(TransactItems=[_event("c"), _add("cold")])  # other items: not held
        time.sleep(0.65)  # the first transaction is no longer in flight
        ddb.transact_write_items(TransactItems=[_event("b"), _add("hot")])
        assert model.counts == {"transactions": 4, "conflicts": 1, "conflicting_items": 1,
                                "conflicts_by_table": {AGGREGATES: 1}}
    ddb.transact_write_items(TransactItems=[_event("d"), _add("hot")])  # off again: nothing held
    ddb.transact_write_items(TransactItems=[_event("e"), _add("hot")])
    counted = {i["scope"]["S"]: i for i in ddb.scan(TableName=AGGREGATES)["Items"] if i["scope"]["S"] != "event"}
    assert counted["hot"]["n"]["N"] == "4" and counted["cold"]["n"]["N"] == "1"  # the cancelled one wrote nothing


def test_a_conflict_is_retried_a_bounded_number_of_times_then_raised_with_nothing_written(ddb: Any) -> None:
    retry = ConflictRetry(attempts=3, base_seconds=0.001, max_seconds=0.002, shards=1)
    count = CounterUpdate("P34#79", DAY, {"new_citizens": 1})
    with transaction_conflicts(hold_ms=60_000):
        ddb.transact_write_items(TransactItems=[counter_update(AGGREGATES, count, shard=0)])  # holds shard 0
        with pytest.raises(TransactionConflicts):
            conditional_write(ddb, "Put", _event("x")["Put"], counters=AGGREGATES, count=count, retry=retry)
    assert (retry.retried, retry.exhausted) == (2, 1)
    assert ddb.get_item(TableName=AGGREGATES, Key={"scope": {"S": "event"}, "period": {"S": "x"}}).get("Item") is None
    assert DynamoCounters(ddb, AGGREGATES).period("P34#79", DAY) == {"new_citizens": 1}
    # the caller's retry (SQS, Step Functions), once the other transaction is done: counted once, then never again
    assert conditional_write(ddb, "Put", _event("x")["Put"], counters=AGGREGATES, count=count, retry=retry)
    assert not conditional_write(ddb, "Put", _event("x")["Put"], counters=AGGREGATES, count=count, retry=retry)
    assert DynamoCounters(ddb, AGGREGATES).period("P34#79", DAY) == {"new_citizens": 2}


def test_the_runtimes_count_each_retry_as_a_metric(ddb: Any) -> None:
    """conflict_retry (every function's runtime builds its stores with it): CounterConflictRetries per retry."""
    from dataclasses import replace

    from healthbook.aws.runtime_cache import conflict_retry

    class Counted:
        def __init__(self) -> None:
            self.counts: Counter[str] = Counter()

        def count(self, name: str, value: float = 1, **dimensions: str) -> None:
            self.counts[name] += int(value)

        def latency(self, name: str, milliseconds: float, **dimensions: str) -> None:
            raise AssertionError("no latency here")

    metrics = Counted()
    retry = replace(conflict_retry(metrics), attempts=3, base_seconds=0.001, max_seconds=0.002, shards=1)
    count = CounterUpdate("P34#79", DAY, {"new_citizens": 1})
    with transaction_conflicts(hold_ms=60_000):
        ddb.transact_write_items(TransactItems=[counter_update(AGGREGATES, count, shard=0)])
        with pytest.raises(TransactionConflicts):
            conditional_write(ddb, "Put", _event("y")["Put"], counters=AGGREGATES, count=count, retry=retry)
    assert metrics.counts == {"CounterConflictRetries": 2} and retry.retried == 2


def test_markers_make_no_transaction_so_a_held_counter_item_never_stops_them(ddb: Any) -> None:
    store = DynamoVisitStatus(ddb, visits_table=VISITS, aggregates_table=AGGREGATES,
                              conflicts=ConflictRetry(attempts=2, base_seconds=0.001, shards=1))
    markers = citizen_markers("k1", AT, facility="79001", province="79", district=None, commune="26734")
    with transaction_conflicts(hold_ms=60_000) as model:
        ddb.transact_write_items(TransactItems=[  # the province's counter items, held by another transaction
            counter_update(AGGREGATES, CounterUpdate("P34#79", period, {"other": 1}), shard=0)
            for period in (DAY, MONTH, HALF)])
        store.count_citizen(markers)
        store.count_citizen(markers)
        assert model.counts["transactions"] == 1 and model.counts["conflicts"] == 0
    assert store.conflicts.retried == store.conflicts.exhausted == 0
    counters = DynamoCounters(ddb, AGGREGATES)
    assert [counters.count(MarkerRange(m.scope)) for m in markers] == [1] * len(markers)


def _faults_module() -> ModuleType:
    path = REPO / "infra" / "localstack" / "healthbook_localstack" / "faults.py"
    spec = importlib.util.spec_from_file_location("healthbook_faults_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_switchboard_turns_the_model_on_and_records_what_it_cancelled(ddb: Any, tmp_path: Path) -> None:
    from healthbook_dev.aws import sandbox

    faults, moto_transactions = _faults_module(), sandbox._moto_transactions()
    assert moto_transactions is not None
    path = tmp_path / "healthbook-faults.json"
    source = faults.DynamoConflicts(faults.Switchboard(str(path)))
    model = moto_transactions.ConflictModel(rule_source=source.rule, report=source.save)
    uninstall = moto_transactions.install_conflicts(model)
    try:
        ddb.transact_write_items(TransactItems=[_add("hot")])
        ddb.transact_write_items(TransactItems=[_add("hot")])  # no switchboard: no conflicts
        path.write_text(json.dumps({"id": "run-1", "dynamodb": {"conflicts": {
            "hold_ms": 60_000, "tables_prefix": "healthbook-sandbox-", "until": time.time() + 600}}}))
        ddb.transact_write_items(TransactItems=[_add("hot")])
        with pytest.raises(ddb.exceptions.TransactionCanceledException):
            ddb.transact_write_items(TransactItems=[_add("hot")])
    finally:
        uninstall()
    fired = faults.fired(str(path), "run-1")
    assert (fired["dynamodb_conflicts"], fired["dynamodb_transactions_considered"]) == (1, 2)
    assert fired["dynamodb_conflicts_by_table"] == {AGGREGATES: 1}
    assert faults.fired(str(path), "another-run")["dynamodb_conflicts"] == 0


# --- a burst of deliveries in one province on one day -----------------------------------------------------------

FACILITIES = ("79001", "79002", "79003")
COMMUNE = "26734"


@dataclass
class Burst:
    """What a burst did: the model's counts, the in-call retries, and the step retries (Step Functions')."""

    conflicts: dict[str, Any]
    transactions: int
    retried: int
    exhausted: int
    step_retries: int
    seconds: float
    statuses: Counter[str] = field(default_factory=Counter)


def _burst(ddb: Any, *, citizens: int, repeats: int, duplicates: int, shards: int, park: bool = False,
           workers: int = 8, hold_ms: float = 20.0, seed: int = 7) -> tuple[Burst, list[tuple[VisitRef, str, str]]]:
    """Every citizen's first visit, ``repeats`` of them a second visit at another facility, and ``duplicates``
    visits run twice, shuffled over ``workers`` threads: each records its file as ingest does (the submission item)
    and then does what the Deliver step does after VNeID answered (the markers, then the status change) or, with
    ``park``, after the population database found no match (the status change with its counters, one
    transaction), retrying like SQS and Step Functions when a call gives up (TransactionConflicts)."""
    jobs: list[tuple[VisitRef, str, str]] = []
    for n in range(citizens):
        jobs.append((VisitRef(f"{FACILITIES[n % 3]}#V{n:05d}", "v1"), f"citizen-{n:05d}", FACILITIES[n % 3]))
    for n in range(repeats):
        facility = FACILITIES[(n + 1) % 3]
        jobs.append((VisitRef(f"{facility}#R{n:05d}", "v1"), f"citizen-{n:05d}", facility))
    # Here only: moto copies every table for each transaction, and the model's timing tests above hold items 150 ms.
    create_tables(ddb, {"SUBMISSIONS_TABLE": SUBMISSIONS})
    for ref, _, _ in jobs:
        ddb.put_item(TableName=VISITS, Item={"visit_id": {"S": ref.visit_id}, "version": {"S": ref.version},
                                             "status": {"S": PENDING},
                                             "deadline_at": {"S": iso_utc(AT + timedelta(hours=20))}})
    visits = list(jobs)
    jobs += random.Random(seed).sample(visits, duplicates)
    random.Random(seed).shuffle(jobs)
    retry = ConflictRetry(shards=shards)
    step_retries = 0
    lock = threading.Lock()
    with moto_transactions_copy_tables_once(), transaction_conflicts(hold_ms=hold_ms) as model:
        client = SerialisedClient(ddb, model)
        store = DynamoVisitStatus(client, visits_table=VISITS, aggregates_table=AGGREGATES, conflicts=retry)
        files = DynamoRecords(client, submissions_table=SUBMISSIONS, visits_table=VISITS, conflicts=retry)

        def deliver(job: tuple[VisitRef, str, str]) -> None:
            nonlocal step_retries
            ref, citizen, facility = job
            for _ in range(40):
                try:
                    files.put_submission(_file(ref, facility))
                    if park:
                        store.mark_needs_reconciliation(ref, ["UNKNOWN_ID"], AT,
                                                        count=for_reconciliation(facility, AT, ["UNKNOWN_ID"]))
                        return
                    store.count_citizen(citizen_markers(citizen, AT, facility=facility, province="79",
                                                        district=None, commune=COMMUNE))
                    store.mark_delivered(ref, delivered_at=AT, latency_ms=1500, receipt_id=None,
                                         entry=DeliveredEntry("0" * 64, "0" * 64, "0" * 64), citizen_key=citizen)
                    return
                except TransactionConflicts:
                    with lock:
                        step_retries += 1
                    time.sleep(random.uniform(0, 0.05))
            raise AssertionError("a step that never got through")

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(deliver, jobs))
        seconds = time.monotonic() - started
        conflicts = dict(model.counts)
    statuses = Counter(i["status"]["S"] for i in ddb.scan(TableName=VISITS)["Items"])
    return Burst(conflicts, int(conflicts.get("transactions", 0)), retry.retried, retry.exhausted, step_retries,
                 seconds, statuses), visits


def _file(ref: VisitRef, facility: str) -> SubmissionRecord:
    """The one-visit file a visit came in: received 1.5 s before the delivery, the same id when run again."""
    return SubmissionRecord(
        submission_id=f"sub-{ref.visit_id}", facility=facility, received_at=AT - timedelta(seconds=1.5),
        object_key=f"inbox/{facility}/{ref.visit_id}.xml", version_id=None, content_sha256=None, size=100,
        status="ACCEPTED", visits_total=1, visits_accepted=1, error_codes=(), standards=(), receipt_key="r",
        quarantine_key=None, merkle_root=None, signing_key_id="k")


def _counters(ddb: Any) -> DynamoCounters:
    return DynamoCounters(ddb, AGGREGATES, submissions_table=SUBMISSIONS, visits_table=VISITS, workers=1)


def _assert_exact(ddb: Any, visits: list[tuple[VisitRef, str, str]], citizens: int) -> None:
    counters = _counters(ddb)
    assert counters.period("P34#79", DAY) == {}  # distinct citizens have no counter: their markers are counted
    for partition in (f"P34#79#{MONTH}", f"XA#79#{COMMUNE}#{MONTH}", "P34#79#ALL", "P34#79#VISIT"):
        assert counters.count(MarkerRange(partition)) == citizens, partition
    assert counters.count(MarkerRange(f"P34#79#{HALF}", also=(f"P34#79#{MONTH}", "P34#79#M#2026-10"))) == citizens
    assert counters.count(MarkerRange("P34#79#ALL", (DAY, DAY))) == citizens  # every first day is the burst's
    for facility in FACILITIES:
        mine = [(ref, citizen) for ref, citizen, at in visits if at == facility]
        distinct = len({citizen for _, citizen in mine})
        assert counters.count(MarkerRange(f"F#{facility}#{MONTH}")) == distinct, facility
        assert counters.period(f"F#{facility}", DAY) == {
            "files_received": len(mine), "visits_accepted": len(mine), "delivered": len(mine),
            "delivered_in_time": len(mine), "latency#2": len(mine)}, facility  # counted from the items, once each
    assert not [i for i in ddb.scan(TableName=AGGREGATES)["Items"]
                if i["period"]["S"].startswith(DAY)]  # no counter item at all: only markers
    markers = [i for i in ddb.scan(TableName=AGGREGATES)["Items"] if i["period"]["S"].startswith("citizen#")]
    # 5 per citizen, and a month marker more for each other facility a citizen visited
    assert len(markers) == citizens * 5 + len({(c, f) for _, c, f in visits}) - citizens


def test_a_burst_of_files_and_deliveries_in_one_province_counts_exactly_without_a_transaction(ddb: Any) -> None:
    burst, visits = _burst(ddb, citizens=240, repeats=48, duplicates=32, shards=COUNTER_SHARDS, hold_ms=50)
    print(f"\n[files and deliveries] {burst}")
    assert burst.statuses == {"DELIVERED": 288}
    _assert_exact(ddb, visits, 240)
    # Each event is one conditional write of its own item, which the report counts: no transaction, so nothing for
    # the model to cancel, no retry, and the hot items of the burst (a facility's day, the province's month) are
    # gone. Until 2026-12-07 the files' and the deliveries' counters made 2 transactions a visit here.
    assert (burst.transactions, burst.conflicts.get("conflicts", 0), burst.retried, burst.step_retries) == (0, 0, 0, 0)


def test_the_model_makes_an_unsharded_hot_item_a_queue_and_the_counts_stay_exact(ddb: Any) -> None:
    burst, visits = _burst(ddb, citizens=24, repeats=4, duplicates=4, shards=1, park=True, hold_ms=100)
    print(f"\n[shards=1, parked] {burst}")
    assert burst.statuses == {"NEEDS_RECONCILIATION": 28}
    counters = _counters(ddb)
    for facility in FACILITIES:
        mine = len([ref for ref, _, at in visits if at == facility])
        assert counters.period(f"F#{facility}", DAY) == {
            "files_received": mine, "visits_accepted": mine, "needs_reconciliation": mine,
            "reconciliation#UNKNOWN_ID": mine}, facility
    # One shard: a facility's day item is held by most other transactions of the facility in flight (most
    # transactions cancelled, some calls giving up after their 5 attempts). Without the in-call retries and the
    # step retries, counts would be missing: what a burst of counted events must not look like (the 16 shards of
    # COUNTER_SHARDS; until 2026-12-07 every file and delivery was such an event).
    assert burst.transactions == 32 + burst.step_retries + burst.retried
    assert burst.conflicts["conflicts"] > 0.2 * burst.transactions
    assert burst.retried + burst.exhausted == burst.conflicts["conflicts"]
    assert burst.step_retries == burst.exhausted
