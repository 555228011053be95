"""Properties: generated valid visits always pass; every injected defect is caught at the right field."""

from __future__ import annotations

import json
import random
from pathlib import Path

from healthbook.validation import validate_bytes
from healthbook_dev.generate import INJECTORS, SCENARIOS, build_visit, generate_batch, inject, submission
from healthbook_dev.generate.visit import PERSON_FIELDS, _Builder, returning_visit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, scenario=st.sampled_from(SCENARIOS), version=st.sampled_from(["130", "4750"]))
def test_generated_visits_always_pass(seed: int, scenario: str, version: str) -> None:
    visit = build_visit(random.Random(seed), scenario=scenario, standard=version)
    result = validate_bytes(submission(visit))
    problems = [(i.code, i.table, i.field, i.value) for v in result.visits for i in v.issues] + \
               [(i.code, i.field) for i in result.errors]
    assert result.accepted and not problems, problems
    assert [v.standard for v in result.visits] == [version]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, name=st.sampled_from(sorted(INJECTORS)), scenario=st.sampled_from(SCENARIOS))
def test_each_injected_defect_is_caught_and_names_the_field(seed: int, name: str, scenario: str) -> None:
    rng = random.Random(seed)
    visit = build_visit(rng, scenario=scenario)
    try:
        defect = inject(visit, rng, name)
    except ValueError:
        return  # this defect does not apply to this scenario (e.g. no XML14 to spoil)
    result = validate_bytes(submission(visit, defect))
    issues = result.errors + [i for v in result.visits for i in v.issues]
    # Reported with its class: a defect that blocks keeps the visit out, a finding never does.
    caught = [i for i in issues if (i.code, i.table, i.field) == (defect.code, defect.table, defect.field)]
    assert all(i.basis for i in issues)
    if caught and all(i.blocks == "none" for i in caught) and all(i.blocks == "none" for i in issues):
        assert result.accepted
    elif caught:
        assert not result.accepted
    assert any((i.code, i.table, i.field) == (defect.code, defect.table, defect.field) for i in issues), \
        (defect.label(), [(i.code, i.table, i.field) for i in issues])


def test_batch_writes_files_and_a_readable_manifest(tmp_path: Path) -> None:
    manifest = generate_batch(tmp_path, visits=30, seed=5, defect_rate=0.5)
    on_disk = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest and len(on_disk["files"]) == 30
    labelled = [f for f in on_disk["files"] if f["defect"]]
    assert 5 < len(labelled) < 25
    for entry in on_disk["files"]:
        result = validate_bytes((tmp_path / entry["file"]).read_bytes())
        issues = result.errors + [i for v in result.visits for i in v.issues]
        if entry["defect"] is None:
            assert result.accepted and not issues, entry
        else:
            assert entry["defect"]["code"] in {i.code for i in issues}, entry
        assert [v.ma_lk for v in result.visits] == [entry["ma_lk"]]


def test_generation_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    one, two = tmp_path / "a", tmp_path / "b"
    generate_batch(one, visits=5, seed=11, defect_rate=0.5)
    generate_batch(two, visits=5, seed=11, defect_rate=0.5)
    for path in sorted(one.glob("*.xml")):
        # NGAYLAP is today's date; everything else is fixed by the seed.
        assert path.read_bytes() == (two / path.name).read_bytes()


def test_scenarios_produce_their_tables() -> None:
    rng = random.Random(3)
    expect = {"inpatient": {"XML5", "XML7", "XML8"}, "referral": {"XML13"}, "outpatient_reexam": {"XML14"},
              "tuberculosis": {"XML15"}, "birth": {"XML7", "XML8", "XML9"}}
    for scenario, tables in expect.items():
        visit = build_visit(rng, scenario=scenario)
        assert tables <= set(visit.tables), scenario
    big = build_visit(rng, scenario="inpatient", detail_rows=70)
    assert sum(len(big.tables.get(t, [])) for t in ("XML2", "XML3", "XML4")) >= 70


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, scenario=st.sampled_from(SCENARIOS))
def test_a_returning_visit_is_the_same_citizen_again_and_valid(seed: int, scenario: str) -> None:
    """bench/e2e.py's second round: the citizens of the first come back (a new MA_LK, the same person)."""
    rng = random.Random(seed)
    facility = ("01001", "Bệnh viện A", "01")
    earlier = build_visit(rng, scenario=scenario, facility=facility)
    again = returning_visit(rng, earlier, facility=facility)
    person = {name: earlier.tables["XML1"][0].get(name) for name in PERSON_FIELDS}
    assert {name: again.tables["XML1"][0].get(name) for name in PERSON_FIELDS} == person
    assert again.ma_lk != earlier.ma_lk
    result = validate_bytes(submission(again))
    assert result.accepted and not [i.code for v in result.visits for i in v.issues]


def test_the_person_fields_are_what_the_generator_makes_a_person_of() -> None:
    from datetime import datetime

    builder = _Builder(random.Random(1), ("01001", "Bệnh viện A", "01"), "4750", "outpatient",
                       datetime(2026, 3, 2, 8, 0), None)
    assert set(builder.person()) == set(PERSON_FIELDS)
