"""Issue 7: the hostile corpus (healthbook_dev.generate.hostile) through the real ingest handler, in-process on moto.

Every case is uploaded and its S3 notification handed to the handler, one message per invocation, with the
handler's logs and printed metrics captured per case. Then, per case: the message did not fail, exactly one
receipt was written (the receipts bucket is versioned here, so a second write would show), it verifies
offline and carries the expected code, one submission item records the outcome, a rejected original sits in
quarantine, and the personal data inside the file is nowhere in the logs, metrics or receipt.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from healthbook.ingest.model import is_version_key
from healthbook.signing.receipt import verify_receipt
from healthbook.signing.registry import certificate_sha256
from healthbook.validation.catalogue import RULES
from healthbook_dev.aws.sandbox import (
    NAMES,
    REGION,
    LambdaContext,
    Sandbox,
    build,
    kms_signs_digests_like_aws,
    load_ingest_handler,
    s3_event_message,
)
from healthbook_dev.generate.hostile import CATEGORIES, HostileCase, hostile_corpus, registrations
from healthbook_dev.pki import dev_pki

pytestmark = pytest.mark.slow  # builds and runs the 30-kind hostile corpus

RECEIVED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
REPLAY_AFTER = timedelta(minutes=5)  # the replay arrives after its original, as a real one would
PEPPER = "hostile-corpus-pepper-0123456789"
PASSWD = "root:x:0:0"  # what /etc/passwd starts with: an XXE that worked would show it


@dataclass
class Ingested:
    """What one case left behind."""

    failures: list[str]
    logs: str  # the handler's JSON log lines and every other log record of the run
    printed: str  # stdout: the EMF metric documents
    receipts: list[dict[str, Any]]  # every version written at the expected receipt key
    submissions: list[dict[str, Any]] = field(default_factory=list)
    quarantined: bytes | None = None


@dataclass
class Run:
    box: Sandbox
    cases: list[HostileCase]
    results: dict[str, Ingested]
    receipt_keys: list[str]  # every receipt key in the bucket, all versions
    visits: list[dict[str, Any]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return dev_pki(tmp_path_factory.mktemp("pki"), now=RECEIVED)


@pytest.fixture(scope="module")
def corpus(pki: dict[str, Path]) -> list[HostileCase]:
    return hostile_corpus(pki)


@pytest.fixture(scope="module")
def app() -> ModuleType:
    return load_ingest_handler()


class _Records(logging.Handler):
    """Every log record, extras included (the ingest service logs through the standard library too)."""

    def __init__(self, sink: io.StringIO) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.write(f"{record.getMessage()} {record.__dict__!r}\n")


@contextlib.contextmanager
def _captured(app: ModuleType) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    logs, printed = io.StringIO(), io.StringIO()
    handler = app.logger.registered_handler
    previous = handler.setStream(logs)
    records = _Records(logs)
    logging.getLogger().addHandler(records)
    try:
        with contextlib.redirect_stdout(printed):
            yield logs, printed
    finally:
        logging.getLogger().removeHandler(records)
        handler.setStream(previous)


def _scan(box: Sandbox, table: str) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    plain = TypeDeserializer()
    pages = box.ddb.get_paginator("scan").paginate(TableName=NAMES[table])
    return [{k: plain.deserialize(v) for k, v in item.items()} for page in pages for item in page["Items"]]


def _versions(box: Sandbox, bucket: str, key: str) -> list[dict[str, Any]]:
    listed = box.s3.list_object_versions(Bucket=NAMES[bucket], Prefix=key)
    return [v for v in listed.get("Versions", []) if v["Key"] == key]


def _ingest(app: ModuleType, box: Sandbox, key: str, body: bytes, at: datetime,
            message_id: str) -> tuple[list[str], str, str]:
    version = box.s3.put_object(Bucket=NAMES["INBOX_BUCKET"], Key=key, Body=body)["VersionId"]
    event = {"Records": [s3_event_message(NAMES["INBOX_BUCKET"], key, version, size=len(body), at=at,
                                          message_id=message_id)]}
    with _captured(app) as (logs, printed):
        response = app.lambda_handler(event, LambdaContext())
    return [f["itemIdentifier"] for f in response["batchItemFailures"]], logs.getvalue(), printed.getvalue()


@pytest.fixture(scope="module")
def run(pki: dict[str, Path], corpus: list[HostileCase], app: ModuleType) -> Iterator[Run]:
    import boto3
    from healthbook.aws.facilities import FacilitiesRepository
    from moto import mock_aws

    env = {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "POWERTOOLS_TRACE_DISABLED": "true", **NAMES}
    with pytest.MonkeyPatch.context() as patch, mock_aws(), kms_signs_digests_like_aws():
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "DELIVERY_STATE_MACHINE_ARN", "MAX_OBJECT_BYTES"):
            patch.delenv(name, raising=False)  # the deployed default limit: the corpus's oversized case fits it
        for name, value in env.items():
            patch.setenv(name, value)
        box = build(pki["ca"].read_text(), pepper=PEPPER)
        patch.setenv("RECEIPT_KEY_ID", box.receipt_key_id)
        box.s3.put_bucket_versioning(Bucket=NAMES["RECEIPTS_BUCKET"], VersioningConfiguration={"Status": "Enabled"})
        facilities = FacilitiesRepository(boto3.resource("dynamodb").Table(NAMES["FACILITIES_TABLE"]))
        for entry in registrations(pki):
            facilities.put_facility(entry.facility, entry.name, entry.province, entry.certificate)
            if entry.revoked_at is not None:
                facilities.revoke_certificate(entry.facility, certificate_sha256(entry.certificate), entry.revoked_at)
        app.reset()
        results: dict[str, Ingested] = {}
        for number, case in enumerate(corpus):
            for index, (key, body) in enumerate(case.before):
                failed, _, _ = _ingest(app, box, key, body, RECEIVED, f"before-{number}-{index}")
                assert failed == [], f"{case.name}: its original {key} failed"
            at = RECEIVED + REPLAY_AFTER if case.before else RECEIVED
            failures, logs, printed = _ingest(app, box, case.key, case.body, at, f"m-{number}")
            results[case.name] = Ingested(failures=failures, logs=logs, printed=printed, receipts=[
                {"version": v["VersionId"], "body": box.s3.get_object(
                    Bucket=NAMES["RECEIPTS_BUCKET"], Key=case.expect_receipt_at, VersionId=v["VersionId"]
                )["Body"].read()} for v in _versions(box, "RECEIPTS_BUCKET", case.expect_receipt_at)])
        submissions = _scan(box, "SUBMISSIONS_TABLE")
        for case in corpus:
            result = results[case.name]
            result.submissions = [s for s in submissions if s.get("object_key") == case.key]  # not content claims
            if _versions(box, "QUARANTINE_BUCKET", case.key):
                result.quarantined = box.s3.get_object(Bucket=NAMES["QUARANTINE_BUCKET"], Key=case.key)["Body"].read()
        listed = box.s3.list_object_versions(Bucket=NAMES["RECEIPTS_BUCKET"]).get("Versions", [])
        yield Run(box=box, cases=corpus, results=results, receipt_keys=[v["Key"] for v in listed],
                  visits=_scan(box, "VISITS_TABLE"))
        app.reset()


# --- the corpus itself -------------------------------------------------------------------------------------

def test_the_corpus_has_thirty_kinds_and_unique_names(corpus: list[HostileCase]) -> None:
    names = [case.name for case in corpus]
    assert len(set(names)) == len(names)
    assert len({case.kind for case in corpus}) >= 30
    assert {case.category for case in corpus} == set(CATEGORIES)
    # One receipt per case only means something if no two cases share a receipt key.
    receipts = [key for case in corpus for key in (case.expect_receipt_at, *(_receipt_key(k) for k, _ in case.before))]
    assert len(set(receipts)) == len(receipts)
    for case in corpus:
        assert case.expected_codes <= set(RULES), case.name
        assert bool(case.expected_codes) == (case.expect_status != "ACCEPTED"), case.name


def test_the_corpus_is_reproducible(pki: dict[str, Path], corpus: list[HostileCase]) -> None:
    again = hostile_corpus(pki)
    assert [(c.name, c.key, c.body, c.expected_codes) for c in again] == [
        (c.name, c.key, c.body, c.expected_codes) for c in corpus]


# --- through the handler -----------------------------------------------------------------------------------

def _codes(receipt: dict[str, Any]) -> set[str]:
    """What the receipt says rejected the file or kept its visits out: file level and every visit's errors."""
    issues = [*receipt["errors"], *(issue for visit in receipt["visits"] for issue in visit["errors"])]
    return {issue["code"] for issue in issues}


def _findings(receipt: dict[str, Any]) -> set[str]:
    return {issue["code"] for visit in receipt["visits"] for issue in visit["findings"]}


def _problems(case: HostileCase, result: Ingested, public_key: bytes) -> list[str]:
    problems: list[str] = []
    if result.failures:
        problems.append(f"the message failed (batchItemFailures {result.failures})")
    if len(result.receipts) != 1:
        problems.append(f"{len(result.receipts)} receipts at {case.expect_receipt_at}, expected exactly 1")
        return problems
    text = result.receipts[0]["body"].decode("utf-8")
    receipt = json.loads(text)
    if trouble := verify_receipt(receipt, public_key):
        problems.append(f"the receipt does not verify: {trouble}")
    if receipt["object_key"] != case.key:
        problems.append(f"the receipt names {receipt['object_key']!r}")
    codes = _codes(receipt)
    accepted = case.expect_status == "ACCEPTED"
    if receipt["accepted"] is not accepted:
        problems.append(f"receipt accepted={receipt['accepted']}, expected {accepted}")
    # The corpus states every code the receipt carries (decided by running it): any change shows here.
    if codes != set(case.expected_codes):
        problems.append(f"receipt codes {sorted(codes)}, expected {sorted(case.expected_codes)}")
    if not set(case.expected_findings) <= _findings(receipt):
        problems.append(f"receipt findings {sorted(_findings(receipt))}, expected {sorted(case.expected_findings)}")
    if len(result.submissions) != 1:
        problems.append(f"{len(result.submissions)} submission items, expected 1")
    else:
        (item,) = result.submissions
        if item["status"] != case.expect_status or item["receipt_key"] != case.expect_receipt_at:
            problems.append(f"submission {item['status']} / {item['receipt_key']}")
        if set(item.get("error_codes", ())) != codes:
            problems.append(f"submission error codes {sorted(item.get('error_codes', ()))} != receipt's")
    if case.expect_status == "REJECTED" and result.quarantined != case.body:
        problems.append("the rejected original is not in quarantine, byte for byte")
    if case.expect_status != "REJECTED" and result.quarantined is not None:
        problems.append("a file with accepted visits was quarantined")
    for value in (*case.personal, PASSWD):
        if value in result.logs or value in result.printed:
            problems.append(f"{value[:3]}… appears in the logs or metrics")
        if value in text:
            problems.append(f"{value[:3]}… appears unmasked in the receipt")
    return problems


def test_every_case_gets_exactly_one_clear_receipt(run: Run) -> None:
    found = {case.name: _problems(case, run.results[case.name], run.box.public_key_pem) for case in run.cases}
    report = "\n".join(f"{name}: {'; '.join(problems)}" for name, problems in found.items() if problems)
    assert not report, "\n" + report


def test_nothing_is_lost_and_nothing_else_is_written(run: Run) -> None:
    expected = sorted(key for case in run.cases for key in (case.expect_receipt_at, *(
        _receipt_key(k) for k, _ in case.before)))
    assert sorted(run.receipt_keys) == expected
    assert all(run.results[case.name].logs for case in run.cases)  # each run was observed (the capture works)


def _receipt_key(key: str) -> str:
    from healthbook.ingest.model import locate

    return locate(key).receipt_key


def test_every_outcome_is_logged_once_with_its_codes(run: Run) -> None:
    for case in run.cases:
        lines = [json.loads(line) for line in run.results[case.name].logs.splitlines() if line.startswith("{")]
        outcomes = [line for line in lines if line["message"].startswith("object ")]
        assert [line["message"] for line in outcomes] == [f"object {case.expect_status.lower()}"], case.name
        assert set(outcomes[0].get("error_codes", [])) == set(case.expected_codes), case.name  # none: left out


def test_a_replay_under_a_new_name_is_refused_and_stores_nothing(run: Run) -> None:
    """A byte-identical copy of an accepted file under another key: a new object, so a new submission, but its
    content is claimed by the original's: refused with I503 naming the original's submission, its visit not
    stored again (the original's version stays the one in force), the claim still the original's."""
    (case,) = [c for c in run.cases if c.kind == "replay"]
    ((original_key, original_body),) = case.before
    assert original_body == case.body
    items = _scan(run.box, "SUBMISSIONS_TABLE")
    first, again = (next(s for s in items if s.get("object_key") == key) for key in (original_key, case.key))
    assert (first["status"], again["status"]) == ("ACCEPTED", "REJECTED")
    assert first["content_sha256"] == again["content_sha256"] and "merkle_root" not in again
    (claim,) = [s for s in items if s["submission_id"] == f"content#{first['facility']}#{first['content_sha256']}"]
    assert claim["claimed_by"] == first["submission_id"]  # confirmed: its holder's submission item is `first`
    (error,) = json.loads(run.results[case.name].receipts[0]["body"])["errors"]
    assert error["code"] == "I503" and first["submission_id"] in error["message_en"]
    assert first["received_at"] in error["message_vi"] and original_key.rsplit("/", 1)[1] not in error["message_en"]
    versions = [item for item in run.visits if item.get("submission_id") in (first["submission_id"],
                                                                             again["submission_id"])]
    # Only the original's version; later admitted files of the corpus (the same visit) may supersede it.
    assert [v["submission_id"] for v in versions] == [first["submission_id"]]
    (pointer,) = [item for item in run.visits if item["visit_id"] == versions[0]["visit_id"]
                  and item["version"] == "LATEST"]
    assert again["submission_id"] not in pointer["current"]


def test_two_visits_under_one_ma_lk_keep_the_first(run: Run) -> None:
    """The duplicate-MA_LK case: the first HOSO is stored, the second (different content) refused with E017."""
    case = next(c for c in run.cases if c.name == "duplicate-ma-lk")
    first, second = json.loads(run.results[case.name].receipts[0]["body"])["visits"]
    assert first["ma_lk"] == second["ma_lk"] and first["accepted"] and not second["accepted"]
    assert [i["code"] for i in second["errors"]] == ["E017"]
    stored = [item for item in run.visits if item["visit_id"].endswith(f"#{first['ma_lk']}")
              and is_version_key(item["version"])]
    assert [item["digest"] for item in stored] == [first["digest"]]


def test_the_documentation_lists_every_case_with_its_codes(corpus: list[HostileCase]) -> None:
    rows = {}
    for line in (Path(__file__).resolve().parents[1] / "docs" / "hostile-inputs.md").read_text("utf-8").splitlines():
        if match := re.match(r"\| `([a-z0-9-]+)` \| ([a-z0-9-]+) \| .* \| ([^|]*) \| [^|]* \|$", line):
            rows[match.group(1)] = (match.group(2), set(re.findall(r"`([A-Z]\d{3})`", match.group(3))))
    assert rows == {case.name: (case.kind, set(case.expected_codes | case.expected_findings)) for case in corpus}
