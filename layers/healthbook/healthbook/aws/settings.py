"""Every function's configuration, read one way: a pydantic model per function whose fields are the upper-cased
environment variables template.yaml sets (``FunctionSettings.from_env``), and the AWS clients and secrets the
functions need.

Plain boto3: since boto3 1.28 every client honours AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>), which
is all LocalStack or a local stack needs. Nothing here runs at import: a function builds it on first use,
so tests can set the environment and start moto first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Self

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from healthbook.delivery.model import Timing
from healthbook.kernel import DEADLINE, LEASE, MAX_FILE_BYTES, MAX_VISITS_PER_FILE

# A number of seconds: finite, and small enough for a timedelta (1e20 would overflow it).
Seconds = Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=10**9, allow_inf_nan=False)]


class FunctionSettings(BaseModel):
    """A function's settings: field ``visits_table`` is the variable ``VISITS_TABLE``. Unknown variables are
    ignored (Lambda sets many); empty ones count as unset."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Raises ValueError naming every missing or malformed variable: a misconfigured function fails loudly
        at its first invocation, and never rejects a file for it."""
        env = os.environ if environ is None else environ
        values = {name: env[name.upper()] for name in cls.model_fields if env.get(name.upper(), "").strip()}
        missing = sorted(name.upper() for name, spec in cls.model_fields.items()
                         if spec.is_required() and name not in values)
        if missing:
            raise ValueError(f"missing environment variable(s): {', '.join(missing)}")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError("; ".join(_problem(error) for error in exc.errors())) from None


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]).upper()
    message = str(error["msg"])
    if error["type"] in ("float_parsing", "finite_number", "less_than_equal", "int_parsing"):
        message = "must be a number of seconds" if where.endswith("_SECONDS") else "must be a number"
    elif error["type"] == "string_pattern_mismatch":
        message = "is not in the expected form"  # the value itself is never quoted: a URL may hold a secret
    elif error["type"] in ("greater_than", "greater_than_equal"):
        message = "must be positive" if error["type"] == "greater_than" else "must not be negative"
    return f"{where} {message}" if where else message


class TimingSettings(FunctionSettings):
    """The deadline rules (delivery.model.Timing), in seconds; tests shrink them."""

    deadline_seconds: Seconds = DEADLINE.total_seconds()
    safety_margin_seconds: Seconds = 3600
    lease_seconds: Seconds = LEASE.total_seconds()
    retry_base_seconds: Seconds = 60
    retry_max_seconds: Seconds = 1800

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self.timing()  # Timing refuses inconsistent rules (a margin longer than the deadline...)
        return self

    def timing(self) -> Timing:
        return Timing(deadline=timedelta(seconds=self.deadline_seconds),
                      safety_margin=timedelta(seconds=self.safety_margin_seconds),
                      lease=timedelta(seconds=self.lease_seconds),
                      retry_base=timedelta(seconds=self.retry_base_seconds),
                      retry_max=timedelta(seconds=self.retry_max_seconds))


class IngestSettings(TimingSettings):
    inbox_bucket: str
    receipts_bucket: str
    quarantine_bucket: str
    submissions_table: str
    visits_table: str
    facilities_table: str
    idempotency_table: str
    receipt_key_id: str  # KMS key (id, ARN or alias) that signs receipts
    trust_bundle_parameter: str  # SSM parameter holding the PEM bundle of trusted CA certificates
    citizen_pepper_secret: str  # Secrets Manager secret (id or ARN) holding the citizen-key pepper
    max_object_bytes: Annotated[int, Field(gt=0)] = MAX_FILE_BYTES
    max_visits_per_file: Annotated[int, Field(gt=0)] = MAX_VISITS_PER_FILE  # more: E019, before any is read
    registry_ttl_seconds: Seconds = 300.0
    delivery_state_machine_arn: str | None = None  # none: the sweep starts delivery instead
    ingest_queue_url: str | None = None  # where postponed messages are made visible again at once; none: they wait
    outbox_queue_url: str | None = None  # the outbox (docs/delivery.md); none: every version enters the status index
    visit_writers: Annotated[int, Field(ge=1, le=10)] = 1  # a file's visits written this many at a time
    record_writers: Annotated[int, Field(ge=1, le=10)] = 1  # a window's files recorded this many at a time
    # (the DynamoDB client holds record_writers x visit_writers connections)


class StepSettings(TimingSettings):
    """What every delivery step reads: the visits and the counters."""

    visits_table: str
    aggregates_table: str | None = None
    secrets_ttl_seconds: Seconds = 300.0  # re-read secrets after this, so a rotation needs no deployment


class DeliverSettings(StepSettings):
    """Match the citizen (the population service, the pepper), then PUT the entry (VNeID)."""

    citizen_pepper_secret: str
    population_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]  # absolute http(s); never quoted back
    population_api_key_secret: str | None = None
    vneid_url: str
    vneid_secret: str
    vneid_timeout_seconds: PositiveSeconds = 10.0


class SettleSettings(StepSettings):
    pass


class SweepSettings(StepSettings):
    delivery_state_machine_arn: str
    deadline_topic_arn: str | None = None
    outbox_queue_url: str | None = None  # the outbox the sweep reads (docs/delivery.md); none: nothing to read


class ReportSettings(FunctionSettings):
    aggregates_table: str
    submissions_table: str  # its by-facility-month index: the files are counted there
    visits_table: str  # its by-facility-delivered index: the deliveries are counted there
    facilities_table: str
    reports_bucket: str


def _config(connections: int = 10) -> Any:
    from botocore.config import Config  # type: ignore[import-untyped]

    return Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=30,
                  max_pool_connections=connections)


def client(service: str, *, connections: int = 10) -> Any:
    """A boto3 client with standard retries (throttling and 5xx back off inside the call first; what still
    fails propagates and SQS retries the message) and timeouts well below the function's. ``connections``: as many
    as the threads that share it (botocore's default pool is 10; an eleventh thread waits for a connection)."""
    import boto3  # type: ignore[import-untyped]  # no stubs installed; adapters alone use boto3

    return boto3.client(service, config=_config(connections))


def dynamodb_table(name: str) -> Any:
    """A DynamoDB Table resource (Python values in and out), configured as ``client``."""
    import boto3

    return boto3.resource("dynamodb", config=_config()).Table(name)


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("ThrottlingException", "404"...), "" for anything else."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def load_trust_anchors(ssm: Any, parameter: str) -> tuple[x509.Certificate, ...]:
    """The CA bundle (PEM) from an SSM parameter. A bundle of several CAs outgrows the 4 KB of a Standard
    parameter: use the Advanced tier (8 KB) or a SecureString of it."""
    value = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    try:
        return tuple(x509.load_pem_x509_certificates(str(value).encode("ascii")))
    except ValueError as exc:
        raise ValueError(f"SSM parameter {parameter} is not a PEM certificate bundle: {exc}") from None


def load_pepper(secrets: Any, secret_id: str) -> bytes:
    """The pepper: the secret string itself, or its "pepper" field when it is a JSON object (what a
    GenerateSecretString with a SecretStringTemplate produces)."""
    text = str(secrets.get_secret_value(SecretId=secret_id)["SecretString"])
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        text = str(document.get("pepper", ""))
    if len(text) < 16:
        raise ValueError(f"secret {secret_id}: the pepper must be at least 16 characters")
    return text.encode("utf-8")


class PortalSettings(FunctionSettings):
    """The portal API (healthbook.aws.portal_runtime): its table, the inbox it writes to, the receipts it reads,
    the token key, and the limits of healthbook.portal.service.Policy."""

    portal_table: str  # accounts, failed-login counters of users and sources, per-facility rates
    inbox_bucket: str
    receipts_bucket: str
    token_key_secret: str  # Secrets Manager secret (id or ARN): base64 of at least 32 random bytes
    inbox_kms_key_id: str | None = None  # set: files are written (and presigned) with SSE-KMS under this key
    token_ttl_seconds: Annotated[int, Field(gt=0, le=7 * 86400)] = 3600
    rate_per_minute: Annotated[int, Field(gt=0)] = 120  # files (and upload links) per facility and minute
    lock_after_failures: Annotated[int, Field(gt=0)] = 5  # failed logins of a user within LOCK_SECONDS
    lock_seconds: Annotated[int, Field(gt=0, le=10**7)] = 900
    source_lock_after_failures: Annotated[int, Field(gt=0)] = 20  # failed logins from one address
    presign_seconds: Annotated[int, Field(gt=0, le=7 * 86400)] = 900  # SigV4 presigned URLs last 7 days at most
    max_object_bytes: Annotated[int, Field(gt=0)] = MAX_FILE_BYTES


# --- enrolment: a province's list of residents, or of vaccinations, into the health book (docs/enrolment.md) ---

# Calls per second: positive, finite, and no more than any service would allow one container.
RatePerSecond = Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)]


class EnrolmentSettings(FunctionSettings):
    """What the enrolment workflow's first and last steps read: the imports bucket they read from, write to and
    empty (uploads under imports/, the canonical CSV under work/, the Distributed Map's results under results/,
    the outcome files under outcomes/)."""

    imports_bucket: str


class EnrolmentPrepareSettings(EnrolmentSettings):
    """Prepare also hands the Distributed Map its shape (template.yaml's EnrolmentBatchSize,
    EnrolmentMaxConcurrency and EnrolmentToleratedFailurePercentage), so the definition reads them by path."""

    batch_size: Annotated[int, Field(gt=0, le=10_000)] = 100  # rows per child execution (ItemBatcher)
    max_concurrency: Annotated[int, Field(gt=0, le=10_000)] = 10  # child executions at once (MaxConcurrency)
    tolerated_failure_percentage: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 5.0
    max_object_bytes: Annotated[int, Field(gt=0)] = 200 * 1024 * 1024  # reader.Limits; beyond, refused unread


class EnrolmentBatchSettings(FunctionSettings):
    """A batch of rows: the population service, VNeID, the pepper and the report counters, each call rate
    limited per container (a token bucket: a batch's calls never exceed the rate, whatever MaxConcurrency is;
    MaxConcurrency times the rate is the most the whole Map asks of a service, docs/enrolment.md)."""

    aggregates_table: str | None = None
    citizen_pepper_secret: str
    population_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]  # absolute http(s); never quoted back
    population_api_key_secret: str | None = None
    vneid_url: str
    vneid_secret: str
    vneid_timeout_seconds: PositiveSeconds = 10.0
    secrets_ttl_seconds: Seconds = 300.0
    vneid_rate_per_second: RatePerSecond = 20.0
    population_rate_per_second: RatePerSecond = 50.0


class EnrolmentSummariseSettings(EnrolmentSettings):
    pass
