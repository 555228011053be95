"""An in-memory population database for tests and the demo, seeded from generated visits.

Each visit's citizen is registered as the claim describes them, under its ID number and its
social-insurance number, except for a seeded, labelled share that is perturbed (name, birth date
or sex changed, or the citizen left out) so the reconciliation path can be exercised and its
counts checked against the labels. Untouched citizens may be registered in a harmless variant
(NFD name, other case/spacing, partly unknown birth date, sex "3") that the rules must still MATCH.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthbook.reconcile.matching import (
    BIRTH_MISMATCH,
    ID_FORMAT,
    NAME_MISMATCH,
    NO_ID,
    SEX_MISMATCH,
    UNKNOWN_ID,
    UNKNOWN_SOCIAL_INSURANCE,
    Citizen,
    ClaimIdentity,
    PopulationRegistry,
    id_format_ok,
    identity_from_summary,
    normalise_name,
)

if TYPE_CHECKING:
    from healthbook_dev.generate.visit import Visit

__all__ = ["MISMATCH_KINDS", "VARIANT_KINDS", "FakePopulation", "Perturbation"]

FORMAT_VERSION = 1

# kind -> the reasons reconcile() must give for it
MISMATCH_KINDS: dict[str, tuple[str, ...]] = {
    "name": (NAME_MISMATCH,),
    "birth": (BIRTH_MISMATCH,),
    "sex": (SEX_MISMATCH,),
    "name+birth": (NAME_MISMATCH, BIRTH_MISMATCH),
    "birth+sex": (BIRTH_MISMATCH, SEX_MISMATCH),
}
UNKNOWN_KIND = "unknown"
NOTHING_TO_LOOK_UP_KIND = "nothing_to_look_up"  # no well-formed SO_CCCD and no card number: nobody registered
# A visit without a usable SO_CCCD is registered under "99" + its social-insurance number: 12 digits (a valid ID,
# so the citizen key exists), the same for every visit of that number, and never a generated ID (no province 099).
INVENTED_ID_PREFIX = "99"
# harmless differences: reconcile() must still MATCH
VARIANT_KINDS = ("none", "nfd", "case_space", "partial_birth", "sex_3")
VARIANT_SHARE = 0.4  # of the untouched citizens, how many get a harmless variant


@dataclass(frozen=True)
class Perturbation:
    """What was done to the citizen of one visit (``visit`` is its MA_LK, not personal data)."""

    visit: str
    kind: str
    expected: tuple[str, ...]  # reasons reconcile() must return; () = MATCHED

    @property
    def perturbed(self) -> bool:
        return bool(self.expected)


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text.replace("Đ", "D").replace("đ", "d"))
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _other_name(name: str) -> str:
    """A name that differs after normalisation: without diacritics if that changes it, else another given name."""
    bare = _strip_marks(name)
    if normalise_name(bare) != normalise_name(name):
        return bare
    words = name.split() or [""]
    words[-1] = "An" if words[-1].casefold() != "an" else "Bình"
    return " ".join(words)


def _other_birth(birth: str, rng: random.Random) -> str:
    """Another fully known date: a different day of the month, or a different year."""
    year, month, day = int(birth[:4]), int(birth[4:6]) or 1, int(birth[6:8]) or 1
    if rng.random() < 0.5:
        day = day % 28 + 1
    else:
        year += rng.choice((-1, 1))
    return f"{year:04d}{month:02d}{day:02d}"


class FakePopulation(PopulationRegistry):
    """In-memory :class:`PopulationRegistry`. ``calls`` counts lookups (by ID and by social-insurance number);
    ``labels`` maps MA_LK to the :class:`Perturbation` applied when seeded with :meth:`from_visits` (empty
    otherwise)."""

    def __init__(self, citizens: Iterable[Citizen] = (), labels: Mapping[str, Perturbation] | None = None) -> None:
        self._citizens: dict[str, Citizen] = {}
        self._by_social_insurance: dict[str, Citizen] = {}
        for citizen in citizens:
            self.add(citizen)
        self.labels: dict[str, Perturbation] = dict(labels or {})
        self.calls = 0

    def __repr__(self) -> str:
        return f"FakePopulation({len(self._citizens)} citizens, {self.calls} lookups)"

    def __len__(self) -> int:
        return len(self._citizens)

    def __iter__(self) -> Iterator[Citizen]:
        """The registered citizens (to copy some into another population: ``other.add(citizen)``)."""
        return iter(list(self._citizens.values()))

    def add(self, citizen: Citizen) -> None:
        """Register ``citizen``, replacing the record of the same ID number (and its social-insurance number)."""
        previous = self._citizens.get(citizen.id_number)
        if previous is not None and self._by_social_insurance.get(previous.social_insurance_number) is previous:
            del self._by_social_insurance[previous.social_insurance_number]
        self._citizens[citizen.id_number] = citizen
        if citizen.social_insurance_number:
            self._by_social_insurance[citizen.social_insurance_number] = citizen

    def lookup(self, id_number: str) -> Citizen | None:
        self.calls += 1
        return self._citizens.get(id_number)

    def lookup_by_social_insurance(self, number: str) -> Citizen | None:
        self.calls += 1
        return self._by_social_insurance.get(number)

    def label_counts(self) -> dict[str, int]:
        """How many visits got each kind of perturbation or variant."""
        return dict(Counter(label.kind for label in self.labels.values()))

    # --- seeding -------------------------------------------------------------------------------------
    @classmethod
    def from_visits(cls, visits: Iterable[Visit], *, mismatch_rate: float, unknown_rate: float,
                    seed: int) -> FakePopulation:
        """Register each visit's citizen (XML1) under its ID number and the first social-insurance number of
        its card; ``unknown_rate`` of them are left out and ``mismatch_rate`` are registered with a differing
        name, birth date and/or sex. A visit without a well-formed SO_CCCD is registered under an invented ID
        number (:data:`INVENTED_ID_PREFIX`); one with nothing to look up is labelled and not registered.

        The first visit of a number decides its record; a later visit with the same ID or social-insurance
        number is labelled like it when the identities agree, else ``kind="collision"`` with no expectation
        (does not happen with the generator's numbers in practice).
        """
        if not (0 <= mismatch_rate <= 1 and 0 <= unknown_rate <= 1 and mismatch_rate + unknown_rate <= 1):
            raise ValueError("mismatch_rate and unknown_rate must be in [0, 1] and sum to at most 1")
        rng = random.Random(seed)
        population = cls()
        seen: dict[str, tuple[Citizen, str]] = {}  # ID and social-insurance numbers (never the same length)
        for visit in visits:
            row = visit.tables["XML1"][0]
            identity = identity_from_summary(row)
            key = row.get("MA_LK", "")
            truth = _as_claimed(identity)
            if truth is None:
                kind = NOTHING_TO_LOOK_UP_KIND
            elif (earlier := seen.get(truth.id_number) or seen.get(truth.social_insurance_number)) is not None:
                first, kind = earlier
                if first != truth:
                    population.labels[key] = Perturbation(key, "collision", ())
                    continue
            else:
                draw = rng.random()
                if draw < unknown_rate:
                    kind = UNKNOWN_KIND
                elif draw < unknown_rate + mismatch_rate:
                    kind = rng.choice(sorted(MISMATCH_KINDS))
                    population.add(_mismatched(truth, kind, rng))
                else:
                    kind = rng.choice(VARIANT_KINDS[1:]) if rng.random() < VARIANT_SHARE else "none"
                    population.add(_variant(truth, kind, rng))
                seen[truth.id_number] = (truth, kind)
                if truth.social_insurance_number:
                    seen[truth.social_insurance_number] = (truth, kind)
            population.labels[key] = Perturbation(key, kind, _expected(kind, identity))
        return population

    # --- persistence ---------------------------------------------------------------------------------
    def dump(self, path: str | Path) -> None:
        """Write citizens and labels as UTF-8 JSON (names kept in their normalisation form)."""
        document: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "citizens": [asdict(c) for c in self._citizens.values()],
            "labels": [{"visit": p.visit, "kind": p.kind, "expected": list(p.expected)} for p in self.labels.values()],
        }
        Path(path).write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> FakePopulation:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a population file of format version {FORMAT_VERSION}")
        try:
            citizens = [Citizen(str(c["id_number"]), str(c["full_name"]), str(c["birth"]), str(c["sex"]),
                                str(c.get("social_insurance_number", "")))  # absent from files written before it
                        for c in document["citizens"]]
            labels = [Perturbation(str(p["visit"]), str(p["kind"]), tuple(str(r) for r in p["expected"]))
                      for p in document.get("labels", [])]
        except (KeyError, TypeError, AttributeError) as exc:  # no values in the message: they are personal data
            raise ValueError("malformed population file") from exc
        return cls(citizens, {p.visit: p for p in labels})


def _as_claimed(identity: ClaimIdentity) -> Citizen | None:
    """The claim's person as the registry would hold them, or ``None`` when the claim gives nothing to look up."""
    id_number = identity.id_number.strip()
    numbers = identity.social_insurance_numbers
    if not id_format_ok(id_number):
        if not numbers:
            return None
        id_number = INVENTED_ID_PREFIX + numbers[0]
    return Citizen(id_number, identity.full_name, identity.birth[:8], identity.sex, numbers[0] if numbers else "")


def _expected(kind: str, identity: ClaimIdentity) -> tuple[str, ...]:
    """The reasons reconcile() must give for this visit when its citizen got ``kind``: what each path the visit
    offers (SO_CCCD, each card number) finds, in the order of REASONS. Only the first card number is registered."""
    id_number = identity.id_number.strip()
    numbers = identity.social_insurance_numbers
    malformed = (ID_FORMAT,) if id_number and not id_format_ok(id_number) else ()
    other_cards = (UNKNOWN_SOCIAL_INSURANCE,) if len(numbers) > 1 else ()
    if kind == NOTHING_TO_LOOK_UP_KIND:
        return malformed or (NO_ID,)
    if kind == UNKNOWN_KIND:
        return (malformed + ((UNKNOWN_ID,) if id_format_ok(id_number) else ())
                + ((UNKNOWN_SOCIAL_INSURANCE,) if numbers else ()))
    if kind in MISMATCH_KINDS:
        return malformed + MISMATCH_KINDS[kind] + other_cards
    return ()  # a harmless variant: the first path that finds the citizen matches


def _mismatched(truth: Citizen, kind: str, rng: random.Random) -> Citizen:
    registered = truth
    if "name" in kind:
        registered = replace(registered, full_name=_other_name(registered.full_name))
    if "birth" in kind:
        registered = replace(registered, birth=_other_birth(registered.birth, rng))
    if "sex" in kind:
        registered = replace(registered, sex={"1": "2", "2": "1"}.get(registered.sex, "1"))
    return registered


def _variant(truth: Citizen, kind: str, rng: random.Random) -> Citizen:
    if kind == "nfd":
        return replace(truth, full_name=unicodedata.normalize("NFD", truth.full_name))
    if kind == "case_space":
        return replace(truth, full_name="  " + "   ".join(truth.full_name.upper().split()) + " ")
    if kind == "partial_birth":
        return replace(truth, birth=truth.birth[:4] + ("0000" if rng.random() < 0.5 else truth.birth[4:6] + "00"))
    if kind == "sex_3":
        return replace(truth, sex="3")
    return truth
