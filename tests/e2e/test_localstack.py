"""End-to-end: SAM stacks deployed to LocalStack, driven through S3 and SQS as AWS would drive them.

1. The fixture stack (tests/e2e/fixtures/template.yaml) proves the no-Docker LocalStack set-up itself: the
   process-based Lambda executor (layers, env, errors, timeouts, logs, SQS and S3 triggers, partial batch
   failures, DLQ) and the moto-backed DynamoDB (KMS encryption, GSI, TTL), plus KMS signing from a function.
2. The pipeline tests deploy the real template.yaml and push signed submissions through the ingest function:
   skipped, with the reason, while the template has no ingest function yet.
Run: ``make localstack-up && make e2e`` (docs/localstack.md).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.localstack

REPO = Path(__file__).resolve().parents[2]
FIXTURE_TEMPLATE = Path(__file__).resolve().parent / "fixtures" / "template.yaml"
FIXTURE_STACK = "hb-e2e-fixture"
# The real stack; HB_E2E_TEMPLATE / HB_E2E_STACK / HB_E2E_STAGE point the pipeline tests elsewhere (a variant).
PIPELINE_TEMPLATE = Path(os.environ.get("HB_E2E_TEMPLATE") or REPO / "template.yaml")
PIPELINE_STACK = os.environ.get("HB_E2E_STACK") or "healthbook-local"
PIPELINE_STAGE = os.environ.get("HB_E2E_STAGE") or "local"
FACILITY = "01001"


def _invoke(aws: Callable[..., Any], function: str, event: dict[str, Any]) -> tuple[str | None, Any, str]:
    response = aws("lambda").invoke(FunctionName=function, Payload=json.dumps(event), LogType="Tail")
    logs = base64.b64decode(response.get("LogResult", "")).decode("utf-8", "replace")
    return response.get("FunctionError"), json.loads(response["Payload"].read() or b"null"), logs


# --- 1. the fixture stack: executor and DynamoDB provider -----------------------------------------------------


@pytest.fixture(scope="module")
def fixture_stack(deploy: Callable[..., dict[str, str]]) -> dict[str, str]:
    return deploy(FIXTURE_TEMPLATE, FIXTURE_STACK, "e2e")


def _item(aws: Callable[..., Any], table: str, item_id: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = aws("dynamodb").get_item(TableName=table, Key={"id": {"S": item_id}},
                                                          ConsistentRead=True).get("Item")
    return item


def test_sqs_message_reaches_dynamodb_through_lambda(aws: Callable[..., Any], fixture_stack: dict[str, str],
                                                     wait_for: Callable[..., Any]) -> None:
    item_id = f"sqs-{uuid.uuid4()}"
    aws("sqs").send_message(QueueUrl=fixture_stack["QueueUrl"], MessageBody=json.dumps({"id": item_id}))
    item = wait_for(f"item {item_id}", lambda: _item(aws, fixture_stack["TableName"], item_id))
    assert item["source"] == {"S": "sqs"}
    assert item["request_id"]["S"]  # written by the layer's helper with the context's request id
    # the GSI answers too (moto-backed DynamoDB)
    found = aws("dynamodb").query(TableName=fixture_stack["TableName"], IndexName="by-source",
                                  KeyConditionExpression="#s = :s AND id = :i",
                                  ExpressionAttributeNames={"#s": "source"},
                                  ExpressionAttributeValues={":s": {"S": "sqs"}, ":i": {"S": item_id}})
    assert found["Count"] == 1


def test_s3_upload_notifies_the_function_through_sqs(aws: Callable[..., Any], fixture_stack: dict[str, str],
                                                     wait_for: Callable[..., Any]) -> None:
    key = f"inbox/{FACILITY}/hồ sơ {uuid.uuid4()}.xml"  # arrives URL-encoded in the notification
    aws("s3").put_object(Bucket=fixture_stack["BucketName"], Key=key, Body=b"<x/>")
    item = wait_for(f"item {key}", lambda: _item(aws, fixture_stack["TableName"], key))
    assert item["source"] == {"S": "s3"}


def test_failed_message_of_a_batch_goes_to_the_dead_letter_queue(aws: Callable[..., Any],
                                                                 fixture_stack: dict[str, str],
                                                                 wait_for: Callable[..., Any]) -> None:
    sqs, marker, good = aws("sqs"), str(uuid.uuid4()), f"good-{uuid.uuid4()}"
    sqs.send_message_batch(QueueUrl=fixture_stack["QueueUrl"], Entries=[
        {"Id": "good", "MessageBody": json.dumps({"id": good})},
        {"Id": "poison", "MessageBody": json.dumps({"poison": True, "marker": marker})},
    ])
    wait_for(f"item {good}", lambda: _item(aws, fixture_stack["TableName"], good))

    def poisoned() -> bool:
        messages = sqs.receive_message(QueueUrl=fixture_stack["DeadLetterQueueUrl"], MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            sqs.delete_message(QueueUrl=fixture_stack["DeadLetterQueueUrl"], ReceiptHandle=message["ReceiptHandle"])
        return any(json.loads(m["Body"]).get("marker") == marker for m in messages)

    # maxReceiveCount 2 with a 6 s visibility timeout: the poison message reaches the DLQ after about 12 s
    wait_for("the poison message in the DLQ", poisoned, timeout=90)


def test_function_environment_layers_and_logs(aws: Callable[..., Any], fixture_stack: dict[str, str]) -> None:
    error, result, logs = _invoke(aws, fixture_stack["WriterFunctionName"], {"action": "whoami"})
    assert error is None, result
    assert result["function_name"] == fixture_stack["WriterFunctionName"]
    assert result["python"] == [3, 13]
    assert result["greeting"] == "hello from SSM"  # read through the function's own AWS_ENDPOINT_URL
    assert result["endpoint"] and result["region"]
    assert 0 < result["remaining_ms"] <= 5000
    assert "START RequestId" in logs and "REPORT RequestId" in logs


def test_errors_are_mapped_like_lambda(aws: Callable[..., Any], fixture_stack: dict[str, str]) -> None:
    writer = fixture_stack["WriterFunctionName"]
    error, result, logs = _invoke(aws, writer, {"action": "fail"})
    assert error == "Unhandled"
    assert result["errorType"] == "RuntimeError"
    assert result["errorMessage"] == "failing on purpose"
    assert "failing on purpose" in logs

    error, result, _ = _invoke(aws, writer, {"action": "sleep", "seconds": 30})  # Timeout: 5
    assert error == "Unhandled"
    assert result["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 5.00 seconds" in result["errorMessage"]
    # the sandbox is reset, as after a timeout in Lambda, and the next invocation works
    error, result, _ = _invoke(aws, writer, {"action": "whoami"})
    assert error is None, result

    error, result, _ = _invoke(aws, fixture_stack["BrokenFunctionName"], {})
    assert error == "Unhandled"
    assert result["errorType"] == "Runtime.ImportModuleError"
    assert "missing_module" in result["errorMessage"]


def test_function_signs_with_kms_and_the_public_key_verifies(aws: Callable[..., Any],
                                                             fixture_stack: dict[str, str]) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    error, result, _ = _invoke(aws, fixture_stack["WriterFunctionName"], {"action": "sign", "message": "receipt"})
    assert error is None, result
    der = aws("kms").get_public_key(KeyId=fixture_stack["SigningKeyArn"])["PublicKey"]
    public_key = serialization.load_der_public_key(der)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    digest = hashlib.sha256(b"receipt").digest()
    public_key.verify(base64.b64decode(result["signature"]), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_dynamodb_table_settings_from_cloudformation(aws: Callable[..., Any], fixture_stack: dict[str, str]) -> None:
    ddb = aws("dynamodb")
    table = ddb.describe_table(TableName=fixture_stack["TableName"])["Table"]
    assert table["SSEDescription"]["SSEType"] == "KMS"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["by-source"]
    ttl = ddb.describe_time_to_live(TableName=fixture_stack["TableName"])["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiration"}


# --- 2. the real pipeline: template.yaml ----------------------------------------------------------------------

PIPELINE_ENV = ("INBOX_BUCKET", "RECEIPTS_BUCKET", "VISITS_TABLE", "SUBMISSIONS_TABLE", "FACILITIES_TABLE",
                "RECEIPT_KEY_ID", "TRUST_BUNDLE_PARAMETER")


# Seconds, not hours: the cutoff (deadline - margin) comes 60 s after receipt.
DELIVERY_TIMING = {"DeadlineSeconds": "90", "SafetyMarginSeconds": "30", "LeaseSeconds": "10",
                   "RetryBaseSeconds": "2", "RetryMaxSeconds": "5", "SweepEveryMinutes": "2"}


@dataclass
class Fakes:
    vneid: Any
    population: Any
    people: Any


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    """The fake VNeID and population services on this machine (host-mode Lambdas reach 127.0.0.1)."""
    from healthbook_dev.fakes.population import FakePopulation
    from healthbook_dev.fakes.population_server import FakePopulationServer
    from healthbook_dev.fakes.vneid import FakeVneid

    people = FakePopulation()
    with FakeVneid.start() as vneid, FakePopulationServer.start(people) as population:
        yield Fakes(vneid=vneid, population=population, people=people)


@pytest.fixture(scope="module")
def pipeline(aws: Callable[..., Any], deploy: Callable[..., dict[str, str]], fakes: Fakes,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The deployed real stack, its ingest function's settings, a dev PKI whose CA it trusts, facility 01001
    registered and the VNeID credentials of the fake; skipped while the template has no ingest function."""
    outputs = deploy(PIPELINE_TEMPLATE, PIPELINE_STACK, PIPELINE_STAGE, VneidBaseUrl=fakes.vneid.url,
                     PopulationBaseUrl=fakes.population.url, **DELIVERY_TIMING)
    lam = aws("lambda")
    resources = aws("cloudformation").describe_stack_resources(StackName=PIPELINE_STACK)["StackResources"]
    ingest = None
    for resource in resources:
        if resource["ResourceType"] != "AWS::Lambda::Function":
            continue
        config = lam.get_function_configuration(FunctionName=resource["PhysicalResourceId"])
        if all(name in config.get("Environment", {}).get("Variables", {}) for name in PIPELINE_ENV):
            ingest = config
    if ingest is None:
        pytest.skip(f"{PIPELINE_TEMPLATE.name} has no ingest function yet (a function whose environment has "
                    f"{', '.join(PIPELINE_ENV)}); outputs so far: {sorted(outputs)}")
    env: dict[str, str] = dict(ingest["Environment"]["Variables"])

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from healthbook.aws.facilities import put_facility
    from healthbook_dev.pki import FACILITIES, dev_pki

    pki = dev_pki(tmp_path_factory.mktemp("pki"))
    ssm = aws("ssm")
    try:
        kind = ssm.get_parameter(Name=env["TRUST_BUNDLE_PARAMETER"])["Parameter"]["Type"]
    except ssm.exceptions.ParameterNotFound:
        kind = "String"
    ssm.put_parameter(Name=env["TRUST_BUNDLE_PARAMETER"], Value=pki["ca"].read_text(), Type=kind, Overwrite=True)
    certificate = x509.load_pem_x509_certificates(pki[FACILITY].read_bytes())[0]
    name, province = FACILITIES[FACILITY]
    put_facility(aws("dynamodb", resource=True).Table(env["FACILITIES_TABLE"]), FACILITY, name, province,
                 certificate)
    # A warm function may hold the trust anchors and registry of an earlier run: new environments start cold.
    variables = dict(env, HB_E2E_RUN=str(uuid.uuid4()))
    lam.update_function_configuration(FunctionName=ingest["FunctionName"], Environment={"Variables": variables})
    lam.get_waiter("function_updated_v2").wait(FunctionName=ingest["FunctionName"])
    if "VneidCredentialsSecretArn" in outputs:
        aws("secretsmanager").put_secret_value(SecretId=outputs["VneidCredentialsSecretArn"], SecretString=json.dumps(
            {"type": "oauth2", "token_url": fakes.vneid.token_url, "client_id": fakes.vneid.client_id,
             "client_secret": fakes.vneid.client_secret}))
    key = serialization.load_pem_private_key(pki[f"{FACILITY}-key"].read_bytes(), password=None)
    return {"outputs": outputs, "env": env, "function": ingest["FunctionName"], "certificate": certificate,
            "key": key, "workdir": tmp_path_factory.mktemp("submissions")}


def ingest_queue_url(aws: Callable[..., Any], pipeline: dict[str, Any]) -> str:
    """The queue the ingest function reads (its event source mapping), for tests that feed or watch it."""
    mappings = aws("lambda").list_event_source_mappings(FunctionName=pipeline["function"])["EventSourceMappings"]
    arn = next(m["EventSourceArn"] for m in mappings if m["EventSourceArn"].startswith("arn:aws:sqs:"))
    return str(aws("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[1])["QueueUrl"])


def queue_counts(aws: Callable[..., Any], url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attributes = aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _signed_submission(pipeline: dict[str, Any], *, defect: bool, seed: int) -> Path:
    """One signed visit; with ``defect`` it has no patient name, which keeps it out of the health book (H601)."""
    import random

    from healthbook.signing.xml_signer import sign_submission
    from healthbook_dev.generate import build_visit, facility_named, submission

    visit = build_visit(random.Random(seed), facility=facility_named(FACILITY))
    if defect:
        visit.tables["XML1"][0]["HO_TEN"] = ""
    # a name no earlier run used, so that an old receipt is never mistaken for this one
    target = pipeline["workdir"] / f"{FACILITY}_{uuid.uuid4().hex[:12]}.xml"
    target.write_bytes(sign_submission(submission(visit), pipeline["key"], pipeline["certificate"]))
    return target


def _upload(aws: Callable[..., Any], pipeline: dict[str, Any], path: Path) -> dict[str, Any]:
    from healthbook_dev.aws.upload import Destination, upload_file

    destination = Destination(inbox_bucket=pipeline["env"]["INBOX_BUCKET"],
                              receipts_bucket=pipeline["env"]["RECEIPTS_BUCKET"],
                              kms_key_id=pipeline["outputs"].get("DataKeyArn"))
    key = upload_file(aws("s3"), destination, FACILITY, path)
    head = aws("s3").head_object(Bucket=destination.inbox_bucket, Key=key)
    return {"key": key, "version_id": head.get("VersionId"), "size": head["ContentLength"]}


def _receipt(aws: Callable[..., Any], pipeline: dict[str, Any], path: Path,
             wait_for: Callable[..., Any]) -> dict[str, Any]:
    s3, key = aws("s3"), f"receipts/{FACILITY}/{path.name}.receipt.json"

    def fetch() -> dict[str, Any] | None:
        try:
            receipt: dict[str, Any] = json.loads(s3.get_object(Bucket=pipeline["env"]["RECEIPTS_BUCKET"],
                                                               Key=key)["Body"].read())
            return receipt
        except s3.exceptions.NoSuchKey:
            return None

    return wait_for(f"receipt {key}", fetch, timeout=180, interval=1.0)  # type: ignore[no-any-return]


def _verify(aws: Callable[..., Any], pipeline: dict[str, Any], receipt: dict[str, Any]) -> None:
    from healthbook.aws.kms_signer import KmsSigner
    from healthbook.signing.receipt import verify_receipt

    public_pem = KmsSigner(pipeline["env"]["RECEIPT_KEY_ID"], client=aws("kms")).public_key_pem()
    assert verify_receipt(receipt, public_pem) == []


def _visit_items(aws: Callable[..., Any], pipeline: dict[str, Any], ma_lk: str) -> list[dict[str, Any]]:
    """A visit's versions and its LATEST pointer (not the versions' records items)."""
    from healthbook.ingest.model import is_version_key
    items: list[dict[str, Any]] = aws("dynamodb").query(
        TableName=pipeline["env"]["VISITS_TABLE"], KeyConditionExpression="visit_id = :v",
        ExpressionAttributeValues={":v": {"S": f"{FACILITY}#{ma_lk}"}}, ConsistentRead=True)["Items"]
    return [item for item in items if is_version_key(item["version"]["S"]) or item["version"]["S"] == "LATEST"]


def _submissions_for(aws: Callable[..., Any], pipeline: dict[str, Any], object_key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in aws("dynamodb").get_paginator("scan").paginate(
            TableName=pipeline["env"]["SUBMISSIONS_TABLE"], FilterExpression="object_key = :k",
            ExpressionAttributeValues={":k": {"S": object_key}}, ConsistentRead=True):
        items.extend(page["Items"])
    return items


def test_signed_submission_is_stored_and_receipted(aws: Callable[..., Any], pipeline: dict[str, Any],
                                                   wait_for: Callable[..., Any]) -> None:
    path = _signed_submission(pipeline, defect=False, seed=11)
    uploaded = _upload(aws, pipeline, path)
    receipt = _receipt(aws, pipeline, path, wait_for)
    _verify(aws, pipeline, receipt)
    assert receipt["accepted"] is True, receipt["errors"] or [v["errors"] for v in receipt["visits"]]
    assert receipt["facility"] == FACILITY and receipt["object_key"] == uploaded["key"]
    assert receipt["facility_signature"]
    (visit,) = receipt["visits"]
    items = _visit_items(aws, pipeline, visit["ma_lk"])
    versions = [item for item in items if item["version"]["S"] != "LATEST"]
    assert len(versions) == 1 and versions[0]["digest"]["S"] == visit["digest"]
    assert [item["current"]["S"] for item in items if item["version"]["S"] == "LATEST"] == [versions[0]["version"]["S"]]
    (submission,) = _submissions_for(aws, pipeline, uploaded["key"])
    assert submission["status"]["S"] == "ACCEPTED"


def test_defective_submission_gets_a_rejection_receipt(aws: Callable[..., Any], pipeline: dict[str, Any],
                                                       wait_for: Callable[..., Any]) -> None:
    path = _signed_submission(pipeline, defect=True, seed=12)
    uploaded = _upload(aws, pipeline, path)
    receipt = _receipt(aws, pipeline, path, wait_for)
    _verify(aws, pipeline, receipt)
    assert receipt["accepted"] is False
    assert receipt["visits_accepted"] == 0
    assert receipt["errors"] or any(visit["errors"] for visit in receipt["visits"])
    (visit,) = receipt["visits"]
    assert _visit_items(aws, pipeline, visit["ma_lk"]) == []
    (submission,) = wait_for("the submission item", lambda: _submissions_for(aws, pipeline, uploaded["key"]))
    assert submission["status"]["S"] == "REJECTED"


def test_the_same_file_twice_keeps_one_record(aws: Callable[..., Any], pipeline: dict[str, Any],
                                              wait_for: Callable[..., Any]) -> None:
    """The same object's notification delivered twice writes one submission and one visit version; the same
    bytes uploaded again (a new object version) leave exactly one visit version in force."""
    path = _signed_submission(pipeline, defect=False, seed=13)
    uploaded = _upload(aws, pipeline, path)
    receipt = _receipt(aws, pipeline, path, wait_for)
    (visit,) = receipt["visits"]

    # 1. replay the S3 notification of that very object version on the function's queue (without bucket
    #    versioning the object is told apart by its event's sequencer, which a replay cannot know: skip that part)
    if uploaded["version_id"] is not None:
        _replay_notification(aws, pipeline, uploaded, wait_for)
        assert len(_submissions_for(aws, pipeline, uploaded["key"])) == 1
        assert len([i for i in _visit_items(aws, pipeline, visit["ma_lk"]) if i["version"]["S"] != "LATEST"]) == 1

    # 2. the same bytes uploaded again: one visit version in force, the LATEST pointer on it
    aws("s3").delete_object(Bucket=pipeline["env"]["RECEIPTS_BUCKET"],
                            Key=f"receipts/{FACILITY}/{path.name}.receipt.json")
    _upload(aws, pipeline, path)
    _receipt(aws, pipeline, path, wait_for)
    items = _visit_items(aws, pipeline, visit["ma_lk"])
    pointers = [i for i in items if i["version"]["S"] == "LATEST"]
    in_force = [i for i in items if i["version"]["S"] != "LATEST" and i["status"]["S"] != "SUPERSEDED"]
    assert len(pointers) == 1 and len(in_force) == 1
    assert pointers[0]["current"]["S"] == in_force[0]["version"]["S"]


def _replay_notification(aws: Callable[..., Any], pipeline: dict[str, Any], uploaded: dict[str, Any],
                         wait_for: Callable[..., Any]) -> None:
    mappings = aws("lambda").list_event_source_mappings(FunctionName=pipeline["function"])["EventSourceMappings"]
    queue_arn = next(m["EventSourceArn"] for m in mappings if m["EventSourceArn"].startswith("arn:aws:sqs:"))
    queue_url = aws("sqs").get_queue_url(QueueName=queue_arn.rsplit(":", 1)[1])["QueueUrl"]
    notification = {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": queue_arn.split(":")[3],
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"), "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": pipeline["env"]["INBOX_BUCKET"],
                                                    "arn": f"arn:aws:s3:::{pipeline['env']['INBOX_BUCKET']}"},
               "object": {"key": uploaded["key"], "size": uploaded["size"], "versionId": uploaded["version_id"],
                          "sequencer": "0000000000000000E2"}}}]}
    aws("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps(notification))
    wait_for("the replayed message to be consumed", lambda: aws("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"] == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"},
        timeout=120)


# --- 3. the health book: ingest -> Express workflow -> (fake) VNeID ----------------------------------------------

def _book_submission(pipeline: dict[str, Any], fakes: Fakes, seed: int, *, visit: Any = None) -> tuple[Path, Any]:
    """A signed one-visit submission whose citizen the fake population knows; ``visit`` again = a resubmission."""
    import random

    from healthbook.signing.xml_signer import sign_submission
    from healthbook_dev.fakes.population import FakePopulation
    from healthbook_dev.generate import build_visit, submission
    from healthbook_dev.pki import FACILITIES

    if visit is None:
        name, province = FACILITIES[FACILITY]
        visit = build_visit(random.Random(seed), scenario="outpatient", facility=(FACILITY, name, province))
        id_number = visit.tables["XML1"][0]["SO_CCCD"]
        citizen = FakePopulation.from_visits([visit], mismatch_rate=0.0, unknown_rate=0.0, seed=seed).lookup(id_number)
        assert citizen is not None
        fakes.people.add(citizen)
    target = pipeline["workdir"] / f"{FACILITY}_{uuid.uuid4().hex[:12]}.xml"
    target.write_bytes(sign_submission(submission(visit), pipeline["key"], pipeline["certificate"]))
    return target, visit


def _visit_item(aws: Callable[..., Any], pipeline: dict[str, Any], ma_lk: str, version: str) -> dict[str, Any]:
    item = aws("dynamodb").get_item(TableName=pipeline["env"]["VISITS_TABLE"], ConsistentRead=True, Key={
        "visit_id": {"S": f"{FACILITY}#{ma_lk}"}, "version": {"S": version}})["Item"]
    return {k: next(iter(v.values())) for k, v in item.items() if k != "records"}


def _in_force(aws: Callable[..., Any], pipeline: dict[str, Any], ma_lk: str) -> str:
    (pointer,) = [i for i in _visit_items(aws, pipeline, ma_lk) if i["version"]["S"] == "LATEST"]
    return str(pointer["current"]["S"])


def _sweep_until(aws: Callable[..., Any], pipeline: dict[str, Any], ma_lk: str, version: str, wanted: str,
                 timeout: float) -> dict[str, Any]:
    """Invoke the sweep (the schedule fires only every few minutes) until the visit reaches ``wanted``."""
    give_up = time.monotonic() + timeout
    while True:
        item = _visit_item(aws, pipeline, ma_lk, version)
        if item["status"] == wanted:
            return item
        assert item["status"] == "PENDING", item["status"]
        assert time.monotonic() < give_up, f"still PENDING after {timeout:.0f} s: {item}"
        aws("lambda").invoke(FunctionName=pipeline["outputs"]["SweepFunctionName"], Payload=b"{}")
        time.sleep(2)


@pytest.fixture
def deadline_inbox(aws: Callable[..., Any], pipeline: dict[str, Any]) -> Iterator[str]:
    """An SQS queue subscribed to the deadline topic: what on-call would receive."""
    sqs = aws("sqs")
    url = sqs.create_queue(QueueName=f"hb-e2e-deadline-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    subscription = aws("sns").subscribe(TopicArn=pipeline["outputs"]["DeadlineTopicArn"], Protocol="sqs",
                                        Endpoint=arn)["SubscriptionArn"]
    yield url
    aws("sns").unsubscribe(SubscriptionArn=subscription)
    sqs.delete_queue(QueueUrl=url)


def test_an_accepted_visit_appears_in_the_citizens_vneid_health_book(
        aws: Callable[..., Any], pipeline: dict[str, Any], fakes: Fakes, wait_for: Callable[..., Any]) -> None:
    path, visit = _book_submission(pipeline, fakes, seed=21)
    _upload(aws, pipeline, path)
    (entry,) = _receipt(aws, pipeline, path, wait_for)["visits"]
    version = _in_force(aws, pipeline, entry["ma_lk"])
    item = _sweep_until(aws, pipeline, entry["ma_lk"], version, "DELIVERED", timeout=60)
    assert int(item["latency_ms"]) > 0 and item["delivered_at"] <= item["deadline_at"]
    (stored,) = fakes.vneid.entries(item["citizen_key"])
    assert stored["entry"]["visit_id"] == f"{FACILITY}#{entry['ma_lk']}"
    assert stored["entry"]["diagnoses"][0]["code"] == visit.tables["XML1"][0]["MA_BENH_CHINH"]
    with urllib.request.urlopen(f"{fakes.vneid.url}/v1/citizens/{item['citizen_key']}/health-book.html",
                                timeout=5) as page:
        assert visit.tables["XML1"][0]["MA_BENH_CHINH"] in page.read().decode("utf-8")


def test_vneid_down_for_a_while_then_back_delivers_once(
        aws: Callable[..., Any], pipeline: dict[str, Any], fakes: Fakes, wait_for: Callable[..., Any]) -> None:
    path, _ = _book_submission(pipeline, fakes, seed=22)
    fakes.vneid.fail("5xx", seconds=20)  # longer than one execution's retries (2 + 4 + 8 s at most)
    _upload(aws, pipeline, path)
    (entry,) = _receipt(aws, pipeline, path, wait_for)["visits"]
    version = _in_force(aws, pipeline, entry["ma_lk"])
    item = _sweep_until(aws, pipeline, entry["ma_lk"], version, "DELIVERED", timeout=55)
    assert int(item["attempts"]) >= 1 and item["last_error"] == "RetryableDeliveryError"
    assert len(fakes.vneid.entries(item["citizen_key"])) == 1


def test_vneid_down_past_the_cutoff_records_a_breach_and_notifies(
        aws: Callable[..., Any], pipeline: dict[str, Any], fakes: Fakes, deadline_inbox: str,
        wait_for: Callable[..., Any]) -> None:
    path, _ = _book_submission(pipeline, fakes, seed=23)
    fakes.vneid.fail("5xx", seconds=600)
    try:
        _upload(aws, pipeline, path)
        (entry,) = _receipt(aws, pipeline, path, wait_for)["visits"]
        version = _in_force(aws, pipeline, entry["ma_lk"])
        item = _sweep_until(aws, pipeline, entry["ma_lk"], version, "DEADLINE_BREACHED", timeout=120)
    finally:
        fakes.vneid.reset()
    assert item["breached_at"] <= item["deadline_at"] and "delivered_at" not in item
    visit_id = f"{FACILITY}#{entry['ma_lk']}"

    def notified() -> list[Any]:
        messages = aws("sqs").receive_message(QueueUrl=deadline_inbox, WaitTimeSeconds=1).get("Messages", [])
        return [m for m in messages if visit_id in m["Body"]]

    assert wait_for("the deadline notification", notified, timeout=30)


def test_a_resubmission_leaves_only_the_new_version_in_vneid(
        aws: Callable[..., Any], pipeline: dict[str, Any], fakes: Fakes, wait_for: Callable[..., Any]) -> None:
    first, visit = _book_submission(pipeline, fakes, seed=24)
    _upload(aws, pipeline, first)
    (entry,) = _receipt(aws, pipeline, first, wait_for)["visits"]
    old = _in_force(aws, pipeline, entry["ma_lk"])
    delivered = _sweep_until(aws, pipeline, entry["ma_lk"], old, "DELIVERED", timeout=60)
    time.sleep(1)  # versions are receipt times in seconds: the resubmission must come a second later
    visit.tables["XML1"][0]["DIEN_THOAI"] = "0912345678"  # a correction: identical bytes would be a replay (I503)
    again, _ = _book_submission(pipeline, fakes, seed=24, visit=visit)
    _upload(aws, pipeline, again)
    _receipt(aws, pipeline, again, wait_for)
    new = _in_force(aws, pipeline, entry["ma_lk"])
    assert new > old
    _sweep_until(aws, pipeline, entry["ma_lk"], new, "DELIVERED", timeout=60)
    from healthbook.delivery.service import version_ms
    from healthbook.projection import projection_id

    (stored,) = fakes.vneid.entries(delivered["citizen_key"])
    assert stored["entry"]["version"] == version_ms(new)
    assert stored["entry"]["supersedes"] == projection_id(f"{FACILITY}#{entry['ma_lk']}", version_ms(old))
    assert _visit_item(aws, pipeline, entry["ma_lk"], old)["status"] == "SUPERSEDED"


# --- 4. the portal API: what an HIS does, with a plain HTTP client (docs/portal-api.md) ---------------------------

def _his(aws: Callable[..., Any], pipeline: dict[str, Any], localstack: str, *, facility: str = FACILITY,
         password: str | None = None) -> Any:
    """A new portal account for ``facility`` (as `healthbook facility add --portal-user` makes one) and the client
    its HIS would be."""
    from healthbook.aws.portal_store import PortalAccounts
    from healthbook.portal.credentials import password_md5
    from healthbook_dev.pki import FACILITIES
    from healthbook_dev.portal_client import PortalClient, localstack_api_url

    outputs = pipeline["outputs"]
    if "PortalApiId" not in outputs:
        pytest.skip("the stack has no portal API")
    province = FACILITIES[facility][1] if facility in FACILITIES else facility[:2]
    username, password = f"his-{uuid.uuid4().hex[:10]}", password or f"pw-{uuid.uuid4().hex}"
    PortalAccounts(aws("dynamodb"), outputs["PortalTableName"]).register(
        username, facility=facility, province=province, password_md5=password_md5(password), now=datetime.now(UTC))
    return PortalClient(localstack_api_url(localstack, outputs["PortalApiId"], PIPELINE_STAGE), username=username,
                        password=password, province=province, facility=facility)


def test_an_his_sends_through_the_portal_api_and_the_visit_reaches_vneid(
        aws: Callable[..., Any], pipeline: dict[str, Any], fakes: Fakes, localstack: str) -> None:
    his = _his(aws, pipeline, localstack)
    token = his.take_token()
    assert token.status == 200 and token.code == "200" and token.body["APIKey"]["token_type"] == "Bearer"
    path, visit = _book_submission(pipeline, fakes, seed=41)
    sent = his.submit(path.read_bytes())
    assert sent.code == "200", sent.body
    transaction = sent.body["maGiaoDich"]
    assert transaction.startswith(f"{FACILITY}-") and sent.body["thoiGianTiepNhan"] == transaction.split("-")[1]
    result = his.wait_for_receipt(transaction, timeout=180)
    assert result.code == "200", result.body
    receipt = result.body["bienNhan"]
    _verify(aws, pipeline, receipt)
    assert receipt["transaction_id"] == transaction and result.body["trangThai"] == "ACCEPTED"
    assert receipt["object_key"] == f"inbox/{FACILITY}/portal/{transaction}.xml"
    (submission,) = _submissions_for(aws, pipeline, receipt["object_key"])
    assert submission["transaction_id"]["S"] == transaction
    (entry,) = receipt["visits"]
    version = _in_force(aws, pipeline, entry["ma_lk"])
    item = _sweep_until(aws, pipeline, entry["ma_lk"], version, "DELIVERED", timeout=60)
    (stored,) = fakes.vneid.entries(item["citizen_key"])
    assert stored["entry"]["visit_id"] == f"{FACILITY}#{visit.tables['XML1'][0]['MA_LK']}"

    # the same file again: received, then refused as a replay (I503), with its own receipt
    again = his.submit(path.read_bytes())
    assert again.code == "200" and again.body["maGiaoDich"] != transaction
    replay = his.wait_for_receipt(again.body["maGiaoDich"], timeout=180)
    assert replay.code == "200" and replay.body["trangThai"] == "REJECTED"
    assert [e["code"] for e in replay.body["bienNhan"]["errors"]] == ["I503"]


def test_the_portal_api_refuses_wrong_passwords_then_locks_and_keeps_facilities_apart(
        aws: Callable[..., Any], pipeline: dict[str, Any], localstack: str) -> None:
    from healthbook.portal.credentials import password_md5

    his = _his(aws, pipeline, localstack)
    wrong = password_md5("not-the-password")
    codes = [his.take_token(wrong).code for _ in range(5)]
    assert codes == ["401", "401", "401", "401", "423"]  # the fifth failure locks the account
    locked = his.take_token()  # even the right password, while locked
    assert locked.status == 423 and locked.body["thoiGianMoKhoa"]

    other = _his(aws, pipeline, localstack)
    assert other.take_token().code == "200"
    refused = other.submit(b"<GIAMDINHHS/>", facility="79001", province="79")  # facility B's code, A's token
    assert refused.status == 403 and refused.code == "403"
    listed = aws("s3").list_objects_v2(Bucket=pipeline["env"]["INBOX_BUCKET"], Prefix="inbox/79001/portal/")
    assert listed.get("KeyCount", 0) == 0
    assert other.lookup(f"79001-{datetime.now(UTC):%Y%m%d%H%M%S}-0123456789ab").code == "404"
    unknown = other.post("/api/qd130/khongCo", {"username": other.username})
    assert unknown.status in (404, 405)  # API Gateway's, or ours: an unknown path is refused either way


def test_the_report_function_reports_what_the_counters_hold(aws: Callable[..., Any], pipeline: dict[str, Any]) -> None:
    """Runs last: the month's report on the deployed stack, after the uploads and deliveries above (Scheduler
    never fires on LocalStack, so the function is invoked as an operator re-running a period would)."""
    from healthbook.kernel import PORTAL_TZ
    from healthbook.reports.model import Period

    outputs = pipeline["outputs"]
    if "ReportFunctionName" not in outputs:
        pytest.skip("the stack has no report function")
    month = Period.month_of(datetime.now(PORTAL_TZ).date())
    error, result, logs = _invoke(aws, outputs["ReportFunctionName"], {"period": month.label})
    assert error is None, logs
    prefix = f"reports/month/{month.label}/"
    assert sorted(result["objects"]) == [prefix + name for name in
                                         ("commune.csv", "facility.csv", "province.csv", "report.html", "report.xlsx")]
    s3 = aws("s3")
    body = s3.get_object(Bucket=outputs["ReportsBucketName"], Key=prefix + "facility.csv")["Body"].read()
    assert body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    header, facility = rows[0], next(r for r in rows[1:] if r[0] == FACILITY)
    from healthbook.reports.aggregates import period_high

    # the same numbers, read straight from the counters of this month's days (every shard of each)
    items = aws("dynamodb").query(
        TableName=outputs["AggregatesTableName"], KeyConditionExpression="#s = :s AND #p BETWEEN :lo AND :hi",
        ExpressionAttributeNames={"#s": "scope", "#p": "period"},
        ExpressionAttributeValues={":s": {"S": f"F#{FACILITY}"}, ":lo": {"S": f"D#{month.start}"},
                                   ":hi": {"S": period_high(f"D#{month.end}")}})["Items"]
    # and the files and deliveries straight from their items of the month (the indexes the report counts them in)
    counted = {counter: aws("dynamodb").query(
        TableName=outputs[table], IndexName=index, Select="COUNT", KeyConditionExpression="#k = :m",
        ExpressionAttributeNames={"#k": key},
        ExpressionAttributeValues={":m": {"S": f"{FACILITY}#{month.start:%Y-%m}"}})["Count"]
        for counter, table, index, key in (
            ("files_received", "SubmissionsTableName", "by-facility-month", "facility_month"),
            ("delivered", "VisitsTableName", "by-facility-delivered", "delivered_month"))}
    for counter, column in (("files_received", "Số hồ sơ (file) nhận"), ("delivered", "Số lượt đã gửi lên VNeID"),
                            ("breached", "Số lượt quá hạn 24 giờ")):
        expected = sum(int(item.get(counter, {}).get("N", "0")) for item in items) + counted.get(counter, 0)
        assert int(facility[header.index(column)]) == expected, counter
    assert int(facility[header.index("Số lượt đã gửi lên VNeID")]) >= 3  # the health-book tests above delivered
    assert int(facility[header.index("Số công dân (không trùng)")]) >= 1
