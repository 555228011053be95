"""What each Lambda handler loads on a cold start: only what its work needs (issue 14). The delivery, report and
portal functions never validate or verify a file, so they must not pay for lxml, signxml or the validator; no
handler may load development code. Each handler is imported in a fresh interpreter, as Lambda does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("lxml", "signxml", "openpyxl", "healthbook.validation", "healthbook.pipeline", "healthbook.signing.xmldsig")
NEVER = ("healthbook_dev", "moto", "pytest", "hypothesis", "http.server")
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import gc
import app
print(json.dumps({"modules": sorted(sys.modules), "gc": [gc.isenabled(), gc.get_freeze_count()]}))
"""


def _import(function: str) -> dict[str, Any]:
    env = {**os.environ, "AWS_REGION": "ap-southeast-1", "AWS_DEFAULT_REGION": "ap-southeast-1",
           "POWERTOOLS_TRACE_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "functions" / function)], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _loaded(function: str) -> set[str]:
    return set(_import(function)["modules"])


def _among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if any(m == name or m.startswith(name + ".") for m in modules))


@pytest.mark.parametrize("function", ["delivery", "report", "portal", "enrolment"])
def test_delivery_report_and_portal_load_neither_the_validator_nor_xml_signatures(function: str) -> None:
    assert _among(_loaded(function), HEAVY) == []


@pytest.mark.parametrize("function", ["ingest", "delivery", "report", "portal", "enrolment"])
def test_no_handler_loads_development_code(function: str) -> None:
    assert _among(_loaded(function), NEVER) == []


def test_ingest_loads_what_it_needs() -> None:
    # the check that the probe sees imports at all: ingest validates and verifies, and never signs XML (signxml
    # is for healthbook.signing.xml_signer; the verifier reads only its schema files)
    assert _among(_loaded("ingest"), HEAVY) == ["healthbook.pipeline", "healthbook.signing.xmldsig",
                                                "healthbook.validation", "lxml"]


@pytest.mark.parametrize("function", ["ingest", "delivery", "report", "portal", "enrolment"])
def test_each_handler_collects_garbage_again_once_loaded(function: str) -> None:
    # the collector is paused while the modules load (docs/performance.md): it must be running again, with what
    # the cold start built frozen out of its way
    enabled, frozen = _import(function)["gc"]
    assert enabled and frozen > 10_000
