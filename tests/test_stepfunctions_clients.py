"""The LocalStack plugin that keeps Step Functions' task clients (infra/localstack/healthbook_localstack/
stepfunctions_clients.py): one client per service, region and role, made again after its time."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

PLUGIN = (Path(__file__).resolve().parents[1] / "infra" / "localstack" / "healthbook_localstack"
          / "stepfunctions_clients.py")


def _plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthbook_stepfunctions_clients", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_client_is_made_once_per_service_region_and_role_until_its_time_is_up() -> None:
    made: list[tuple[str, str, str]] = []

    def make(*, service: str, region: str, state_credentials: Any) -> object:
        made.append((service, region, state_credentials.role_arn))
        return object()

    now = [0.0]
    client_for = _plugin().caching(make, ttl_s=600, clock=lambda: now[0])
    role, other = SimpleNamespace(role_arn="arn:role/delivery"), SimpleNamespace(role_arn="arn:role/enrolment")
    first = client_for("lambda", "us-east-1", role)
    assert client_for("lambda", "us-east-1", SimpleNamespace(role_arn="arn:role/delivery")) is first
    assert client_for("lambda", "us-east-1", other) is not first
    assert client_for("s3", "us-east-1", role) is not first
    assert client_for("lambda", "ap-southeast-1", role) is not first
    assert len(made) == 4
    now[0] = 599.0
    assert client_for("lambda", "us-east-1", role) is first and len(made) == 4
    now[0] = 600.0
    assert client_for("lambda", "us-east-1", role) is not first and len(made) == 5
