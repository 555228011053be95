"""The delivery core (healthbook.delivery) over in-memory ports: fast, pure, no AWS, no network, no sleeping.

``FakeStatusStore`` mirrors healthbook.aws.delivery.DynamoVisitStatus: every ``mark_*``/``defer``/``claim`` is
conditional on the version still being PENDING (``claim`` also on ``next_attempt_at`` having come) and answers
False when it is not. ``race`` changes a visit's status just before the next conditional write, the way a
concurrent execution (or ingest superseding the version) would between a step's load and its write.
tests/test_delivery_workflow.py runs the same steps as deployed, on moto.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import healthbook.projection
import pytest
from healthbook.aws.settings import TimingSettings
from healthbook.delivery.model import (
    DEADLINE_BREACHED,
    DEFERRED,
    DELIVERED,
    MAX_BATCH,
    NEEDS_RECONCILIATION,
    SKIPPED,
    UNSETTLED,
    Timing,
    VisitRef,
)
from healthbook.delivery.service import (
    Deliver,
    Settle,
    Sweeper,
    SweepReport,
    summarise,
    version_ms,
)
from healthbook.ingest.model import PENDING, SUPERSEDED, version_key
from healthbook.ingest.service import pack_records
from healthbook.kernel import citizen_key, epoch_ms, iso_utc, parse_time
from healthbook.projection import SensitiveDataError, dumps, mapping_sha256, project, projection_id
from healthbook.reconcile import PopulationUnavailable
from healthbook.validation import validate_bytes
from healthbook.vneid import PermanentDeliveryError, RetryableDeliveryError
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.stores import FakeStatusStore, FakeSweepLease
from healthbook_dev.generate import Visit, build_visit, submission
from healthbook_dev.generate.visit import set_everywhere
from hypothesis import given, settings
from hypothesis import strategies as st

PEPPER = b"unit-pepper-0123456789"
RECEIVED = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)
TIMING = Timing()  # 24 h deadline, 1 h margin, 10 min lease, retries 1 min .. 30 min
DEADLINE = TIMING.deadline_for(RECEIVED)
CUTOFF = TIMING.cutoff(DEADLINE)
T = RECEIVED + timedelta(hours=1, milliseconds=250)  # the fixed clock: well before the cutoff


# --- fakes ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeDelivery:
    outcome: str
    receipt_id: str | None


@dataclass
class FakeDeliverer:
    outcome: str = "delivered"
    fail: Exception | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def deliver(self, citizen_key: str, entry: Any) -> FakeDelivery:
        self.calls.append((citizen_key, entry))
        if self.fail is not None:
            raise self.fail
        return FakeDelivery(self.outcome, f"vneid-{len(self.calls)}" if self.outcome == "delivered" else None)


@dataclass
class RecordingMetrics:
    counts: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    latencies: list[tuple[str, float]] = field(default_factory=list)

    def count(self, name: str, value: int = 1, **dimensions: str) -> None:
        self.counts.append((name, value, dict(dimensions)))

    def latency(self, name: str, milliseconds: float) -> None:
        self.latencies.append((name, milliseconds))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.counts]


@dataclass
class RecordingStarter:
    starts: list[tuple[str, list[VisitRef]]] = field(default_factory=list)

    def start(self, name: str, visits: Sequence[VisitRef]) -> None:
        self.starts.append((name, list(visits)))


@dataclass
class RecordingNotifier:
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def notify(self, subject: str, message: dict[str, Any]) -> None:
        self.messages.append((subject, message))


class UnavailablePopulation:
    calls = 0

    def lookup(self, id_number: str) -> None:
        self.calls += 1
        raise PopulationUnavailable("population service answered 503")

    def lookup_by_social_insurance(self, number: str) -> None:
        self.lookup(number)


# --- builders ------------------------------------------------------------------------------------------

@cache
def _accepted(seed: int, *, without_id: bool = False) -> tuple[Visit, str, bytes]:
    """A generated outpatient visit, its MA_LK and its stored records (what ingest keeps); ``without_id``: its
    SO_CCCD left empty, as for one visit in five (admitted on the insurance card)."""
    visit = build_visit(random.Random(seed), scenario="outpatient")
    if without_id:
        set_everywhere(visit, "SO_CCCD", "")
    result = validate_bytes(submission(visit))
    assert result.accepted, [issue.code for issue in result.errors]
    return visit, result.visits[0].ma_lk, pack_records(result.visits[0])


def _ref(seed: int, received: datetime = RECEIVED) -> VisitRef:
    visit, ma_lk, _ = _accepted(seed)
    sid = hashlib.sha256(f"{ma_lk}@{received.isoformat()}".encode()).hexdigest()
    return VisitRef(f"{visit.facility}#{ma_lk}", version_key(received, sid))


def _id_number(seed: int) -> str:
    return str(_accepted(seed)[0].tables["XML1"][0]["SO_CCCD"])


def _known(seed: int) -> FakePopulation:
    return FakePopulation.from_visits([_accepted(seed)[0]], mismatch_rate=0.0, unknown_rate=0.0, seed=1)


@dataclass(frozen=True)
class Steps:
    """The two use cases on a world's fakes at one moment, their results as the workflow passes them on."""

    world: World
    now: datetime
    timing: Timing
    population: Any

    def _common(self) -> dict[str, Any]:
        return {"store": self.world.store, "metrics": self.world.metrics, "now": lambda: self.now}

    def deliver(self, ref: VisitRef, *, matched_as: str | None = None) -> dict[str, Any]:
        """``matched_as``: the visit was matched to that citizen key by an earlier attempt (as ``mark_matched``
        leaves it), so the step delivers without asking the population: the delivery cases below need no
        registry of their people."""
        item = self.world.store.items.get(ref)
        if matched_as is not None and item is not None:
            item.citizen_key, item.reconciled_at = matched_as, RECEIVED
        return Deliver(**self._common(), population=self.population, pepper=PEPPER,
                       vneid=self.world.vneid)(ref).to_event()

    def settle(self, ref: VisitRef, error: object) -> dict[str, Any]:
        return Settle(**self._common(), timing=self.timing, rng=random.Random(0))(ref, error).to_event()


@dataclass
class World:
    store: FakeStatusStore
    vneid: FakeDeliverer
    metrics: RecordingMetrics
    population: FakePopulation

    def service(self, now: datetime = T, *, timing: Timing = TIMING) -> Steps:
        return Steps(self, now, timing, self.population)

    def stored(self, seed: int = 1, *, received: datetime = RECEIVED, **item: Any) -> VisitRef:
        return self.store.add(_ref(seed, received), records=_accepted(seed)[2], received_at=received, **item)


@pytest.fixture
def world() -> World:
    return World(FakeStatusStore(), FakeDeliverer(), RecordingMetrics(), _known(1))


# --- model: times --------------------------------------------------------------------------------------

def test_parse_time_reads_utc_and_offsets_as_aware_utc() -> None:
    assert parse_time("2026-11-22T03:00:00Z") == RECEIVED
    moment = parse_time("2026-11-22T10:00:00+07:00")
    assert moment == RECEIVED and moment.utcoffset() == timedelta(0)


def test_parse_time_refuses_a_time_without_a_zone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_time("2026-11-22T03:00:00")


def test_epoch_ms_and_version_ms() -> None:
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_ms(RECEIVED + timedelta(milliseconds=5, microseconds=999)) == epoch_ms(RECEIVED) + 5
    assert epoch_ms(RECEIVED) == 1_795_316_400_000
    ref = _ref(1)
    assert version_ms(ref.version) == epoch_ms(RECEIVED)
    assert version_ms("2026-11-22T03:00:01Z#abc#def") == epoch_ms(RECEIVED) + 1000


# --- model: Timing -------------------------------------------------------------------------------------

def _timing(env: dict[str, str]) -> Timing:
    return TimingSettings.from_env(env).timing()


def test_timing_settings_default_when_unset_or_empty() -> None:
    assert _timing({}) == Timing()
    assert _timing({"DEADLINE_SECONDS": "", "LEASE_SECONDS": ""}) == Timing()
    assert Timing() == Timing(deadline=timedelta(hours=24), safety_margin=timedelta(hours=1),
                              lease=timedelta(minutes=10), retry_base=timedelta(minutes=1),
                              retry_max=timedelta(minutes=30))


def test_timing_settings_read_seconds_including_fractions() -> None:
    timing = _timing({"DEADLINE_SECONDS": "12", "SAFETY_MARGIN_SECONDS": "3", "LEASE_SECONDS": "2",
                      "RETRY_BASE_SECONDS": "0.5", "RETRY_MAX_SECONDS": "1", "UNRELATED": "x"})
    assert timing == Timing(deadline=timedelta(seconds=12), safety_margin=timedelta(seconds=3),
                            lease=timedelta(seconds=2), retry_base=timedelta(milliseconds=500),
                            retry_max=timedelta(seconds=1))
    assert _timing({"SAFETY_MARGIN_SECONDS": "0"}).safety_margin == timedelta(0)


@pytest.mark.parametrize("name", ["DEADLINE_SECONDS", "SAFETY_MARGIN_SECONDS", "LEASE_SECONDS",
                                  "RETRY_BASE_SECONDS", "RETRY_MAX_SECONDS"])
@pytest.mark.parametrize("text", ["ten", "1h", "nan", "inf", "1e20"])
def test_timing_settings_name_the_variable_that_is_not_a_number_of_seconds(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be a number of seconds$"):
        _timing({name: text})


@pytest.mark.parametrize(("env", "message"), [
    ({"SAFETY_MARGIN_SECONDS": "86400"}, "safety margin"),  # margin == deadline
    ({"DEADLINE_SECONDS": "60", "SAFETY_MARGIN_SECONDS": "120"}, "safety margin"),
    ({"SAFETY_MARGIN_SECONDS": "-1"}, "^SAFETY_MARGIN_SECONDS must not be negative$"),
    ({"DEADLINE_SECONDS": "-5"}, "^DEADLINE_SECONDS must not be negative$"),
    ({"LEASE_SECONDS": "0"}, "lease"),
    ({"LEASE_SECONDS": "-1"}, "^LEASE_SECONDS must not be negative$"),
    ({"RETRY_BASE_SECONDS": "0"}, "retry_base"),
    ({"RETRY_BASE_SECONDS": "120", "RETRY_MAX_SECONDS": "60"}, "retry_max"),
])
def test_timing_settings_refuse_inconsistent_rules(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _timing(env)


def test_deadline_and_cutoff() -> None:
    assert TIMING.deadline_for(parse_time("2026-11-22T10:00:00+07:00")) == RECEIVED + timedelta(hours=24)
    assert TIMING.deadline_for(RECEIVED).tzinfo == UTC
    assert TIMING.cutoff(DEADLINE) == RECEIVED + timedelta(hours=23)


def test_next_attempt_grows_with_attempts_up_to_retry_max() -> None:
    delays = [TIMING.next_attempt(T, attempts, DEADLINE, random.Random(0)) - T for attempts in range(0, 12)]
    assert delays == sorted(delays)  # the same draw over a growing ceiling
    assert delays[0] == delays[1]  # attempts 0 and 1 both use retry_base
    assert delays[1] < delays[2] < delays[3] < delays[4] < delays[5]
    assert delays[-1] == delays[-2]  # capped at retry_max
    # attempt n waits at most retry_base * 2^(n-1)
    for attempts in range(1, 6):
        assert delays[attempts] <= TIMING.retry_base * 2 ** (attempts - 1)


def test_next_attempt_is_jittered_by_the_rng() -> None:
    rng = random.Random(0)
    draws = {TIMING.next_attempt(T, 6, DEADLINE, rng) for _ in range(20)}
    assert len(draws) > 1
    assert TIMING.next_attempt(T, 6, DEADLINE, random.Random(7)) == TIMING.next_attempt(T, 6, DEADLINE,
                                                                                        random.Random(7))


def test_next_attempt_never_passes_the_cutoff() -> None:
    late = CUTOFF - timedelta(seconds=10)  # less than retry_base / 2 before it
    for attempts in range(1, 10):
        assert TIMING.next_attempt(late, attempts, DEADLINE, random.Random(attempts)) == CUTOFF


@settings(max_examples=300, deadline=None)
@given(base_ms=st.integers(1, 120_000), spread=st.integers(1, 64), attempts=st.integers(0, 80),
       before_cutoff_ms=st.integers(0, 48 * 3_600_000), seed=st.integers(0, 2**32 - 1))
def test_next_attempt_bounds(base_ms: int, spread: int, attempts: int, before_cutoff_ms: int, seed: int) -> None:
    timing = Timing(deadline=timedelta(hours=72), safety_margin=timedelta(hours=1),
                    retry_base=timedelta(milliseconds=base_ms), retry_max=timedelta(milliseconds=base_ms * spread))
    deadline = RECEIVED + timing.deadline
    cutoff = timing.cutoff(deadline)
    now = cutoff - timedelta(milliseconds=before_cutoff_ms)
    when = timing.next_attempt(now, attempts, deadline, random.Random(seed))
    assert when <= cutoff
    if when < cutoff:
        assert now + timing.retry_base / 2 <= when <= now + timing.retry_max
        ceiling = timing.retry_base * min(spread, 2 ** max(0, attempts - 1))  # min(retry_max, base * 2^(n-1))
        assert when <= now + ceiling
    else:
        assert cutoff <= now + timing.retry_max


def test_next_attempt_after_very_many_attempts_waits_retry_max_at_most() -> None:
    when = TIMING.next_attempt(T, 1100, DEADLINE, random.Random(0))
    assert T + TIMING.retry_base / 2 <= when <= T + TIMING.retry_max


# --- deliver: matching the citizen --------------------------------------------------------------------------

def test_deliver_matches_the_citizen_and_delivers_under_the_hmac_citizen_key(world: World) -> None:
    ref = world.stored()
    result = world.service().deliver(ref)
    expected = hmac.new(PEPPER, _id_number(1).encode("utf-8"), hashlib.sha256).hexdigest()
    assert expected == citizen_key(PEPPER, _id_number(1))  # the same key ingest writes
    assert result["outcome"] == DELIVERED and "citizen_key" not in result  # workflow state never holds it
    (key, entry), = world.vneid.calls
    assert key == expected
    item = world.store.items[ref]
    assert item.status == DELIVERED and item.citizen_key == expected and item.reconciled_at == T
    assert entry["projection_id"] == item.projection_id == projection_id(ref.visit_id, epoch_ms(RECEIVED))
    assert world.store.writes() == ["mark_delivered"]  # the match is recorded with the delivery: one write
    assert world.population.calls == 1
    assert world.metrics.names() == ["VisitsDelivered", "VisitsDeliveredInTime"]
    assert summarise([{"results": [result]}]).to_event() == {"counts": {DELIVERED: 1}, "breached_count": 0,
                                                           "breached": []}


def test_deliver_of_an_unknown_citizen_needs_reconciliation_and_sends_nothing(world: World) -> None:
    world.population = FakePopulation()
    ref = world.stored()
    result = world.service().deliver(ref)
    # Neither the ID nor the card's social-insurance number is known.
    reasons = ["UNKNOWN_ID", "UNKNOWN_SOCIAL_INSURANCE"]
    assert result == {"visit_id": ref.visit_id, "outcome": NEEDS_RECONCILIATION, "reasons": reasons}
    item = world.store.items[ref]
    assert item.status == NEEDS_RECONCILIATION and item.reasons == tuple(reasons)
    assert item.citizen_key is None and item.next_attempt_at is None and item.reconciled_at == T
    assert world.metrics.counts == [("ReconciliationNeeded", 1, {"reason": reason}) for reason in reasons]
    assert world.vneid.calls == []


def test_deliver_matches_a_visit_without_an_id_by_its_card(world: World) -> None:
    visit, _, records = _accepted(2, without_id=True)
    world.population = FakePopulation.from_visits([visit], mismatch_rate=0.0, unknown_rate=0.0, seed=1)
    ref = world.store.add(_ref(2), records=records, received_at=RECEIVED)
    result = world.service().deliver(ref)
    (registered,) = world.population
    assert registered.social_insurance_number == visit.tables["XML1"][0]["MA_THE_BHYT"][-10:]
    expected = citizen_key(PEPPER, registered.id_number)  # keyed on the registry's ID number, found by the card
    assert result["outcome"] == DELIVERED and [key for key, _ in world.vneid.calls] == [expected]
    assert world.store.items[ref].citizen_key == expected and world.population.calls == 1
    world.population = FakePopulation()
    ref = world.store.add(_ref(3), records=_accepted(3, without_id=True)[2], received_at=RECEIVED)
    assert world.service().deliver(ref)["reasons"] == ["UNKNOWN_SOCIAL_INSURANCE"]


def test_deliver_mismatch_stores_every_reason_and_counts_each(world: World) -> None:
    registered = _known(1).lookup(_id_number(1))
    assert registered is not None
    world.population = FakePopulation([replace(registered, full_name="Ngô Bảo Châu Khác",
                                               sex={"1": "2", "2": "1"}.get(registered.sex, "1"))])
    ref = world.stored()
    result = world.service().deliver(ref)
    assert result["outcome"] == NEEDS_RECONCILIATION
    assert result["reasons"] == ["NAME_MISMATCH", "SEX_MISMATCH"]
    assert world.store.items[ref].reasons == ("NAME_MISMATCH", "SEX_MISMATCH")
    assert world.metrics.counts == [("ReconciliationNeeded", 1, {"reason": "NAME_MISMATCH"}),
                                    ("ReconciliationNeeded", 1, {"reason": "SEX_MISMATCH"})]
    assert world.vneid.calls == []


@pytest.mark.parametrize("status", [DELIVERED, SUPERSEDED, NEEDS_RECONCILIATION, DEADLINE_BREACHED])
def test_deliver_of_a_visit_no_longer_pending_is_skipped_unmatched(world: World, status: str) -> None:
    ref = world.stored(status=status)
    assert world.service().deliver(ref) == {"visit_id": ref.visit_id, "outcome": SKIPPED}
    assert world.store.calls == ["load"]
    assert world.population.calls == 0 and world.vneid.calls == []
    assert world.store.status(ref) == status and world.metrics.counts == []


def test_deliver_of_a_missing_visit_is_skipped(world: World) -> None:
    ref = _ref(1)
    assert world.service().deliver(ref) == {"visit_id": ref.visit_id, "outcome": SKIPPED}
    assert world.population.calls == 0


def test_deliver_lets_population_unavailable_propagate(world: World) -> None:
    population = UnavailablePopulation()
    ref = world.stored()
    service = replace(world.service(), population=population)
    with pytest.raises(PopulationUnavailable):
        service.deliver(ref)
    assert population.calls == 1 and world.vneid.calls == []
    assert world.store.writes() == [] and world.store.status(ref) == PENDING and world.metrics.counts == []


def test_deliver_refuses_a_visit_stored_without_records(world: World) -> None:
    ref = world.store.add(_ref(1), received_at=RECEIVED)
    with pytest.raises(ValueError, match="no records stored"):
        world.service().deliver(ref)


def test_deliver_mismatch_lost_to_a_concurrent_change_is_skipped(world: World) -> None:
    world.population = FakePopulation()
    ref = world.stored()
    world.store.race[ref] = SUPERSEDED
    result = world.service().deliver(ref)
    assert world.store.status(ref) == SUPERSEDED and world.metrics.counts == []
    assert result == {"visit_id": ref.visit_id, "outcome": SKIPPED}


@pytest.mark.parametrize("error", [RetryableDeliveryError("503", status=503),
                                   PermanentDeliveryError("403", status=403)], ids=["retryable", "permanent"])
def test_a_failed_put_keeps_the_match_so_the_retry_does_not_ask_the_population_again(
        world: World, error: Exception) -> None:
    world.vneid.fail = error
    ref = world.stored()
    with pytest.raises(type(error)):
        world.service().deliver(ref)
    expected = citizen_key(PEPPER, _id_number(1))
    item = world.store.items[ref]
    assert world.store.writes() == ["mark_matched"] and item.status == PENDING
    assert item.citizen_key == expected and item.reconciled_at == T and world.population.calls == 1
    world.vneid.fail = None
    assert world.service(T + timedelta(seconds=20)).deliver(ref)["outcome"] == DELIVERED
    assert world.population.calls == 1  # matched once
    assert [key for key, _ in world.vneid.calls] == [expected, expected]
    assert item.reconciled_at == T  # when it was matched


def test_a_match_that_cannot_be_kept_does_not_hide_the_error_that_failed_the_step(world: World) -> None:
    world.vneid.fail = RetryableDeliveryError("503", status=503)
    ref = world.stored()

    def unavailable(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("DynamoDB unreachable")

    world.store.mark_matched = unavailable  # type: ignore[method-assign]
    with pytest.raises(RetryableDeliveryError):
        world.service().deliver(ref)
    assert world.store.items[ref].reconciled_at is None and world.store.status(ref) == PENDING


# --- deliver: the entry, built in memory -----------------------------------------------------------------

def _entry(seed: int, received: datetime = RECEIVED, supersedes: str | None = None) -> dict[str, Any]:
    """The entry project() builds for a visit version stored by ``World.stored``."""
    visit, _, records = _accepted(seed)
    stored = json.loads(gzip.decompress(records))
    return project(stored, facility=visit.facility, received_at=received, version=epoch_ms(received),
                   supersedes=supersedes)


def _sha256(entry: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(entry).encode("utf-8")).hexdigest()


def test_deliver_sends_exactly_the_entry_project_builds_and_records_its_digests(world: World) -> None:
    ref = world.stored()
    assert world.service().deliver(ref, matched_as="ck")["outcome"] == DELIVERED
    expected = _entry(1)
    (key, sent), = world.vneid.calls
    assert key == "ck" and dumps(sent) == dumps(expected)
    assert sent["supersedes"] is None and sent["version"] == version_ms(ref.version)
    item = world.store.items[ref]
    assert item.projection_id == expected["projection_id"] == projection_id(ref.visit_id, epoch_ms(RECEIVED))
    assert item.projection_sha256 == _sha256(sent) == _sha256(expected)
    mapping_file = Path(healthbook.projection.__file__).with_name("mapping.json")
    assert item.mapping_sha256 == mapping_sha256() == hashlib.sha256(mapping_file.read_bytes()).hexdigest()


def test_deliver_of_a_resubmission_sends_the_entry_that_supersedes_the_previous_version(world: World) -> None:
    first = world.stored(status=SUPERSEDED)
    later = RECEIVED + timedelta(minutes=5)
    second = world.stored(received=later)
    assert first.visit_id == second.visit_id and first.version < second.version
    assert world.service().deliver(second, matched_as="ck")["outcome"] == DELIVERED
    supersedes = projection_id(first.visit_id, version_ms(first.version))
    (_, sent), = world.vneid.calls
    assert dumps(sent) == dumps(_entry(1, later, supersedes=supersedes))
    assert sent["supersedes"] == supersedes != sent["projection_id"]
    assert sent["version"] == version_ms(second.version) == epoch_ms(later)
    assert world.store.items[second].projection_sha256 == _sha256(sent)


def test_deliver_projects_the_same_entry_on_every_retry(world: World) -> None:
    world.vneid.fail = RetryableDeliveryError("503", status=503)
    ref = world.stored()
    with pytest.raises(RetryableDeliveryError):
        world.service().deliver(ref, matched_as="ck")
    world.vneid.fail = None
    assert world.service(T + timedelta(seconds=20)).deliver(ref, matched_as="ck")["outcome"] == DELIVERED
    first, second = (entry for _, entry in world.vneid.calls)
    assert dumps(first) == dumps(second)  # the same projection_id: VNeID's Idempotency-Key holds


def test_an_entry_that_would_carry_sensitive_data_is_never_sent(world: World) -> None:
    stored = json.loads(gzip.decompress(_accepted(1)[2]))
    stored["tables"]["XML1"][0]["LY_DO_VV"] = "B20"  # an HIV-range code in free text: fail closed
    ref = world.store.add(_ref(1), records=gzip.compress(json.dumps(stored).encode()), received_at=RECEIVED)
    with pytest.raises(SensitiveDataError):
        world.service().deliver(ref, matched_as="ck")
    assert world.vneid.calls == []  # nothing reached VNeID
    assert world.store.writes() == [] and world.store.status(ref) == PENDING  # for Settle (the Catch path)
    assert world.metrics.counts == []
    assert world.service().settle(ref, "SensitiveDataError")["outcome"] == DEFERRED


def test_deliver_of_a_visit_no_longer_pending_is_skipped(world: World) -> None:
    ref = world.stored(status=DELIVERED)
    assert world.service().deliver(ref, matched_as="ck") == {"visit_id": ref.visit_id, "outcome": SKIPPED}
    assert world.vneid.calls == [] and world.store.calls == ["load"]


def test_deliver_marks_delivered_with_latency_from_receipt(world: World) -> None:
    ref = world.stored()
    result = world.service().deliver(ref, matched_as="ck")
    latency = (T - RECEIVED) // timedelta(milliseconds=1)
    assert latency == 3_600_250
    assert result == {"visit_id": ref.visit_id, "outcome": DELIVERED, "latency_ms": latency}
    item = world.store.items[ref]
    assert item.status == DELIVERED and item.delivered_at == T and item.latency_ms == latency
    assert item.receipt_id == "vneid-1" and item.next_attempt_at is None
    assert world.vneid.calls == [("ck", _entry(1))]
    assert world.metrics.names() == ["VisitsDelivered", "VisitsDeliveredInTime"]
    assert world.metrics.latencies == [("DeliveryLatency", latency)]


def test_deliver_at_the_deadline_is_in_time_and_after_it_is_not(world: World) -> None:
    on_time, late = world.stored(1), world.stored(2)
    for ref, now in ((on_time, DEADLINE), (late, DEADLINE + timedelta(milliseconds=1))):
        assert world.service(now).deliver(ref, matched_as="ck")["outcome"] == DELIVERED
    assert world.metrics.names() == ["VisitsDelivered", "VisitsDeliveredInTime", "VisitsDelivered"]
    assert world.store.items[late].latency_ms == 24 * 3_600_000 + 1


def test_deliver_superseded_at_vneid_marks_superseded(world: World) -> None:
    world.vneid.outcome = "superseded"
    ref = world.stored()
    assert world.service().deliver(ref, matched_as="ck") == {"visit_id": ref.visit_id, "outcome": SUPERSEDED}
    item = world.store.items[ref]
    assert item.status == SUPERSEDED and item.superseded_at == T and item.delivered_at is None
    assert world.metrics.counts == [] and world.metrics.latencies == []


@pytest.mark.parametrize("error", [RetryableDeliveryError("503", status=503),
                                   PermanentDeliveryError("403", status=403)], ids=["retryable", "permanent"])
def test_deliver_errors_propagate_and_change_nothing(world: World, error: Exception) -> None:
    world.vneid.fail = error
    ref = world.stored()
    with pytest.raises(type(error)):
        world.service().deliver(ref, matched_as="ck")
    assert len(world.vneid.calls) == 1
    assert world.store.writes() == [] and world.store.status(ref) == PENDING
    assert world.metrics.counts == [] and world.metrics.latencies == []


def test_a_second_deliver_of_the_same_visit_is_skipped(world: World) -> None:
    ref = world.stored()
    assert world.service().deliver(ref, matched_as="ck")["outcome"] == DELIVERED
    again = world.service(T + timedelta(minutes=1)).deliver(ref, matched_as="ck")
    assert again == {"visit_id": ref.visit_id, "outcome": SKIPPED}
    assert len(world.vneid.calls) == 1
    assert world.store.items[ref].delivered_at == T
    assert world.metrics.names() == ["VisitsDelivered", "VisitsDeliveredInTime"]


def test_deliver_recorded_first_by_a_concurrent_execution_is_skipped_and_not_counted(world: World) -> None:
    ref = world.stored()
    world.store.race[ref] = DELIVERED
    assert world.service().deliver(ref, matched_as="ck")["outcome"] == SKIPPED
    assert len(world.vneid.calls) == 1  # the PUT happened (VNeID's Idempotency-Key makes it a replay)
    assert world.store.items[ref].delivered_at is None
    assert world.metrics.counts == [] and world.metrics.latencies == []


def test_deliver_superseded_lost_to_a_concurrent_change_is_skipped(world: World) -> None:
    world.vneid.outcome = "superseded"
    ref = world.stored()
    world.store.race[ref] = DEADLINE_BREACHED
    result = world.service().deliver(ref, matched_as="ck")
    assert world.store.status(ref) == DEADLINE_BREACHED
    assert result == {"visit_id": ref.visit_id, "outcome": SKIPPED}


def test_distinct_citizens_are_counted_once_per_scope_and_period_however_often_delivered(world: World) -> None:
    # seeds 3, 4 and 8 are visits at 79002, seed 1 at 79001: all in province 79
    first, second, third, elsewhere = (world.stored(seed) for seed in (3, 4, 8, 1))
    for ref, citizen in ((first, "ck"), (second, "ck"), (third, "someone-else"), (elsewhere, "ck")):
        world.service().deliver(ref, matched_as=citizen)
    # a report counts each partition's markers: its distinct citizens
    counted = Counter(scope for scope, _ in world.store.markers)
    month, day = "M#2026-11", "D#2026-11-22"  # T is 22 Nov 2026, 11:00 in Vietnam
    assert counted == Counter({f"F#79002#{month}": 2, f"F#79001#{month}": 1, f"P34#79#{month}": 2,
                               "P34#79#ALL": 2, "P34#79#VISIT": 2})  # a 2026 delivery counts in the 34 provinces
    assert world.store.markers[("P34#79#ALL", "citizen#ck")] == day  # kept, with the day the citizen first came
    # a crash between the markers and the status change: the retry finds the markers and adds none
    world.store.items[first].status = PENDING
    world.service().deliver(first, matched_as="ck")
    assert Counter(scope for scope, _ in world.store.markers) == counted


# --- settle --------------------------------------------------------------------------------------------

def test_settle_before_the_cutoff_defers(world: World) -> None:
    ref = world.stored(attempts=2, next_attempt_at=T - timedelta(minutes=1))
    result = world.service().settle(ref, "RetryableDeliveryError")
    expected = TIMING.next_attempt(T, 3, DEADLINE, random.Random(0))
    assert result == {"visit_id": ref.visit_id, "outcome": DEFERRED, "next_attempt_at": iso_utc(expected),
                      "error": "RetryableDeliveryError"}
    item = world.store.items[ref]
    assert item.status == PENDING and item.attempts == 3 and item.next_attempt_at == expected
    assert item.last_error == "RetryableDeliveryError" and item.last_attempt_at == T
    assert T + TIMING.retry_base / 2 <= expected <= T + TIMING.retry_base * 4  # attempt 3: at most base * 2^2
    assert world.metrics.names() == ["DeliveryDeferred"]


@pytest.mark.parametrize(("error", "kept"), [
    ("E" * 200, "E" * 80),
    ("  States.TaskFailed  ", "States.TaskFailed"),
    (None, "Unknown"),
    ("", "Unknown"),
    ("   ", "Unknown"),
])
def test_settle_keeps_the_error_name_clipped(world: World, error: str | None, kept: str) -> None:
    ref = world.stored()
    assert world.service().settle(ref, error)["error"] == kept
    assert world.store.items[ref].last_error == kept


def test_settle_near_the_cutoff_waits_until_the_cutoff_at_most(world: World) -> None:
    ref = world.stored(attempts=9)
    now = CUTOFF - timedelta(seconds=1)
    assert world.service(now).settle(ref, "PermanentDeliveryError")["outcome"] == DEFERRED
    assert world.store.items[ref].next_attempt_at == CUTOFF


@pytest.mark.parametrize("now", [CUTOFF, CUTOFF + timedelta(minutes=1), DEADLINE + timedelta(hours=1)],
                         ids=["at-cutoff", "after-cutoff", "after-deadline"])
def test_settle_from_the_cutoff_breaches(world: World, now: datetime) -> None:
    ref = world.stored(attempts=4)
    result = world.service(now).settle(ref, "RetryableDeliveryError")
    assert result == {"visit_id": ref.visit_id, "outcome": DEADLINE_BREACHED, "error": "RetryableDeliveryError"}
    item = world.store.items[ref]
    assert item.status == DEADLINE_BREACHED and item.breached_at == now and item.next_attempt_at is None
    assert item.last_error == "RetryableDeliveryError" and item.attempts == 4
    assert world.metrics.names() == ["DeadlineBreached"]
    assert summarise([{"results": [result]}]).breached == [ref.visit_id]


@pytest.mark.parametrize("now", [T, CUTOFF])
def test_settle_of_a_visit_no_longer_pending_is_skipped(world: World, now: datetime) -> None:
    ref = world.stored(status=DELIVERED)
    assert world.service(now).settle(ref, "X") == {"visit_id": ref.visit_id, "outcome": SKIPPED}
    assert world.store.calls == ["load"] and world.store.status(ref) == DELIVERED
    assert world.metrics.counts == []


@pytest.mark.parametrize("now", [T, CUTOFF])
def test_settle_lost_to_a_concurrent_change_is_skipped(world: World, now: datetime) -> None:
    ref = world.stored()
    world.store.race[ref] = DELIVERED
    assert world.service(now).settle(ref, "X")["outcome"] == SKIPPED
    item = world.store.items[ref]
    assert item.status == DELIVERED and item.attempts == 0 and item.last_error is None
    assert world.metrics.counts == []


# --- summarise -----------------------------------------------------------------------------------------

def test_summarise_counts_outcomes_a_visit_each_and_lists_breached_visits() -> None:
    """The Map's results are a batch each: its task's results, or its visits when even the Catch path failed."""
    batches: list[Any] = [
        {"results": [{"visit_id": "1#a", "outcome": DELIVERED}, {"visit_id": "1#b", "outcome": DEADLINE_BREACHED},
                     {"visit_id": "1#c", "outcome": SKIPPED}]},
        {"results": [{"visit_id": "1#d", "outcome": DELIVERED}, {"visit_id": "1#e", "outcome": DEADLINE_BREACHED},
                     {"visit_id": "1#f"}, None]},
        {"visits": [{"visit_id": "1#g", "version": "v"}, {"visit_id": "1#h", "version": "v"}], "outcome": UNSETTLED},
        None, "UNSETTLED",
    ]
    assert summarise(batches).to_event() == {
        "counts": {DEADLINE_BREACHED: 2, DELIVERED: 2, SKIPPED: 1, UNSETTLED: 2, "UNKNOWN": 4},
        "breached_count": 2, "breached": ["1#b", "1#e"]}
    assert summarise([]).to_event() == {"counts": {}, "breached_count": 0, "breached": []}


def test_summarise_lists_at_most_a_batch_of_breached_ids_but_counts_them_all() -> None:
    results = [{"visit_id": f"1#{n}", "outcome": DEADLINE_BREACHED} for n in range(MAX_BATCH + 7)]
    summary = summarise([{"results": results[:30]}, {"results": results[30:]}])
    assert summary.breached_count == MAX_BATCH + 7
    assert summary.breached == [f"1#{n}" for n in range(MAX_BATCH)]
    assert list(summary.counts) == [DEADLINE_BREACHED]


# --- the sweep -----------------------------------------------------------------------------------------

@dataclass
class SweepWorld:
    store: FakeStatusStore
    starter: RecordingStarter
    notifier: RecordingNotifier
    metrics: RecordingMetrics
    lease: FakeSweepLease = field(default_factory=FakeSweepLease)

    def sweeper(self, *, batch_size: int = MAX_BATCH, limit: int = 5000, outbox: Any = None,
                outbox_limit: int = 500) -> Sweeper:
        return Sweeper(store=self.store, starter=self.starter, lease=self.lease, timing=TIMING,
                       notifier=self.notifier, metrics=self.metrics, batch_size=batch_size, limit=limit,
                       outbox=outbox, outbox_limit=outbox_limit)

    def visit(self, n: int, *, received: datetime = RECEIVED, **item: Any) -> VisitRef:
        ref = VisitRef(f"79001#LK{n:04d}", version_key(received, f"{n:064x}"))
        return self.store.add(ref, received_at=received, **item)


@pytest.fixture
def sweep_world() -> SweepWorld:
    return SweepWorld(FakeStatusStore(), RecordingStarter(), RecordingNotifier(), RecordingMetrics())


def test_sweep_claims_due_visits_and_starts_them_in_batches(sweep_world: SweepWorld) -> None:
    refs = [sweep_world.visit(n, received=RECEIVED + timedelta(seconds=n)) for n in range(5)]
    report = sweep_world.sweeper(batch_size=2).sweep(T, "sweep-20261122T0400")
    assert sweep_world.starter.starts == [("sweep-20261122T0400-0", refs[0:2]), ("sweep-20261122T0400-1", refs[2:4]),
                                          ("sweep-20261122T0400-2", refs[4:5])]
    assert report == SweepReport(claimed=5, executions=3, breached=[], lost_claims=0)
    assert all(sweep_world.store.items[r].next_attempt_at == T + TIMING.lease for r in refs)
    assert all(sweep_world.store.status(r) == PENDING for r in refs)
    assert sweep_world.notifier.messages == [] and sweep_world.metrics.counts == []


def test_sweep_of_an_exact_batch_starts_no_empty_execution(sweep_world: SweepWorld) -> None:
    refs = [sweep_world.visit(n) for n in range(4)]
    report = sweep_world.sweeper(batch_size=2).sweep(T, "run")
    assert [name for name, _ in sweep_world.starter.starts] == ["run-0", "run-1"]
    assert [v for _, batch in sweep_world.starter.starts for v in batch] == sorted(refs, key=lambda r: r.visit_id)
    assert report.executions == 2 and report.claimed == 4


def test_sweep_leaves_leased_and_settled_visits_alone(sweep_world: SweepWorld) -> None:
    leased = sweep_world.visit(1, next_attempt_at=T + timedelta(seconds=1))
    done = sweep_world.visit(2, status=DELIVERED)
    due = sweep_world.visit(3, next_attempt_at=T)  # due exactly now
    report = sweep_world.sweeper().sweep(T, "run")
    assert sweep_world.starter.starts == [("run-0", [due])]
    assert report.claimed == 1
    assert sweep_world.store.items[leased].next_attempt_at == T + timedelta(seconds=1)
    assert sweep_world.store.status(done) == DELIVERED


def test_sweep_breaches_visits_past_their_deadline_not_merely_the_cutoff(sweep_world: SweepWorld) -> None:
    now = RECEIVED + timedelta(days=2)
    past_cutoff = sweep_world.visit(1, received=now - TIMING.deadline + timedelta(minutes=30))
    at_deadline = sweep_world.visit(2, received=now - TIMING.deadline)
    past_deadline = sweep_world.visit(3, received=now - TIMING.deadline - timedelta(hours=3))
    assert TIMING.cutoff(sweep_world.store.items[past_cutoff].deadline_at) < now
    report = sweep_world.sweeper().sweep(now, "run")
    assert sweep_world.starter.starts == [("run-0", [past_cutoff])]  # the workflow escalates it at settle
    assert report.breached == [past_deadline.visit_id, at_deadline.visit_id]  # nearest deadline first
    for ref in (at_deadline, past_deadline):
        item = sweep_world.store.items[ref]
        assert item.status == DEADLINE_BREACHED and item.last_error == "NotDeliveredByDeadline"
        assert item.breached_at == now
    assert sweep_world.metrics.names() == ["DeadlineBreached", "DeadlineBreached"]
    (subject, message), = sweep_world.notifier.messages
    assert "deadline" in subject
    assert message == {"source": "sweep", "breached_count": 2,
                       "breached": [past_deadline.visit_id, at_deadline.visit_id], "at": iso_utc(now)}
    assert report.to_dict() == {"claimed": 1, "executions": 1, "breached_count": 2,
                                "breached": [past_deadline.visit_id, at_deadline.visit_id], "lost_claims": 0,
                                "stopped_early": False, "held_elsewhere": False, "outbox_lists": 0, "outbox_again": 0,
                                "stranded": 0, "outbox_failed": False}


def test_sweep_respects_its_limit(sweep_world: SweepWorld) -> None:
    refs = [sweep_world.visit(n, received=RECEIVED + timedelta(seconds=n)) for n in range(7)]
    report = sweep_world.sweeper(batch_size=2, limit=3).sweep(T, "run")
    assert report.claimed == 3 and report.executions == 2
    assert [v for _, batch in sweep_world.starter.starts for v in batch] == refs[:3]
    assert all(sweep_world.store.items[r].next_attempt_at is None for r in refs[3:])
    again = sweep_world.sweeper(batch_size=2, limit=3).sweep(T, "next")  # the rest wait for the next sweep
    assert again.claimed == 3
    assert [v for _, batch in sweep_world.starter.starts[2:] for v in batch] == refs[3:6]


def test_sweep_stops_claiming_before_its_timeout_and_starts_what_it_claimed(sweep_world: SweepWorld) -> None:
    """Under a backlog on a slow store the sweep ran into its timeout claiming visit after visit: killed, it
    started nothing of its last batch, and those visits waited for their lease. It now stops with
    SWEEP_TIME_MARGIN_MS left, starts what it claimed, and leaves the rest due for the next sweep."""
    from healthbook.delivery.service import SWEEP_TIME_MARGIN_MS

    refs = [sweep_world.visit(n, received=RECEIVED + timedelta(seconds=n)) for n in range(6)]
    left = iter([120_000,  # read once for the sweep's lease
                 SWEEP_TIME_MARGIN_MS + 3_000, SWEEP_TIME_MARGIN_MS + 2_000, SWEEP_TIME_MARGIN_MS + 1,
                 SWEEP_TIME_MARGIN_MS - 1])
    report = sweep_world.sweeper(batch_size=2).sweep(T, "run", time_left_ms=lambda: next(left))
    assert report.claimed == 3 and report.executions == 2 and report.stopped_early
    assert sweep_world.starter.starts == [("run-0", refs[0:2]), ("run-1", refs[2:3])]
    assert all(sweep_world.store.items[r].next_attempt_at is None for r in refs[3:])  # due for the next one
    again = sweep_world.sweeper(batch_size=2).sweep(T, "next", time_left_ms=lambda: 60_000)
    assert again.claimed == 3 and not again.stopped_early


def test_a_sweep_indexes_the_stranded_visits_of_the_outbox_first_and_claims_them_with_the_rest(
        sweep_world: SweepWorld) -> None:
    """docs/delivery.md, *The outbox*: a list is looked after and let go; a visit whose execution was lost is found
    only through it; one delivered or deferred meanwhile is left alone; the lists wait for their lease."""
    from healthbook_dev.fakes.stores import FakeOutbox

    stranded = sweep_world.visit(1, indexed=False)
    delivered = sweep_world.visit(2, indexed=False, status=DELIVERED)
    indexed = sweep_world.visit(3)
    outbox = FakeOutbox(now=T - TIMING.lease)
    outbox.hold([stranded, delivered], back_after=TIMING.lease, stored_by=T - TIMING.lease)
    outbox.now = T - timedelta(seconds=1)
    outbox.hold([sweep_world.visit(4, indexed=False)], back_after=TIMING.lease,  # its lease not over: not read yet
                stored_by=T)
    outbox.now = T
    report = sweep_world.sweeper(outbox=outbox).sweep(T, "run")
    assert (report.outbox_lists, report.stranded, report.claimed, report.outbox_failed) == (1, 1, 2, False)
    assert sorted(v.visit_id for _, batch in sweep_world.starter.starts for v in batch) == sorted(
        [stranded.visit_id, indexed.visit_id])
    assert len(outbox.lists) == 1  # the list not due yet stays


def test_a_list_back_before_its_invocation_ended_is_looked_at_again_after_it(sweep_world: SweepWorld) -> None:
    """docs/delivery.md, *Two limits of the outbox*: with a lease shorter than an ingest invocation, a list can come
    back while the invocation is still storing; what is stored is indexed at once, and the list comes back once
    the invocation has ended, for a visit stored in between by an invocation that then crashed."""
    from healthbook_dev.fakes.stores import FakeOutbox

    early = sweep_world.visit(1, indexed=False)
    late = VisitRef(f"79001#LK{2:04d}", version_key(RECEIVED, f"{2:064x}"))  # not stored yet
    ends = T + timedelta(seconds=90)
    outbox = FakeOutbox(now=T - timedelta(seconds=10))
    outbox.hold([early, late], back_after=timedelta(seconds=10), stored_by=ends)
    outbox.now = T
    first = sweep_world.sweeper(outbox=outbox).sweep(T, "run")
    assert (first.outbox_lists, first.outbox_again, first.stranded, first.claimed) == (1, 1, 1, 1)
    assert sweep_world.visit(2, indexed=False) == late  # the invocation stores it, then crashes
    outbox.now = T + timedelta(seconds=60)
    assert outbox.due(10) == []  # back only once the invocation has ended
    outbox.now = ends
    second = sweep_world.sweeper(outbox=outbox).sweep(ends, "next")
    assert (second.outbox_lists, second.outbox_again, second.stranded) == (1, 0, 1)
    assert outbox.lists == {}  # let go
    assert sweep_world.store.items[late].next_attempt_at == ends + TIMING.lease  # claimed: restarted


def test_a_sweep_goes_on_when_the_outbox_cannot_be_read_and_reads_at_most_its_limit(sweep_world: SweepWorld) -> None:
    from healthbook_dev.fakes.stores import FakeOutbox

    class Unreachable(FakeOutbox):
        def due(self, limit: int) -> list[Any]:
            raise ConnectionError("the outbox cannot be reached")

    due = sweep_world.visit(1)
    report = sweep_world.sweeper(outbox=Unreachable()).sweep(T, "run")
    assert report.outbox_failed and report.claimed == 1  # the deliveries due are restarted all the same
    assert sweep_world.store.items[due].next_attempt_at == T + TIMING.lease
    outbox = FakeOutbox()
    for n in range(25):
        outbox.hold([sweep_world.visit(100 + n, indexed=False)], back_after=TIMING.lease, stored_by=T)
    report = sweep_world.sweeper(outbox=outbox, outbox_limit=12).sweep(T + TIMING.lease, "next")
    assert (report.outbox_lists, report.stranded, len(outbox.lists)) == (12, 12, 13)


def test_a_sweep_that_meets_the_lease_held_does_nothing(sweep_world: SweepWorld) -> None:
    """bench-load's sweeps overlapped on the saturated emulator, 11 at once: each read the same due visits and lost
    the claims the others took first (6,064 refused writes, 2.2 write units a visit). One run at a time now."""
    due = sweep_world.visit(1)
    assert sweep_world.lease.take("sweep-before", now=T - timedelta(seconds=30), until=T + timedelta(seconds=90))
    report = sweep_world.sweeper().sweep(T, "run", time_left_ms=lambda: 120_000)
    assert report == SweepReport(held_elsewhere=True)
    assert sweep_world.starter.starts == [] and sweep_world.store.writes() == []
    assert sweep_world.store.items[due].next_attempt_at is None
    assert sweep_world.lease.holder == "sweep-before"  # not freed by a run that did not hold it
    sweep_world.lease.release("sweep-before")
    again = sweep_world.sweeper().sweep(T, "next", time_left_ms=lambda: 120_000)
    assert again.claimed == 1 and not again.held_elsewhere


def test_a_sweep_holds_the_lease_until_its_invocation_ends_and_frees_it_even_when_it_fails(
        sweep_world: SweepWorld) -> None:
    sweep_world.visit(1)
    held: list[tuple[str | None, datetime | None]] = []

    class Failing(RecordingStarter):
        def start(self, name: str, visits: Sequence[VisitRef]) -> None:
            held.append((sweep_world.lease.holder, sweep_world.lease.held_until))
            raise RuntimeError("Step Functions is down")

    sweep_world.starter = Failing()
    with pytest.raises(RuntimeError, match="Step Functions is down"):
        sweep_world.sweeper().sweep(T, "run", time_left_ms=lambda: 90_000)
    assert held == [("run", T + timedelta(seconds=90))]
    assert sweep_world.lease.holder is None  # the next run needs not wait for the time to end


def test_a_lease_that_cannot_be_freed_lapses_and_hides_nothing(sweep_world: SweepWorld) -> None:
    due = sweep_world.visit(1)

    class Stuck(FakeSweepLease):
        def release(self, holder: str) -> None:
            raise ConnectionError("DynamoDB unreachable")

    sweep_world.lease = Stuck()
    report = sweep_world.sweeper().sweep(T, "run", time_left_ms=lambda: 90_000)
    assert report.claimed == 1 and sweep_world.starter.starts == [("run-0", [due])]
    assert sweep_world.lease.holder == "run"  # held until its time ends, then taken by the next run
    assert not sweep_world.lease.take("next", now=T + timedelta(seconds=89), until=T + timedelta(minutes=3))
    assert sweep_world.lease.take("next", now=T + timedelta(seconds=90), until=T + timedelta(minutes=3))


def test_sweep_counts_claims_lost_to_a_concurrent_sweep(sweep_world: SweepWorld) -> None:
    taken, settled, free = (sweep_world.visit(n, received=RECEIVED + timedelta(seconds=n)) for n in range(3))
    sweep_world.store.lease_race[taken] = T + timedelta(minutes=5)  # another sweep leased it first
    sweep_world.store.race[settled] = DELIVERED  # delivered by an execution between the query and the claim
    report = sweep_world.sweeper().sweep(T, "run")
    assert report == SweepReport(claimed=1, executions=1, breached=[], lost_claims=2)
    assert sweep_world.starter.starts == [("run-0", [free])]
    assert sweep_world.store.items[taken].next_attempt_at == T + timedelta(minutes=5)
    assert sweep_world.notifier.messages == []


def test_sweep_backstop_lost_to_a_concurrent_change_is_not_reported(sweep_world: SweepWorld) -> None:
    now = RECEIVED + timedelta(days=2)
    ref = sweep_world.visit(1)
    sweep_world.store.race[ref] = DELIVERED
    report = sweep_world.sweeper().sweep(now, "run")
    assert report == SweepReport()
    assert sweep_world.notifier.messages == [] and sweep_world.metrics.counts == []


def test_sweep_with_nothing_due_starts_and_notifies_nothing(sweep_world: SweepWorld) -> None:
    sweep_world.visit(1, next_attempt_at=T + TIMING.lease)
    report = sweep_world.sweeper().sweep(T, "run")
    assert report == SweepReport() and report.to_dict()["breached_count"] == 0
    assert sweep_world.starter.starts == [] and sweep_world.notifier.messages == []


def test_sweep_without_a_notifier_still_breaches(sweep_world: SweepWorld) -> None:
    ref = sweep_world.visit(1)
    sweeper = replace(sweep_world.sweeper(), notifier=None)
    assert sweeper.sweep(RECEIVED + timedelta(days=2), "run").breached == [ref.visit_id]
    assert sweep_world.store.status(ref) == DEADLINE_BREACHED


def test_sweep_notification_lists_at_most_a_batch_of_ids(sweep_world: SweepWorld) -> None:
    for n in range(MAX_BATCH + 3):
        sweep_world.visit(n)
    report = sweep_world.sweeper().sweep(RECEIVED + timedelta(days=2), "run")
    (_, message), = sweep_world.notifier.messages
    assert message["breached_count"] == MAX_BATCH + 3 and len(message["breached"]) == MAX_BATCH
    assert len(report.breached) == MAX_BATCH + 3 and len(report.to_dict()["breached"]) == MAX_BATCH



def test_a_failure_to_record_a_delivery_is_retried_not_settled(world: World) -> None:
    """VNeID stored the entry, then our write failed (throttling): the step raises RetryableDeliveryError, so the
    workflow retries it (the PUT replays) instead of the Catch path settling a delivered visit."""
    ref = world.stored()

    class Throttled(Exception):
        response: ClassVar[dict[str, Any]] = {"Error": {"Code": "ProvisionedThroughputExceededException"}}

    original = world.store.mark_delivered

    def throttled(*args: Any, **kwargs: Any) -> bool:
        raise Throttled("slow down")

    world.store.mark_delivered = throttled  # type: ignore[method-assign]
    with pytest.raises(RetryableDeliveryError, match="not yet recorded: ProvisionedThroughputExceededException"):
        world.service().deliver(ref, matched_as="ck")
    assert world.store.status(ref) == PENDING
    world.store.mark_delivered = original  # type: ignore[method-assign]
    assert world.service().deliver(ref, matched_as="ck")["outcome"] == DELIVERED
    assert len(world.vneid.calls) == 2 and world.metrics.names() == ["VisitsDelivered", "VisitsDeliveredInTime"]
