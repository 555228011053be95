"""The delivery functions' wiring: secrets re-read after their TTL, missing configuration named."""

from __future__ import annotations

import json

import pytest
from healthbook.aws.delivery_runtime import DeliveryRuntime

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
