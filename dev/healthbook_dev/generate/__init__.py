"""Realistic synthetic submissions for tests, the demo and the benchmarks (one visit per file)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from healthbook_dev.generate.defects import INJECTORS, Defect, inject
from healthbook_dev.generate.his_export import HisExport, his_export_batch
from healthbook_dev.generate.visit import SCENARIOS, Visit, build_visit, current_standard
from healthbook_dev.generate.writer import checkin_document, envelope, table_document

__all__ = [
    "INJECTORS",
    "SCENARIOS",
    "Defect",
    "HisExport",
    "Visit",
    "build_visit",
    "checkin_document",
    "current_standard",
    "envelope",
    "facility_named",
    "generate_batch",
    "generate_his_export",
    "his_export_batch",
    "inject",
    "submission",
    "table_document",
]

MANIFEST = "manifest.json"


def submission(visit: Visit, defect: Defect | None = None) -> bytes:
    return envelope([visit], **(defect.envelope if defect else {}))


def facility_named(code: str) -> tuple[str, str, str]:
    """A facility of the vocabulary, or a made-up one for any other 5-digit code (province = first 2 digits)."""
    from healthbook_dev.generate.vocab import FACILITIES

    for facility in FACILITIES:
        if facility[0] == code:
            return facility
    if len(code) != 5 or not code.isascii() or not code.isdigit():
        raise ValueError(f"a facility code is 5 digits, not {code!r}")
    return code, f"Cơ sở KBCB {code}", code[:2]


def generate_batch(out_dir: Path, *, visits: int, seed: int = 0, defect_rate: float = 0.0,
                   standard: str = "4750", detail_rows: int | None = None,
                   facility: str | None = None) -> dict[str, Any]:
    """Write ``visits`` files plus ``manifest.json`` naming each file's scenario and injected defect."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    chosen = facility_named(facility) if facility else None
    for number in range(1, visits + 1):
        visit = build_visit(rng, standard=standard, detail_rows=detail_rows, facility=chosen)
        defect = inject(visit, rng) if rng.random() < defect_rate else None
        name = f"{visit.facility}_{number:06d}.xml"
        (out_dir / name).write_bytes(submission(visit, defect))
        entries.append({"file": name, "ma_lk": visit.ma_lk, "facility": visit.facility, "scenario": visit.scenario,
                        "standard": visit.standard, "defect": defect.label() if defect else None})
    return _write_manifest(out_dir, {"seed": seed, "visits": visits, "defect_rate": defect_rate, "files": entries})


def generate_his_export(out_dir: Path, *, visits: int, seed: int = 0, facility: str | None = None) -> dict[str, Any]:
    """Write ``visits`` files shaped like real HIS exports (see his_export) plus ``manifest.json`` with their labels."""
    chosen = {"facility": facility_named(facility)} if facility else {}
    exports = his_export_batch(seed, visits, **chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    for export in exports:
        (out_dir / export.file).write_bytes(export.body)
    return _write_manifest(out_dir, {"seed": seed, "visits": visits, "mode": "his-export",
                                     "files": [export.label() for export in exports]})


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    (out_dir / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return manifest
