"""How long a report takes to read what it counts, per item, and what that makes of a national report.

The report counts a facility's files and deliveries from their index entries until a day is closed, then from the
day's one rollup item (docs/reports.md, *Daily rollups*). At national volume what binds is parsing: botocore's
parser and our counting, one thread. This writes items with the production adapters (moto, in process), takes the
``Query`` pages DynamoDB would send for them (the wire JSON), and times ``DynamoCounters.sum`` (the report's own
reading and counting) over a client that parses each page with botocore, as boto3 does. Baseline, in the same run:
``json.loads`` of the same pages (what no parser can go below). Prints microseconds per item, the ratio to the
baseline, and the national projection (docs/capacity.md: 13,000 facilities, 500,000 files and 500,000 deliveries a
day) on one vCPU, the report function's share at 1,769 MB.

Usage: python bench/report_read.py [--items 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import botocore.session
from botocore.parsers import create_parser
from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.aws.records import DynamoRecords
from healthbook.aws.reports import DynamoCounters
from healthbook.delivery.model import DeliveredEntry
from healthbook.ingest.model import PENDING, SubmissionRecord, VisitRef, status_shard
from healthbook.kernel import iso_utc
from healthbook.reports.aggregates import period_high
from healthbook_dev.aws.sandbox import NAMES, REGION, create_tables
from moto import mock_aws

FACILITY = "79001"
DAY = date(2026, 11, 3)
VN = timedelta(hours=7)
# National volume (docs/capacity.md)
FACILITIES = 13_000
FILES_A_DAY = DELIVERIES_A_DAY = 500_000


class _Pages:
    """A DynamoDB client for DynamoCounters: a Query of a stored (index, partition) answered from its page's wire
    JSON, parsed by botocore's parser on every call (as a boto3 client parses the HTTP body); any other call goes to
    ``rest`` (moto, while the items are written), or, without, is an empty page or a write that does nothing."""

    def __init__(self, pages: dict[tuple[str | None, str], bytes], rest: Any = None) -> None:
        model = botocore.session.get_session().get_service_model("dynamodb").operation_model("Query")
        self._shape, self._parser, self._pages, self._rest = model.output_shape, create_parser("json"), pages, rest

    def query(self, **kwargs: Any) -> dict[str, Any]:
        partition = next(iter(kwargs["ExpressionAttributeValues"].values()))["S"]
        body = self._pages.get((kwargs.get("IndexName"), partition))
        if body is None and self._rest is not None:
            return self._rest.query(**kwargs)  # type: ignore[no-any-return]
        parsed: dict[str, Any] = self._parser.parse({"body": body or _page([]), "headers": {}, "status_code": 200},
                                                    self._shape)
        return parsed

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._rest.batch_write_item(**kwargs) if self._rest is not None else {}  # type: ignore[no-any-return]


def _page(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"Items": items, "Count": len(items), "ScannedCount": len(items)}).encode()


def _stored_pages(n: int) -> dict[str, tuple[tuple[str | None, str], bytes]]:
    """n files and n deliveries of one facility on one day, and a year of its day rollups, written by the
    production adapters; each kind's Query page as DynamoDB would send it."""
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_tables(ddb, NAMES)
        records = DynamoRecords(ddb, submissions_table=NAMES["SUBMISSIONS_TABLE"], visits_table=NAMES["VISITS_TABLE"])
        status = DynamoVisitStatus(ddb, visits_table=NAMES["VISITS_TABLE"])
        start = datetime(DAY.year, DAY.month, DAY.day, 8, tzinfo=UTC) - VN
        for i in range(n):
            at = start + timedelta(seconds=20 * i)
            records.put_submission(SubmissionRecord(
                submission_id=f"{i:064x}", facility=FACILITY, received_at=at, object_key=f"inbox/{FACILITY}/{i}.xml",
                version_id="v1", content_sha256=f"{i:064x}", size=20_000, status="ACCEPTED", visits_total=1,
                visits_accepted=1, error_codes=(), standards=("4750",), receipt_key=f"receipts/{FACILITY}/{i}.json",
                quarantine_key=None, merkle_root="0" * 64, signing_key_id="k", finding_codes=("W101", "W205")[:i % 3],
                written_at=at))
            ref = VisitRef(f"{FACILITY}#LK{i}", f"{iso_utc(at)}#{i:016x}")
            ddb.put_item(TableName=NAMES["VISITS_TABLE"], Item={
                "visit_id": {"S": ref.visit_id}, "version": {"S": ref.version}, "status": {"S": PENDING},
                "status_shard": {"S": status_shard(PENDING, ref.visit_id)},
                "deadline_at": {"S": iso_utc(at + timedelta(hours=24))}})
            status.mark_delivered(ref, delivered_at=at + timedelta(seconds=90), latency_ms=90_000 + i,
                                  receipt_id="r", entry=DeliveredEntry("0" * 64, "0" * 64, "0" * 64),
                                  citizen_key=f"{i:064x}", referral=i % 7 == 0)
        files = ddb.query(TableName=NAMES["SUBMISSIONS_TABLE"], IndexName="by-facility-month",
                          KeyConditionExpression="facility_month = :m",
                          ExpressionAttributeValues={":m": {"S": f"{FACILITY}#{DAY:%Y-%m}"}})["Items"]
        delivered = ddb.query(TableName=NAMES["VISITS_TABLE"], IndexName="by-facility-delivered",
                              KeyConditionExpression="delivered_month = :m",
                              ExpressionAttributeValues={":m": {"S": f"{FACILITY}#{DAY:%Y-%m}"}})["Items"]
        # The day rolled up by the report itself (its index Queries answered with the pages above), and a year of
        # such days: the same counters under each day's key.
        pages: dict[tuple[str | None, str], bytes] = {("by-facility-month", f"{FACILITY}#{DAY:%Y-%m}"): _page(files),
                 ("by-facility-delivered", f"{FACILITY}#{DAY:%Y-%m}"): _page(delivered)}
        DynamoCounters(_Pages(pages, rest=ddb), NAMES["AGGREGATES_TABLE"], submissions_table=NAMES["SUBMISSIONS_TABLE"],
                       visits_table=NAMES["VISITS_TABLE"], now=datetime.now(UTC), workers=1).sum(
            f"F#{FACILITY}", f"D#{DAY}", period_high(f"D#{DAY}"))
        (rolled,) = ddb.scan(TableName=NAMES["AGGREGATES_TABLE"])["Items"]
        year = [DAY - timedelta(days=d) for d in range(362)]
        for one in year[1:]:
            ddb.put_item(TableName=NAMES["AGGREGATES_TABLE"], Item={**rolled, "period": {"S": f"D#{one}#r"}})
        rollups = ddb.query(TableName=NAMES["AGGREGATES_TABLE"], KeyConditionExpression="#s = :s",
                            ExpressionAttributeNames={"#s": "scope"},
                            ExpressionAttributeValues={":s": {"S": f"F#{FACILITY}"}})["Items"]
    assert len(files) == len(delivered) == n and len(rollups) == len(year), (len(files), len(delivered), len(rollups))
    return {"file entries": (("by-facility-month", f"{FACILITY}#{DAY:%Y-%m}"), _page(files)),
            "delivery entries": (("by-facility-delivered", f"{FACILITY}#{DAY:%Y-%m}"), _page(delivered)),
            "day rollups": ((None, f"F#{FACILITY}"), _page(rollups))}


def _best(run: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="files and deliveries of the one day")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    stored = _stored_pages(args.items)
    per_item: dict[str, float] = {}
    print(f"one facility: {args.items} files and deliveries on {DAY}, and {DAY.year}'s 362 days rolled up; "
          f"best of {args.rounds} rounds")
    for name, (key, body) in stored.items():
        count = json.loads(body)["Count"]
        first = DAY if name != "day rollups" else DAY - timedelta(days=361)
        reader = DynamoCounters(  # a reader of one kind reads its items; of both, the rollups
            _Pages({key: body}), NAMES["AGGREGATES_TABLE"], workers=1,
            submissions_table=NAMES["SUBMISSIONS_TABLE"] if name != "delivery entries" else None,
            visits_table=NAMES["VISITS_TABLE"] if name != "file entries" else None)
        days = (f"F#{FACILITY}", f"D#{first}", period_high(f"D#{DAY}"))
        summed = reader.sum(*days)
        assert summed.get("files_received", 0) + summed.get("delivered", 0) >= count, (name, summed)
        counted = _best(lambda r=reader, d=days: r.sum(*d), args.rounds)  # type: ignore[misc]
        floor = _best(lambda b=body: json.loads(b), args.rounds)  # type: ignore[misc]
        per_item[name] = counted / count
        print(f"  {name:17} {count:5} items, {len(body) / count:4.0f} B each: read and counted "
              f"{per_item[name] * 1e6:5.1f} µs an item = {counted / floor:4.1f}x json.loads of the page "
              f"({floor / count * 1e6:.1f} µs)")
    daily = FILES_A_DAY * per_item["file entries"] + DELIVERIES_A_DAY * per_item["delivery entries"]
    rollup = per_item["day rollups"]
    print("national report, parsing on one vCPU (the report function at 1,769 MB; timeout 900 s):")
    for what, seconds in (("daily (the closed day item by item, the day before rolled)", daily + FACILITIES * rollup),
                          ("monthly (the month and the one before, 60 rollups each)", FACILITIES * 60 * rollup),
                          ("six-monthly (two half-years, 362 rollups each)", FACILITIES * 362 * rollup),
                          ("a month and the one before read item by item (no rollups)", 2 * 30 * daily)):
        print(f"  {what:62} {seconds:6.0f} s")


if __name__ == "__main__":
    main()
