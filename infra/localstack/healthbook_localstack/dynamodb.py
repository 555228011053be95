"""DynamoDB and DynamoDB Streams served by moto (bundled with LocalStack as moto-ext).

LocalStack's own DynamoDB provider forwards to DynamoDB Local, a Java program it downloads on first use; neither
Java 21 nor the download is available here. These providers implement no operation themselves, so every request
falls through ``MotoFallbackDispatcher`` to moto's in-memory backend, which CloudFormation, the Lambda workers
and the tests all reach through LocalStack's gateway.

The DynamoDB dispatch table also asks the fault switchboard (``faults.py``, docs/faults.md) before each request:
while a test turns throttling on, some requests of Lambda functions are answered with a throttling error.

moto's backend is not thread-safe and LocalStack serves requests on several threads: a transaction that copies or
rolls back a table while another request changes it fails ("dictionary changed size during iteration") or, worse,
rolls the other request's write back with it. Requests are served one at a time (``serialised``), as DynamoDB's
own item-level isolation would make them look; moto answers each in well under a millisecond to a few. While the
switchboard models transaction conflicts (``moto_transactions.ConflictModel``), a transaction's caller then waits
out its time in flight, outside the lock. Under the same lock each data-plane request is metered in the read and
write units DynamoDB would charge (``metering.py``; HB_METERING=0 turns it off).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from localstack.aws.api.dynamodb import DynamodbApi
from localstack.aws.api.dynamodbstreams import DynamodbstreamsApi
from localstack.services.plugins import Service, aws_provider


class MotoDynamoDBProvider(DynamodbApi):
    """Every operation raises NotImplementedError (the generated API's default), so moto answers it."""


class MotoDynamoDBStreamsProvider(DynamodbstreamsApi):
    """As above, for the streams API."""


_MOTO = threading.RLock()


def serialised(factory: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """Wraps a dispatch-table factory: one request at a time reaches moto."""

    from healthbook_localstack.metering import CapacityMeter
    from healthbook_localstack.moto_transactions import settle

    meter = CapacityMeter() if metering_on() else None

    def make(provider: Any) -> dict[str, Any]:
        def wrap(operation: str, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            def call(context: Any, request: Any) -> Any:
                try:
                    with _MOTO:
                        if meter is None:
                            return handler(context, request)
                        backend = _backend(context)
                        writes = meter.before(backend, operation, request)
                        response = None
                        try:
                            response = handler(context, request)
                            return response
                        finally:  # a failed write (a condition, a cancelled transaction) is charged as well
                            meter.after(backend, context, operation, request,
                                        response if isinstance(response, dict) else None, writes)
                finally:
                    settle()

            return call

        return {operation: wrap(operation, handler) for operation, handler in factory(provider).items()}

    return make


def metering_on() -> bool:
    return os.environ.get("HB_METERING", "1") not in ("0", "false", "no")


def _backend(context: Any) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[context.account_id][context.region]


@aws_provider(api="dynamodb", name="moto")
def dynamodb_moto() -> Service:
    from localstack.services.moto import MotoFallbackDispatcher

    from healthbook_localstack.faults import with_dynamodb_faults

    return Service.for_provider(MotoDynamoDBProvider(),
                                dispatch_table_factory=with_dynamodb_faults(serialised(MotoFallbackDispatcher)))


@aws_provider(api="dynamodbstreams", name="moto")
def dynamodbstreams_moto() -> Service:
    from localstack.services.moto import MotoFallbackDispatcher

    return Service.for_provider(MotoDynamoDBStreamsProvider(), dispatch_table_factory=MotoFallbackDispatcher)
