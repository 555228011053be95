"""Matching claim identities against the population database (docs/reconciliation.md)."""

from __future__ import annotations

import copy
import json
import random
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from healthbook.reconcile import (
    BIRTH_MISMATCH,
    ID_FORMAT,
    MATCHED,
    NAME_MISMATCH,
    NEEDS_RECONCILIATION,
    NO_ID,
    REASONS,
    SEX_MISMATCH,
    UNKNOWN_ID,
    UNKNOWN_SOCIAL_INSURANCE,
    Citizen,
    ClaimIdentity,
    PopulationRegistry,
    Reconciliation,
    count_by_reason,
    identity_from_summary,
    reconcile,
)
from healthbook.reconcile.matching import birth_matches, normalise_name, social_insurance_number_ok
from healthbook_dev.fakes.population import INVENTED_ID_PREFIX, FakePopulation
from healthbook_dev.generate import Visit, build_visit
from hypothesis import given
from hypothesis import strategies as st

ID = "001203004567"
NAME = "Nguyễn Thị Hằng"
PERSON = Citizen(ID, NAME, "20030412", "2")
SOCIAL_INSURANCE = "7912345678"
CARD = "GD479" + SOCIAL_INSURANCE
INSURED = Citizen(ID, NAME, "20030412", "2", SOCIAL_INSURANCE)


def claim(id_number: str = ID, name: str = NAME, birth: str = "200304120000", sex: str = "2",
          card: str = "") -> ClaimIdentity:
    return identity_from_summary({"SO_CCCD": id_number, "HO_TEN": name, "NGAY_SINH": birth, "GIOI_TINH": sex,
                                  "MA_THE_BHYT": card})


def check(identity: ClaimIdentity, *citizens: Citizen) -> Reconciliation:
    return reconcile(identity, FakePopulation(citizens or (PERSON,)))


def test_matched_person_carries_the_registry_id_as_key_material() -> None:
    result = check(claim())
    assert result == Reconciliation(MATCHED, (), ID)
    assert result.matched


def test_the_fake_is_a_population_registry_and_counts_lookups() -> None:
    population = FakePopulation([PERSON])
    assert isinstance(population, PopulationRegistry)
    reconcile(claim(), population)
    reconcile(claim(id_number=""), population)  # no lookup without an ID
    assert population.calls == 1


@pytest.mark.parametrize(("identity", "reason"), [
    (claim(id_number=""), NO_ID),
    (claim(id_number="   "), NO_ID),
    (claim(id_number="1234567"), ID_FORMAT),
    (claim(id_number="00120300456X"), ID_FORMAT),
    (claim(id_number="b1234567"), ID_FORMAT),
    (claim(id_number="００１２０３００４５６７"), ID_FORMAT),  # full-width digits are not digits here
    (claim(id_number="001203009999"), UNKNOWN_ID),
    (claim(name="Nguyễn Thị Hương"), NAME_MISMATCH),
    (claim(name="Nguyen Thi Hang"), NAME_MISMATCH),
    (claim(name=""), NAME_MISMATCH),
    (claim(birth="200304130000"), BIRTH_MISMATCH),
    (claim(birth="200305120000"), BIRTH_MISMATCH),
    (claim(birth="200404120000"), BIRTH_MISMATCH),
    (claim(birth="200300000000"), MATCHED),
    (claim(birth="20030412"), MATCHED),
    (claim(birth=""), BIRTH_MISMATCH),
    (claim(birth="000000000000"), BIRTH_MISMATCH),
    (claim(birth="200302300000"), BIRTH_MISMATCH),  # 30 February
    (claim(sex="1"), SEX_MISMATCH),
    (claim(sex=""), SEX_MISMATCH),
    (claim(sex="9"), SEX_MISMATCH),
])
def test_each_reason_alone(identity: ClaimIdentity, reason: str) -> None:
    result = check(identity)
    if reason == MATCHED:
        assert result.status == MATCHED
    else:
        assert result == Reconciliation(NEEDS_RECONCILIATION, (reason,), None)


def test_combinations_are_all_reported_in_a_stable_order() -> None:
    result = check(claim(name="Trần Văn Nam", birth="199001010000", sex="1"))
    assert result.reasons == (NAME_MISMATCH, BIRTH_MISMATCH, SEX_MISMATCH)
    assert check(claim(name="X", sex="1")).reasons == (NAME_MISMATCH, SEX_MISMATCH)
    assert check(claim(birth="", sex="")).reasons == (BIRTH_MISMATCH, SEX_MISMATCH)


def test_the_id_problem_short_circuits_the_rest() -> None:
    assert check(claim(id_number="", name="", birth="", sex="")).reasons == (NO_ID,)
    assert check(claim(id_number="12", name="", birth="", sex="")).reasons == (ID_FORMAT,)


def test_nfc_and_nfd_names_match_in_either_direction() -> None:
    nfd = unicodedata.normalize("NFD", NAME)
    assert nfd != NAME
    assert check(claim(name=nfd)).matched
    assert check(claim(), Citizen(ID, nfd, "20030412", "2")).matched


def test_case_and_whitespace_do_not_matter_but_diacritics_do() -> None:
    assert check(claim(name="  NGUYỄN   thị\u00a0HẰNG ")).matched
    assert normalise_name("ĐẶNG") == normalise_name("đặng") != normalise_name("dang")
    assert not check(claim(name="Nguyễn Thị Hàng")).matched  # Hằng vs Hàng: two different names


@pytest.mark.parametrize(("claimed", "registered", "same"), [
    ("197000000000", "19700512", True),    # only the year known on the claim
    ("197005000000", "19700512", True),
    ("197005120000", "19700000", True),    # only the year known in the registry
    ("197005120000", "19700500", True),
    ("197005000000", "19700600", False),   # months both known and different
    ("197000000000", "19710000", False),   # the year must always match
    ("197005121530", "19700512", True),    # hour and minute are not compared
    ("197000120000", "19700512", False),   # a day without a month is unreadable
    ("19700512", "", False),
    ("1970051", "19700512", False),
])
def test_partial_birth_dates(claimed: str, registered: str, same: bool) -> None:
    assert birth_matches(claimed, registered) is same
    assert check(claim(birth=claimed), Citizen(ID, NAME, registered, "2")).matched is same


@pytest.mark.parametrize(("claimed", "registered", "same"), [
    ("3", "1", True), ("3", "2", True), ("1", "3", True), ("2", "3", True), ("3", "3", True),
    ("1", "1", True), ("1", "2", False), ("2", "1", False), ("", "3", False), ("3", "", False),
])
def test_sex_three_is_undetermined_and_never_mismatches(claimed: str, registered: str, same: bool) -> None:
    result = check(claim(sex=claimed), Citizen(ID, NAME, "20030412", registered))
    assert result.matched is same
    assert same or result.reasons == (SEX_MISMATCH,)


@pytest.mark.parametrize("id_number", ["123456789", "B1234567", "001203004567"])
def test_passport_and_old_ids_are_looked_up(id_number: str) -> None:
    result = check(claim(id_number=id_number), Citizen(id_number, NAME, "20030412", "2"))
    assert result == Reconciliation(MATCHED, (), id_number)


def test_old_id_answered_with_the_new_number_keys_on_the_new_number() -> None:
    class Upgrading:
        def lookup(self, id_number: str) -> Citizen | None:
            return PERSON if id_number == "123456789" else None

        def lookup_by_social_insurance(self, number: str) -> Citizen | None:
            return None

    assert reconcile(claim(id_number="123456789"), Upgrading()).citizen_key_material == ID


def test_identity_from_summary_tolerates_missing_fields() -> None:
    identity = identity_from_summary({})
    assert (identity.id_number, identity.full_name, identity.birth, identity.sex) == ("", "", "", "")
    assert check(identity).reasons == (NO_ID,)


# --- the social-insurance number of the card -------------------------------------------------------------
def test_identity_from_summary_takes_the_social_insurance_numbers_of_the_cards() -> None:
    assert claim(card=CARD).social_insurance_numbers == (SOCIAL_INSURANCE,)
    assert claim(card=f" {CARD} ;HT2011234567890; {CARD}").social_insurance_numbers == (SOCIAL_INSURANCE,
                                                                                          "1234567890")
    assert claim(card=SOCIAL_INSURANCE).social_insurance_numbers == (SOCIAL_INSURANCE,)  # a 10-character card
    assert claim(card="GD479123").social_insurance_numbers == ()
    assert identity_from_summary({"MA_THE_BHYT": None}).social_insurance_numbers == ()  # type: ignore[dict-item]


@pytest.mark.parametrize(("number", "ok"), [
    ("7912345678", True), ("791234567", False), ("79123456789", False), (" 7912345678", False),
    ("GD47912345678", False), ("７９１２３４５６７８", False), ("7912345678;7912345678", False), ("", False),
])
def test_social_insurance_number_ok(number: str, ok: bool) -> None:
    assert social_insurance_number_ok(number) is ok


def test_a_visit_without_an_id_matches_by_its_card_and_keys_on_the_registry_id() -> None:
    population = FakePopulation([INSURED])
    result = reconcile(claim(id_number="", card=CARD), population)
    assert result == Reconciliation(MATCHED, (), ID)
    assert population.calls == 1


@pytest.mark.parametrize(("identity", "reasons"), [
    (claim(id_number="", card="GD4799999999999"), (UNKNOWN_SOCIAL_INSURANCE,)),
    (claim(id_number="", card=CARD, name="Nguyễn Thị Hương", birth="200404120000"), (NAME_MISMATCH, BIRTH_MISMATCH)),
    (claim(id_number="", card=CARD, sex="1"), (SEX_MISMATCH,)),
    (claim(id_number="1234567", card="GD4799999999999"), (ID_FORMAT, UNKNOWN_SOCIAL_INSURANCE)),
    (claim(id_number="1234567", card=CARD, name="X"), (ID_FORMAT, NAME_MISMATCH)),
    (claim(id_number="001203009999", card="GD4799999999999"), (UNKNOWN_ID, UNKNOWN_SOCIAL_INSURANCE)),
    (claim(id_number="", card=""), (NO_ID,)),
    (claim(id_number=" ", card="GD479123"), (NO_ID,)),  # a card without a social-insurance number: nothing to ask
])
def test_the_card_path_reasons(identity: ClaimIdentity, reasons: tuple[str, ...]) -> None:
    assert check(identity, INSURED) == Reconciliation(NEEDS_RECONCILIATION, reasons, None)


@pytest.mark.parametrize("id_number", ["1234567", "001203009999", "  "])
def test_a_malformed_unknown_or_missing_id_with_a_good_card_matches_through_the_card(id_number: str) -> None:
    assert check(claim(id_number=id_number, card=CARD), INSURED) == Reconciliation(MATCHED, (), ID)


def test_the_card_is_asked_only_when_the_id_does_not_match() -> None:
    population = FakePopulation([INSURED])
    assert reconcile(claim(card=CARD), population).matched and population.calls == 1
    # Both paths find the same person, who differs: each reason once.
    result = reconcile(claim(card=CARD, name="X", sex="1"), population)
    assert result.reasons == (NAME_MISMATCH, SEX_MISMATCH) and population.calls == 3


def test_an_id_that_finds_someone_else_still_leaves_the_card_to_match() -> None:
    # SO_CCCD names another registered person (a parent's ID on a child's claim): the card finds the patient.
    parent = Citizen("001170001234", "Nguyễn Văn Bình", "19700101", "1")
    result = check(claim(id_number=parent.id_number, card=CARD), parent, INSURED)
    assert result == Reconciliation(MATCHED, (), ID)


def test_each_card_number_is_tried_in_order() -> None:
    population = FakePopulation([INSURED])
    result = reconcile(claim(id_number="", card=f"GD4799999999999;{CARD};HT2011234567890"), population)
    assert result == Reconciliation(MATCHED, (), ID) and population.calls == 2  # the third is never asked
    other = Citizen("079085001234", "Trần Thị Đào", "19850101", "2", "1234567890")
    result = check(claim(id_number="", card="GD4799999999999;HT2011234567890"), INSURED, other)
    assert result.reasons == (NAME_MISMATCH, BIRTH_MISMATCH, UNKNOWN_SOCIAL_INSURANCE)


def test_a_hand_built_identity_never_sends_a_malformed_number() -> None:
    class Strict(FakePopulation):
        def lookup_by_social_insurance(self, number: str) -> Citizen | None:
            assert social_insurance_number_ok(number), "only well-formed numbers are looked up"
            return super().lookup_by_social_insurance(number)

    identity = ClaimIdentity("", NAME, "20030412", "2", social_insurance_numbers=("79123", CARD, SOCIAL_INSURANCE))
    assert reconcile(identity, Strict([INSURED])).matched
    assert reconcile(ClaimIdentity("", NAME, "20030412", "2", ("79123",)), Strict([INSURED])).reasons == (NO_ID,)


def test_the_fake_indexes_social_insurance_numbers_and_forgets_a_replaced_one() -> None:
    population = FakePopulation([INSURED, PERSON])  # the same ID again, now without a card number
    assert population.lookup(ID) == PERSON and population.lookup_by_social_insurance(SOCIAL_INSURANCE) is None
    population.add(INSURED)
    assert population.lookup_by_social_insurance(SOCIAL_INSURANCE) == INSURED and list(population) == [INSURED]


def test_no_personal_data_in_repr_or_str() -> None:
    leaks = [ID, "Nguyễn", "Hằng", "20030412", "2003", SOCIAL_INSURANCE]
    results = [check(claim()), check(claim(name="Trần Văn Nam", birth="199001010000", sex="1")),
               check(claim(id_number="001203009999")), check(claim(id_number="", card=CARD), INSURED),
               check(claim(id_number="", card="GD4799999999999"), INSURED)]
    shown = [repr(r) for r in results] + [str(r) for r in results] + [repr(claim(card=CARD)), str(PERSON),
                                                                       repr(INSURED), str(claim(card=CARD)),
                                                                       repr(FakePopulation([INSURED]))]
    for text in shown:
        for leak in leaks:
            assert leak not in text, text
    for result in results:
        assert set(result.reasons) <= set(REASONS)


def test_count_by_reason() -> None:
    results = [check(claim()), check(claim(sex="1")), check(claim(name="X", sex="1")),
               check(claim(id_number="")), check(claim(id_number="001203009999")),
               check(claim(id_number="", card="GD4799999999999"))]
    assert count_by_reason(results) == {NO_ID: 1, UNKNOWN_ID: 1, NAME_MISMATCH: 1, SEX_MISMATCH: 2,
                                        UNKNOWN_SOCIAL_INSURANCE: 1}
    assert list(count_by_reason(results)) == [NO_ID, UNKNOWN_ID, NAME_MISMATCH, SEX_MISMATCH, UNKNOWN_SOCIAL_INSURANCE]
    assert count_by_reason([]) == {}


# --- the fake, seeded from generated visits ---------------------------------------------------------------
VISITS = [build_visit(random.Random(n)) for n in range(200)]


@pytest.fixture(scope="module")
def seeded() -> FakePopulation:
    return FakePopulation.from_visits(VISITS, mismatch_rate=0.2, unknown_rate=0.1, seed=7)


def without_id_or_card(visits: list[Visit]) -> list[Visit]:
    """Copies with the identity shapes of real exports: no SO_CCCD (one in four), a malformed one, no card,
    two cards, and neither number."""
    changed = copy.deepcopy(visits)
    for n, visit in enumerate(changed):
        row = visit.tables["XML1"][0]
        if n % 4 == 1:
            row["SO_CCCD"] = ""
        elif n % 10 == 2:
            row["SO_CCCD"] = "1234567"
        elif n % 10 == 4:
            row["MA_THE_BHYT"] = ""
        elif n % 10 == 6:
            row["MA_THE_BHYT"] += f";HT201{n:010d}"
        elif n % 20 == 8:
            row["SO_CCCD"], row["MA_THE_BHYT"] = "", ""
    return changed


def assert_labels_predict_every_outcome(visits: list[Visit], population: FakePopulation) -> None:
    assert len(population.labels) == len(visits)
    assert "collision" not in population.label_counts()
    results = []
    for visit in visits:
        row = visit.tables["XML1"][0]
        label = population.labels[row["MA_LK"]]
        result = reconcile(identity_from_summary(row), population)
        results.append(result)
        if label.perturbed:
            assert result.status == NEEDS_RECONCILIATION, label
            assert result.reasons == label.expected, label
        else:
            assert result.status == MATCHED, label
            registered = row["SO_CCCD"] if len(row["SO_CCCD"]) == 12 else INVENTED_ID_PREFIX + row["MA_THE_BHYT"][-10:]
            assert result.citizen_key_material == registered, label
    expected = Counter(reason for label in population.labels.values() for reason in label.expected)
    assert count_by_reason(results) == dict(expected)


def test_labels_predict_every_outcome_over_200_visits(seeded: FakePopulation) -> None:
    assert_labels_predict_every_outcome(VISITS, seeded)
    # The card is asked only when the ID did not match (every generated visit has both).
    assert seeded.calls == len(VISITS) + sum(label.perturbed for label in seeded.labels.values())
    assert all(label.expected == (UNKNOWN_ID, UNKNOWN_SOCIAL_INSURANCE)
               for label in seeded.labels.values() if label.kind == "unknown")  # left out: neither number is known


def test_labels_predict_every_outcome_without_an_id_or_a_card() -> None:
    visits = without_id_or_card(VISITS[:120])
    population = FakePopulation.from_visits(visits, mismatch_rate=0.2, unknown_rate=0.1, seed=7)
    assert_labels_predict_every_outcome(visits, population)
    reasons = {reason for label in population.labels.values() for reason in label.expected}
    assert reasons == set(REASONS), reasons  # every path and every reason occurs
    assert population.label_counts()["nothing_to_look_up"] == 6
    assert any(label.expected == () for label, visit in zip(population.labels.values(), visits, strict=True)
               if not visit.tables["XML1"][0]["SO_CCCD"])  # matched by the card alone


def test_rates_are_roughly_honoured_and_every_kind_occurs(seeded: FakePopulation) -> None:
    counts = seeded.label_counts()
    unknown = counts.get("unknown", 0)
    mismatched = sum(n for kind, n in counts.items() if kind in ("name", "birth", "sex", "name+birth", "birth+sex"))
    assert 8 <= unknown <= 35 and 20 <= mismatched <= 60, counts
    for kind in ("name", "birth", "sex", "nfd", "case_space", "partial_birth", "sex_3", "none"):
        assert counts.get(kind), (kind, counts)
    assert len(seeded) == len(VISITS) - unknown


def test_seeding_is_deterministic_and_zero_rates_match_everyone() -> None:
    again = FakePopulation.from_visits(VISITS, mismatch_rate=0.2, unknown_rate=0.1, seed=7)
    other = FakePopulation.from_visits(VISITS, mismatch_rate=0.2, unknown_rate=0.1, seed=8)
    assert again.labels == FakePopulation.from_visits(VISITS, mismatch_rate=0.2, unknown_rate=0.1, seed=7).labels
    assert again.labels != other.labels
    clean = FakePopulation.from_visits(VISITS[:50], mismatch_rate=0, unknown_rate=0, seed=1)
    assert all(reconcile(identity_from_summary(v.tables["XML1"][0]), clean).matched for v in VISITS[:50])
    everyone = FakePopulation.from_visits(VISITS[:50], mismatch_rate=0, unknown_rate=1, seed=1)
    assert len(everyone) == 0


@pytest.mark.parametrize(("mismatch", "unknown"), [(-0.1, 0), (0, 1.5), (0.6, 0.6)])
def test_bad_rates_are_refused(mismatch: float, unknown: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        FakePopulation.from_visits(VISITS[:1], mismatch_rate=mismatch, unknown_rate=unknown, seed=0)


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    visits = without_id_or_card(VISITS)
    seeded = FakePopulation.from_visits(visits, mismatch_rate=0.2, unknown_rate=0.1, seed=7)
    path = tmp_path / "population.json"
    seeded.dump(path)
    loaded = FakePopulation.load(path)
    assert loaded.labels == seeded.labels and len(loaded) == len(seeded) and list(loaded) == list(seeded)
    for visit in visits:
        identity = identity_from_summary(visit.tables["XML1"][0])
        assert reconcile(identity, loaded) == reconcile(identity, seeded)
    citizens = json.loads(path.read_text(encoding="utf-8"))["citizens"]
    assert any(unicodedata.is_normalized("NFD", c["full_name"]) and not unicodedata.is_normalized("NFC", c["full_name"])
               for c in citizens)
    assert {social_insurance_number_ok(c["social_insurance_number"]) or c["social_insurance_number"]
            for c in citizens} == {True, ""}  # kept, including "" for a citizen without a card


def test_load_reads_a_file_written_before_social_insurance_numbers(tmp_path: Path) -> None:
    path = tmp_path / "population.json"
    path.write_text(json.dumps({"version": 1, "citizens": [{"id_number": ID, "full_name": NAME, "birth": "20030412",
                                                            "sex": "2"}]}), encoding="utf-8")
    loaded = FakePopulation.load(path)
    assert list(loaded) == [PERSON] and loaded.lookup_by_social_insurance("") is None


def test_load_refuses_foreign_files_without_echoing_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"version": 1, "citizens": [{"id_number": "001203004567"}]}', encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        FakePopulation.load(path)
    assert "001203004567" not in str(caught.value)
    path.write_text('{"version": 1, "citizens": ["001203004567"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="malformed") as caught:
        FakePopulation.load(path)
    assert "001203004567" not in str(caught.value)
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="version"):
        FakePopulation.load(path)


# --- robustness -------------------------------------------------------------------------------------------
class AnyRegistry:
    """Answers every lookup with whatever hypothesis drew (including garbage records)."""

    def __init__(self, citizen: Citizen | None) -> None:
        self.citizen = citizen

    def lookup(self, id_number: str) -> Citizen | None:
        return self.citizen

    def lookup_by_social_insurance(self, number: str) -> Citizen | None:
        return self.citizen


texts = st.text(max_size=20)
shaped = st.one_of(texts, st.from_regex(r"[0-9]{8}|[0-9]{12}|[0-9]{9}|[A-Z][0-9]{7}|[A-Z]{2}[1-5][0-9]{12}",
                                        fullmatch=True),
                   st.sampled_from(["1", "2", "3", NAME, unicodedata.normalize("NFD", NAME), CARD, SOCIAL_INSURANCE]))


@given(row=st.dictionaries(st.sampled_from(["SO_CCCD", "HO_TEN", "NGAY_SINH", "GIOI_TINH", "MA_THE_BHYT", "MA_LK"]),
                           shaped),
       citizen=st.one_of(st.none(), st.builds(Citizen, shaped, shaped, shaped, shaped, shaped)))
def test_reconcile_never_raises_and_keeps_its_invariants(row: dict[str, str], citizen: Citizen | None) -> None:
    result = reconcile(identity_from_summary(row), AnyRegistry(citizen))
    assert set(result.reasons) <= set(REASONS)
    assert result.matched == (result.reasons == ()) == (result.citizen_key_material is not None)
    assert result.status in (MATCHED, NEEDS_RECONCILIATION)
    assert repr(result) == repr(Reconciliation(result.status, result.reasons))  # nothing else is shown
