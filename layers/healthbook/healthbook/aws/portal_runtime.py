"""The portal function's runtime: everything functions/portal/app.py does that is not Powertools decoration.

- the composition root: ``PortalService`` from ``PortalSettings`` (the portal table, the inbox and receipts
  buckets, the token key from Secrets Manager, read once per container, the limits), built on the first request;
- the API Gateway REST proxy event (Powertools' ``APIGatewayProxyEvent``) as a ``Request``: the path under the
  ``{proxy+}`` resource (so a stage or a custom domain's base path does not matter), headers by lower-cased name,
  the body as given (``isBase64Encoded`` bodies are decoded by the service, after their size is checked), the
  source address;
- one log line per request and the metrics: ``PortalRequests``, ``PortalRejected`` (every 4xx and 5xx; also
  with the dimension ``Code``); the service counts ``PortalTokensIssued``, ``PortalLoginFailures``, ``PortalLockouts``,
  ``PortalFilesReceived`` and ``PortalUploadLinks``.

Logs say the path, the result code and why, the facility, the maGiaoDich, the source address and sizes; never
the file, the password or its MD5, the token, or a username that is not well-formed. An unexpected error is a
500 whose details are only in the log (AWS error codes and keys; nothing the caller sent).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from healthbook.aws.portal_store import PortalAccounts, S3Inbox, S3Receipts, load_token_key
from healthbook.aws.settings import PortalSettings, client
from healthbook.kernel import Metrics
from healthbook.portal.protocol import Reply, ResultCode, message
from healthbook.portal.service import Policy, PortalService, Request

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger

PROXY = "{proxy+}"
_SOURCE_IP = re.compile(r"[0-9A-Fa-f.:]{2,45}")


def policy(settings: PortalSettings) -> Policy:
    return Policy(token_ttl=timedelta(seconds=settings.token_ttl_seconds), rate_per_minute=settings.rate_per_minute,
                  lock_after=settings.lock_after_failures, lock_for=timedelta(seconds=settings.lock_seconds),
                  source_lock_after=settings.source_lock_after_failures,
                  presign_for=timedelta(seconds=settings.presign_seconds), max_object_bytes=settings.max_object_bytes)


def presign_client() -> Any:
    """An S3 client that presigns with SigV4 (boto3's default client presigns with SigV2, which SSE-KMS refuses
    and newer regions never accepted): virtual-hosted on the regional endpoint on AWS, path style on a local
    endpoint (AWS_ENDPOINT_URL: LocalStack, moto server)."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    local = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", config=Config(signature_version="s3v4",
                                            s3={"addressing_style": "path" if local else "virtual"},
                                            retries={"mode": "standard", "max_attempts": 4}))


def build_service(settings: PortalSettings, *, clock: Callable[[], datetime], metrics: Metrics) -> PortalService:
    s3, signer = client("s3"), presign_client()
    store = PortalAccounts(client("dynamodb"), settings.portal_table)
    return PortalService(
        attempts=store, rates=store,
        inbox=(inbox := S3Inbox(s3, bucket=settings.inbox_bucket, kms_key_id=settings.inbox_kms_key_id,
                                presign_client=signer)),
        presigner=inbox, receipts=S3Receipts(s3, bucket=settings.receipts_bucket, presign_client=signer),
        token_key=load_token_key(client("secretsmanager"), settings.token_key_secret),
        clock=clock, policy=policy(settings), metrics=metrics)


def request_of(event: Mapping[str, Any]) -> Request:
    """The service's Request from an API Gateway REST proxy event."""
    proxy = APIGatewayProxyEvent(dict(event))
    path = str(event.get("path") or "")
    resource = str(event.get("resource") or "")
    parameters = event.get("pathParameters") or {}
    if resource.endswith(PROXY) and isinstance(parameters, Mapping) and isinstance(parameters.get("proxy"), str):
        path = resource[: -len(PROXY)] + parameters["proxy"]
    headers: dict[str, str] = {}
    for name, values in (event.get("multiValueHeaders") or {}).items():
        if isinstance(values, list) and values and isinstance(values[-1], str):
            headers[str(name).lower()] = values[-1]
    for name, value in (event.get("headers") or {}).items():
        if isinstance(value, str):
            headers[str(name).lower()] = value
    try:
        source = str(proxy.request_context.identity.source_ip or "")
    except (AttributeError, KeyError, TypeError):
        source = ""
    body = event.get("body")
    return Request(method=str(event.get("httpMethod") or ""), path=path, headers=headers,
                   body=body if isinstance(body, str) else None, base64_body=bool(event.get("isBase64Encoded")),
                   source_ip=source if _SOURCE_IP.fullmatch(source) else "unknown")


def internal_error() -> Reply:
    return Reply(ResultCode.INTERNAL, {"maKetQua": ResultCode.INTERNAL.value,
                                       "thongDiep": message(ResultCode.INTERNAL)})


class PortalRuntime:
    """One per process (the function module keeps it; ``reset`` forgets it): the Logger, the Metrics port, and the
    service, built from ``env`` on first use."""

    def __init__(self, *, logger: Logger, metrics: Metrics, env: Mapping[str, str] | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.logger, self.metrics = logger, metrics
        self.env = env  # None: os.environ, read when the service is built
        self.clock = clock or (lambda: datetime.now(UTC))
        self._service: PortalService | None = None

    def service(self) -> PortalService:
        if self._service is None:
            settings = PortalSettings.from_env(self.env)
            self._service = build_service(settings, clock=self.clock, metrics=self.metrics)
        return self._service

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """One API Gateway proxy event; its proxy response."""
        self.metrics.count("PortalRequests")
        source = "unknown"
        try:
            request = request_of(event)
            source = request.source_ip
            handled = self.service().handle(request)
        except Exception:  # not an API Gateway event, or the settings, a client or the token key could not be had
            self.logger.exception("portal request failed", extra={"code": ResultCode.INTERNAL.value,
                                                                   "reason": "not configured", "source_ip": source})
            self.metrics.count("PortalRejected")
            self.metrics.count("PortalRejected", code=ResultCode.INTERNAL.value)
            return internal_error().http()
        fields = {**handled.log_fields(), "source_ip": request.source_ip}
        if handled.code.status >= 400:  # the total for the alarms and the dashboard, and per code
            self.metrics.count("PortalRejected")
            self.metrics.count("PortalRejected", code=handled.code.value)
        if handled.failure is not None:
            self.logger.error("portal request failed", extra=fields, exc_info=handled.failure)
        elif handled.code.status >= 400:
            self.logger.warning("portal request refused", extra=fields)
        else:
            self.logger.info("portal request", extra=fields)
        return handled.reply.http()
