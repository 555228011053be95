"""The README's first command: the whole pipeline, locally, on moto."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from healthbook_dev.cli import main

pytestmark = pytest.mark.slow  # the whole pipeline on moto, about 15 s


def test_demo_runs_the_pipeline_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--visits", "24", "--out", str(out), "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "receipts written and verified offline: 24/24" in printed
    assert "redelivered 10 messages: records unchanged" in printed
    assert "labelled defects missed: 0; clean files with an issue: 0" in printed
    assert "findings (visits admitted) by code:" in printed
    delivered = re.search(r"health book: (\d+) visits delivered to VNeID, (\d+) awaiting identity reconciliation",
                          printed)
    assert delivered, printed
    accepted = int(re.search(r"total\s+24\s+(\d+)", printed).group(1))  # type: ignore[union-attr]
    assert int(delivered.group(1)) + int(delivered.group(2)) == accepted and int(delivered.group(1)) > 0
    assert ", 0 pending, 0 past the deadline" in printed
    assert "<html" in (out / "citizen.html").read_text(encoding="utf-8").lower()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest) == 24 and len(list((out / "receipts").rglob("*.receipt.json"))) == 24
    log = (out / "lambda.log").read_text(encoding="utf-8")
    assert '"_aws"' in log and "object accepted" in log  # EMF metrics and structured logs went to the log
    # No citizen ID (12 digits starting with 0) or insurance card number anywhere the demo wrote text. Not after
    # a "-": the last group of a UUID (request and message ids) is 12 hex digits, all decimal now and then.
    # A CCCD is a whole token: twelve digits inside a hex digest ("065252483601ab…", about one digest in 7,500)
    # are not one, so the match may not touch a letter on either side.
    personal = re.compile(r"(?<![0-9A-Za-z-])0[0-9]{11}(?![0-9A-Za-z])|[A-Z]{2}[1-5][0-9]{12}")
    for text in [log, *(p.read_text(encoding="utf-8") for p in (out / "receipts").rglob("*.json"))]:
        assert not personal.search(text)
