"""Shared test helpers: where the official annex lives, and small builders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def ddb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's DynamoDB holding the stack's tables (``healthbook_dev.aws.sandbox.NAMES``), in the stack's region. A
    module that needs other tables defines its own ``ddb``."""
    import boto3
    from healthbook_dev.aws.sandbox import NAMES, REGION, create_tables
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        create_tables(client, NAMES)
        yield client
