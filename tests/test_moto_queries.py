"""The LocalStack plugin's Query shortcut (infra/localstack/healthbook_localstack/moto_queries.py) answers every
Query as moto does (items, order, pages, counts), reading one partition; a Scan is left as it was."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

PLUGIN = Path(__file__).resolve().parents[1] / "infra" / "localstack" / "healthbook_localstack" / "moto_queries.py"
REGION = "ap-southeast-1"


def _install() -> Callable[[], None]:
    spec = importlib.util.spec_from_file_location("healthbook_moto_queries", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    undo: Callable[[], None] = module.install()
    return undo


@pytest.fixture
def ddb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "g", "d")],
            GlobalSecondaryIndexes=[{"IndexName": "by-g", "Projection": {"ProjectionType": "ALL"},
                                     "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"},
                                                   {"AttributeName": "d", "KeyType": "RANGE"}]}])
        client.create_table(TableName="h", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        rng = random.Random(7)
        for n in range(400):
            item = {"pk": {"S": f"p{n % 13}"}, "sk": {"S": f"s{n * 7919 % 10_000:05d}"}, "n": {"N": str(n)},
                    "pad": {"S": "x" * rng.randrange(20_000, 60_000)}}
            if n % 3:  # a sparse index
                item.update(g={"S": f"g{n % 5}"}, d={"S": f"d{rng.randrange(100):03d}"})
            client.put_item(TableName="t", Item=item)
            client.put_item(TableName="h", Item={"pk": {"S": f"k{n}"}, "n": {"N": str(n)}})
        yield client


QUERIES: list[dict[str, Any]] = [
    {"TableName": "t", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "p3"}}},
    {"TableName": "t", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "p3"}},
     "ScanIndexForward": False, "Limit": 7},
    {"TableName": "t", "KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b",
     "ExpressionAttributeValues": {":p": {"S": "p5"}, ":a": {"S": "s02000"}, ":b": {"S": "s07000"}}},
    {"TableName": "t", "KeyConditionExpression": "pk = :p AND sk < :b", "FilterExpression": "n > :n",
     "ExpressionAttributeValues": {":p": {"S": "p1"}, ":b": {"S": "s05000"}, ":n": {"N": "100"}}},
    {"TableName": "t", "KeyConditionExpression": "pk = :p", "Select": "COUNT",
     "ExpressionAttributeValues": {":p": {"S": "p0"}}},
    {"TableName": "t", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "nobody"}}},
    {"TableName": "t", "IndexName": "by-g", "KeyConditionExpression": "g = :g AND d >= :d",
     "ExpressionAttributeValues": {":g": {"S": "g2"}, ":d": {"S": "d050"}}, "Limit": 5},
    {"TableName": "t", "IndexName": "by-g", "KeyConditionExpression": "g = :g",
     "ExpressionAttributeValues": {":g": {"S": "g4"}}, "ScanIndexForward": False},
    {"TableName": "h", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "k42"}}},
]


def _pages(client: Any, request: dict[str, Any], operation: str = "query") -> list[dict[str, Any]]:
    pages, kwargs = [], dict(request)
    while True:
        page = getattr(client, operation)(**kwargs)
        page.pop("ResponseMetadata", None)
        pages.append(page)
        if "LastEvaluatedKey" not in page:
            return pages
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_every_query_answers_as_moto_does(ddb: Any) -> None:
    before = [_pages(ddb, query) for query in QUERIES]
    scans = [_pages(ddb, {"TableName": name, "Limit": 50}, "scan") for name in ("t", "h")]
    assert sum(len(page.get("Items", [])) for page in before[0]) > 20 and len(before[0]) > 1  # paged by size
    undo = _install()
    try:
        assert [_pages(ddb, query) for query in QUERIES] == before
        assert [_pages(ddb, {"TableName": name, "Limit": 50}, "scan") for name in ("t", "h")] == scans
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table("t")
        ddb.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "new"}})
        assert len(table.items) == 13  # looking a partition up added none (moto keeps them in a defaultdict)
    finally:
        undo()


def test_a_query_reads_only_its_partition(ddb: Any) -> None:
    from moto.dynamodb.models.table import Table

    seen: list[int] = []
    original = Table.all_items

    def counting(self: Any) -> list[Any]:
        items: list[Any] = original(self)
        seen.append(len(items))
        return items

    Table.all_items = counting  # type: ignore[method-assign]  # beneath the patch, which calls moto's own
    undo = _install()
    try:
        ddb.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p3"}})
        ddb.scan(TableName="t", Limit=1)
    finally:
        undo()
        Table.all_items = original  # type: ignore[method-assign]
    assert seen == [400]  # the scan's; the query never listed the table


def test_a_query_page_is_copied_item_by_item_and_shares_nothing_mutable_with_the_table(ddb: Any) -> None:
    """The page is no longer deep-copied as a whole (42 % of LocalStack's time under bench-load): each item is
    copied, its scalars' holders new and its maps, lists and sets deep-copied. Changing what a Query returned
    changes nothing stored."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models import table as table_module
    from moto.dynamodb.models.dynamo_type import DynamoType

    attributes = {"pk": {"S": "m"}, "sk": {"S": "1"}, "n": {"N": "1"}, "tags": {"SS": ["a"]},
                  "codes": {"M": {"V201": {"N": "2"}}}, "rows": {"L": [{"S": "x"}]}}
    ddb.put_item(TableName="t", Item=attributes)
    table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table("t")
    stored = next(item for item in table.all_items() if item.attrs["pk"].value == "m")
    undo = _install()
    try:
        assert type(table_module.copy).__name__ == "_QueryCopy"
        (item,), _, _ = table.query(DynamoType({"S": "m"}), None, [], None, None, True, None)
    finally:
        undo()
    assert table_module.copy.__name__ == "copy"  # the module's own, once undone
    assert item is not stored and item.attrs is not stored.attrs and type(item.attrs) is type(stored.attrs)
    assert all(item.attrs[name] is not stored.attrs[name] for name in stored.attrs)
    item.attrs["codes"].value["V201"].value = "9"
    item.attrs["tags"].value.append("b")
    item.attrs["rows"].value.pop()
    item.attrs["n"].value = "5"
    assert stored.to_json()["Attributes"] == attributes
