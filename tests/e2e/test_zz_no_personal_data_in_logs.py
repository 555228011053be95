"""Issue 7: no personal data in any log line of the end-to-end run (docs/faults.md).

Runs last (by name), after every other e2e module uploaded its submissions. It reads back every object version
in the pipeline stack's inbox bucket (all the files of this run: generated, signed, defective and hostile), parses
each defensively as the pipeline would (safe XML, strict base64 of each table) and collects the personal values
in it: every field the standard classes as a name, an ID number, a card number, a phone number or an address
(healthbook.standard.pii_classes; not birth dates, whose digits are no identity on their own), 6 characters or
longer. Then it reads every log event LocalStack holds in CloudWatch Logs (every log group: the functions', the
state machine's, the fixture stack's) and fails if any contains one of those values, as written, as JSON escapes
it, URL-encoded, or (names and addresses) without accents and in upper case. It prints how much it checked, and
fails when it found nothing to check: no values, or no log lines.
Run: ``make e2e`` (docs/localstack.md).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

pytestmark = pytest.mark.localstack

STACK = os.environ.get("HB_E2E_STACK") or "healthbook-local"
KINDS = ("name", "id", "card", "phone", "address")  # pii classes searched for; not "birthdate"
MIN_LENGTH = 6
MAX_OBJECT_BYTES = 64 * 1024 * 1024  # a hostile file larger than this is not read back


def _inbox_bucket(aws: Callable[..., Any]) -> str:
    cfn = aws("cloudformation")
    try:
        resources = cfn.describe_stack_resources(StackName=STACK)["StackResources"]
    except cfn.exceptions.ClientError as error:
        pytest.skip(f"no stack {STACK} on this LocalStack ({error}): nothing of the pipeline ran")
    for resource in resources:
        if resource["LogicalResourceId"] == "InboxBucket":
            return str(resource["PhysicalResourceId"])
    pytest.skip(f"stack {STACK} has no InboxBucket")


def _object_versions(aws: Callable[..., Any], bucket: str) -> Iterator[dict[str, Any]]:
    for page in aws("s3").get_paginator("list_object_versions").paginate(Bucket=bucket):
        yield from page.get("Versions", [])


def personal_values(body: bytes) -> set[tuple[str, str]]:
    """(class, value) of every personal field in a submission: in its base64 tables, and in the document itself
    (a bare table). Raises on a document that is not XML at all; a table that does not decode is skipped."""
    from healthbook.parsing.safe_xml import XmlRejected, decode_base64, parse
    from healthbook.standard import pii_classes

    classes = {name: kind for name, kind in pii_classes().items() if kind in KINDS}
    found: set[tuple[str, str]] = set()

    def collect(root: Any) -> None:
        for element in root.iter():
            if isinstance(element.tag, str) and element.tag in classes and element.text:
                value = element.text.strip()
                if len(value) >= MIN_LENGTH:
                    found.add((classes[element.tag], value))

    root = parse(body, limit=MAX_OBJECT_BYTES)
    collect(root)
    for content in root.iter("NOIDUNGFILE"):
        try:
            collect(parse(decode_base64(content.text, limit=MAX_OBJECT_BYTES, table="?"), limit=MAX_OBJECT_BYTES))
        except (XmlRejected, ValueError):
            continue
    return found


def _unaccented(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def variants(kind: str, value: str) -> set[str]:
    """The spellings a log could carry the value in."""
    forms = {value, json.dumps(value)[1:-1], quote(value), quote_plus(value)}
    if kind in ("name", "address"):
        plain = _unaccented(value)
        forms |= {plain, plain.upper(), value.upper(), unicodedata.normalize("NFD", value)}
    return {form for form in forms if len(form) >= MIN_LENGTH}


def _log_events(aws: Callable[..., Any]) -> Iterator[tuple[str, str]]:
    logs = aws("logs")
    for page in logs.get_paginator("describe_log_groups").paginate():
        for group in page["logGroups"]:
            for events in logs.get_paginator("filter_log_events").paginate(logGroupName=group["logGroupName"]):
                for event in events["events"]:
                    yield group["logGroupName"], str(event.get("message", ""))


def test_no_personal_data_in_any_log_line(aws: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    bucket = _inbox_bucket(aws)
    s3 = aws("s3")
    values: set[tuple[str, str]] = set()
    files = unreadable = 0
    for version in _object_versions(aws, bucket):
        files += 1
        if version["Size"] > MAX_OBJECT_BYTES:
            unreadable += 1
            continue
        body = s3.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])["Body"].read()
        try:
            values |= personal_values(body)
        except Exception:  # hostile inputs: not XML, entity bombs, wrong encodings... nothing to collect there
            unreadable += 1
    searched = {form: (kind, value) for kind, value in values for form in variants(kind, value)}

    groups: Counter[str] = Counter()
    lines = 0
    leaks: list[str] = []
    texts: dict[str, list[str]] = {}
    for group, message in _log_events(aws):
        groups[group] += 1
        lines += message.count("\n") + 1
        texts.setdefault(group, []).append(message)
    for group, messages in texts.items():
        text = "\n".join(messages)  # one search per value and group: fast, and then find the lines that leak
        for form, (kind, value) in searched.items():
            if form in text:
                where = next(message for message in messages if form in message).replace(form, f"<the {kind}>")
                shown = value[:2] + "…" + value[-2:]
                leaks.append(f"{group}: a {kind} ({shown}, {len(value)} characters, as {form[:2]}…) in: "
                             f"{where[:300]!r}")

    by_kind = Counter(kind for kind, _ in values)
    with capsys.disabled():  # shown by `make e2e` too, which does not pass -s
        _report(files, unreadable, values, by_kind, searched, groups, lines, leaks)
    assert values, f"no personal values found in the {files} objects of {bucket}: the check would prove nothing"
    assert sum(groups.values()) > 0, "no log events in LocalStack: the check would prove nothing"
    assert by_kind["name"] and by_kind["id"] and by_kind["card"], by_kind
    assert not leaks, "personal data in logs:\n" + "\n".join(leaks[:50])


def _report(files: int, unreadable: int, values: set[tuple[str, str]], by_kind: Counter[str],
            searched: dict[str, tuple[str, str]], groups: Counter[str], lines: int, leaks: list[str]) -> None:
    print(f"\n[no-pii] {files} inbox object versions read, {unreadable} not parseable (hostile inputs); "
          f"{len(values)} personal values ({dict(sorted(by_kind.items()))}), {len(searched)} spellings searched")
    print(f"[no-pii] {sum(groups.values())} log events ({lines} lines) in {len(groups)} log groups: "
          f"{dict(sorted(groups.items()))}")
    print(f"[no-pii] leaks found: {len(leaks)}")
