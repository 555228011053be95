"""What AWS would bill for the requests LocalStack serves: every request by service, operation and origin, and
DynamoDB's read and write units as DynamoDB counts them. The whole bill (``healthbook_dev.bill``, docs/cost.md) is
computed from these counts by ``bench/e2e.py`` and ``bench/load.py``.

* **Requests**: a response handler counts each request LocalStack answers, with its request bytes (for
  ``PutLogEvents``, the bytes CloudWatch Logs ingests and bills instead: :func:`log_event_bytes`), by origin:
  ``function`` (a Lambda worker: botocore puts ``exec-env/AWS_Lambda`` in its User-Agent), ``aws:<service>`` (an
  internal call: S3 notifying SQS, Lambda's SQS poller and log writer, Step Functions invoking a task),
  ``observer`` (a client that marked itself with the ``x-hb-observer`` header: a benchmark's own polling, which is
  not part of the bill) and ``client`` (everything else: the facility's upload, the deploy).
* **DynamoDB capacity**: the DynamoDB dispatch table (``dynamodb.py``) reports each data-plane request here, with
  moto's backend, before and after moto serves it. Writes: 1 unit per KB of the larger of the item before and after
  (2 in a transaction, ConditionCheck included), and, for each global secondary index, 1 per KB of the index entry
  the item enters with, leaves, or changes (a projected attribute; both a delete and a put when an index key
  moves); nothing when the write leaves the entry as it was (KEYS_ONLY and INCLUDE project part of the item).
  Reads: 4 KB units, half for an eventually consistent read, 2 in a transaction; a Query or Scan is charged for
  the items it returned, scaled by ScannedCount/Count when a filter dropped some (an estimate: DynamoDB charges
  what it read, rounded once).
* **DynamoDB storage**: the bytes each write adds to what is stored (or takes away), as DynamoDB bills storage:
  each item's size plus 100 bytes, and each index entry's (its keys, the table's and what it projects) plus 100.

``GET /_healthbook/requests`` returns the counts, ``DELETE`` resets them. Counting is on unless
``HB_METERING=0``.
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

OBSERVER_HEADER = "x-hb-observer"
PATH = "/_healthbook/requests"
LAMBDA_USER_AGENT = "exec-env/AWS_Lambda"

WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
READS = frozenset({"GetItem", "BatchGetItem", "TransactGetItems", "Query", "Scan"})


def origin_of(context: Any) -> str:
    request = getattr(context, "request", None)
    headers = request.headers if request is not None else {}
    if headers.get(OBSERVER_HEADER):
        return "observer"
    params = getattr(context, "internal_request_params", None)
    if params is not None:
        return f"aws:{params.get('service_principal') or 'internal'}"
    return "function" if LAMBDA_USER_AGENT in str(headers.get("User-Agent", "")) else "client"


class Meter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._capacity: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])

    def count_request(self, service: str, operation: str, origin: str, size: int) -> None:
        with self._lock:
            entry = self._requests[(service, operation, origin)]
            entry[0] += 1
            entry[1] += size

    def add_capacity(self, table: str, origin: str, operation: str, read: float = 0.0, write: float = 0.0,
                     index_write: float = 0.0, stored: int = 0) -> None:
        with self._lock:
            entry = self._capacity[(table, origin, operation)]
            entry[0] += read
            entry[1] += write
            entry[2] += index_write
            entry[3] += stored

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": [{"service": s, "operation": o, "origin": g, "requests": n, "request_bytes": b}
                             for (s, o, g), (n, b) in sorted(self._requests.items())],
                "dynamodb_capacity": [{"table": t, "origin": g, "operation": o, "read_units": r, "write_units": w,
                                       "index_write_units": i, "stored_bytes": int(b)}
                                      for (t, g, o), (r, w, i, b) in sorted(self._capacity.items())],
            }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._capacity.clear()


METER = Meter()


# --- requests ---------------------------------------------------------------------------------------------------

# PutLogEvents counts each event as its message's UTF-8 bytes plus this (the API's batch-size rule; CloudWatch's
# IncomingBytes, which ingestion bills, is the events' uncompressed volume): not the request's JSON, whose quoting
# of an EMF document's quotes and per-request names added about 75 % in bench-e2e.
LOG_EVENT_OVERHEAD = 26


def log_event_bytes(events: Iterable[Mapping[str, Any]]) -> int:
    return sum(len(str(event.get("message", "")).encode("utf-8")) + LOG_EVENT_OVERHEAD for event in events)


def count_response(chain: Any, context: Any, response: Any) -> None:
    """A LocalStack response handler: one count per AWS request answered (errors included: AWS bills them too)."""
    if context.operation is None or context.service is None:
        return
    service, operation = context.service.service_name, context.operation.name
    request = getattr(context, "service_request", None)
    if service == "logs" and operation == "PutLogEvents" and isinstance(request, Mapping):
        size = log_event_bytes(request.get("logEvents") or ())
    else:
        size = context.request.content_length or 0
    METER.count_request(service, operation, origin_of(context), int(size))


def serve(request: Any, **_: Any) -> Any:
    from localstack.http import Response

    if request.method == "DELETE":
        METER.reset()
        return Response(status=204)
    return Response(json.dumps(METER.snapshot()), mimetype="application/json")


def install() -> None:
    from localstack.aws import handlers
    from localstack.services.edge import ROUTER

    handlers.run_custom_response_handlers.append(count_response)
    ROUTER.add(PATH, serve, methods=["GET", "DELETE"])


# --- DynamoDB capacity -------------------------------------------------------------------------------------------

def item_size(attributes: Mapping[str, Any] | None) -> int:
    """DynamoDB's size of an item in the wire form ({"name": {"S": "..."}}): names plus values (moto's sizing, but a
    binary value counts its bytes, not the base64 text moto keeps and the wire carries: until 2026-12-08 it
    counted a third more, a version's gzip records item one write unit more)."""
    if not attributes:
        return 0
    from moto.dynamodb.models.utilities import bytesize

    return sum(bytesize(name) + _value_size(value) for name, value in attributes.items())


def _value_size(value: Mapping[str, Any]) -> int:
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.utilities import bytesize

    if "B" in value:
        return _binary_size(value["B"])
    if "BS" in value:
        return sum(_binary_size(one) for one in value["BS"])
    if "M" in value:
        return sum(bytesize(name) + _value_size(one) for name, one in value["M"].items())
    if "L" in value:
        return sum(_value_size(one) for one in value["L"])
    return int(DynamoType(dict(value)).size())


def _binary_size(value: bytes | str) -> int:
    """Raw bytes, or base64 text decoded (4 characters carry 3 bytes, less the padding)."""
    if isinstance(value, bytes | bytearray):
        return len(value)
    return len(value) * 3 // 4 - len(value) + len(value.rstrip("="))


def _units(size: int, unit: int) -> int:
    return max(1, math.ceil(size / unit))


# DynamoDB bills the storage of each item, and of each index entry, as its size plus this overhead
# (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html).
STORED_ITEM_OVERHEAD = 100


def _stored_size(item: Mapping[str, Any] | None) -> int:
    return item_size(item) + STORED_ITEM_OVERHEAD if item else 0


class _Write:
    """One item a write names: its table and key, and the item as it was before the request."""

    def __init__(self, backend: Any, table: str, key: Mapping[str, Any], weight: int) -> None:
        self.table, self.key, self.weight = table, dict(key), weight
        self.before = _stored(backend, table, key)


def _stored(backend: Any, table: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        item = backend.get_item(table, dict(key))
    except Exception:  # a key moto cannot address: the request fails, and is charged as the smallest write
        return None
    return item.to_json()["Attributes"] if item is not None else None


def _key_of(backend: Any, table: str, item: Mapping[str, Any]) -> dict[str, Any]:
    try:
        schema = backend.get_table(table)
    except Exception:
        return {}
    names = [schema.hash_key_attr] + ([schema.range_key_attr] if schema.range_key_attr else [])
    return {name: item[name] for name in names if name in item}


def _writes(backend: Any, operation: str, request: Mapping[str, Any]) -> list[_Write]:
    if operation in ("UpdateItem", "DeleteItem"):
        return [_Write(backend, request["TableName"], request["Key"], 1)]
    if operation == "PutItem":
        table = request["TableName"]
        return [_Write(backend, table, _key_of(backend, table, request["Item"]), 1)]
    if operation == "BatchWriteItem":
        writes = []
        for table, entries in (request.get("RequestItems") or {}).items():
            for entry in entries:
                if "PutRequest" in entry:
                    writes.append(_Write(backend, table, _key_of(backend, table, entry["PutRequest"]["Item"]), 1))
                elif "DeleteRequest" in entry:
                    writes.append(_Write(backend, table, entry["DeleteRequest"]["Key"], 1))
        return writes
    writes = []
    for entry in request.get("TransactItems") or []:  # TransactWriteItems
        kind, body = next(iter(entry.items()))
        table = body["TableName"]
        key = _key_of(backend, table, body["Item"]) if kind == "Put" else body["Key"]
        writes.append(_Write(backend, table, key, 2))
    return writes


def _index_keys(index: Any) -> list[str]:
    return [part["AttributeName"] for part in getattr(index, "schema", [])]


def _projected(item: Mapping[str, Any] | None, index: Any, table_keys: list[str]) -> dict[str, Any] | None:
    """The index entry of ``item``: None when the item is not in the (sparse) index; else the table's and the
    index's keys and what the projection adds (ALL, INCLUDE's NonKeyAttributes, nothing for KEYS_ONLY)."""
    names = _index_keys(index)
    if item is None or not all(n in item for n in names):
        return None
    projection = getattr(index, "projection", None) or {}
    kind = projection.get("ProjectionType", "ALL")
    if kind == "ALL":
        return dict(item)
    wanted = set(names) | set(table_keys) | (set(projection.get("NonKeyAttributes", [])) if kind == "INCLUDE"
                                             else set())
    return {name: value for name, value in item.items() if name in wanted}


def _index_units(backend: Any, write: _Write, after: dict[str, Any] | None) -> tuple[int, int]:
    """As DynamoDB charges an index: a put of the entry the item enters with, a delete of the one it leaves (both
    when an index key moves), a put when a projected attribute changes, nothing otherwise. With the bytes the
    indexes store more (or less) after the write."""
    try:
        table = backend.get_table(write.table)
    except Exception:
        return 0, 0
    table_keys = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    units = stored = 0
    for index in table.global_indexes or []:
        was = _projected(write.before, index, table_keys)
        now = _projected(after, index, table_keys)
        if was == now:
            continue
        stored += _stored_size(now) - _stored_size(was)
        moved = was is not None and now is not None and any(was[n] != now[n] for n in _index_keys(index))
        if was is not None and (now is None or moved):
            units += _units(item_size(was), 1024)  # the old entry deleted
        if now is not None:
            units += _units(item_size(now), 1024)  # the entry put (or rewritten in place)
    return units, stored


class CapacityMeter:
    """Called by the DynamoDB dispatch table around each request, under the lock that serialises moto."""

    def __init__(self, meter: Meter = METER) -> None:
        self._meter = meter

    def before(self, backend: Any, operation: str, request: Mapping[str, Any]) -> list[_Write]:
        if operation not in WRITES:
            return []
        try:
            return _writes(backend, operation, request)
        except Exception:  # a malformed request: moto refuses it, and it is counted as a request only
            return []

    def after(self, backend: Any, context: Any, operation: str, request: Mapping[str, Any],
              response: Mapping[str, Any] | None, writes: Iterable[_Write]) -> None:
        origin = origin_of(context)
        for write in writes:
            after = _stored(backend, write.table, write.key)
            size = max(item_size(write.before), item_size(after))
            index_units, index_stored = _index_units(backend, write, after)
            self._meter.add_capacity(write.table, origin, operation, write=write.weight * _units(size, 1024),
                                     index_write=index_units,
                                     stored=_stored_size(after) - _stored_size(write.before) + index_stored)
        if operation in READS and response is not None:
            self._reads(origin, operation, request, response)

    def _reads(self, origin: str, operation: str, request: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        if operation == "GetItem":
            factor = 1.0 if request.get("ConsistentRead") else 0.5
            units = _units(item_size(response.get("Item")), 4096) * factor
            self._meter.add_capacity(request["TableName"], origin, operation, read=units)
        elif operation in ("Query", "Scan"):
            factor = 1.0 if request.get("ConsistentRead") else 0.5
            items = response.get("Items") or []
            size = sum(item_size(item) for item in items)
            returned, scanned = int(response.get("Count") or 0), int(response.get("ScannedCount") or 0)
            if returned and scanned > returned:
                size = size * scanned // returned
            self._meter.add_capacity(request["TableName"], origin, operation, read=_units(size, 4096) * factor)
        elif operation == "BatchGetItem":
            # Each key is read as a GetItem is: an item found by its size, a missing one 1 unit (0.5 eventually
            # consistent) all the same; keys left unprocessed are not read.
            returned = response.get("Responses") or {}
            unprocessed = response.get("UnprocessedKeys") or {}
            for table, wanted in (request.get("RequestItems") or {}).items():
                items = returned.get(table) or []
                missing = len(wanted.get("Keys") or []) - len(items) - len(
                    (unprocessed.get(table) or {}).get("Keys") or [])
                units = sum(_units(item_size(item), 4096) for item in items) + max(0, missing)
                factor = 1.0 if wanted.get("ConsistentRead") else 0.5
                self._meter.add_capacity(table, origin, operation, read=units * factor)
        elif operation == "TransactGetItems":
            for entry, result in zip(request.get("TransactItems") or [], response.get("Responses") or [],
                                     strict=False):
                table = entry["Get"]["TableName"]
                self._meter.add_capacity(table, origin, operation,
                                         read=2 * _units(item_size(result.get("Item")), 4096))
