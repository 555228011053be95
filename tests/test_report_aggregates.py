"""The counters events add, and percentiles read back from the latency histogram (docs/reports.md)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from healthbook.reports.aggregates import (
    LEGACY_COUNTERS,
    CitizenMarker,
    citizen_markers,
    day,
    for_breach,
    for_delivery,
    for_reconciliation,
    for_submission,
    latency_bucket,
    month,
    percentile,
    total,
)

AT = datetime(2026, 11, 22, 18, 30, tzinfo=UTC)  # 01:30 on the 23rd in Vietnam


def test_days_and_months_are_vietnam_time() -> None:
    assert day(AT) == "D#2026-11-23" and month(datetime(2026, 11, 30, 17, 0, tzinfo=UTC)) == "M#2026-12"


def test_buckets_are_upper_bounds() -> None:
    assert [latency_bucket(ms) for ms in (0, 1000, 1001, 86_400_000, 86_400_001)] == [
        "latency#1", "latency#1", "latency#2", "latency#86400", "latency#inf"]


def test_percentiles_of_a_hand_made_histogram() -> None:
    # 10 deliveries: 5 within 1 s, 3 within 30 s, 1 within 1 h, 1 after a day
    counters = {"latency#1": 5, "latency#30": 3, "latency#3600": 1, "latency#inf": 1}
    assert percentile(counters, 0.5) == 1.0  # the 5th of 10 is in the first bucket
    assert percentile(counters, 0.8) == 30.0
    assert percentile(counters, 0.9) == 3600.0
    assert percentile(counters, 0.95) == math.inf
    assert percentile({}, 0.5) is None
    with pytest.raises(ValueError):
        percentile(counters, 0)


def test_a_rejected_submission() -> None:
    update = for_submission("01001", AT, status="REJECTED", visits_accepted=0, visits_total=2,
                            error_codes=["V212", "V212", "R301"])
    assert (update.scope, update.period) == ("F#01001", "D#2026-11-23")
    assert update.deltas == {"files_received": 1, "files_rejected": 1, "visits_rejected": 2, "error#R301": 1,
                             "error#V212": 1}


def test_findings_of_an_accepted_submission_are_counted_apart() -> None:
    update = for_submission("01001", AT, status="ACCEPTED", visits_accepted=1, visits_total=1, error_codes=[],
                            finding_codes=["V201", "R309", "V201"])
    assert update.deltas == {"files_received": 1, "visits_accepted": 1, "finding#R309": 1, "finding#V201": 1}


def test_deliveries_in_and_out_of_time() -> None:
    deadline = AT + timedelta(hours=24)
    on_time = for_delivery("01001", AT, deadline_at=deadline, latency_ms=4_000, referral=True)
    late = for_delivery("01001", deadline + timedelta(seconds=1), deadline_at=deadline, latency_ms=86_401_000)
    assert on_time.deltas == {"delivered": 1, "delivered_in_time": 1, "latency#5": 1, "referral_delivered": 1}
    assert late.deltas == {"delivered": 1, "latency#inf": 1}
    summed = total([on_time.deltas, late.deltas, for_breach("01001", AT).deltas,
                    for_reconciliation("01001", AT, ["NAME_MISMATCH", "BIRTH_MISMATCH"]).deltas])
    assert summed == {"delivered": 2, "delivered_in_time": 1, "latency#5": 1, "latency#inf": 1,
                      "referral_delivered": 1, "breached": 1, "needs_reconciliation": 1,
                      "reconciliation#BIRTH_MISMATCH": 1, "reconciliation#NAME_MISMATCH": 1}
    assert percentile(summed, 0.5) == 5.0 and percentile(summed, 0.95) == math.inf


def test_a_delivery_sets_markers_that_carry_no_count_only_a_ttl_or_a_first_day() -> None:
    """Distinct citizens are counted from the markers at report time (docs/reports.md): a period marker expires, a
    kept one carries the Vietnam day of the event, and neither carries a counter."""
    markers = citizen_markers("k", AT, facility="01001", province="01", district=None, commune="00004")
    assert {m.scope: m.first_day for m in markers if m.expires_at is None} == {
        "P34#01#ALL": "D#2026-11-23", "P34#01#VISIT": "D#2026-11-23"}  # 01:30 on the 23rd in Vietnam
    assert len([m for m in markers if m.first_day is None]) == 3  # facility, commune, province; months only
    assert set(vars(markers[0])) == {"scope", "period", "expires_at", "first_day"}
    with pytest.raises(ValueError, match="either expires"):
        CitizenMarker("P34#01#ALL", "citizen#k", None)
    with pytest.raises(ValueError, match="either expires"):
        CitizenMarker("P34#01#M#2026-11", "citizen#k", 1, "D#2026-11-23")
    # what counted the kept markers before they had first days: the report still adds these counters
    assert LEGACY_COUNTERS == {"ALL": "new_citizens", "VISIT": "citizens_visited", "BOOK": "books_created"}
