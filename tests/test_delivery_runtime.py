"""The delivery functions' wiring: secrets re-read after their TTL, missing configuration named."""

from __future__ import annotations

import json
import traceback
from typing import Any

import pytest
from healthbook.aws.delivery_runtime import DeliveryRuntime, run_step
from healthbook.delivery.contracts import StepInput, StepResult
from healthbook.vneid.client import RetryableDeliveryError

moto = pytest.importorskip("moto")


def _oauth2(client_id: str) -> str:
    return json.dumps({"type": "oauth2", "token_url": "http://127.0.0.1:9/token", "client_id": client_id,
                       "client_secret": "s"})


def test_rotated_vneid_credentials_are_used_after_the_ttl_and_the_old_client_is_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        secrets = boto3.client("secretsmanager")
        arn = secrets.create_secret(Name="vneid", SecretString=_oauth2("first"))["ARN"]
        pepper = secrets.create_secret(Name="pepper", SecretString="a-pepper-of-24-characters")["ARN"]
        now = [0.0]
        runtime = DeliveryRuntime(env={"VNEID_URL": "http://127.0.0.1:9", "VNEID_SECRET": arn,
                                       "CITIZEN_PEPPER_SECRET": pepper, "POPULATION_URL": "http://127.0.0.1:9",
                                       "VISITS_TABLE": "visits", "SECRETS_TTL_SECONDS": "60"}, clock=lambda: now[0])
        first = runtime.deliver().vneid
        closed: list[bool] = []
        monkeypatch.setattr(first, "close", lambda: closed.append(True))
        secrets.put_secret_value(SecretId=arn, SecretString=_oauth2("rotated"))
        now[0] = 59
        assert runtime.deliver().vneid is first and not closed  # within the TTL: the cached client
        now[0] = 61
        second = runtime.deliver().vneid
        assert second is not first and second.auth.client_id == "rotated" and closed == [True]


def test_each_step_names_the_variables_it_is_missing() -> None:
    with pytest.raises(ValueError, match=r"^missing environment variable\(s\): VISITS_TABLE$"):
        DeliveryRuntime(env={}).settle()
    with pytest.raises(ValueError, match=r"^missing environment variable\(s\): CITIZEN_PEPPER_SECRET, POPULATION_URL, "
                                         r"VISITS_TABLE, VNEID_SECRET, VNEID_URL$"):
        DeliveryRuntime(env={}).deliver()
    with pytest.raises(ValueError, match="DELIVERY_STATE_MACHINE_ARN"):
        DeliveryRuntime(env={"VISITS_TABLE": "v"}).sweeper()
    with pytest.raises(ValueError, match="safety margin"):  # the default 1 h margin exceeds 60 s
        DeliveryRuntime(env={"VISITS_TABLE": "v", "DEADLINE_SECONDS": "60"}).settle()


class _Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def append_keys(self, **keys: Any) -> None:
        pass

    def warning(self, message: str, *, extra: dict[str, Any]) -> None:
        self.warnings.append((message, extra))


class _Count:
    def __init__(self) -> None:
        self.names: list[str] = []

    def count(self, name: str, value: int = 1, **dimensions: str) -> None:
        self.names.append(name)


def _vneid_down(_: StepInput) -> StepResult:
    try:
        raise ConnectionError("reset by peer")
    except ConnectionError as exc:
        raise RetryableDeliveryError("VNeID unreachable") from exc


def _a_bug(_: StepInput) -> StepResult:
    raise KeyError("records")


def test_an_outage_the_workflow_retries_is_raised_without_its_traceback_and_a_bug_with_all_of_it() -> None:
    """The Lambda runtime logs the traceback of every error raised: during a VNeID outage those were most of the
    log bytes. An outage keeps its class (the Retry matches it) and its message, not where it was found."""
    event = {"visit_id": "01001#A", "version": "v"}
    log, count = _Log(), _Count()
    with pytest.raises(RetryableDeliveryError, match="VNeID unreachable") as caught:
        run_step(StepInput, event, _vneid_down, logger=log, metrics=count)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "run_step" and "_vneid_down" not in frames  # from where run_step raised it again
    assert "ConnectionError" not in "".join(traceback.format_exception(caught.value))  # nor the error it came from
    with pytest.raises(KeyError) as bug:
        run_step(StepInput, event, _a_bug, logger=log, metrics=count)
    assert [frame.name for frame in traceback.extract_tb(bug.value.__traceback__)][-1] == "_a_bug"  # a bug keeps it
    assert count.names == ["DeliveryStepFailures"] * 2
    assert [extra["error"] for _, extra in log.warnings] == ["RetryableDeliveryError", "KeyError"]
