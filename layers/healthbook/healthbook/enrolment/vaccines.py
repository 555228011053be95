"""The vaccine code list (healthbook/standard/data/vaccines.json): the expanded programme's (TCMR) vaccines and the
Covid-19 vaccines used in Vietnam, with their Vietnamese and English names and where the list comes from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Vaccine:
    code: str
    programme: str  # "TCMR" or "COVID19"
    name_vi: str
    name_en: str
    prevents: tuple[str, ...]
    assumption: bool = False  # listed on our own reading, to check (docs/enrolment.md)


@cache
def document() -> dict[str, Any]:
    """The whole file: ``system``, ``sources``, ``assumptions``, ``vaccines``."""
    text = resources.files("healthbook.standard").joinpath("data/vaccines.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def vaccines() -> dict[str, Vaccine]:
    """Code -> vaccine, in the file's order."""
    out: dict[str, Vaccine] = {}
    for item in document()["vaccines"]:
        out[item["code"]] = Vaccine(item["code"], item["programme"], item["name_vi"], item["name_en"],
                                    tuple(item["prevents"]), bool(item.get("assumption", False)))
    return out


def lookup(code: str) -> Vaccine | None:
    """The vaccine of ``code`` (case and surrounding spaces ignored), None when the list does not hold it."""
    return vaccines().get(code.strip().upper())


def system() -> str:
    """The FHIR code system of these codes (Immunization.vaccineCode.coding.system)."""
    return str(document()["system"])
