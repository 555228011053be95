"""HTTP adapter to the national population database: :class:`PopulationClient` implements
:class:`~healthbook.reconcile.matching.PopulationRegistry` over ``GET {base_url}/v1/citizens/{id_number}`` and
``GET {base_url}/v1/citizens/by-social-insurance/{number}``.

One call, one attempt: each lookup sends a single ``GET`` and classifies the answer. It never loops; the caller
(the SQS consumer) retries :class:`PopulationUnavailable` later. The contract is in docs/reconciliation.md
("HTTP contract"), the same for both paths:

* ``200`` ``{"id_number", "full_name", "birth", "sex", "social_insurance_number"}`` → a :class:`Citizen`;
* ``404`` with ``{"error": "citizen_not_found"}`` → ``None`` (the database positively has no such number); any
  other ``404`` (a wrong base URL, a proxy's page) is a :class:`PopulationError`: it must never read as "unknown";
* ``408``, ``429``, ``5xx``, timeouts, connection failures → :class:`PopulationUnavailable` (retry);
* anything else (``400``, ``401``, ``403``, redirects, a malformed answer) → :class:`PopulationError` (permanent:
  a configuration or contract problem that retrying will not fix).

Personal data (the looked-up number, the answer's body) never appears in a log record or an exception message, and
no exception is chained to a ``requests`` exception (whose message holds the URL, hence the number). Logged: the
status and the elapsed milliseconds. Never logged either: the API key.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from healthbook.reconcile.matching import (
    Citizen,
    PopulationRegistry,
    PopulationUnavailable,
    id_format_ok,
    social_insurance_number_ok,
)

__all__ = ["NOT_FOUND_CODE", "PopulationClient", "PopulationError"]

log = logging.getLogger(__name__)

Timeout = float | tuple[float, float]
USER_AGENT = "healthbook-population/1"
API_KEY_HEADER = "X-Api-Key"
#: the ``error`` code of a 404 that means "no such citizen" (any other 404 is a PopulationError)
NOT_FOUND_CODE = "citizen_not_found"
_RETRYABLE_STATUS = frozenset({408, 429})
_BIRTH = re.compile(r"[0-9]{8}")
_SEXES = frozenset({"1", "2", "3"})
# Errors of the request itself (our configuration), not of the network: retrying cannot help.
_PERMANENT_REQUEST_ERRORS = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                             requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)


class PopulationError(Exception):
    """The population service refused the request or broke the contract (4xx other than 408/429/404-not-found,
    a redirect, a malformed answer): retrying the same request will not help. ``status`` is None when no HTTP
    answer came back. The message names the status and the problem, never the ID or the answer's content."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PopulationClient(PopulationRegistry):
    """Looks citizens up at ``{base_url}/v1/citizens/{id_number}`` and
    ``{base_url}/v1/citizens/by-social-insurance/{number}``, sending ``X-Api-Key`` when ``api_key`` is set.

    Thread-safe as far as ``requests.Session`` is: share one client (and its connection pool) per process.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: Timeout = (3.05, 5),
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # A bad URL would otherwise surface per lookup, as a retryable failure forever.
            raise ValueError("population base_url must be an absolute http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self.timeout = timeout
        self._session = session if session is not None else requests.Session()

    def __repr__(self) -> str:  # the API key stays out of reprs (and so out of logs and tracebacks)
        return f"PopulationClient({self.base_url!r}, api_key={'set' if self._api_key else None})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PopulationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def citizen_url(self, id_number: str) -> str:
        return f"{self.base_url}/v1/citizens/{quote(id_number, safe='')}"

    def social_insurance_url(self, number: str) -> str:
        return f"{self.base_url}/v1/citizens/by-social-insurance/{quote(number, safe='')}"

    def lookup(self, id_number: str) -> Citizen | None:
        """One ``GET``: the :class:`Citizen`, or ``None`` when the database positively has no such ID.

        Raises :class:`PopulationUnavailable` (retry later) or :class:`PopulationError` (permanent);
        ``ValueError`` when ``id_number`` did not pass ``id_format_ok`` (a bug upstream: reconcile checks it).
        """
        if not isinstance(id_number, str) or not id_format_ok(id_number):
            raise ValueError("id_number must pass id_format_ok (12 digits, 9 digits or a passport number)")
        return self._get(self.citizen_url(id_number), "lookup")

    def lookup_by_social_insurance(self, number: str) -> Citizen | None:
        """One ``GET``: the :class:`Citizen` with this social-insurance number, or ``None`` when the database
        positively has no such number. Raises like :meth:`lookup`; ``ValueError`` when ``number`` is not 10 digits.
        """
        if not isinstance(number, str) or not social_insurance_number_ok(number):
            raise ValueError("number must pass social_insurance_number_ok (10 digits)")
        return self._get(self.social_insurance_url(number), "social-insurance lookup")

    def _get(self, url: str, what: str) -> Citizen | None:
        """The one attempt; ``what`` names the lookup in the log (never the number: ``url`` is not logged)."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._api_key is not None:
            headers[API_KEY_HEADER] = self._api_key
        started = time.perf_counter()
        response: requests.Response | None = None
        failure: Exception | None = None
        # The error is built after the except block: raised there, it would carry the requests exception as its
        # __context__, and that exception's message holds the URL, which holds the number.
        try:
            response = self._session.request("GET", url, headers=headers, timeout=self.timeout,
                                             allow_redirects=False)
        except requests.Timeout:
            failure = PopulationUnavailable("population service did not answer in time")
        except _PERMANENT_REQUEST_ERRORS as exc:
            failure = PopulationError(f"population request is invalid ({type(exc).__name__})")
        except requests.RequestException as exc:  # ConnectionError, ChunkedEncodingError, SSLError...
            failure = PopulationUnavailable(f"population service unreachable ({type(exc).__name__})")
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        if response is None:
            log.warning("population: %s failed", what, extra={"status": None, "elapsed_ms": elapsed_ms})
            raise failure if failure is not None else PopulationUnavailable("population service gave no answer")
        log.info("population: %s answered", what, extra={"status": response.status_code, "elapsed_ms": elapsed_ms})
        return _classify(response)


def _json(response: requests.Response) -> Any:
    """The decoded body, or None when it is not JSON (the decode error is dropped: it quotes the body)."""
    try:
        return response.json()
    except ValueError:
        return None


def _classify(response: requests.Response) -> Citizen | None:
    status = response.status_code
    if status == 200:
        return _citizen(_json(response))
    if status == 404:
        body = _json(response)
        if isinstance(body, dict) and body.get("error") == NOT_FOUND_CODE:
            return None
        # Not the service saying "no such citizen" (a wrong path, a proxy): never let it read as UNKNOWN_ID.
        raise PopulationError(f"population service answered 404 without {NOT_FOUND_CODE!r}", status=status)
    if status in _RETRYABLE_STATUS or status >= 500:
        raise PopulationUnavailable(f"population service answered {status}")
    raise PopulationError(f"population service answered {status}", status=status)


def _citizen(body: Any) -> Citizen:
    """A Citizen from a 200 body, checked against the contract; errors name the field, never its value."""
    if not isinstance(body, dict):
        raise PopulationError("population service answered 200 without a JSON object", status=200)
    values: dict[str, str] = {}
    for name in ("id_number", "full_name", "birth", "sex"):
        value = body.get(name)
        if not isinstance(value, str):
            raise PopulationError(f"population answer lacks a string {name!r}", status=200)
        values[name] = value
    if not id_format_ok(values["id_number"]):
        raise PopulationError("population answer has a malformed 'id_number'", status=200)
    if not _BIRTH.fullmatch(values["birth"]):  # a malformed date would turn every claim into BIRTH_MISMATCH
        raise PopulationError("population answer has a malformed 'birth' (yyyyMMdd expected)", status=200)
    if values["sex"] not in _SEXES:
        raise PopulationError("population answer has a malformed 'sex' (1, 2 or 3 expected)", status=200)
    # Optional, unlike the others: "" or absent when the registry has no social-insurance number for the citizen.
    number = body.get("social_insurance_number", "")
    if not isinstance(number, str) or (number and not social_insurance_number_ok(number)):
        raise PopulationError("population answer has a malformed 'social_insurance_number' (10 digits or empty "
                              "expected)", status=200)
    return Citizen(**values, social_insurance_number=number)


