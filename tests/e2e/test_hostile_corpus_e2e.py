"""Issue 7 end to end: the hostile corpus (healthbook_dev.generate.hostile) through the stack deployed on LocalStack.

Builds on test_localstack's ``pipeline`` (template.yaml deployed, facility 01001 registered) and adds what the
signature cases need: this corpus's CA in the trust bundle and its certificates in the facility registry, both
put back as they were afterwards. Every case is uploaded as a facility uploads (SSE-KMS, SHA-256 checksum) under
a name no earlier run used. Then each must have exactly one receipt (the receipts bucket is versioned, so a second
write would show) that verifies and carries one of the expected codes, and one submission item; the ingest queue
must drain with nothing in its dead-letter queue (no message failed). docs/hostile-inputs.md lists the cases.
Run: ``make localstack-up && make e2e`` (docs/localstack.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_localstack

pytestmark = pytest.mark.localstack

FACILITY = test_localstack.FACILITY
PASSWD = "root:x:0:0"  # what /etc/passwd starts with: an XXE that worked would show it
RECEIPTS_WITHIN = 600.0  # seconds for the whole corpus; one file takes about a second
# The deployed stack and its fakes, as test_localstack sets them up (a module fixture: deployed for this module).
pipeline = test_localstack.pipeline
fakes = test_localstack.fakes


def _cold_start(aws: Callable[..., Any], function: str) -> None:
    """A warm function keeps its trust anchors and registry cache: a changed environment starts it cold."""
    lam = aws("lambda")
    variables = dict(lam.get_function_configuration(FunctionName=function)["Environment"]["Variables"])
    variables["HB_E2E_RUN"] = str(uuid.uuid4())
    lam.update_function_configuration(FunctionName=function, Environment={"Variables": variables})
    lam.get_waiter("function_updated_v2").wait(FunctionName=function)


@pytest.fixture(scope="module")
def hostile_pki(aws: Callable[..., Any], pipeline: dict[str, Any],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A dev PKI whose CA the function trusts (beside the pipeline's) and whose certificates the registry knows
    as healthbook_dev.generate.hostile.registrations says, revocation included."""
    from healthbook.aws.facilities import FacilitiesRepository
    from healthbook.signing.registry import certificate_sha256
    from healthbook_dev.generate.hostile import registrations
    from healthbook_dev.pki import dev_pki

    pki = dev_pki(tmp_path_factory.mktemp("hostile-pki"))
    env = pipeline["env"]
    ssm = aws("ssm")
    bundle = ssm.get_parameter(Name=env["TRUST_BUNDLE_PARAMETER"])["Parameter"]
    table = aws("dynamodb", resource=True).Table(env["FACILITIES_TABLE"])
    entries = registrations(pki, facility=FACILITY)
    saved = {code: table.get_item(Key={"facility": code}, ConsistentRead=True).get("Item")
             for code in {entry.facility for entry in entries}}
    try:
        ssm.put_parameter(Name=env["TRUST_BUNDLE_PARAMETER"], Type=bundle["Type"], Overwrite=True,
                          Value=bundle["Value"].rstrip("\n") + "\n" + pki["ca"].read_text())
        facilities = FacilitiesRepository(table)
        for entry in entries:
            facilities.put_facility(entry.facility, entry.name, entry.province, entry.certificate)
            if entry.revoked_at is not None:
                facilities.revoke_certificate(entry.facility, certificate_sha256(entry.certificate), entry.revoked_at)
        _cold_start(aws, pipeline["function"])
        yield pki
    finally:
        ssm.put_parameter(Name=env["TRUST_BUNDLE_PARAMETER"], Type=bundle["Type"], Value=bundle["Value"],
                          Overwrite=True)
        for code, item in saved.items():
            if item is None:
                table.delete_item(Key={"facility": code})
            else:
                table.put_item(Item=item)
        _cold_start(aws, pipeline["function"])


def _put(aws: Callable[..., Any], pipeline: dict[str, Any], key: str, body: bytes) -> None:
    """As healthbook_dev.aws.upload.upload_file puts a file, for any key (it always names inbox/{facility}/)."""
    extra = {"ServerSideEncryption": "aws:kms"}
    if pipeline["outputs"].get("DataKeyArn"):
        extra["SSEKMSKeyId"] = pipeline["outputs"]["DataKeyArn"]
    aws("s3").put_object(Bucket=pipeline["env"]["INBOX_BUCKET"], Key=key, Body=body, ContentType="application/xml",
                         ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode("ascii"), **extra)


def _upload(aws: Callable[..., Any], pipeline: dict[str, Any], key: str, body: bytes) -> None:
    """The facility's own folder through the facility's upload path; anything else as _put."""
    from healthbook_dev.aws.upload import Destination, upload_file

    folder, _, name = key.rpartition("/")
    if folder != f"inbox/{FACILITY}":
        _put(aws, pipeline, key, body)
        return
    path = pipeline["workdir"] / name
    path.write_bytes(body)
    destination = Destination(inbox_bucket=pipeline["env"]["INBOX_BUCKET"],
                              receipts_bucket=pipeline["env"]["RECEIPTS_BUCKET"],
                              kms_key_id=pipeline["outputs"].get("DataKeyArn"))
    assert upload_file(aws("s3"), destination, FACILITY, path) == key


def _receipt_versions(aws: Callable[..., Any], pipeline: dict[str, Any], key: str) -> list[dict[str, Any]]:
    listed = aws("s3").list_object_versions(Bucket=pipeline["env"]["RECEIPTS_BUCKET"], Prefix=key)
    return [v for v in listed.get("Versions", []) if v["Key"] == key]


def _await_receipts(aws: Callable[..., Any], pipeline: dict[str, Any], keys: list[str], timeout: float) -> None:
    """Until every key has a receipt, or the time is up (the checks that follow say which are missing)."""
    pending, deadline = set(keys), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {key for key in pending if not _receipt_versions(aws, pipeline, key)}
        if pending:
            time.sleep(2)



def _codes(receipt: dict[str, Any]) -> set[str]:
    issues = [*receipt["errors"], *(issue for visit in receipt["visits"] for issue in visit["errors"])]
    return {issue["code"] for issue in issues}


def test_every_hostile_case_gets_exactly_one_clear_receipt(aws: Callable[..., Any], pipeline: dict[str, Any],
                                                           hostile_pki: dict[str, Path]) -> None:
    from healthbook.ingest.model import locate
    from healthbook.kernel import MAX_FILE_BYTES
    from healthbook_dev.generate.hostile import hostile_corpus

    run = uuid.uuid4().hex[:10]
    limit = int(pipeline["env"].get("MAX_OBJECT_BYTES") or MAX_FILE_BYTES)
    corpus = [case.renamed(f"{run}-") for case in hostile_corpus(hostile_pki, facility=FACILITY,
                                                                 max_object_bytes=limit)]
    dead_letters = pipeline["outputs"]["IngestDeadLetterQueueUrl"]
    # an earlier run's leftovers are not this corpus's doing
    dead_before = test_localstack.queue_counts(aws, dead_letters)
    # Outside inbox/ the bucket notifies nobody (template.yaml): such an object gets no receipt at all.
    outside = f"uploads/{run}-outside-inbox.xml"
    _put(aws, pipeline, outside, corpus[0].body)

    originals = [(key, body) for case in corpus for key, body in case.before]
    for key, body in originals:
        _upload(aws, pipeline, key, body)
    _await_receipts(aws, pipeline, [locate(key).receipt_key for key, _ in originals], RECEIPTS_WITHIN)
    s3 = aws("s3")
    for key, _ in originals:  # a replay means something only once its original was accepted
        original = json.loads(s3.get_object(Bucket=pipeline["env"]["RECEIPTS_BUCKET"],
                                            Key=locate(key).receipt_key)["Body"].read())
        assert original["accepted"], f"the original {key} was not accepted: {original['errors']}"
    for case in corpus:
        _upload(aws, pipeline, case.key, case.body)
    _await_receipts(aws, pipeline, [case.expect_receipt_at for case in corpus], RECEIPTS_WITHIN)

    # Settled before counting receipts: a message still in flight could yet write a second one.
    queue, settle_by = test_localstack.ingest_queue_url(aws, pipeline), time.monotonic() + 300
    while (in_queue := test_localstack.queue_counts(aws, queue)) != (0, 0) and time.monotonic() < settle_by:
        time.sleep(2)

    problems: dict[str, list[str]] = {}
    for case in corpus:
        found: list[str] = []
        versions = _receipt_versions(aws, pipeline, case.expect_receipt_at)
        if len(versions) != 1:
            problems[case.name] = [f"{len(versions)} receipts at {case.expect_receipt_at}, expected exactly 1"]
            continue
        text = s3.get_object(Bucket=pipeline["env"]["RECEIPTS_BUCKET"],
                             Key=case.expect_receipt_at)["Body"].read().decode("utf-8")
        receipt = json.loads(text)
        try:
            test_localstack._verify(aws, pipeline, receipt)
        except AssertionError as error:
            found.append(f"the receipt does not verify: {error}")
        if receipt["object_key"] != case.key:
            found.append(f"the receipt names {receipt['object_key']!r}")
        if receipt["accepted"] is not (case.expect_status == "ACCEPTED"):
            found.append(f"receipt accepted={receipt['accepted']}, expected status {case.expect_status}")
        codes = _codes(receipt)
        if case.expected_codes and not codes & case.expected_codes:
            found.append(f"receipt codes {sorted(codes)}, expected one of {sorted(case.expected_codes)}")
        findings = {issue["code"] for visit in receipt["visits"] for issue in visit.get("findings", [])}
        if not case.expected_findings <= findings:
            found.append(f"receipt findings {sorted(findings)}, expected {sorted(case.expected_findings)}")
        submissions = test_localstack._submissions_for(aws, pipeline, case.key)
        statuses = [item["status"]["S"] for item in submissions]
        if statuses != [case.expect_status]:
            found.append(f"submission statuses {statuses}, expected [{case.expect_status}]")
        found.extend(f"{value[:3]}… appears unmasked in the receipt" for value in (*case.personal, PASSWD)
                     if value in text)
        if found:
            problems[case.name] = found
    report = "\n".join(f"{name}: {'; '.join(found)}" for name, found in problems.items())
    assert not report, "\n" + report
    assert in_queue == (0, 0), f"ingest messages still queued or in flight (visible, in flight): {in_queue}"
    dead_after = test_localstack.queue_counts(aws, dead_letters)
    assert dead_after == dead_before, "ingest messages reached the dead-letter queue"

    assert _receipt_versions(aws, pipeline, locate(outside).receipt_key) == []
    assert test_localstack._submissions_for(aws, pipeline, outside) == []
