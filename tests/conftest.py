"""Shared test helpers: where the official annex lives, and small builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def spec_dir() -> Path | None:
    """../shared/spec beside the checkout (CI clones main with shared/ beside it), or $HEALTHBOOK_SPEC."""
    for candidate in (os.environ.get("HEALTHBOOK_SPEC"), ROOT.parent / "shared" / "spec", ROOT / "../shared/spec"):
        if candidate and (Path(candidate) / "tables" / "pl_01.tsv").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def spec() -> Path:
    found = spec_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the standard against ../shared/spec, but it is missing")
        pytest.skip("../shared/spec (the official annex) is not beside this checkout")
    return found
