"""The main job, locally: facilities sign and upload claims; the ingest function turns them into records
and signed receipts, and the delivery workflow puts each accepted visit into the citizen's (fake) VNeID health
book. Everything runs in-process on moto (no Docker, no AWS account).

Facilities get certificates from a development PKI; files come from the generator, some with a labelled
defect, a few tampered after signing or dropped in another facility's folder. Each upload becomes the
SQS message S3 would send, and the real handler (functions/ingest/app.py) processes them in batches.
The delivery workflow is infra/statemachine/delivery.asl.json on moto's Step Functions interpreter, its tasks
the real handlers; a fake population service (a few citizens registered with other names or not at all) and a
fake VNeID answer over HTTP on 127.0.0.1.
Output: out/inbox (what was uploaded), out/receipts (what came back), out/lambda.log (the functions' logs and
metrics), out/citizen.html (one citizen's health book as VNeID shows it), a manifest of the labels, and a
summary table.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from healthbook.ingest.model import is_version_key
from healthbook.kernel import PORTAL_TZ
from healthbook.signing.receipt import receipt_codes, verify_receipt
from healthbook.signing.xml_signer import sign_submission
from healthbook.standard import places

from healthbook_dev.generate import build_visit, current_standard, facility_named, inject, submission
from healthbook_dev.pki import dev_pki

# Variables create_delivery sets, put back when the demo ends.
DELIVERY_ENV = ("POPULATION_URL", "VNEID_URL", "VNEID_SECRET", "DELIVERY_STATE_MACHINE_ARN", "DEADLINE_TOPIC_ARN")
FACILITIES = ("01001", "79001", "48001")  # the dev PKI's three good certificates (RSA, RSA via intermediate, EC)
COMMUNES = {"01001": "00004", "79001": "26734", "48001": "20194"}  # for the report's commune roll-up
BATCH = 10


def _ingest_writers() -> dict[str, str | None]:
    """The ingest function's writers as template.yaml sets them, so that the demo, and the bill timed from it,
    record as the deployed function does."""
    from healthbook_dev.template import function_variables

    variables = function_variables("IngestFunction")
    return {name: str(variables[name]) for name in ("VISIT_WRITERS", "RECORD_WRITERS") if name in variables}


@contextlib.contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) variables for the duration of the block, then put everything back."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _files(out: Path, pki: dict[str, Path], visits: int, seed: int,
           defect_rate: float) -> list[dict[str, Any]]:
    """Generate, label and sign the submissions; write them under out/inbox/<folder>/."""
    rng = random.Random(seed)
    material = {}
    for code in FACILITIES:
        cert, *chain = x509.load_pem_x509_certificates(pki[code].read_bytes())
        material[code] = (serialization.load_pem_private_key(pki[f"{code}-key"].read_bytes(), password=None),
                          cert, chain)
    entries = []
    for number in range(1, visits + 1):
        code = FACILITIES[number % len(FACILITIES)]
        visit = build_visit(rng, facility=facility_named(code), standard=current_standard())
        label = None
        defect = inject(visit, rng) if rng.random() < defect_rate else None
        if defect is not None:
            label = defect.label()
        key, cert, chain = material[code]
        data = sign_submission(submission(visit, defect), key, cert, chain=chain)  # type: ignore[arg-type]
        folder = code
        if label is None and number % 23 == 0:  # changed after signing
            data = data.replace(b"<SOLUONGHOSO>1</SOLUONGHOSO>", b"<SOLUONGHOSO>1 </SOLUONGHOSO>", 1)
            label = {"code": "K404", "table": None, "field": None, "description": "edited after signing"}
        elif label is None and number % 37 == 0:  # uploaded into another facility's folder
            folder = FACILITIES[(number + 1) % len(FACILITIES)]
            label = {"code": "I501", "table": None, "field": None, "description": "another facility's folder"}
        name = f"{code}_{number:05d}.xml"
        path = out / "inbox" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append({"key": f"inbox/{folder}/{name}", "facility": code, "ma_lk": visit.ma_lk,
                        "scenario": visit.scenario, "defect": label, "path": path, "visit": visit})
    return entries


def run(out: Path, *, visits: int = 120, seed: int = 2024, defect_rate: float = 0.2) -> int:
    from healthbook.aws.facilities import FacilitiesRepository
    from moto import mock_aws

    from healthbook_dev.aws.sandbox import (
        MOTO_CONFIG,
        MOTO_LOCK,
        NAMES,
        REGION,
        LambdaContext,
        build,
        create_delivery,
        kms_signs_digests_like_aws,
        lambdas_in_process,
        load_function,
        load_ingest_handler,
        moto_transactions_copy_tables_once,
        pool_threads_call_moto_one_at_a_time,
        s3_event_message,
        wait_for_executions,
    )
    from healthbook_dev.aws.stopwatch import timed
    from healthbook_dev.fakes.population import FakePopulation
    from healthbook_dev.fakes.population_server import FakePopulationServer
    from healthbook_dev.fakes.vneid import FakeVneid

    started = time.perf_counter()
    pki = dev_pki(out / "pki")
    entries = _files(out, pki, visits, seed, defect_rate)
    env: dict[str, str | None] = {
        "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox",
        "AWS_ENDPOINT_URL": None, "AWS_PROFILE": None, "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": None, "POWERTOOLS_METRICS_NAMESPACE": "Healthbook",
        "POWERTOOLS_LOG_LEVEL": "INFO", "RECEIPT_KEY_ID": None, **NAMES, **dict.fromkeys(DELIVERY_ENV),
        **_ingest_writers()}
    log = io.StringIO()
    # Who the population database knows: most citizens as they are, a few under another name or not at all.
    people = FakePopulation.from_visits([e["visit"] for e in entries], mismatch_rate=0.04, unknown_rate=0.03,
                                        seed=seed)
    with _environment(env), mock_aws(config=MOTO_CONFIG), kms_signs_digests_like_aws(), \
            moto_transactions_copy_tables_once(), pool_threads_call_moto_one_at_a_time(), \
            FakeVneid.start() as vneid, FakePopulationServer.start(people) as population:
        box = build(pki["ca"].read_text(), pepper="sandbox-pepper-not-a-secret")
        os.environ["RECEIPT_KEY_ID"] = box.receipt_key_id
        stack = create_delivery("healthbook-sandbox", visits_table=NAMES["VISITS_TABLE"],
                                pepper_secret=NAMES["CITIZEN_PEPPER_SECRET"], vneid_url=vneid.url,
                                population_url=population.url, aggregates_table=NAMES["AGGREGATES_TABLE"],
                                vneid_credentials={
                                    "type": "oauth2", "token_url": vneid.token_url, "client_id": vneid.client_id,
                                    "client_secret": vneid.client_secret})
        os.environ.update(stack.environment)
        registry = FacilitiesRepository(box_table(box, "FACILITIES_TABLE"))
        for code in FACILITIES:
            _, name, province = facility_named(code)
            registry.put_facility(code, name, province, x509.load_pem_x509_certificate(pki[code].read_bytes()),
                                  commune=COMMUNES[code])
        app, delivery = load_ingest_handler(), load_function("delivery")
        # Powertools keeps one logging handler per service for the whole process: point them at the log.
        previous_streams = [(m, m.logger.registered_handler.setStream(log)) for m in (app, delivery)]
        app.reset()
        delivery.reset()
        messages = []
        for number, entry in enumerate(entries):
            data = entry["path"].read_bytes()
            version = box.s3.put_object(Bucket=NAMES["INBOX_BUCKET"], Key=entry["key"], Body=data)["VersionId"]
            messages.append(s3_event_message(NAMES["INBOX_BUCKET"], entry["key"], version, size=len(data),
                                             at=datetime.now(UTC), message_id=f"m-{number}"))
        failed: list[str] = []
        processing = time.perf_counter()
        with contextlib.redirect_stdout(log), lambdas_in_process(stack.handlers):
            for start in range(0, len(messages), BATCH):
                # the delivery executions it starts run in moto's threads meanwhile
                with MOTO_LOCK, timed("ingest", units=len(messages[start:start + BATCH])):
                    response = app.lambda_handler({"Records": messages[start:start + BATCH]}, LambdaContext())
                failed += [f["itemIdentifier"] for f in response["batchItemFailures"]]
            processing = time.perf_counter() - processing
            wait_for_executions(stack.machine_arn)  # ingest started one delivery execution per accepted file
            before = _counts(box)
            with MOTO_LOCK:
                app.lambda_handler({"Records": messages[:BATCH]}, LambdaContext())  # S3 and SQS may deliver twice
            after = _counts(box)
        receipts = _receipts(box, out, entries)
        pending = _pending(box)
        book = _health_book(box, vneid, out)
        report = _report(box, out)
        app.reset()
        delivery.reset()
        for module, stream in previous_streams:
            module.logger.registered_handler.setStream(stream)
    (out / "lambda.log").write_text(log.getvalue(), encoding="utf-8")
    manifest = [{k: v for k, v in e.items() if k not in ("path", "visit")} for e in entries]
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    print(_summary(entries, receipts, box.public_key_pem, failed, before, after, pending, processing, out,
                   time.perf_counter() - started))
    # A labelled defect is caught when the receipt reports its code, as a finding or as a reason to keep it out.
    reported = {e["key"]: {code for codes in receipt_codes(receipts[e["key"]]) for code in codes} for e in entries}
    missed = sum(1 for e in entries if e["defect"] and e["defect"]["code"] not in reported[e["key"]])
    false_alarms = sum(1 for e in entries if not e["defect"] and (reported[e["key"]]
                                                                   or not receipts[e["key"]].get("accepted")))
    print(f"labelled defects missed: {missed}; clean files with an issue: {false_alarms}")
    print(book["summary"])
    print("\n".join(report["summary"]))
    consistent = report["totals"] == (len(entries), book["statuses"]["DELIVERED"], len(book["citizens"]))
    print(f"report totals agree with the records (files, delivered, distinct citizens): "
          f"{'yes' if consistent else 'NO'}")
    return 0 if not (missed or false_alarms or failed or pending) and before == after and consistent else 1


def _report(box: Any, out: Path) -> dict[str, Any]:
    """This month's report, as the monthly job would build it, from the counters the run kept."""
    from healthbook.aws.reports import DynamoCounters, build
    from healthbook.reports.model import Period
    from healthbook.reports.render import outputs, summary_lines

    from healthbook_dev.aws.sandbox import SerialisedClient

    now = datetime.now(UTC)
    # The report reads 32 Queries at a time; moto in process is not thread-safe (a GetItem of a missing partition
    # adds it to the dict another thread's Query is walking), so its calls reach moto one at a time.
    counters = DynamoCounters(SerialisedClient(box.ddb), box.names["AGGREGATES_TABLE"],
                              submissions_table=box.names["SUBMISSIONS_TABLE"], visits_table=box.names["VISITS_TABLE"],
                              now=now)
    report = build(Period.month_of(now.astimezone(PORTAL_TZ).date()), counters=counters,
                   facilities_table=box_table(box, "FACILITIES_TABLE"), generated_at=now)
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (body, _) in outputs(report).items():
        (folder / name).write_bytes(body)
    provinces = report.level("province")
    # distinct citizens: the markers of each province's month counted (a citizen of two provinces counts in each)
    totals = (sum(r.current.files_received for r in provinces), sum(r.current.delivered for r in provinces),
              sum(r.current.citizens or 0 for r in provinces))
    return {"totals": totals,
            "summary": [*summary_lines(report, "province"), f"report files (CSV, XLSX, HTML): {folder}/"]}


def _health_book(box: Any, vneid: Any, out: Path) -> dict[str, Any]:
    """What the delivery stage did with the accepted visits, and one citizen's book as VNeID shows it."""
    import urllib.request

    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    latencies: list[int] = []
    citizen = None
    citizens: set[tuple[str, str]] = set()  # (province of the 34, citizen key) of each delivered visit
    for page in box.ddb.get_paginator("scan").paginate(TableName=box.names["VISITS_TABLE"]):
        for item in page["Items"]:
            if not is_version_key(item["version"]["S"]):
                continue
            status = item["status"]["S"]
            statuses[status] += 1
            reasons.update(item.get("reconciliation_reasons", {}).get("SS", []))
            if status == "DELIVERED":
                latencies.append(int(item["latency_ms"]["N"]))
                citizen = citizen or item["citizen_key"]["S"]
                province = item.get("province", {}).get("S") or item["visit_id"]["S"][:2]
                citizens.add((places.province_after(province), item["citizen_key"]["S"]))
    lines = [f"health book: {statuses['DELIVERED']} visits delivered to VNeID, "
             f"{statuses['NEEDS_RECONCILIATION']} awaiting identity reconciliation"
             + (f" ({', '.join(f'{r} {n}' for r, n in sorted(reasons.items()))})" if reasons else "")
             + f", {statuses['PENDING']} pending, {statuses['DEADLINE_BREACHED']} past the deadline"]
    if latencies:
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        lines.append(f"receipt -> VNeID: p50 {latencies[len(latencies) // 2] / 1000:.1f} s, p95 {p95 / 1000:.1f} s "
                     f"(deadline 24 h); VNeID stored {vneid.delivery_count} entries")
    if citizen:
        with urllib.request.urlopen(f"{vneid.url}/v1/citizens/{citizen}/health-book.html", timeout=5) as page:
            (out / "citizen.html").write_bytes(page.read())
        lines.append(f"one citizen's health book as VNeID shows it: {out}/citizen.html")
    return {"statuses": statuses, "citizens": citizens, "summary": "\n".join(lines)}


def box_table(box: Any, name: str) -> Any:
    import boto3  # type: ignore[import-untyped]

    return boto3.resource("dynamodb").Table(box.names[name])


def _counts(box: Any) -> tuple[int, int]:
    # the content claims (replay detection, docs/ingest.md) share the table; count submissions only
    submissions = box.ddb.scan(TableName=box.names["SUBMISSIONS_TABLE"], Select="COUNT",
                               FilterExpression="NOT begins_with(submission_id, :claim)",
                               ExpressionAttributeValues={":claim": {"S": "content#"}})["Count"]
    visits = box.ddb.scan(TableName=box.names["VISITS_TABLE"], Select="COUNT")["Count"]
    return submissions, visits


def _receipts(box: Any, out: Path, entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for entry in entries:
        folder, name = entry["key"].split("/")[1:3]
        key = f"receipts/{folder}/{name}.receipt.json"
        try:
            body = box.s3.get_object(Bucket=box.names["RECEIPTS_BUCKET"], Key=key)["Body"].read()
        except box.s3.exceptions.NoSuchKey:
            found[entry["key"]] = {"missing": True}  # its message failed: see lambda.log
            continue
        path = out / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        found[entry["key"]] = json.loads(body)
    return found


def _pending(box: Any) -> int:
    """Visits waiting for the health book, through the GSI the delivery stage will use (8 shards)."""
    total = 0
    for shard in range(8):
        total += box.ddb.query(TableName=box.names["VISITS_TABLE"], IndexName="by-status-deadline",
                               KeyConditionExpression="status_shard = :s",
                               ExpressionAttributeValues={":s": {"S": f"PENDING#{shard}"}}, Select="COUNT")["Count"]
    return total


def _summary(entries: list[dict[str, Any]], receipts: dict[str, dict[str, Any]], public: bytes, failed: list[str],
             before: tuple[int, int], after: tuple[int, int], pending: int, processing: float, out: Path,
             total: float) -> str:
    rows: Counter[tuple[str, str]] = Counter()
    codes: Counter[str] = Counter()
    findings: Counter[str] = Counter()
    verified = 0
    for entry in entries:
        receipt = receipts[entry["key"]]
        if receipt.get("missing"):
            continue
        verified += not verify_receipt(receipt, public)
        rows[(entry["facility"], "accepted" if receipt.get("accepted") else "rejected")] += 1
        blocking, found = receipt_codes(receipt)
        codes.update(blocking)
        findings.update(found)
    lines = [f"{'facility':<10}{'files':>7}{'accepted':>10}{'rejected':>10}", "-" * 37]
    for code in FACILITIES:
        ok, bad = rows[(code, "accepted")], rows[(code, "rejected")]
        lines.append(f"{code:<10}{ok + bad:>7}{ok:>10}{bad:>10}")
    accepted = sum(n for (_, state), n in rows.items() if state == "accepted")
    lines += ["-" * 37, f"{'total':<10}{len(entries):>7}{accepted:>10}{len(entries) - accepted:>10}", ""]
    lines.append(f"receipts written and verified offline: {verified}/{len(entries)}  (in {out}/receipts)")
    lines.append(f"records: {before[0]} submissions, {before[1]} visit items (versions + LATEST pointers); "
                 f"{pending} visits still PENDING for the health book")
    lines.append(f"redelivered {BATCH} messages: records {'unchanged' if before == after else f'CHANGED to {after}'}")
    lines.append(f"messages failed (would be retried, then DLQ): {len(failed)}")
    if codes:
        lines.append("rejections by code: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
    if findings:
        lines.append("findings (visits admitted) by code: " + ", ".join(
            f"{c} {n}" for c, n in sorted(findings.items())))
    lines.append(f"ingest handler: {len(entries) / processing:.0f} files/s on moto; whole demo {total:.1f} s; "
                 f"function logs and metrics in {out}/lambda.log")
    return "\n".join(lines)
