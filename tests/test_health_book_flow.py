"""The health-book slice end to end, in process: stored visit → reconcile → the entry project() builds (as the
deliver step does, in memory) → delivered to (fake) VNeID."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from datetime import UTC, datetime

from healthbook.projection import dumps, project
from healthbook.reconcile import identity_from_summary, reconcile
from healthbook.signing.merkle import canonical_visit
from healthbook.validation import validate_bytes
from healthbook.vneid import VneidClient
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.vneid import FakeVneid
from healthbook_dev.generate import build_visit, submission

RECEIVED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
PEPPER = b"test-pepper-0123456789"


def _stored(seed: int, scenario: str) -> tuple[dict, object]:  # type: ignore[type-arg]
    visit = build_visit(random.Random(seed), scenario=scenario)
    result = validate_bytes(submission(visit))
    assert result.accepted
    return json.loads(canonical_visit(result.visits[0])), visit


def _citizen_key(material: str) -> str:
    return hmac.new(PEPPER, material.encode(), hashlib.sha256).hexdigest()


def test_matched_citizen_sees_the_visit_and_only_the_newest_version() -> None:
    stored, visit = _stored(11, "inpatient")
    population = FakePopulation.from_visits([visit], mismatch_rate=0.0, unknown_rate=0.0, seed=1)
    match = reconcile(identity_from_summary(stored["tables"]["XML1"][0]), population)
    assert match.status == "MATCHED" and match.citizen_key_material
    key = _citizen_key(match.citizen_key_material)
    first_version = int(RECEIVED.timestamp() * 1000)
    first = project(stored, facility=visit.facility, received_at=RECEIVED, version=first_version)
    with FakeVneid.start() as vneid, VneidClient(vneid.url, auth=vneid.oauth2()) as client:
        assert client.deliver(key, first).outcome == "delivered"
        assert client.deliver(key, first).outcome == "delivered"  # a retry: stored once
        second = project(stored, facility=visit.facility, received_at=RECEIVED, version=first_version + 60_000,
                         supersedes=first["projection_id"])
        assert client.deliver(key, second).outcome == "delivered"
        late = client.deliver(key, first)  # a late retry of the old version: its key is replayed, nothing stored
        assert late.replayed and late.outcome == "delivered"
        entries = vneid.entries(key)
        assert [e["entry"]["projection_id"] for e in entries] == [second["projection_id"]]
    assert dumps(entries[0]["entry"]) == dumps(second)
    summary = stored["tables"]["XML1"][0]
    assert second["diagnoses"][0]["code"] == summary["MA_BENH_CHINH"] and second["diagnoses"][0]["main"]


def test_unknown_citizen_needs_reconciliation_and_is_not_delivered() -> None:
    stored, _ = _stored(12, "outpatient")
    population = FakePopulation()  # nobody registered
    match = reconcile(identity_from_summary(stored["tables"]["XML1"][0]), population)
    assert match.status == "NEEDS_RECONCILIATION" and match.reasons == ("UNKNOWN_ID", "UNKNOWN_SOCIAL_INSURANCE")
    assert match.citizen_key_material is None
