"""Provinces and communes by the date they are in force (data/administrative-units.json).

On 1 July 2025 districts were abolished and 63 provinces became 34: a visit's province is named by the units in
force on its date, and a report rolls up by the units in force in its period (docs/reports.md).
"""

from __future__ import annotations

import json
from datetime import date
from functools import cache
from importlib import resources
from typing import Any


@cache
def _units() -> dict[str, Any]:
    text = resources.files("healthbook.standard").joinpath("data/administrative-units.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def reform_day() -> date:
    """The first day of the two-level local government (34 provinces, communes, no districts)."""
    return date.fromisoformat(_units()["reform"]["effective_from"])


def after_reform(day: date | None) -> bool:
    """Whether ``day`` falls under the 34 provinces; an unknown day counts as today's units."""
    return day is None or day >= reform_day()


def provinces_on(day: date | None) -> dict[str, str]:
    """Province code -> name of the provinces in force on ``day``."""
    if after_reform(day):
        return {code: entry["name"] for code, entry in _units()["provinces_after_reform"]["codes"].items()}
    return dict(_units()["provinces_before_reform"]["codes"])


@cache
def _successor() -> dict[str, str]:
    return {old: new for new, entry in _units()["provinces_after_reform"]["codes"].items() for old in entry["merged"]}


def province_after(code: str) -> str:
    """The province of the 34 that holds ``code``: a pre-reform code maps to its merged province, a current code
    to itself (every new code is the code of one of the provinces merged into it); an unknown code is kept."""
    return _successor().get(code, code)


def province_on(code: str, day: date | None) -> str:
    """``code`` in the units in force on ``day``: the merged province after the reform, as written before."""
    return province_after(code) if after_reform(day) else code


def commune_name(code: str) -> str | None:
    """The commune's name when the deployment holds the list (data/administrative-units.json 'communes')."""
    entry = _units()["communes"]["codes"].get(code)
    return str(entry["name"]) if entry else None
