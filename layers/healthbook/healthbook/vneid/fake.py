"""A fake VNeID service for tests and the demo: stdlib only, one ThreadingHTTPServer in a background thread.

Endpoints (see docs/vneid-contract.md):

* ``POST /oauth/token`` - client-credentials grant (HTTP Basic or form fields), issues opaque bearer tokens;
* ``PUT /v1/citizens/{key}/health-book/entries/{visit_id}`` - needs a valid bearer token; honours
  ``Idempotency-Key``; keeps only the newest version per visit, answers 409 to an older one;
* ``GET /v1/citizens/{key}/health-book`` (JSON) and ``.../health-book.html`` (the citizen's view, Vietnamese);
* ``/_admin/*`` - failure injection and counters for tests driven from another process.

Failure injection: :meth:`FakeVneid.fail` (an outage of N seconds: ``5xx``, ``timeout`` or ``slow``),
:meth:`FakeVneid.slow` (every answer late), :meth:`FakeVneid.respond_next` (the next requests get a given status).
Not a security boundary: the read endpoints are open, tokens live in memory. Bind it to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

__all__ = ["FakeVneid", "StoredEntry", "render_health_book_html"]

FailMode = Literal["5xx", "timeout", "slow"]
CITIZEN_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_ENTRY_PATH = re.compile(r"^/v1/citizens/([^/]+)/health-book/entries/([^/]+)$")
_BOOK_PATH = re.compile(r"^/v1/citizens/([^/]+)/health-book(\.html)?$")
_MAX_BODY = 2 * 1024 * 1024


@dataclass(frozen=True)
class StoredEntry:
    citizen_key: str
    visit_id: str
    version: int
    supersedes: Any
    projection_id: str
    receipt_id: str
    stored_at: str
    entry: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "visit_id": self.visit_id,
            "version": self.version,
            "supersedes": self.supersedes,
            "projection_id": self.projection_id,
            "receipt_id": self.receipt_id,
            "stored_at": self.stored_at,
            "entry": self.entry,
        }


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _json_answer(status: int, payload: Any, *headers: tuple[str, str]) -> _Answer:
    return _Answer(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), headers=tuple(headers))


class FakeVneid:
    """In-memory VNeID: ``with FakeVneid.start() as fake: client = VneidClient(fake.url, auth=fake.oauth2())``."""

    def __init__(
        self,
        *,
        client_id: str = "healthbook-test",
        client_secret: str = "test-secret",
        token_ttl: float = 300.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> FakeVneid:
        fake = cls(**kwargs)
        fake._serve(host, port)
        return fake

    def _serve(self, host: str, port: int) -> None:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-vneid",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeVneid is not running")
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    def oauth2(self, scope: str | None = None) -> Any:
        """OAuth2ClientCredentials for this fake (imported lazily: the fake itself is stdlib only)."""
        from healthbook.vneid.client import OAuth2ClientCredentials

        return OAuth2ClientCredentials(self.token_url, self.client_id, self.client_secret, scope)

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers parked in a 'timeout' outage
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeVneid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state and failure injection

    def reset(self) -> None:
        """Forget entries, tokens, idempotency records, counters and injected failures."""
        with self._lock:
            self._books: dict[str, dict[str, StoredEntry]] = {}
            self._idempotency: dict[str, tuple[str, _Answer]] = {}
            self._tokens: dict[str, float] = {}
            self._counts = {"requests": 0, "token_requests": 0, "puts": 0, "deliveries": 0, "replays": 0,
                            "conflicts": 0, "injected_failures": 0}
            self._fail_mode: FailMode | None = None
            self._fail_until = 0.0
            self._fail_delay = 0.0
            self._slow_delay = 0.0
            self._respond_next: list[tuple[int, float | None]] = []

    def fail(self, mode: FailMode = "5xx", seconds: float = 1.0, *, delay: float = 2.0) -> None:
        """An outage of ``seconds``: every request answers 503 (``5xx``), hangs with no answer until the outage
        ends and then drops the connection (``timeout``), or answers correctly after ``delay`` seconds (``slow``)."""
        if mode not in ("5xx", "timeout", "slow"):
            raise ValueError(f"unknown failure mode {mode!r}")
        with self._lock:
            self._fail_mode = mode
            self._fail_until = time.monotonic() + max(0.0, seconds)
            self._fail_delay = delay

    def slow(self, delay: float) -> None:
        """Every answer comes ``delay`` seconds late, until ``slow(0)``."""
        with self._lock:
            self._slow_delay = max(0.0, delay)

    def respond_next(self, status: int, *, times: int = 1, retry_after: float | None = None) -> None:
        """The next ``times`` ``/v1/`` requests answer ``status`` (with ``Retry-After`` when given) and do nothing.

        The token endpoint is not affected: use :meth:`fail` for an outage of everything."""
        with self._lock:
            self._respond_next.extend([(status, retry_after)] * times)

    def revoke_tokens(self) -> None:
        """Every issued token becomes invalid (the next API call gets 401)."""
        with self._lock:
            self._tokens.clear()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def request_count(self) -> int:
        return self.counts()["requests"]

    @property
    def delivery_count(self) -> int:
        """Entries actually stored (replays and conflicts excluded)."""
        return self.counts()["deliveries"]

    def entries(self, citizen_key: str) -> list[dict[str, Any]]:
        """The citizen's current entries (newest version of each visit), newest visit first."""
        with self._lock:
            stored = list(self._books.get(citizen_key, {}).values())
        return [s.as_json() for s in sorted(stored, key=_visit_sort_key, reverse=True)]

    # -- request handling (called from handler threads)

    def _injected(self, path: str) -> tuple[str, float, _Answer | None]:
        """What the failure injection does to this request: (action, delay, answer)."""
        with self._lock:
            delay = self._slow_delay
            if self._fail_mode is not None and time.monotonic() < self._fail_until:
                mode = self._fail_mode
                remaining = self._fail_until - time.monotonic()
                self._counts["injected_failures"] += 1
                if mode == "5xx":
                    return "answer", delay, _json_answer(503, {"error": "service_unavailable"})
                if mode == "timeout":
                    return "hang", remaining, None
                return "answer-late", delay + self._fail_delay, None
            if self._respond_next and path.startswith("/v1/"):
                status, retry_after = self._respond_next.pop(0)
                self._counts["injected_failures"] += 1
                headers = (("Retry-After", f"{retry_after:g}"),) if retry_after is not None else ()
                return "answer", delay, _json_answer(status, {"error": f"injected_{status}"}, *headers)
            return "proceed", delay, None

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _token(self, headers: Mapping[str, str], body: bytes) -> _Answer:
        self._count("token_requests")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return _json_answer(400, {"error": "unsupported_grant_type"})
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = headers.get("Authorization", "")
        if basic.startswith("Basic "):
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode("utf-8").partition(":")
            except ValueError:
                return _json_answer(401, {"error": "invalid_client"})
        if not (secrets.compare_digest(client_id or "", self.client_id)
                and secrets.compare_digest(client_secret or "", self.client_secret)):
            return _json_answer(401, {"error": "invalid_client"}, ("WWW-Authenticate", 'Basic realm="vneid"'))
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl
        payload: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}
        if form.get("scope"):
            payload["scope"] = form["scope"]
        return _json_answer(200, payload, ("Cache-Control", "no-store"))

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        value = headers.get("Authorization", "")
        if not value.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self._tokens.get(value[7:])
        return expiry is not None and time.monotonic() < expiry

    def _put_entry(self, citizen_key: str, visit_id: str, headers: Mapping[str, str], body: bytes) -> _Answer:
        self._count("puts")
        if not self._authorised(headers):
            return _json_answer(401, {"error": "invalid_token"}, ("WWW-Authenticate", 'Bearer error="invalid_token"'))
        if not CITIZEN_KEY.match(citizen_key):
            return _json_answer(400, {"error": "invalid_citizen_key"})
        key = headers.get("Idempotency-Key", "")
        if not key or len(key) > 255:
            return _json_answer(400, {"error": "idempotency_key_required"})
        if not headers.get("Content-Type", "").lower().startswith("application/json"):
            return _json_answer(415, {"error": "unsupported_media_type"})
        try:
            request = json.loads(body)
        except ValueError:
            return _json_answer(400, {"error": "invalid_json"})
        entry = request.get("entry") if isinstance(request, dict) else None
        version = request.get("version") if isinstance(request, dict) else None
        if not isinstance(entry, dict) or not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return _json_answer(400, {"error": "invalid_body"})
        if entry.get("visit_id") != visit_id or entry.get("version") != version:
            return _json_answer(400, {"error": "entry_mismatch"})
        fingerprint = hashlib.sha256(f"{citizen_key}\n{visit_id}\n".encode() + body).hexdigest()

        with self._lock:
            previous = self._idempotency.get(key)
            if previous is not None:
                if previous[0] != fingerprint:
                    return _json_answer(422, {"error": "idempotency_key_reused"})
                self._counts["replays"] += 1
                original = previous[1]
                return _Answer(original.status, original.body, original.content_type,
                               (*original.headers, ("Idempotent-Replayed", "true")))
            book = self._books.setdefault(citizen_key, {})
            current = book.get(visit_id)
            if current is not None and current.version >= version:
                self._counts["conflicts"] += 1
                code = "newer_version_exists" if current.version > version else "version_exists"
                answer = _json_answer(409, {"error": code, "current_version": current.version})
            else:
                stored = StoredEntry(
                    citizen_key=citizen_key, visit_id=visit_id, version=version,
                    supersedes=request.get("supersedes"), projection_id=key, receipt_id=str(uuid.uuid4()),
                    stored_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), entry=entry,
                )
                book[visit_id] = stored
                self._counts["deliveries"] += 1
                answer = _json_answer(
                    201 if current is None else 200,
                    {"receipt_id": stored.receipt_id, "visit_id": visit_id, "version": version,
                     "replaced_version": current.version if current else None},
                )
            self._idempotency[key] = (fingerprint, answer)
            return answer

    def _book(self, citizen_key: str, as_html: bool) -> _Answer:
        entries = self.entries(citizen_key)
        if as_html:
            return _Answer(200, render_health_book_html(citizen_key, entries).encode("utf-8"),
                           "text/html; charset=utf-8")
        return _json_answer(200, {"citizen_key": citizen_key, "entries": entries})

    def _admin(self, path: str, body: bytes) -> _Answer:
        try:
            args = json.loads(body) if body else {}
            if not isinstance(args, dict):
                raise ValueError
            if path == "/_admin/fail":
                self.fail(args.get("mode", "5xx"), float(args.get("seconds", 1.0)),
                          delay=float(args.get("delay", 2.0)))
            elif path == "/_admin/slow":
                self.slow(float(args.get("delay", 0.0)))
            elif path == "/_admin/respond-next":
                retry_after = args.get("retry_after")
                self.respond_next(int(args["status"]), times=int(args.get("times", 1)),
                                  retry_after=None if retry_after is None else float(retry_after))
            elif path == "/_admin/revoke-tokens":
                self.revoke_tokens()
            elif path == "/_admin/reset":
                self.reset()
            elif path != "/_admin/stats":
                return _json_answer(404, {"error": "not_found"})
        except (ValueError, KeyError, TypeError):
            return _json_answer(400, {"error": "invalid_admin_request"})
        return _json_answer(200, self.counts())


class _Handler(BaseHTTPRequestHandler):
    fake: FakeVneid
    protocol_version = "HTTP/1.1"
    server_version = "FakeVNeID/1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and demo print their own summaries; and never log request bodies

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        fake = self.fake
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_body()
        except ValueError:
            self._send(_json_answer(413, {"error": "too_large"}))
            return
        if path.startswith("/_admin/"):
            self._send(fake._admin(path, body) if method == "POST" or path == "/_admin/stats"
                       else _json_answer(405, {"error": "method_not_allowed"}))
            return
        fake._count("requests")
        action, delay, answer = fake._injected(path)
        if action == "hang":
            fake._stopping.wait(delay)
            self.close_connection = True  # no answer at all: the client sees a read timeout or a dropped socket
            return
        if delay > 0:
            fake._stopping.wait(delay)
        if answer is None:
            answer = self._route(method, path, body)
        self._send(answer)

    def _route(self, method: str, path: str, body: bytes) -> _Answer:
        fake = self.fake
        headers = {k: v for k, v in self.headers.items()}
        if path == "/oauth/token":
            return fake._token(headers, body) if method == "POST" else _json_answer(405, {"error": "method"})
        match = _ENTRY_PATH.match(path)
        if match:
            if method != "PUT":
                return _json_answer(405, {"error": "method_not_allowed"})
            return fake._put_entry(unquote(match[1]), unquote(match[2]), headers, body)
        match = _BOOK_PATH.match(path)
        if match and method == "GET":
            return fake._book(unquote(match[1]), as_html=bool(match[2]))
        return _json_answer(404, {"error": "not_found"})

    def _send(self, answer: _Answer) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# ------------------------------------------------------------------------------------------------- HTML view
# The entry layout belongs to healthbook.projection; this view reads it tolerantly (several spellings, any
# missing part simply not shown) so it keeps working while that contract settles.


def _first(mapping: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = mapping.get(name)
        if value not in (None, "", [], {}):
            return value
    return None


def _label(value: Any) -> str:
    """A readable one-line label for a code/name dict, a string or a number."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        code = _first(value, "code", "ma", "id")
        name = _first(value, "name", "ten", "display", "label", "title", "text")
        parts = [str(p) for p in (code, name) if p is not None]
        if parts:
            return " - ".join(parts)
        return ", ".join(f"{k}: {_label(v)}" for k, v in value.items() if not isinstance(v, Mapping | list))
    if isinstance(value, list):
        return ", ".join(_label(v) for v in value)
    return str(value)


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _drug_line(drug: Any) -> str:
    if not isinstance(drug, Mapping):
        return _label(drug)
    name = _label(_first(drug, "name", "ten_thuoc", "drug", "display")) or _label(drug)
    extra = [_label(drug[k]) for k in ("strength", "ham_luong", "dose", "lieu_dung", "quantity", "so_luong", "unit",
                                       "don_vi", "route", "duong_dung") if drug.get(k) not in (None, "")]
    return name + (f" ({'; '.join(extra)})" if extra else "")


def _result_line(result: Any) -> str:
    if not isinstance(result, Mapping):
        return _label(result)
    name = _label(_first(result, "name", "test", "ten_chi_so", "display", "code"))
    value = _label(_first(result, "value", "gia_tri", "result"))
    unit = _label(_first(result, "unit", "don_vi_do"))
    flag = _label(_first(result, "flag", "interpretation"))
    line = f"{name}: {value} {unit}".strip() if value else name
    return f"{line} [{flag}]" if flag else line


def _visit_dates(entry: Mapping[str, Any]) -> tuple[str, str]:
    period = entry.get("period")
    start = _first(entry, "admitted_at", "start", "visit_date", "date", "ngay_vao")
    end = _first(entry, "discharged_at", "end", "ngay_ra")
    if isinstance(period, Mapping):
        start = start or _first(period, "start", "from", "admitted_at")
        end = end or _first(period, "end", "to", "discharged_at")
    return (str(start) if start else "", str(end) if end else "")


def _visit_sort_key(stored: StoredEntry) -> tuple[str, str]:
    return (_visit_dates(stored.entry)[0], stored.stored_at)


def render_health_book_html(citizen_key: str, entries: list[dict[str, Any]]) -> str:
    """The citizen's view of their health book: visits newest first; every value escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="vi"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Sổ sức khỏe điện tử</title>",
        "<style>body{font-family:sans-serif;max-width:46em;margin:1em auto;padding:0 1em;color:#222}"
        "section{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:1em 0}"
        "h2{font-size:1.1em;margin:.3em 0}dt{font-weight:bold;margin-top:.4em}.muted{color:#666;font-size:.9em}"
        "</style></head><body>",
        "<h1>Sổ sức khỏe điện tử</h1>",
        f'<p class="muted">Mã công dân (ẩn danh): {e(citizen_key)}</p>',
    ]
    if not entries:
        parts.append("<p>Chưa có lượt khám chữa bệnh nào.</p>")
    for stored in entries:
        entry = stored.get("entry") or {}
        if not isinstance(entry, Mapping):
            entry = {}
        facility = _label(_first(entry, "facility", "co_so", "facility_name")) or "Cơ sở khám chữa bệnh"
        start, end = _visit_dates(entry)
        parts.append("<section>")
        parts.append(f"<h2>{e(facility)}</h2>")
        when = f"Ngày vào: {e(start) or '—'}" + (f" · Ngày ra: {e(end)}" if end else "")
        parts.append(f'<p class="muted">{when} · Phiên bản {e(str(stored.get("version", "")))}</p>')
        parts.append("<dl>")
        sections = (
            ("Chẩn đoán", _items(_first(entry, "diagnoses", "diagnosis", "chan_doan")), _label),
            ("Thuốc", _items(_first(entry, "drugs", "medications", "medicines", "thuoc")), _drug_line),
            ("Kết quả cận lâm sàng", _items(_first(entry, "results", "lab_results", "tests", "can_lam_sang")),
             _result_line),
        )
        for title, items, render in sections:
            if not items:
                continue
            parts.append(f"<dt>{e(title)}</dt>")
            parts.append("<dd><ul>" + "".join(f"<li>{e(render(item))}</li>" for item in items) + "</ul></dd>")
        parts.append("</dl></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def iter_entries(fake: FakeVneid, citizen_key: str) -> Iterator[dict[str, Any]]:
    """The stored entry bodies only (convenience for the demo)."""
    for stored in fake.entries(citizen_key):
        yield stored["entry"]
