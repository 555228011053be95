"""`healthbook upload` and the facility principal, against moto (no AWS account, no Docker)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from healthbook_dev.aws.principals import create_facility_principal, user_name_for
from healthbook_dev.aws.upload import Destination, receipt_key, upload_file, wait_for_receipt
from healthbook_dev.cli import main
from healthbook_dev.generate import build_visit, submission
from moto import mock_aws

REGION = "ap-southeast-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


@pytest.fixture
def buckets(aws: None) -> tuple[Any, Destination]:
    s3 = boto3.client("s3", region_name=REGION)
    for name in ("inbox-test", "receipts-test"):
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    return s3, Destination(inbox_bucket="inbox-test", receipts_bucket="receipts-test", kms_key_id=key)


def _files(folder: Path, count: int) -> list[Path]:
    rng = random.Random(3)
    paths = []
    for number in range(count):
        path = folder / f"01001_{number:03d}.xml"
        path.write_bytes(submission(build_visit(rng, scenario="outpatient")))
        paths.append(path)
    return paths


def test_upload_puts_under_the_facility_prefix_with_kms_and_checksum(buckets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s3, destination = buckets
    (path,) = _files(tmp_path, 1)
    sent: list[dict[str, Any]] = []  # moto neither stores nor checks checksums: look at what is sent
    s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: sent.append(dict(params)))
    key = upload_file(s3, destination, "01001", path)
    assert key == f"inbox/01001/{path.name}"
    head = s3.head_object(Bucket="inbox-test", Key=key)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == destination.kms_key_id
    assert sent[0]["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def test_wait_for_receipt_polls_until_it_appears(buckets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s3, destination = buckets
    (path,) = _files(tmp_path, 1)
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the receipt "arrives" after the second poll
        polls.append(seconds)
        if len(polls) == 2:
            s3.put_object(Bucket="receipts-test", Key=receipt_key("01001", path), Body=b'{"accepted": true}')

    assert wait_for_receipt(s3, destination, "01001", path, timeout=60, poll=0.01, sleep=sleep) == {"accepted": True}
    assert len(polls) == 2
    assert wait_for_receipt(s3, destination, "79001", path, timeout=0, sleep=sleep) is None


def test_upload_command_with_wait(buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    s3, destination = buckets
    paths = _files(tmp_path, 3)
    for number, path in enumerate(paths):  # receipts as the ingest function would write them
        receipt = {"accepted": number != 1, "visits_accepted": int(number != 1), "visits": [{"errors": []}],
                   "errors": [] if number != 1 else [{"code": "K404"}]}
        s3.put_object(Bucket="receipts-test", Key=receipt_key("01001", path), Body=json.dumps(receipt).encode())
    code = main(["upload", str(tmp_path), "--facility", "01001", "--inbox-bucket", "inbox-test",
                 "--receipts-bucket", "receipts-test", "--kms-key-id", destination.kms_key_id, "--wait",
                 "--timeout", "1", "--region", REGION])
    out = capsys.readouterr()
    assert code == 1  # one of the three was rejected
    assert "uploaded 3 file(s)" in out.out and "3/3 uploaded" in out.err
    assert out.out.count("ACCEPTED") == 2 and "REJECTED  01001_001.xml" in out.out and "K404" in out.out
    listed = s3.list_objects_v2(Bucket="inbox-test", Prefix="inbox/01001/")["KeyCount"]
    assert listed == 3


def test_upload_refuses_a_bad_facility_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upload", str(tmp_path), "--facility", "1001", "--inbox-bucket", "x"]) == 2


def test_facility_principal_is_tagged_and_idempotent(aws: None) -> None:
    iam = boto3.client("iam", region_name=REGION)
    policy = iam.create_policy(PolicyName="facility-upload", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutObject",
                                                 "Resource": "arn:aws:s3:::inbox-test/*"}]}))["Policy"]["Arn"]
    first = create_facility_principal("01001", stage="test", policy_arn=policy, iam=iam)
    assert first.user_name == user_name_for("test", "01001") and first.access_key_id and first.secret_access_key
    tags = {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName=first.user_name)["Tags"]}
    assert tags["facility"] == "01001"
    attached = iam.list_attached_user_policies(UserName=first.user_name)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [policy]
    again = create_facility_principal("01001", stage="test", policy_arn=policy, iam=iam, create_access_key=False)
    assert again.arn == first.arn and again.access_key_id is None
    with pytest.raises(ValueError):
        create_facility_principal("1001", stage="test", policy_arn=None, iam=iam)


def test_facility_add_and_list(aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from healthbook_dev.pki import dev_pki

    pki = dev_pki(tmp_path / "pki")
    boto3.client("dynamodb", region_name=REGION).create_table(
        TableName="facilities", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "facility", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "facility", "AttributeType": "S"}])
    secrets = tmp_path / "01001.json"
    args = ["facility", "add", "01001", "--name", "Bệnh viện Đa khoa Hà Nội", "--province", "01",
            "--cert", str(pki["01001"]), "--table", "facilities", "--stage", "test", "--region", REGION,
            "--credentials-out", str(secrets)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "registered 01001" in out and "tagged facility=01001" in out and "aws_secret_access_key" not in out
    assert secrets.stat().st_mode & 0o777 == 0o600 and json.loads(secrets.read_text())["aws_access_key_id"]
    assert main(["facility", "list", "--json", "--table", "facilities", "--region", REGION]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["code"] == "01001" and listed["province"] == "01" and len(listed["certificates"]) == 1
    assert listed["district"] is None and listed["commune"] is None
    # a second certificate keeps the facility; --district and --commune set the units, and a later add without
    # them keeps them
    for extra in (["--district", "001"], ["--commune", "00004"], []):
        assert main([*args[:-2], "--no-principal", *extra]) == 0
    out = capsys.readouterr().out
    assert "province 01, district 001)" in out and "province 01, commune 00004)" in out
    assert main(["facility", "list", "--json", "--table", "facilities", "--region", REGION]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["district"], listed["commune"]) == ("001", "00004")
    assert main(["facility", "list", "--region", REGION]) == 2  # no table given


def test_facility_add_gives_a_portal_account_and_portal_account_rotates_unlocks_disables(
        aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from healthbook.aws.portal_store import PortalAccounts
    from healthbook.portal.credentials import SecretHasher, password_md5
    from healthbook_dev.aws.sandbox import NAMES, create_tables
    from healthbook_dev.pki import dev_pki

    pki = dev_pki(tmp_path / "pki")
    ddb = boto3.client("dynamodb", region_name=REGION)
    create_tables(ddb, {"FACILITIES_TABLE": "facilities", "PORTAL_TABLE": NAMES["PORTAL_TABLE"]})
    accounts = PortalAccounts(ddb, NAMES["PORTAL_TABLE"])
    add = ["facility", "add", "01001", "--name", "Bệnh viện Đa khoa Hà Nội", "--province", "01",
           "--cert", str(pki["01001"]), "--table", "facilities", "--region", REGION, "--no-principal",
           "--portal-user", "bv01001", "--portal-password-env", "HB_TEST_PORTAL_PASSWORD",
           "--portal-table", NAMES["PORTAL_TABLE"]]
    monkeypatch.setenv("HB_TEST_PORTAL_PASSWORD", "short")
    assert main(add) == 2 and "at least 12 characters" in capsys.readouterr().err
    monkeypatch.setenv("HB_TEST_PORTAL_PASSWORD", "Mat-khau-benh-vien-01")
    assert main(add) == 0
    assert "portal API account bv01001 for 01001" in capsys.readouterr().out
    state = accounts.login_state("bv01001")
    assert state.account is not None and (state.account.facility, state.account.province) == ("01001", "01")
    stored = ddb.get_item(TableName=NAMES["PORTAL_TABLE"], Key={"pk": {"S": "USER#bv01001"}})["Item"]
    assert stored["secret_hash"]["S"].startswith("$argon2id$")
    assert "Mat-khau" not in json.dumps(stored) and password_md5("Mat-khau-benh-vien-01") not in json.dumps(stored)
    assert SecretHasher().verify(stored["secret_hash"]["S"], password_md5("Mat-khau-benh-vien-01"))
    assert main(add) == 2  # the username is taken
    assert "already has an account" in capsys.readouterr().err

    account = ["facility", "portal-account", "--region", REGION, "--portal-table", NAMES["PORTAL_TABLE"]]
    monkeypatch.setenv("HB_TEST_PORTAL_PASSWORD", "Mat-khau-moi-cua-01001")
    assert main([*account, "rotate", "bv01001", "--password-env", "HB_TEST_PORTAL_PASSWORD"]) == 0
    assert "generation 2" in capsys.readouterr().out
    state = accounts.login_state("bv01001")
    assert state.account is not None and state.account.generation == 2
    assert SecretHasher().verify(state.account.secret_hash, password_md5("Mat-khau-moi-cua-01001"))
    assert main([*account, "rotate", "nobody", "--password-env", "HB_TEST_PORTAL_PASSWORD"]) == 2
    assert main([*account, "rotate", "bv01001"]) == 2  # no --password-env
    ddb.update_item(TableName=NAMES["PORTAL_TABLE"], Key={"pk": {"S": "USER#bv01001"}},
                    UpdateExpression="SET locked_until = :t, failures = :f",
                    ExpressionAttributeValues={":t": {"N": "4102444800"}, ":f": {"N": "5"}})
    assert main([*account, "unlock", "bv01001"]) == 0
    assert accounts.login_state("bv01001").locked_until is None and accounts.login_state("bv01001").failures == 0
    assert main([*account, "disable", "bv01001"]) == 0
    state = accounts.login_state("bv01001")
    assert state.account is not None and state.account.disabled
