"""HTTP client that delivers health-book entries to the citizen's VNeID app.

One call, one attempt: :meth:`VneidClient.deliver` sends a single ``PUT`` and classifies the answer (so do
:meth:`VneidClient.put_profile` and :meth:`VneidClient.put_vaccination`, the health book's administrative
section and vaccination history from a province's lists: docs/vneid-contract.md "Profile and vaccinations"). It never
loops; the orchestration retries :class:`RetryableDeliveryError` with backoff (honouring ``retry_after``) and
parks :class:`PermanentDeliveryError` for a human. The only second request it ever makes is one token refresh
after a ``401`` when it authenticates with OAuth2 client credentials.

Never logged, never put in an exception message: the entry's content, the client secret, the access token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import requests

__all__ = [
    "Delivery",
    "DeliveryError",
    "MutualTLS",
    "OAuth2ClientCredentials",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "VneidClient",
    "Written",
    "canonical_json",
    "credentials_from_secret",
]

log = logging.getLogger(__name__)

Timeout = float | tuple[float, float]
USER_AGENT = "healthbook-vneid/1"
# 409 error codes that mean "the server already holds this version or a newer one": nothing left to deliver.
SUPERSEDED_CODES = frozenset({"newer_version_exists", "version_exists"})
_RETRYABLE_STATUS = frozenset({408, 429})
#: What a PUT of the profile or of a vaccination did: stored a new one, replaced another, or found it as sent.
Written = Literal["created", "updated", "unchanged"]


# ---------------------------------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class OAuth2ClientCredentials:
    """OAuth2 client-credentials grant (RFC 6749 §4.4); the client authenticates with HTTP Basic."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None


@dataclass(frozen=True)
class MutualTLS:
    """Client certificate (PEM files on disk); ``ca_bundle`` pins the CA that signs VNeID's server certificate."""

    cert_path: str
    key_path: str
    ca_bundle: str | None = None

    def request_kwargs(self) -> dict[str, Any]:
        """The ``cert=``/``verify=`` arguments for ``requests``."""
        return {"cert": (self.cert_path, self.key_path), "verify": self.ca_bundle if self.ca_bundle else True}


Auth = OAuth2ClientCredentials | MutualTLS


def credentials_from_secret(secret_value: str) -> OAuth2ClientCredentials | MutualTLS:
    """Parse the Secrets Manager ``SecretString``: ``{"type": "oauth2"|"mtls", ...}`` (see docs/vneid-contract.md).

    Error messages name missing or wrong fields, never their values.
    """
    try:
        data = json.loads(secret_value)
    except (TypeError, ValueError):
        raise ValueError("VNeID secret is not valid JSON") from None  # do not chain: the error holds the text
    if not isinstance(data, dict):
        raise ValueError("VNeID secret must be a JSON object")
    kind = data.get("type")

    def text(name: str, *, required: bool = True) -> str | None:
        value = data.get(name)
        if value is None or value == "":
            if required:
                raise ValueError(f"VNeID secret of type {kind!r} lacks {name!r}")
            return None
        if not isinstance(value, str):
            raise ValueError(f"VNeID secret field {name!r} must be a string")
        return value

    if kind == "oauth2":
        return OAuth2ClientCredentials(
            token_url=text("token_url") or "",
            client_id=text("client_id") or "",
            client_secret=text("client_secret") or "",
            scope=text("scope", required=False),
        )
    if kind == "mtls":
        return MutualTLS(
            cert_path=text("cert_path") or "",
            key_path=text("key_path") or "",
            ca_bundle=text("ca_bundle", required=False),
        )
    raise ValueError("VNeID secret 'type' must be 'oauth2' or 'mtls'")


# ---------------------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Delivery:
    """A delivery that needs no further attempt.

    ``outcome`` is ``"delivered"`` (the server stored this version, or had already stored it under the same
    Idempotency-Key) or ``"superseded"`` (409: the server already holds this version or a newer one).
    """

    outcome: Literal["delivered", "superseded"]
    status: int
    visit_id: str
    version: int
    receipt_id: str | None
    elapsed_ms: int
    current_version: int | None = None
    replayed: bool = False

    @property
    def superseded(self) -> bool:
        return self.outcome == "superseded"


class DeliveryError(Exception):
    """A delivery that did not happen. ``status`` is None when no HTTP answer came back."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RetryableDeliveryError(DeliveryError):
    """Try again later (408/429/5xx, timeout, connection failure); ``retry_after`` is the server's hint in seconds."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Retrying the same request will not help (4xx other than 408/409-superseded/429, bad credentials)."""


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now())


def _error_code(response: requests.Response) -> str | None:
    """The server's short error code (``{"error": "..."}``), clipped; never the body itself."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:100]
    return None


# ------------------------------------------------------------------------------------------------ client


class VneidClient:
    """Delivers entries to ``{base_url}/v1/citizens/{citizen_key}/health-book/entries/{visit_id}``.

    Thread-safe: the token cache is guarded by a lock; share one client (and its connection pool) per process.
    """

    #: refresh the token this many seconds before it expires (halved for very short-lived tokens)
    TOKEN_MARGIN_S = 30.0

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth,
        timeout: Timeout = (3.05, 10),
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(auth, OAuth2ClientCredentials | MutualTLS):
            raise TypeError("auth must be OAuth2ClientCredentials or MutualTLS")
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self._session = session if session is not None else requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self.token_fetches = 0

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> VneidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- auth

    def _tls_kwargs(self) -> dict[str, Any]:
        return self.auth.request_kwargs() if isinstance(self.auth, MutualTLS) else {}

    def _access_token(self, *, force: bool = False) -> str:
        assert isinstance(self.auth, OAuth2ClientCredentials)
        with self._lock:
            if not force and self._token is not None and self._clock() < self._token_refresh_at:
                return self._token
            self._token = None
            token, expires_in = self._fetch_token(self.auth)
            margin = min(self.TOKEN_MARGIN_S, expires_in / 2)
            self._token = token
            self._token_refresh_at = self._clock() + max(0.0, expires_in - margin)
            return token

    def _fetch_token(self, auth: OAuth2ClientCredentials) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if auth.scope:
            form["scope"] = auth.scope
        self.token_fetches += 1
        try:
            response = self._session.request(
                "POST",
                auth.token_url,
                data=form,
                auth=(auth.client_id, auth.client_secret),
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            raise RetryableDeliveryError("VNeID token endpoint timed out", code="token_timeout") from None
        except requests.RequestException as exc:
            raise RetryableDeliveryError(
                f"VNeID token endpoint unreachable ({type(exc).__name__})", code="token_unreachable"
            ) from None
        status = response.status_code
        if status in _RETRYABLE_STATUS or status >= 500:
            raise RetryableDeliveryError(
                f"VNeID token endpoint answered {status}",
                status=status,
                code=_error_code(response),
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status != 200:
            raise PermanentDeliveryError(
                f"VNeID token endpoint refused the client credentials ({status})",
                status=status,
                code=_error_code(response) or "token_refused",
            )
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PermanentDeliveryError(
                "VNeID token endpoint answered without a usable access_token", status=status, code="token_malformed"
            ) from None
        if not isinstance(token, str) or not token:
            raise PermanentDeliveryError("VNeID token endpoint answered an empty token", code="token_malformed")
        return token, expires_in

    # -- delivery

    def entry_url(self, citizen_key: str, visit_id: str) -> str:
        return (
            f"{self.base_url}/v1/citizens/{quote(citizen_key, safe='')}"
            f"/health-book/entries/{quote(visit_id, safe='')}"
        )

    def deliver(self, citizen_key: str, entry: Mapping[str, Any]) -> Delivery:
        """One PUT of ``entry`` for ``citizen_key``. Returns a :class:`Delivery` or raises a :class:`DeliveryError`.

        ``ValueError`` means the entry itself is unusable (no projection_id/visit_id/version): a bug upstream.
        """
        if not isinstance(citizen_key, str) or not citizen_key:
            raise ValueError("citizen_key must be a non-empty string")
        projection_id = entry.get("projection_id")
        visit_id = entry.get("visit_id")
        version = entry.get("version")
        if not isinstance(projection_id, str) or not projection_id:
            raise ValueError("entry lacks a projection_id (the Idempotency-Key)")
        if not isinstance(visit_id, str) or not visit_id:
            raise ValueError("entry lacks a visit_id")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError("entry version must be a positive integer")

        url = self.entry_url(citizen_key, visit_id)
        body = json.dumps(
            {"entry": dict(entry), "version": version, "supersedes": entry.get("supersedes")},
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        ).encode("utf-8")
        started = time.perf_counter()
        response = self._idempotent_put(url, body, projection_id)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        return self._classify(response, visit_id=visit_id, version=version, elapsed_ms=elapsed_ms,
                              projection_id=projection_id)

    def _put(self, url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        headers = dict(headers)
        if isinstance(self.auth, OAuth2ClientCredentials):
            headers["Authorization"] = f"Bearer {self._access_token()}"
        try:
            return self._session.request(
                "PUT", url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False,
                **self._tls_kwargs(),
            )
        except requests.Timeout:
            raise RetryableDeliveryError("VNeID did not answer in time", code="timeout") from None
        except requests.RequestException as exc:
            # ConnectionError, SSLError, ChunkedEncodingError...: the request may or may not have landed;
            # the Idempotency-Key makes the retry safe either way.
            raise RetryableDeliveryError(f"VNeID unreachable ({type(exc).__name__})", code="unreachable") from None

    def _classify(
        self, response: requests.Response, *, visit_id: str, version: int, elapsed_ms: int, projection_id: str
    ) -> Delivery:
        status = response.status_code
        code = _error_code(response)
        log.info(
            "vneid: delivery answered",
            extra={"projection_id": projection_id, "status": status, "elapsed_ms": elapsed_ms, "code": code},
        )
        if status in (200, 201, 204):
            receipt_id: str | None = None
            if status != 204:
                try:
                    payload = response.json()
                except ValueError:
                    payload = None
                if isinstance(payload, dict) and payload.get("receipt_id") is not None:
                    receipt_id = str(payload["receipt_id"])
            return Delivery(
                outcome="delivered", status=status, visit_id=visit_id, version=version, receipt_id=receipt_id,
                elapsed_ms=elapsed_ms, replayed=response.headers.get("Idempotent-Replayed", "").lower() == "true",
            )
        if status == 409:
            current = _current_version(response)
            if code in SUPERSEDED_CODES or (current is not None and current >= version):
                return Delivery(
                    outcome="superseded", status=status, visit_id=visit_id, version=version, receipt_id=None,
                    elapsed_ms=elapsed_ms, current_version=current,
                )
            raise PermanentDeliveryError(f"VNeID answered 409 ({code or 'conflict'})", status=status, code=code)
        if status in _RETRYABLE_STATUS or status >= 500:
            raise RetryableDeliveryError(
                f"VNeID answered {status}",
                status=status,
                code=code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        raise PermanentDeliveryError(f"VNeID answered {status} ({code or 'no error code'})", status=status, code=code)


    # -- the administrative section and the vaccination history (one PUT each, the body's hash as the key)

    def profile_url(self, citizen_key: str) -> str:
        return f"{self.base_url}/v1/citizens/{quote(citizen_key, safe='')}/health-book/profile"

    def vaccination_url(self, citizen_key: str, record_id: str) -> str:
        return (
            f"{self.base_url}/v1/citizens/{quote(citizen_key, safe='')}"
            f"/health-book/vaccinations/{quote(record_id, safe='')}"
        )

    def put_profile(self, citizen_key: str, profile: Mapping[str, Any]) -> Written:
        """One PUT of the citizen's administrative section: ``"created"``, ``"updated"`` or ``"unchanged"`` (the
        server already held exactly this), or a :class:`DeliveryError` classified as for :meth:`deliver`."""
        _require(citizen_key, "citizen_key")
        if not isinstance(profile, Mapping):
            raise ValueError("profile must be a mapping")
        return self._put_state(self.profile_url(citizen_key), {"citizen_key": citizen_key, "profile": dict(profile)})

    def put_vaccination(self, citizen_key: str, record_id: str, record: Mapping[str, Any]) -> Written:
        """One PUT of one entry of the citizen's vaccination history, under its stable ``record_id``."""
        _require(citizen_key, "citizen_key")
        _require(record_id, "record_id")
        if not isinstance(record, Mapping):
            raise ValueError("record must be a mapping")
        return self._put_state(self.vaccination_url(citizen_key, record_id),
                               {"citizen_key": citizen_key, "record_id": record_id, "vaccination": dict(record)})

    def _idempotent_put(self, url: str, body: bytes, key: str) -> Any:
        """One PUT under ``Idempotency-Key: key``; on a 401 (the cached token revoked or expired early), one fresh
        token and one more attempt."""
        headers = {
            "Idempotency-Key": key,
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        response = self._put(url, body, headers)
        if response.status_code == 401 and isinstance(self.auth, OAuth2ClientCredentials):
            log.info("vneid: 401, refreshing the access token once", extra={"idempotency_key": key[:16]})
            self._access_token(force=True)
            response = self._put(url, body, headers)
        return response

    def _put_state(self, url: str, document: dict[str, Any]) -> Written:
        body = canonical_json(document)
        key = hashlib.sha256(body).hexdigest()  # the same body, the same key: a retry is a replay
        started = time.perf_counter()
        response = self._idempotent_put(url, body, key)
        status = response.status_code
        code = _error_code(response)
        log.info("vneid: write answered", extra={"idempotency_key": key[:16], "status": status, "code": code,
                                                 "elapsed_ms": int((time.perf_counter() - started) * 1000)})
        if status == 201:
            return "created"
        if status == 204:
            return "unchanged"
        if status == 200:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            unchanged = isinstance(payload, dict) and payload.get("unchanged") is True
            return "unchanged" if unchanged else "updated"
        if status in _RETRYABLE_STATUS or status >= 500:
            raise RetryableDeliveryError(f"VNeID answered {status}", status=status, code=code,
                                         retry_after=parse_retry_after(response.headers.get("Retry-After")))
        raise PermanentDeliveryError(f"VNeID answered {status} ({code or 'no error code'})", status=status, code=code)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The one byte form of a body: sorted keys, no whitespace, UTF-8 text as is (its SHA-256 is the key)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode("utf-8")


def _require(value: str, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")


def _current_version(response: requests.Response) -> int | None:
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("current_version") if isinstance(body, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
