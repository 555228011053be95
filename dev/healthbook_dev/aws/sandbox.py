"""An in-process AWS (moto) shaped like template.yaml: for the local demo and the tests.

Nothing here runs in Lambda. It creates the buckets, the tables (as template.yaml defines them: keys, indexes,
billing mode, TTL), the receipt-signing key, the trust-bundle parameter and the pepper secret, and sets the
environment variables the ingest function reads.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

REGION = "ap-southeast-1"
NAMES = {
    "INBOX_BUCKET": "healthbook-sandbox-inbox", "RECEIPTS_BUCKET": "healthbook-sandbox-receipts",
    "QUARANTINE_BUCKET": "healthbook-sandbox-quarantine", "SUBMISSIONS_TABLE": "healthbook-sandbox-submissions",
    "VISITS_TABLE": "healthbook-sandbox-visits", "FACILITIES_TABLE": "healthbook-sandbox-facilities",
    "IDEMPOTENCY_TABLE": "healthbook-sandbox-idempotency", "TRUST_BUNDLE_PARAMETER": "/healthbook/sandbox/trust-bundle",
    "CITIZEN_PEPPER_SECRET": "healthbook/sandbox/citizen-pepper", "AGGREGATES_TABLE": "healthbook-sandbox-aggregates",
    "PORTAL_TABLE": "healthbook-sandbox-portal",
}
# template.yaml's tables, each by the variable that names it to the functions (and in NAMES)
TABLES = {"SUBMISSIONS_TABLE": "SubmissionsTable", "VISITS_TABLE": "VisitsTable", "FACILITIES_TABLE": "FacilitiesTable",
          "IDEMPOTENCY_TABLE": "IdempotencyTable", "AGGREGATES_TABLE": "AggregatesTable", "PORTAL_TABLE": "PortalTable"}
# What create_table takes from a table's Properties as they are written there (TimeToLiveSpecification follows
# with update_time_to_live), and what only the deployed stack has: its stage's name, encryption with its data key,
# backups, deletion protection. Any other property fails create_tables, so that the sandbox never drifts silently.
TABLE_SCHEMA = ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes", "LocalSecondaryIndexes", "BillingMode",
                "ProvisionedThroughput", "StreamSpecification")
TABLE_DEPLOYMENT_ONLY = ("TableName", "SSESpecification", "PointInTimeRecoverySpecification",
                         "DeletionProtectionEnabled", "Tags", "TableClass")
# moto's backends are not thread-safe (a transaction deep-copies a table another thread may be changing), and
# its Step Functions executions run in threads: one "Lambda" at a time holds this while it calls moto.
MOTO_LOCK = threading.RLock()
# moto runs Step Functions definitions only when asked; Lambda without Docker answers with canned payloads,
# which lambdas_in_process replaces with our handlers.
MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
# The delivery workflow's task states: substitution -> (function name suffix, handler in functions/delivery/app.py)
DELIVERY_TASKS = {"DeliverFunctionArn": ("deliver", "deliver_handler"),
                  "SettleFunctionArn": ("settle", "settle_handler")}
# Functions whose invocation works on a batch of visits: timed per visit (the stopwatch's units), as the bill prices
# them (healthbook_dev.bill.visit_attempts). Settle's batches are the Catch path's, rare: it is timed per invocation.
TIMED_PER_VISIT = frozenset({"deliver"})
EVENT_TEMPLATE = {
    "messageId": "", "receiptHandle": "sandbox", "attributes": {"ApproximateReceiveCount": "1"},
    "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
    "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:healthbook-sandbox-ingest", "awsRegion": REGION,
}


@dataclass(frozen=True)
class TemplateTable:
    """One AWS::DynamoDB::Table of template.yaml, as the sandbox creates it."""

    logical_id: str
    create: dict[str, Any]  # create_table's arguments but the name
    time_to_live: dict[str, Any] | None


def template_path() -> Path | None:
    """template.yaml of the checkout this package is installed from (editable installs), if there is one."""
    folder = functions_dir()
    path = folder.parent / "template.yaml" if folder else None
    return path if path is not None and path.is_file() else None


@cache
def template_tables() -> dict[str, TemplateTable]:
    """The tables of template.yaml, by their variable in NAMES (TABLES), read once per process with cfn-lint's
    decoder, the one tests/test_template.py reads the template with (it takes !Ref, !Sub, !If ...)."""
    from healthbook_dev.template import as_deployed, template_resources  # they import this module: loaded on use

    path = template_path()
    resources = template_resources()
    declared = {name for name, resource in resources.items() if resource.get("Type") == "AWS::DynamoDB::Table"}
    if declared != set(TABLES.values()):
        raise ValueError(f"{path} declares the tables {sorted(declared)}; the sandbox knows {sorted(TABLES.values())} "
                         "(sandbox.TABLES, and NAMES for a new one)")
    tables = {}
    for variable, logical_id in TABLES.items():
        properties = as_deployed(resources[logical_id].get("Properties", {}))  # at the parameters' defaults
        unknown = set(properties) - {*TABLE_SCHEMA, *TABLE_DEPLOYMENT_ONLY, "TimeToLiveSpecification"}
        if unknown:
            raise ValueError(f"{path}: {logical_id} sets {sorted(unknown)}, which the sandbox does not know: add each "
                             "to sandbox.TABLE_SCHEMA (moto creates it) or TABLE_DEPLOYMENT_ONLY (moto does without)")
        create = {key: value for key, value in properties.items() if key in TABLE_SCHEMA}
        time_to_live = properties.get("TimeToLiveSpecification")
        if _has_intrinsic([create, time_to_live]):
            raise ValueError(f"{path}: {logical_id}'s schema uses an intrinsic function the sandbox cannot resolve")
        tables[variable] = TemplateTable(logical_id, create, time_to_live)
    return tables


def _has_intrinsic(node: Any) -> bool:
    if isinstance(node, dict):
        return any(key == "Ref" or key.startswith("Fn::") or _has_intrinsic(value) for key, value in node.items())
    return isinstance(node, list) and any(_has_intrinsic(value) for value in node)


def create_tables(ddb: Any, names: dict[str, str]) -> None:
    """template.yaml's tables, each named by its variable in ``names`` (one whose variable ``names`` lacks is not
    created): keys, attribute definitions, indexes with their projections, billing mode and TTL as written there."""
    for variable, table in template_tables().items():
        if variable not in names:
            continue
        ddb.create_table(TableName=names[variable], **copy.deepcopy(table.create))
        if table.time_to_live is not None:
            ddb.update_time_to_live(TableName=names[variable], TimeToLiveSpecification=dict(table.time_to_live))


@contextmanager
def kms_signs_digests_like_aws() -> Iterator[None]:
    """moto 5.x ignores ``MessageType=DIGEST`` and hashes the digest again, so its signatures would not verify
    the way AWS KMS's do. Inside this block its ECDSA keys sign the digest as KMS does (emulation only)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from moto.kms import utils

    original = utils.ECDSAPrivateKey.sign

    def sign(self: Any, message: bytes, signing_algorithm: str) -> bytes:
        signature: bytes = self.private_key.sign(message, ec.ECDSA(Prehashed(hashes.SHA256())))
        return signature

    utils.ECDSAPrivateKey.sign = sign  # type: ignore[method-assign]
    try:
        yield
    finally:
        utils.ECDSAPrivateKey.sign = original  # type: ignore[method-assign]


@cache
def _moto_transactions() -> ModuleType | None:
    """The LocalStack plugins' moto patches (``infra/localstack/healthbook_localstack/moto_transactions.py``),
    loaded once by path; None outside a checkout."""
    folder = functions_dir()
    path = folder.parent / "infra" / "localstack" / "healthbook_localstack" / "moto_transactions.py" if folder else None
    if path is None or not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("healthbook_moto_transactions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def moto_transactions_copy_tables_once() -> Iterator[None]:
    """moto copies a whole table once per item of a TransactWriteItems, so the pipeline's transactions slow down
    as the tables grow (``make demo`` took twice as long). Inside this block each table is copied once per
    transaction, with the same rollback. The patch lives with the LocalStack plugins, which serve DynamoDB from
    moto too (``infra/localstack/healthbook_localstack/moto_transactions.py``); outside a checkout, no patch."""
    module = _moto_transactions()
    if module is None:
        yield
        return
    with module.copy_tables_once():
        yield


# moto calls of pool threads (ThreadPoolExecutor's: a delivery task's visits, ingest's record and visit writers)
# reach moto one at a time through this one.
POOL_LOCK = threading.Lock()


@contextmanager
def pool_threads_call_moto_one_at_a_time() -> Iterator[None]:
    """Inside this block a pool thread calls moto under POOL_LOCK. An in-process Lambda holds MOTO_LOCK for its
    whole invocation, and the threads it starts cannot take it: they would race each other in moto, which is not
    thread-safe, while the invocation's own thread waits for them. Only pool threads: another thread may call
    moto in a way that takes MOTO_LOCK (Lambda's Invoke runs the handler in process)."""
    from botocore.client import BaseClient  # type: ignore[import-untyped]

    make_api_call = BaseClient._make_api_call

    def one_at_a_time(client: Any, operation: str, params: Any) -> Any:
        if not threading.current_thread().name.startswith("ThreadPoolExecutor"):
            return make_api_call(client, operation, params)
        with POOL_LOCK:
            return make_api_call(client, operation, params)

    setattr(BaseClient, "_make_api_call", one_at_a_time)  # noqa: B010
    try:
        yield
    finally:
        setattr(BaseClient, "_make_api_call", make_api_call)  # noqa: B010


@contextmanager
def transaction_conflicts(hold_ms: float = 20.0, *, tables_prefix: str | None = None) -> Iterator[Any]:
    """Inside an active ``mock_aws()``: DynamoDB's TransactionConflict, modelled for the block (docs/faults.md);
    yields the model, whose ``counts`` say what it cancelled. Call moto through ``SerialisedClient(client,
    model)`` from several threads, as the LocalStack plugin serves it."""
    module = _moto_transactions()
    if module is None:
        raise FileNotFoundError("moto_transactions.py not found: run this from a checkout of the project")
    with module.transaction_conflicts(hold_ms, tables_prefix=tables_prefix) as model:
        yield model


class SerialisedClient:
    """A boto3 client whose calls reach moto one at a time (MOTO_LOCK: moto is not thread-safe), as the LocalStack
    plugin serves them (infra/localstack/healthbook_localstack/dynamodb.py). With a conflict model, the caller of
    a transaction then waits out its time in flight outside the lock, as a DynamoDB caller waits for its answer."""

    def __init__(self, client: Any, conflicts: Any = None) -> None:
        self._client = client
        self._conflicts = conflicts

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                with MOTO_LOCK:
                    return attribute(*args, **kwargs)
            finally:
                if self._conflicts is not None:
                    self._conflicts.settle()

        return call


@dataclass
class Sandbox:
    s3: Any
    ddb: Any
    kms: Any
    receipt_key_id: str
    public_key_pem: bytes
    names: dict[str, str]


def build(ca_pem: str, pepper: str, names: dict[str, str] = NAMES) -> Sandbox:
    """Create every resource inside an active ``moto.mock_aws()``; the caller sets ``names`` as env vars."""
    import boto3  # type: ignore[import-untyped]

    s3, ddb, kms = boto3.client("s3"), boto3.client("dynamodb"), boto3.client("kms")
    for bucket in (names["INBOX_BUCKET"], names["RECEIPTS_BUCKET"], names["QUARANTINE_BUCKET"]):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=names["INBOX_BUCKET"], VersioningConfiguration={"Status": "Enabled"})
    create_tables(ddb, names)
    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
    boto3.client("ssm").put_parameter(Name=names["TRUST_BUNDLE_PARAMETER"], Type="String", Value=ca_pem,
                                      Tier="Advanced")
    boto3.client("secretsmanager").create_secret(Name=names["CITIZEN_PEPPER_SECRET"],
                                                 SecretString=json.dumps({"pepper": pepper}))
    public = b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(
        kms.get_public_key(KeyId=key_id)["PublicKey"]) + b"-----END PUBLIC KEY-----\n"
    return Sandbox(s3=s3, ddb=ddb, kms=kms, receipt_key_id=key_id, public_key_pem=public, names=dict(names))


def s3_event_message(bucket: str, key: str, version: str | None, *, size: int, at: datetime,
                     message_id: str) -> dict[str, Any]:
    """One SQS record carrying an S3 ObjectCreated notification, as AWS delivers it (keys URL-encoded)."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": size, "eTag": "0" * 32, "sequencer": "0"}
    if version is not None:
        obj["versionId"] = version
    body = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
                         "eventTime": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                         "eventName": "ObjectCreated:Put",
                         "s3": {"s3SchemaVersion": "1.0", "configurationId": "inbox-to-queue",
                                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"}, "object": obj}}]}
    record = copy.deepcopy(EVENT_TEMPLATE)
    record.update(messageId=message_id, body=json.dumps(body))
    return record


@dataclass
class LambdaContext:
    """What the handler reads from the Lambda context when it is called directly."""

    function_name: str = "healthbook-sandbox-ingest"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:healthbook-sandbox-ingest"
    aws_request_id: str = "5b8f3f3a-7c1e-4d2a-9f6b-3e8a1c5d7b92"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@cache
def load_function(name: str) -> ModuleType:
    """functions/<name>/app.py as a module (it is not a package: SAM zips the folder). Loaded once per
    process: Powertools keeps one logging handler per service, so a second copy would share it anyway."""
    folder = functions_dir()
    if folder is None or not (folder / name / "app.py").is_file():
        raise FileNotFoundError(f"functions/{name}/app.py not found: run this from a checkout of the project")
    spec = importlib.util.spec_from_file_location(f"healthbook_{name}_app", folder / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_ingest_handler() -> ModuleType:
    return load_function("ingest")


@contextmanager
def lambdas_in_process(handlers: dict[str, Any]) -> Iterator[list[str]]:
    """Inside an active ``mock_aws(config={"lambda": {"use_docker": False}})``: moto would answer every
    invocation with a canned payload (it runs real code only in Docker, which these machines lack), so an
    invocation of a function named in ``handlers`` calls that Python handler in this process instead, the way
    the Lambda runtime would: an exception becomes a function error whose errorType is its class name, which
    is what Step Functions' Retry and Catch match. Yields the names invoked, in order."""
    import traceback

    from moto.awslambda_simple.models import LambdaSimpleBackend

    from healthbook_dev.aws.stopwatch import timed

    original = LambdaSimpleBackend.invoke
    calls: list[str] = []

    def invoke(self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
               response_headers: Any) -> Any:
        name = self.get_function(function_name, qualifier).function_name
        handler = handlers.get(name)
        if handler is None:
            return original(self, function_name, qualifier, body, headers, response_headers)
        calls.append(name)
        event = json.loads(body) if body else {}
        context = LambdaContext(function_name=name, invoked_function_arn=self.get_function(name, None).function_arn)
        try:
            function = name.rsplit("-", 1)[-1]
            visits = event.get("visits") if isinstance(event, dict) else None
            units = len(visits) if function in TIMED_PER_VISIT and isinstance(visits, list) and visits else 1
            with MOTO_LOCK, timed(function, units=units):
                result = handler(event, context)
        except Exception as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)[:200],
                               "stackTrace": traceback.format_tb(exc.__traceback__)[-3:]}).encode()
        return json.dumps(result).encode()

    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]


@dataclass
class DeliveryStack:
    """What create_delivery made: the environment the functions read and the in-process handlers."""

    machine_arn: str
    topic_arn: str
    environment: dict[str, str]
    handlers: dict[str, Any]


def create_delivery(prefix: str, *, visits_table: str, pepper_secret: str, vneid_url: str,
                    vneid_credentials: dict[str, str], population_url: str,
                    aggregates_table: str | None = None) -> DeliveryStack:
    """Inside ``mock_aws(config=MOTO_CONFIG)``: the delivery stage of template.yaml, the way moto can hold it.

    The VNeID credentials secret, the deadline topic, the three task functions and the Express state machine
    from infra/statemachine/delivery.asl.json with its substitutions; no bucket, as the workflow hands nothing
    over through S3. The caller sets ``environment`` (and the timing variables it wants) and runs the workflow
    inside ``lambdas_in_process(handlers)``."""
    import boto3

    folder = functions_dir()
    if folder is None:
        raise FileNotFoundError("functions/ not found: run this from a checkout of the project")
    lam = boto3.client("lambda")
    credentials = boto3.client("secretsmanager").create_secret(
        Name=f"{prefix}/vneid", SecretString=json.dumps(vneid_credentials))["ARN"]
    topic = boto3.client("sns").create_topic(Name=f"{prefix}-deadline")["TopicArn"]
    role = boto3.client("iam").create_role(RoleName=f"{prefix}-delivery", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    module = load_function("delivery")
    substitutions, handlers = {"DeadlineTopicArn": topic}, {}
    for placeholder, (suffix, handler) in DELIVERY_TASKS.items():
        name = f"{prefix}-{suffix}"
        substitutions[placeholder] = lam.create_function(FunctionName=name, Runtime="python3.13", Role=role,
                                                         Handler=f"app.{handler}",
                                                         Code={"ZipFile": b"runs in process"})["FunctionArn"]
        handlers[name] = getattr(module, handler)
    definition = (folder.parent / "infra" / "statemachine" / "delivery.asl.json").read_text(encoding="utf-8")
    for placeholder, value in substitutions.items():
        definition = definition.replace("${" + placeholder + "}", value)
    machine = boto3.client("stepfunctions").create_state_machine(
        name=f"{prefix}-delivery", definition=definition, roleArn=role, type="EXPRESS")["stateMachineArn"]
    environment = {"VISITS_TABLE": visits_table, "CITIZEN_PEPPER_SECRET": pepper_secret,
                   "POPULATION_URL": population_url, "VNEID_URL": vneid_url, "VNEID_SECRET": credentials,
                   "DELIVERY_STATE_MACHINE_ARN": machine, "DEADLINE_TOPIC_ARN": topic}
    if aggregates_table:
        environment["AGGREGATES_TABLE"] = aggregates_table
    return DeliveryStack(machine_arn=machine, topic_arn=topic, environment=environment, handlers=handlers)


def wait_for_executions(machine_arn: str, timeout: float = 120.0) -> None:
    """Until moto has no RUNNING execution of the machine (moto lists Express executions; AWS does not)."""
    import time

    import boto3

    sfn = boto3.client("stepfunctions")
    give_up = time.monotonic() + timeout
    while sfn.list_executions(stateMachineArn=machine_arn, statusFilter="RUNNING")["executions"]:
        if time.monotonic() > give_up:
            raise TimeoutError(f"executions of {machine_arn} still running after {timeout:.0f} s")
        time.sleep(0.05)


def functions_dir() -> Path | None:
    """functions/ of the checkout this package is installed from (editable installs), if there is one."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "functions" / "ingest" / "app.py").is_file():
            return parent / "functions"
    return None
