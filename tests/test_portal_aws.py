"""The portal API through its real adapters (healthbook.aws.portal_store) and the Lambda handler
(functions/portal/app.py), on moto: DynamoDB, S3, Secrets Manager and KMS in memory. The events are
events/portal_token.json and events/portal_submit.json, as API Gateway's REST proxy integration sends them."""

from __future__ import annotations

import base64
import copy
import io
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from argon2 import PasswordHasher
from healthbook.aws.portal_runtime import PortalRuntime, request_of
from healthbook.aws.portal_store import AccountExists, PortalAccounts, load_token_key
from healthbook.kernel import is_transaction_id, portal_inbox_key
from healthbook.portal.credentials import SecretHasher, password_md5, verify_secret
from healthbook.portal.service import receipt_key
from healthbook_dev.aws.sandbox import LambdaContext, create_tables, load_function

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)
FAST = SecretHasher(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
TABLE, INBOX, RECEIPTS, SECRET = "healthbook-dev-portal", "healthbook-dev-inbox", "healthbook-dev-receipts", \
    "healthbook/dev/portal-token-key"
USER, MD5 = "bv01001.his", password_md5("Mat-khau-thu-nghiem-01001")  # the events' account
OTHER, OTHER_MD5 = "bv79001.his", password_md5("another-password-79001")
XML = (b'<?xml version="1.0" encoding="utf-8"?>\n'
       b"<GIAMDINHHS><THONGTINDONVI><MACSKCB>01001</MACSKCB></THONGTINDONVI></GIAMDINHHS>\n")


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Aws:
    app: ModuleType
    s3: Any
    ddb: Any
    kms: Any
    accounts: PortalAccounts
    clock: Clock

    def call(self, path: str, form: dict[str, str] | None = None, *, headers: dict[str, str] | None = None,
             body: str | None = None, source: str = "203.0.113.10") -> tuple[int, dict[str, Any]]:
        event = event_for(path, urlencode(form or {}) if body is None else body, headers or {}, source)
        response = self.app.lambda_handler(event, LambdaContext())
        assert response["headers"]["Content-Type"] == "application/json; charset=utf-8"
        return response["statusCode"], json.loads(response["body"])

    def login(self, username: str = USER, md5: str = MD5, source: str = "203.0.113.10") -> tuple[int, dict[str, Any]]:
        return self.call("/api/token/take", {"username": username, "password": md5}, source=source)

    def token(self, username: str = USER, md5: str = MD5) -> dict[str, str]:
        status, body = self.login(username, md5)
        assert status == 200, body
        return {"accessToken": body["APIKey"]["access_token"], "tokenId": body["APIKey"]["id_token"],
                "passwordHash": md5}

    def submit(self, headers: dict[str, str], data: bytes = XML, **fields: str) -> tuple[int, dict[str, Any]]:
        form = {"username": USER, "loaiHoSo": "130", "maTinh": "01", "maCSKCB": "01001",
                "fileHSBase64": base64.b64encode(data).decode("ascii"), **fields}
        return self.call("/api/qd130/guiHoSoXmlQD4750", form, headers=headers)

    def inbox_keys(self) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=INBOX).get("Contents", [])]

    def item(self, pk: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.ddb.get_item(TableName=TABLE, Key={"pk": {"S": pk}}).get("Item")
        return found


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return event


def event_for(path: str, body: str, headers: dict[str, str], source: str) -> dict[str, Any]:
    """events/portal_token.json pointed at another path, body, headers and source address."""
    event = copy.deepcopy(load_event("portal_token.json"))
    event["path"] = path
    event["pathParameters"] = {"proxy": path.removeprefix("/api/")}
    event["requestContext"]["path"] = f"/dev{path}"
    event["requestContext"]["identity"]["sourceIp"] = source
    event["headers"].update(headers)
    event["multiValueHeaders"] = {name: [value] for name, value in event["headers"].items()}
    event["body"] = body
    return event


@pytest.fixture(scope="module")
def app() -> ModuleType:
    return load_function("portal")


@pytest.fixture
def logs(app: ModuleType) -> Iterator[io.StringIO]:
    """What the function's Logger writes (JSON lines), in this test."""
    stream = io.StringIO()
    previous = app.logger.registered_handler.setStream(stream)
    yield stream
    app.logger.registered_handler.setStream(previous)


@pytest.fixture
def aws(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    import boto3
    from moto import mock_aws

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "INBOX_KMS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_DEFAULT_REGION": "ap-southeast-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "POWERTOOLS_TRACE_DISABLED": "true",
                        "PORTAL_TABLE": TABLE, "INBOX_BUCKET": INBOX, "RECEIPTS_BUCKET": RECEIPTS,
                        "TOKEN_KEY_SECRET": SECRET}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3, ddb, kms = boto3.client("s3"), boto3.client("dynamodb"), boto3.client("kms")
        for bucket in (INBOX, RECEIPTS):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-1"})
        create_tables(ddb, {"PORTAL_TABLE": TABLE})  # as template.yaml declares it: key pk, TTL expires_at
        boto3.client("secretsmanager").create_secret(
            Name=SECRET, SecretString=base64.b64encode(secrets.token_bytes(48)).decode())
        accounts = PortalAccounts(ddb, TABLE, hasher=FAST)
        accounts.register(USER, facility="01001", province="01", password_md5=MD5, now=NOW)
        accounts.register(OTHER, facility="79001", province="79", password_md5=OTHER_MD5, now=NOW)
        clock = Clock()
        app.reset()
        app._runtime = PortalRuntime(logger=app.logger, metrics=app.port, clock=clock)
        yield Aws(app=app, s3=s3, ddb=ddb, kms=kms, accounts=accounts, clock=clock)
        app.reset()


# --- the accounts -----------------------------------------------------------------------------------------

def test_the_portal_table_is_the_templates(aws: Aws) -> None:
    table = aws.ddb.describe_table(TableName=TABLE)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    ttl = aws.ddb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at" and ttl["TimeToLiveStatus"] == "ENABLED"


def test_accounts_register_rotate_unlock_disable(aws: Aws) -> None:
    item = aws.item(f"USER#{USER}")
    assert item is not None
    assert item["facility"] == {"S": "01001"} and item["province"] == {"S": "01"} and item["generation"] == {"N": "1"}
    assert item["secret_hash"]["S"].startswith("$argon2id$") and verify_secret(item["secret_hash"]["S"], MD5)
    assert "expires_at" not in item
    with pytest.raises(AccountExists):
        aws.accounts.register(USER, facility="01001", province="01", password_md5=MD5, now=NOW)
    for bad in ({"facility": "1001"}, {"province": "1"}, {"password_md5": "secret"}):
        with pytest.raises(ValueError):
            aws.accounts.register("new.user", **{"facility": "01001", "province": "01", "password_md5": MD5,
                                                 "now": NOW, **bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        aws.accounts.register("' OR 1=1 --", facility="01001", province="01", password_md5=MD5, now=NOW)
    assert aws.accounts.rotate(USER, password_md5=password_md5("new"), now=NOW + timedelta(days=1)) == 2
    described = aws.accounts.describe(USER)
    assert described is not None and "secret_hash" not in described
    assert described["generation"] == 2 and described["rotated_at"] == "2026-11-23T03:00:00Z"
    for operation in (lambda: aws.accounts.rotate("nobody.here", password_md5=MD5, now=NOW),
                      lambda: aws.accounts.unlock("nobody.here"), lambda: aws.accounts.disable("nobody.here")):
        with pytest.raises(KeyError):
            operation()
    assert aws.accounts.describe("nobody.here") is None


def test_the_token_key_secret_must_be_base64_of_32_bytes(aws: Aws) -> None:
    import boto3

    manager = boto3.client("secretsmanager")
    assert load_token_key(manager, SECRET)
    for name, value in (("short", base64.b64encode(b"x" * 31).decode()), ("not-base64", "ab!cd"),
                        ("json", json.dumps({"key": base64.b64encode(b"y" * 32).decode()}))):
        manager.create_secret(Name=name, SecretString=value)
    assert load_token_key(manager, "json")
    for name in ("short", "not-base64"):
        with pytest.raises(ValueError, match=name):
            load_token_key(manager, name)


# --- logins and lockouts on DynamoDB ----------------------------------------------------------------------

def test_lock_after_failures_and_unlock_after_lock_seconds(aws: Aws) -> None:
    wrong = password_md5("guess")
    assert [aws.login(md5=wrong)[0] for _ in range(5)] == [401, 401, 401, 401, 423]
    status, body = aws.login()
    assert status == 423 and body["thoiGianMoKhoa"] == "20261122101500"
    item = aws.item(f"USER#{USER}")
    assert item is not None and item["locked_until"] == {"N": str(int(NOW.timestamp()) + 900)}
    assert "expires_at" not in item  # an account never expires
    aws.clock.now += timedelta(seconds=900)
    assert aws.login()[0] == 200
    item = aws.item(f"USER#{USER}")
    assert item is not None and item["failures"] == {"N": "0"} and item["locked_until"] == {"N": "0"}


def test_an_operator_unlocks_a_user(aws: Aws) -> None:
    for _ in range(5):
        aws.login(md5=password_md5("guess"))
    assert aws.login()[0] == 423
    aws.accounts.unlock(USER)
    assert aws.login()[0] == 200


def test_an_unknown_users_counters_expire_and_registering_the_name_replaces_them(aws: Aws) -> None:
    assert [aws.login("nobody.here")[0] for _ in range(5)] == [401, 401, 401, 401, 423]
    item = aws.item("USER#nobody.here")
    assert item is not None and "secret_hash" not in item and "expires_at" in item
    aws.accounts.register("nobody.here", facility="01001", province="01", password_md5=MD5, now=NOW)
    item = aws.item("USER#nobody.here")
    assert item is not None and "expires_at" not in item
    assert aws.login("nobody.here")[0] == 200


def test_a_source_is_refused_after_its_failures(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_LOCK_AFTER_FAILURES", "3")
    attempts = [aws.login(name)[0] for name in ("first.name", "$(rm -rf /)", "third.name")]
    assert attempts == [401, 401, 429]
    assert aws.login()[0] == 429
    assert aws.login(source="192.0.2.44")[0] == 200
    item = aws.item("SOURCE#203.0.113.10")
    assert item is not None and "expires_at" in item and item["failures"] == {"N": "3"}
    aws.accounts.unlock_source("203.0.113.10")
    assert aws.login()[0] == 200
    aws.accounts.unlock_source("192.0.2.99")  # never failed: nothing is written
    assert aws.item("SOURCE#192.0.2.99") is None


# --- submissions ------------------------------------------------------------------------------------------

def test_submit_writes_the_file_at_the_tokens_facility(aws: Aws) -> None:
    status, body = aws.submit(aws.token())
    assert status == 200 and body["maKetQua"] == "200"
    txn = body["maGiaoDich"]
    assert is_transaction_id(txn)
    assert aws.inbox_keys() == [portal_inbox_key(txn)] == [f"inbox/01001/portal/{txn}.xml"]
    stored = aws.s3.get_object(Bucket=INBOX, Key=portal_inbox_key(txn))
    assert stored["Body"].read() == XML
    assert stored["ContentType"] == "application/xml"
    assert stored["Metadata"] == {"transaction-id": txn, "channel": "portal", "endpoint": "guiHoSoXmlQD4750"}
    assert stored.get("ServerSideEncryption") != "aws:kms"  # the bucket's default


def test_submit_with_sse_kms_when_configured(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    key_arn = aws.kms.create_key(Description="inbox")["KeyMetadata"]["Arn"]
    monkeypatch.setenv("INBOX_KMS_KEY_ID", key_arn)
    status, body = aws.submit(aws.token())
    assert status == 200
    head = aws.s3.head_object(Bucket=INBOX, Key=portal_inbox_key(body["maGiaoDich"]))
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_arn


def test_check_in(aws: Aws) -> None:
    document = b"<CHI_TIEU_TRANG_THAI_KCB><DSACH_TRANG_THAI_KCB/><CHUKYDONVI/></CHI_TIEU_TRANG_THAI_KCB>"
    form = {"username": USER, "loaiHoSo": "0", "maTinh": "01", "maCSKCB": "01001",
            "fileHSBase64": base64.b64encode(document).decode()}
    status, body = aws.call("/api/qd130/checkInKcbQd4750", form, headers=aws.token())
    assert status == 200
    stored = aws.s3.get_object(Bucket=INBOX, Key=portal_inbox_key(body["maGiaoDich"]))
    assert stored["Body"].read() == document and stored["Metadata"]["endpoint"] == "checkInKcbQd4750"


def test_a_9_mb_body_is_413_before_it_is_read(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_OBJECT_BYTES", str(6 * 1024 * 1024))  # a body of at most 8 MiB + 64 KiB
    headers = aws.token()
    body = urlencode({"username": USER, "loaiHoSo": "130", "maTinh": "01", "maCSKCB": "01001"})
    body += "&fileHSBase64=" + "PGE+" * (9 * 1024 * 1024 // 4)
    status, reply = aws.call("/api/qd130/guiHoSoXmlQD4750", body=body, headers=headers)
    assert status == 413 and "taoLienKetTaiLen" in reply["thongDiep"]
    assert aws.inbox_keys() == []


def test_another_facility_is_403_and_nothing_is_written(aws: Aws) -> None:
    assert aws.submit(aws.token(), maCSKCB="79001")[0] == 403
    assert aws.submit(aws.token(), maTinh="79")[0] == 403
    assert aws.inbox_keys() == []


def test_rotation_revokes_and_disabling_refuses(aws: Aws) -> None:
    headers = aws.token()
    aws.accounts.rotate(USER, password_md5=password_md5("rotated"), now=NOW)
    assert aws.submit(headers)[0] == 401
    headers = aws.token(md5=password_md5("rotated"))
    assert aws.submit(headers)[0] == 200
    aws.accounts.disable(USER)
    assert aws.submit(headers)[0] == 403
    assert aws.login(md5=password_md5("rotated"))[0] == 403
    aws.accounts.enable(USER)
    assert aws.submit(headers)[0] == 200


def test_the_rate_limit_is_429_and_writes_nothing(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_PER_MINUTE", "2")
    headers = aws.token()
    assert [aws.submit(headers)[0] for _ in range(3)] == [200, 200, 429]
    assert len(aws.inbox_keys()) == 2
    item = aws.item("RATE#01001#202611220300")
    assert item is not None and item["count"] == {"N": "2"} and "expires_at" in item
    aws.clock.now += timedelta(minutes=1)
    assert aws.submit(headers)[0] == 200


def test_an_unknown_path_is_405(aws: Aws) -> None:
    status, body = aws.call("/api/qd130/xoaHoSo", {"username": USER})
    assert status == 405 and body == {"maKetQua": "405", "thongDiep": "Đường dẫn hoặc phương thức không được hỗ trợ."}


def test_a_missing_setting_is_a_500_that_says_nothing(aws: Aws, monkeypatch: pytest.MonkeyPatch,
                                                      logs: io.StringIO) -> None:
    monkeypatch.delenv("TOKEN_KEY_SECRET")
    status, body = aws.login()
    assert status == 500 and "TOKEN_KEY_SECRET" not in json.dumps(body)
    assert "TOKEN_KEY_SECRET" in logs.getvalue()  # the log says what is missing


# --- lookups and upload links -----------------------------------------------------------------------------

def _lookup(aws: Aws, headers: dict[str, str], txn: str) -> tuple[int, dict[str, Any]]:
    return aws.call("/api/qd130/traCuuKetQua", {"username": USER, "maCSKCB": "01001", "maGiaoDich": txn},
                    headers=headers)


def test_lookup_404_202_200(aws: Aws) -> None:
    headers = aws.token()
    txn = aws.submit(headers)[1]["maGiaoDich"]
    assert _lookup(aws, headers, txn)[0] == 202
    receipt = {"receipt_version": "2", "transaction_id": txn, "facility": "01001", "accepted": True,
               "rejected": False, "visits": [{"ma_lk": "LK-0001", "accepted": True}]}
    aws.s3.put_object(Bucket=RECEIPTS, Key=f"receipts/01001/{txn}.xml.receipt.json",
                      Body=json.dumps(receipt).encode())
    status, body = _lookup(aws, headers, txn)
    assert status == 200 and body["trangThai"] == "ACCEPTED" and body["bienNhan"] == receipt
    assert body["thoiGianTiepNhan"] == txn.split("-")[1]
    aws.s3.delete_object(Bucket=INBOX, Key=portal_inbox_key(txn))  # a receipt outlives the inbox copy
    assert _lookup(aws, headers, txn)[0] == 200
    aws.s3.delete_object(Bucket=RECEIPTS, Key=receipt_key(txn))
    assert _lookup(aws, headers, txn)[0] == 404
    assert _lookup(aws, headers, "01001-20261122100000-zzzzzzzzzzzz")[0] == 404


def test_upload_link_is_a_presigned_put_that_s3_accepts_with_the_returned_headers(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    key_arn = aws.kms.create_key(Description="inbox")["KeyMetadata"]["Arn"]
    monkeypatch.setenv("INBOX_KMS_KEY_ID", key_arn)
    headers = aws.token()
    status, body = aws.call("/api/qd130/taoLienKetTaiLen", {"username": USER, "maTinh": "01", "maCSKCB": "01001",
                                                            "loaiHoSo": "130"}, headers=headers)
    assert status == 200
    txn, url, upload = body["maGiaoDich"], body["uploadUrl"], body["uploadHeaders"]
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.path.endswith(f"/inbox/01001/portal/{txn}.xml")
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["900"]
    signed = set(query["X-Amz-SignedHeaders"][0].split(";"))
    assert signed - {"host"} == {name.lower() for name in upload}  # exactly what the PUT must send
    assert upload["x-amz-server-side-encryption-aws-kms-key-id"] == key_arn
    assert body["hetHan"] == "20261122101500"
    assert requests.put(url, data=XML, headers=upload, timeout=10).status_code == 200
    head = aws.s3.head_object(Bucket=INBOX, Key=portal_inbox_key(txn))
    assert head["Metadata"] == {"transaction-id": txn, "channel": "portal", "endpoint": "taoLienKetTaiLen"}
    assert head["ServerSideEncryption"] == "aws:kms" and head["ContentType"] == "application/xml"
    assert _lookup(aws, headers, txn)[0] == 202


# --- the events and the logs ------------------------------------------------------------------------------

def test_the_sample_events_run_through_the_handler(aws: Aws) -> None:
    response = aws.app.lambda_handler(load_event("portal_token.json"), LambdaContext())
    assert response["statusCode"] == 200, response
    api_key = json.loads(response["body"])["APIKey"]
    assert api_key["username"] == USER
    submit = load_event("portal_submit.json")
    submit["headers"].update(accessToken=api_key["access_token"], tokenId=api_key["id_token"])
    submit["multiValueHeaders"].update(accessToken=[api_key["access_token"]], tokenId=[api_key["id_token"]])
    response = aws.app.lambda_handler(submit, LambdaContext())
    assert response["statusCode"] == 200, response
    txn = json.loads(response["body"])["maGiaoDich"]
    sent = base64.b64decode(parse_qs(submit["body"])["fileHSBase64"][0])
    assert aws.s3.get_object(Bucket=INBOX, Key=portal_inbox_key(txn))["Body"].read() == sent
    assert response["headers"]["Cache-Control"] == "no-store"


def test_the_event_shapes_a_stage_or_a_root_proxy_resource_give_the_same_path() -> None:
    event = load_event("portal_token.json")
    assert request_of(event).path == "/api/token/take"
    root = {**event, "resource": "/{proxy+}", "pathParameters": {"proxy": "api/token/take"},
            "path": "/portal/api/token/take"}  # a custom domain's base path left in "path"
    assert request_of(root).path == "/api/token/take"
    request = request_of({**event, "requestContext": {}, "headers": {"ACCESSTOKEN": "t"}, "multiValueHeaders": None})
    assert request.source_ip == "unknown" and request.headers == {"accesstoken": "t"}


def test_no_log_line_holds_a_secret_or_the_file(aws: Aws, logs: io.StringIO) -> None:
    headers = aws.token()
    aws.login(md5=password_md5("a wrong one"))
    aws.login("' OR 1=1 --")
    status, body = aws.submit(headers)
    assert status == 200
    aws.submit({**headers, "passwordHash": password_md5("a wrong one")})
    aws.submit(headers, maCSKCB="79001")
    aws.submit(headers, fileHSBase64="bm90IFhNTA==")
    _lookup(aws, headers, body["maGiaoDich"])
    text = logs.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    requests_logged = [line for line in lines if line.get("message", "").startswith("portal request")]
    assert len(requests_logged) == 8
    assert {line["code"] for line in requests_logged} == {"200", "401", "403", "415", "202"}
    assert any(line.get("transaction_id") == body["maGiaoDich"] and line.get("facility") == "01001"
               for line in requests_logged)
    file_base64 = base64.b64encode(XML).decode()
    for secret in (MD5, MD5.lower(), password_md5("a wrong one"), "Mat-khau-thu-nghiem-01001",
                   headers["accessToken"], headers["accessToken"].split(".")[2], headers["tokenId"], file_base64,
                   file_base64[:40], "GIAMDINHHS", "' OR 1=1 --", "bm90IFhNTA=="):
        assert secret not in text, secret
