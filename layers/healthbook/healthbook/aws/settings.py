"""The ingest function's configuration (environment variables) and the AWS clients and secrets it needs.

Plain boto3: since boto3 1.28 every client honours AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>), which
is all LocalStack or a local stack needs. Nothing here runs at import: the handler builds it on first use,
so tests can set the environment and start moto first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from healthbook.parsing.safe_xml import DEFAULT_MAX_FILE_BYTES

REQUIRED = ("INBOX_BUCKET", "RECEIPTS_BUCKET", "QUARANTINE_BUCKET", "SUBMISSIONS_TABLE", "VISITS_TABLE",
            "FACILITIES_TABLE", "IDEMPOTENCY_TABLE", "RECEIPT_KEY_ID", "TRUST_BUNDLE_PARAMETER",
            "CITIZEN_PEPPER_SECRET")


@dataclass(frozen=True)
class Settings:
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
    max_object_bytes: int = DEFAULT_MAX_FILE_BYTES
    registry_ttl_seconds: float = 300.0
    aggregates_table: str | None = None  # report counters (docs/reports.md); none, none kept

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Raises ValueError naming every missing variable: a misconfigured function should fail loudly at
        its first invocation, not reject files."""
        env = os.environ if environ is None else environ
        missing = [name for name in REQUIRED if not env.get(name)]
        if missing:
            raise ValueError(f"missing environment variable(s): {', '.join(missing)}")
        try:
            max_bytes = int(env.get("MAX_OBJECT_BYTES") or DEFAULT_MAX_FILE_BYTES)
            ttl = float(env.get("REGISTRY_TTL_SECONDS") or 300)
        except ValueError as exc:
            raise ValueError(f"MAX_OBJECT_BYTES / REGISTRY_TTL_SECONDS: {exc}") from None
        if max_bytes <= 0 or ttl < 0:
            raise ValueError("MAX_OBJECT_BYTES must be positive and REGISTRY_TTL_SECONDS not negative")
        return cls(**{name.lower(): env[name] for name in REQUIRED}, max_object_bytes=max_bytes,
                   registry_ttl_seconds=ttl, aggregates_table=env.get("AGGREGATES_TABLE") or None)


def _config() -> Any:
    from botocore.config import Config  # type: ignore[import-untyped]

    return Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=30)


def client(service: str) -> Any:
    """A boto3 client with standard retries (throttling and 5xx back off inside the call first; what still
    fails propagates and SQS retries the message) and timeouts well below the function's."""
    import boto3  # type: ignore[import-untyped]  # no stubs installed; adapters alone use boto3

    return boto3.client(service, config=_config())


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
