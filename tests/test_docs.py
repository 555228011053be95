"""Generated documents stay current."""

from __future__ import annotations

from pathlib import Path

from healthbook.validation.catalogue import RULES
from healthbook_dev.docs import errors_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_errors_md_is_generated_from_the_catalogue() -> None:
    assert (ROOT / "docs" / "errors.md").read_text(encoding="utf-8") == errors_markdown(), \
        "run `make docs` to regenerate docs/errors.md"


def test_every_rule_has_both_messages() -> None:
    for rule in RULES.values():
        assert rule.message_vi.strip() and rule.message_en.strip(), rule.code
        assert rule.severity in ("error", "warning")
