"""DynamoDB and DynamoDB Streams served by moto (bundled with LocalStack as moto-ext).

LocalStack's own DynamoDB provider forwards to DynamoDB Local, a Java program it downloads on first use; neither
Java 21 nor the download is available here. These providers implement no operation themselves, so every request
falls through ``MotoFallbackDispatcher`` to moto's in-memory backend, which CloudFormation, the Lambda workers
and the tests all reach through LocalStack's gateway.

The DynamoDB dispatch table also asks the fault switchboard (``faults.py``, docs/faults.md) before each request:
while a test turns throttling on, some requests of Lambda functions are answered with a throttling error.
"""

from __future__ import annotations

from localstack.aws.api.dynamodb import DynamodbApi
from localstack.aws.api.dynamodbstreams import DynamodbstreamsApi
from localstack.services.plugins import Service, aws_provider


class MotoDynamoDBProvider(DynamodbApi):
    """Every operation raises NotImplementedError (the generated API's default), so moto answers it."""


class MotoDynamoDBStreamsProvider(DynamodbstreamsApi):
    """As above, for the streams API."""


@aws_provider(api="dynamodb", name="moto")
def dynamodb_moto() -> Service:
    from localstack.services.moto import MotoFallbackDispatcher

    from healthbook_localstack.faults import with_dynamodb_faults

    return Service.for_provider(MotoDynamoDBProvider(),
                                dispatch_table_factory=with_dynamodb_faults(MotoFallbackDispatcher))


@aws_provider(api="dynamodbstreams", name="moto")
def dynamodbstreams_moto() -> Service:
    from localstack.services.moto import MotoFallbackDispatcher

    return Service.for_provider(MotoDynamoDBStreamsProvider(), dispatch_table_factory=MotoFallbackDispatcher)
