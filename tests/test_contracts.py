"""Fakes against what they stand in for: the same cases run on each in-memory fake and on its adapter (moto for
AWS, the fake population server over HTTP for the population client), so a fake used by the fast tests cannot
drift from the production behaviour it pretends to have."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from healthbook.aws.delivery import DynamoSweepLease, DynamoVisitStatus
from healthbook.aws.outbox import LONGEST_DELAY_SECONDS, VISITS_PER_MESSAGE, SqsOutbox
from healthbook.aws.records import DynamoRecords
from healthbook.delivery.model import DEADLINE_BREACHED, DELIVERED, NEEDS_RECONCILIATION, DeliveredEntry, Timing
from healthbook.delivery.service import SweepLease, VisitStatusStore
from healthbook.ingest.model import (
    LATEST,
    PENDING,
    SWEEP_LEASE_KEY,
    VisitRef,
    VisitVersion,
    deadline,
    is_version_key,
    records_version,
    version_key,
)
from healthbook.reconcile import Citizen, PopulationRegistry
from healthbook.reconcile.http import PopulationClient
from healthbook.reports.aggregates import citizen_markers
from healthbook_dev.aws.sandbox import NAMES, REGION, create_tables
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.population_server import FakePopulationServer
from healthbook_dev.fakes.stores import FakeOutbox, FakeStatusStore, FakeSweepLease
from moto import mock_aws

RECEIVED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
NOW = RECEIVED + timedelta(minutes=5)


# --- the sweep's lease ------------------------------------------------------------------------------------------

@pytest.fixture(params=["fake", "dynamodb"])
def sweep_lease(request: pytest.FixtureRequest) -> Iterator[SweepLease]:
    if request.param == "fake":
        yield FakeSweepLease()
        return
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_tables(ddb, NAMES)
        yield DynamoSweepLease(ddb, visits_table=NAMES["VISITS_TABLE"])


def test_one_sweep_holds_the_lease_until_it_frees_it_or_its_time_ends(sweep_lease: SweepLease) -> None:
    until = NOW + timedelta(minutes=2)
    assert sweep_lease.take("run-a", now=NOW, until=until)
    assert not sweep_lease.take("run-b", now=NOW + timedelta(seconds=30), until=until)
    assert not sweep_lease.take("run-a", now=NOW + timedelta(seconds=30), until=until)  # a run is not re-entrant
    sweep_lease.release("run-b")  # not the holder: nothing happens
    assert not sweep_lease.take("run-c", now=NOW + timedelta(seconds=60), until=until)
    sweep_lease.release("run-a")
    assert sweep_lease.take("run-c", now=NOW + timedelta(seconds=61), until=NOW + timedelta(minutes=3))
    # run-c is killed at its timeout and never frees it: the next run takes it once its time has ended
    assert not sweep_lease.take("run-d", now=NOW + timedelta(minutes=3) - timedelta(seconds=1), until=until)
    assert sweep_lease.take("run-d", now=NOW + timedelta(minutes=3), until=NOW + timedelta(minutes=5))
    sweep_lease.release("run-c")  # a late release of an ended holder leaves the new one alone
    assert not sweep_lease.take("run-e", now=NOW + timedelta(minutes=4), until=NOW + timedelta(minutes=6))


def test_a_scan_of_the_visits_table_tells_versions_from_the_pointer_the_records_and_the_lease() -> None:
    version = version_key(RECEIVED, "ab" * 32)
    assert is_version_key(version)
    assert not any(is_version_key(key) for key in (LATEST, records_version(version), SWEEP_LEASE_KEY[1]))


# --- the outbox -------------------------------------------------------------------------------------------------

STORED_BY = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)


@pytest.fixture(params=["fake", "sqs"])
def outbox(request: pytest.FixtureRequest) -> Iterator[FakeOutbox | SqsOutbox]:
    if request.param == "fake":
        yield FakeOutbox()
        return
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        # visible again at once when not let go: the fake's "due until let go" (the stack's queue waits 180 s)
        url = sqs.create_queue(QueueName="outbox", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
        yield SqsOutbox(sqs, queue_url=url)


def test_the_outbox_gives_back_what_it_was_given_until_it_is_let_go(outbox: FakeOutbox | SqsOutbox) -> None:
    window = [_ref(n) for n in range(3)]
    big = [_ref(n) for n in range(100, 100 + VISITS_PER_MESSAGE + 1)]  # more than one SQS message holds
    outbox.hold(window, back_after=timedelta(0), stored_by=STORED_BY)
    outbox.hold(big, back_after=timedelta(0), stored_by=STORED_BY)
    held = outbox.due(10)
    listed = [visit for lists in held for visit in lists.visits]
    assert sorted(map(_key, listed)) == sorted(map(_key, window + big))  # every key, each once
    first = {_key(visit) for visit in held[0].visits}
    outbox.let_go(held[:1])
    rest = outbox.due(10)
    assert {_key(visit) for lists in rest for visit in lists.visits} == set(map(_key, window + big)) - first
    outbox.let_go(rest)
    assert outbox.due(10) == []


def test_a_list_comes_back_after_its_delay_says_when_its_visits_are_stored_by_and_can_be_looked_at_again(
        outbox: FakeOutbox | SqsOutbox) -> None:
    if isinstance(outbox, FakeOutbox):
        outbox.now = STORED_BY
    outbox.hold([_ref(1)], back_after=timedelta(seconds=120), stored_by=STORED_BY)
    assert outbox.due(10) == []  # its delay, the lease
    outbox.hold([_ref(2)], back_after=timedelta(0), stored_by=STORED_BY)
    (held,) = outbox.due(10)
    assert held.visits == (_ref(2),)
    assert held.stored_by is not None and STORED_BY <= held.stored_by <= STORED_BY + timedelta(seconds=1)
    outbox.look_again(held, timedelta(seconds=60))
    assert outbox.due(10) == []  # invisible for the minute asked
    if isinstance(outbox, FakeOutbox):
        outbox.now += timedelta(seconds=60)
        assert [listed.visits for listed in outbox.due(10)] == [(_ref(2),)]


def test_a_list_waits_at_most_what_sqs_allows() -> None:
    """A lease longer than SQS's longest delay (the template refuses one) would wait 15 minutes."""
    from moto.sqs.models import sqs_backends

    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="outbox")["QueueUrl"]
        SqsOutbox(sqs, queue_url=url).hold([_ref(1)], back_after=timedelta(days=24), stored_by=STORED_BY)
        (message,) = sqs_backends["123456789012"][REGION].get_queue("outbox")._messages
        assert round((message.delayed_until - message.sent_timestamp) / 1000) == LONGEST_DELAY_SECONDS == 900


def _key(ref: VisitRef) -> tuple[str, str]:
    return ref.visit_id, ref.version


def test_batch_get_reads_more_keys_than_one_request_may_name() -> None:
    """BatchGetItem takes at most 100 keys: an outbox list holds up to 1,000 visits, read in requests of 100."""
    from healthbook.aws.delivery import batch_get

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_tables(ddb, NAMES)
        table = NAMES["VISITS_TABLE"]
        refs = [_ref(n) for n in range(250)]
        for ref in refs[:240]:
            ddb.put_item(TableName=table, Item={"visit_id": {"S": ref.visit_id}, "version": {"S": ref.version}})
        found = batch_get(ddb, table, {"Keys": [{"visit_id": {"S": r.visit_id}, "version": {"S": r.version}}
                                                for r in refs]}, "visits", consistent=False)
        assert sorted((i["visit_id"]["S"], i["version"]["S"]) for i in found) == sorted(map(_key, refs[:240]))
        assert batch_get(ddb, table, {"Keys": []}, "nothing") == []


# --- the visits' statuses ---------------------------------------------------------------------------------------

@dataclass
class Statuses:
    """One implementation of VisitStatusStore and how to put a PENDING visit version into it."""

    store: VisitStatusStore
    add: Callable[..., None]  # (ref, received, *, indexed=True): stored by ingest, in the status index or not
    markers: Callable[[], dict[tuple[str, str], str | None]]  # distinct-citizen markers written: first day or None
    delivered_entry: Callable[[VisitRef], dict[str, str | None]]  # the entry's id and digests on the version item


def _ref(n: int, received: datetime = RECEIVED) -> VisitRef:
    submission = hashlib.sha256(f"{n}@{received.isoformat()}".encode()).hexdigest()
    return VisitRef(f"01001#MALK{n:04d}", version_key(received, submission))


def _fake_statuses() -> Iterator[Statuses]:
    fake = FakeStatusStore()

    def markers() -> dict[tuple[str, str], str | None]:
        return dict(fake.markers)

    def delivered_entry(ref: VisitRef) -> dict[str, str | None]:
        item = fake.items[ref]
        return {"projection_id": item.projection_id, "projection_sha256": item.projection_sha256,
                "mapping_sha256": item.mapping_sha256}

    def add(ref: VisitRef, received: datetime, *, indexed: bool = True) -> None:
        fake.add(ref, received_at=received, records=b"r", indexed=indexed)

    yield Statuses(fake, add, markers, delivered_entry)


def _dynamo_statuses() -> Iterator[Statuses]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_tables(ddb, NAMES)
        records = DynamoRecords(ddb, submissions_table=NAMES["SUBMISSIONS_TABLE"], visits_table=NAMES["VISITS_TABLE"])

        def add(ref: VisitRef, received: datetime, *, indexed: bool = True) -> None:
            records.save_visit(VisitVersion(
                visit_id=ref.visit_id, version=ref.version, submission_id=ref.version[-16:],
                received_at=ref.version.split("#")[0], standard="4750", digest="00" * 32,
                deadline_at=deadline(received), citizen_key=None, records=b"r", province="01", indexed=indexed))

        def markers() -> dict[tuple[str, str], str | None]:
            items = ddb.scan(TableName=NAMES["AGGREGATES_TABLE"])["Items"]
            assert all(i["period"]["S"].startswith("citizen#") for i in items)  # markers only: no counter
            return {(i["scope"]["S"], i["period"]["S"]): i.get("first_day", {}).get("S") for i in items}

        def delivered_entry(ref: VisitRef) -> dict[str, str | None]:
            item = ddb.get_item(TableName=NAMES["VISITS_TABLE"], Key={"visit_id": {"S": ref.visit_id},
                                                                      "version": {"S": ref.version}})["Item"]
            names = ("projection_id", "projection_sha256", "mapping_sha256")
            return {name: item[name]["S"] if name in item else None for name in names}

        yield Statuses(DynamoVisitStatus(ddb, visits_table=NAMES["VISITS_TABLE"],
                                         aggregates_table=NAMES["AGGREGATES_TABLE"]), add, markers, delivered_entry)


@pytest.fixture(params=["fake", "dynamodb"])
def statuses(request: pytest.FixtureRequest) -> Iterator[Statuses]:
    yield from (_fake_statuses() if request.param == "fake" else _dynamo_statuses())


def test_a_stored_version_loads_pending_with_its_times(statuses: Statuses) -> None:
    ref = _ref(1)
    assert statuses.store.load(ref) is None
    statuses.add(ref, RECEIVED)
    visit = statuses.store.load(ref, with_records=True)
    assert visit is not None and visit.status == PENDING and visit.attempts == 0
    assert (visit.received_at, visit.deadline_at) == (RECEIVED, RECEIVED + Timing().deadline)
    assert visit.records == b"r" and statuses.store.load(ref).records is None  # type: ignore[union-attr]


def test_each_transition_happens_once_and_only_from_pending(statuses: Statuses) -> None:
    store = statuses.store
    delivered, parked, breached = _ref(1), _ref(2), _ref(3)
    for ref in (delivered, parked, breached):
        statuses.add(ref, RECEIVED)
    assert not store.load(delivered).reconciled  # type: ignore[union-attr]
    assert store.mark_matched(delivered, "ab" * 32, NOW)
    matched = store.load(delivered)
    assert matched is not None and matched.status == PENDING and matched.reconciled
    assert matched.citizen_key == "ab" * 32
    entry = DeliveredEntry(projection_id="a" * 64, sha256="b" * 64, mapping_sha256="c" * 64)
    assert statuses.delivered_entry(delivered) == dict.fromkeys(("projection_id", "projection_sha256",
                                                                 "mapping_sha256"))
    assert store.mark_delivered(delivered, delivered_at=NOW, latency_ms=300_000, receipt_id="v-1", entry=entry,
                                citizen_key="ab" * 32)
    later = DeliveredEntry(projection_id="d" * 64, sha256="e" * 64, mapping_sha256="f" * 64)
    assert not store.mark_delivered(delivered, delivered_at=NOW, latency_ms=1, receipt_id="v-2", entry=later,
                                    citizen_key="cd" * 32)
    assert statuses.delivered_entry(delivered) == {"projection_id": "a" * 64, "projection_sha256": "b" * 64,
                                                   "mapping_sha256": "c" * 64}  # kept with the delivery, once
    assert not store.mark_matched(delivered, "cd" * 32, NOW)
    assert store.mark_needs_reconciliation(parked, ["UNKNOWN_ID"], NOW)
    assert not store.defer(parked, next_attempt_at=NOW, error="X", now=NOW)
    assert store.mark_breached(breached, error="Timeout", now=NOW)
    assert not store.mark_superseded(breached, NOW)
    assert [store.load(r).status for r in (delivered, parked, breached)] == [  # type: ignore[union-attr]
        DELIVERED, NEEDS_RECONCILIATION, DEADLINE_BREACHED]


def test_a_delivery_records_the_citizen_it_was_matched_to_when_no_match_was_kept_before(statuses: Statuses) -> None:
    ref = _ref(4)
    statuses.add(ref, RECEIVED)
    entry = DeliveredEntry(projection_id="a" * 64, sha256="b" * 64, mapping_sha256="c" * 64)
    assert statuses.store.mark_delivered(ref, delivered_at=NOW, latency_ms=1, receipt_id=None, entry=entry,
                                         citizen_key="ef" * 32)
    visit = statuses.store.load(ref)
    assert visit is not None and visit.status == DELIVERED and visit.citizen_key == "ef" * 32 and visit.reconciled


def test_a_deferred_visit_is_due_when_its_time_comes_and_a_claim_leases_it(statuses: Statuses) -> None:
    store = statuses.store
    early, late = _ref(1), _ref(2, RECEIVED + timedelta(minutes=1))
    statuses.add(early, RECEIVED)
    statuses.add(late, RECEIVED + timedelta(minutes=1))
    later = NOW + timedelta(minutes=3)
    assert store.defer(early, next_attempt_at=later, error="RetryableDeliveryError", now=NOW)
    assert store.load(early).attempts == 1  # type: ignore[union-attr]
    assert [v.ref for v in store.due(NOW, 10)] == [late]
    assert [v.ref for v in store.due(later, 10)] == [early, late]  # the earliest deadline first
    assert [v.ref for v in store.due(later, 1)] == [early]
    assert store.claim(early, now=later, lease_until=later + timedelta(minutes=10))
    assert not store.claim(early, now=later, lease_until=later + timedelta(minutes=10))  # leased
    assert [v.ref for v in store.due(later, 10)] == [late]


def test_a_visit_the_outbox_listed_is_due_only_once_a_deferral_or_the_outbox_indexes_it(statuses: Statuses) -> None:
    """Stored outside the status index (docs/delivery.md, *The outbox*): the sweep does not see it until Settle
    defers it or the sweep, reading the outbox after the lease, finds it stranded."""
    store = statuses.store
    deferred, stranded, delivered, indexed = _ref(1), _ref(2), _ref(3), _ref(4)
    for ref in (deferred, stranded, delivered):
        statuses.add(ref, RECEIVED, indexed=False)
    statuses.add(indexed, RECEIVED)
    assert [v.ref for v in store.due(NOW, 10)] == [indexed]
    assert store.defer(deferred, next_attempt_at=NOW, error="RetryableDeliveryError", now=NOW)
    assert store.mark_delivered(delivered, delivered_at=NOW, latency_ms=1, receipt_id=None,
                                entry=DeliveredEntry(projection_id="p", sha256="0" * 64, mapping_sha256="1" * 64),
                                citizen_key="ab" * 32)
    assert {v.ref.visit_id for v in store.due(NOW, 10)} == {deferred.visit_id, indexed.visit_id}
    # the outbox's list names all four and one never stored: only the stranded one enters the index
    assert store.index_stranded([deferred, stranded, delivered, indexed, _ref(5)]) == 1
    assert {v.ref.visit_id for v in store.due(NOW, 10)} == {deferred.visit_id, stranded.visit_id, indexed.visit_id}
    assert store.index_stranded([stranded]) == 0  # a list looked after twice changes nothing
    assert store.load(_ref(5)) is None  # nothing was created for the key never stored


def test_a_visit_read_for_delivery_has_its_records_and_the_version_before_it(statuses: Statuses) -> None:
    first, second, third = (_ref(1, RECEIVED + timedelta(minutes=n)) for n in range(3))
    assert first.visit_id == second.visit_id == third.visit_id
    statuses.add(first, RECEIVED)
    loaded = statuses.store.load(first, with_records=True)
    assert loaded is not None and loaded.records == b"r" and loaded.previous_version is None
    statuses.add(second, RECEIVED + timedelta(minutes=1))
    statuses.add(third, RECEIVED + timedelta(minutes=2))
    loaded = statuses.store.load(second, with_records=True)
    assert loaded is not None and loaded.records == b"r" and loaded.previous_version == first.version
    loaded = statuses.store.load(third, with_records=True)
    assert loaded is not None and loaded.previous_version == second.version
    light = statuses.store.load(third)
    assert light is not None and light.records is None and light.previous_version is None
    assert statuses.store.load(_ref(2), with_records=True) is None


def test_citizen_markers_count_once(statuses: Statuses) -> None:
    markers = citizen_markers("ab" * 32, NOW, facility="01001", province="01", district=None, commune="00004")
    expected = {(m.scope, m.period): m.first_day for m in markers}
    statuses.store.count_citizen(markers)
    assert statuses.markers() == expected
    later = citizen_markers("ab" * 32, NOW + timedelta(days=1), facility="01001", province="01", district=None,
                            commune="00004")
    statuses.store.count_citizen(later)  # a retried delivery, a day later: nothing new, no first day moved
    assert statuses.markers() == expected
    # the 34 provinces, on a 2026 day: a citizen with a book, and with a visit, from that day
    assert expected[("P34#01#ALL", "citizen#" + "ab" * 32)] == expected[("P34#01#VISIT", "citizen#" + "ab" * 32)]
    assert expected[("P34#01#ALL", "citizen#" + "ab" * 32)] == "D#2026-11-22"


# --- the population database ---------------------------------------------------------------------------------

PERSON = Citizen(id_number="001203004567", full_name="Trần Thị Mai", birth="19900412", sex="2",
                 social_insurance_number="0112345678")


def _http_population() -> Iterator[PopulationRegistry]:
    with FakePopulationServer.start(FakePopulation([PERSON])) as server, PopulationClient(server.url) as client:
        yield client


@pytest.fixture(params=["fake", "http"])
def population(request: pytest.FixtureRequest) -> Iterator[PopulationRegistry]:
    yield from (iter([FakePopulation([PERSON])]) if request.param == "fake" else _http_population())


def test_a_citizen_is_found_by_id_and_by_social_insurance_number(population: PopulationRegistry) -> None:
    assert population.lookup("001203004567") == PERSON
    assert population.lookup_by_social_insurance("0112345678") == PERSON
    assert population.lookup("001203004568") is None
    assert population.lookup_by_social_insurance("0112345679") is None

