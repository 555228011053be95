"""A fake VNeID service for tests and the demo: stdlib only, one ThreadingHTTPServer in a background thread (the
plumbing is :mod:`healthbook_dev.fakes.service`'s).

Endpoints (see docs/vneid-contract.md):

* ``POST /oauth/token`` - client-credentials grant (HTTP Basic or form fields), issues opaque bearer tokens;
* ``PUT /v1/citizens/{key}/health-book/entries/{visit_id}`` - needs a valid bearer token; honours
  ``Idempotency-Key``; keeps only the newest version per visit, answers 409 to an older one;
* ``PUT /v1/citizens/{key}/health-book/profile`` and ``.../health-book/vaccinations/{record_id}`` - the
  administrative section and one vaccination entry from a province's lists: 201 created, 200 updated, 200
  ``{"unchanged": true}`` for the body already held (the Idempotency-Key must be the body's SHA-256);
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
import importlib.util
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

from healthbook_dev.fakes.service import Answer, FakeService, json_answer

__all__ = ["FIELD_LABELS", "GROUP_HEADINGS", "ITEM_TITLES", "PROFILE_LABELS", "FakeVneid", "StoredEntry",
           "StoredRecord", "entry_mapping", "render_health_book_html", "vaccine_names"]

FailMode = Literal["5xx", "timeout", "slow"]
CITIZEN_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_ENTRY_PATH = re.compile(r"^/v1/citizens/([^/]+)/health-book/entries/([^/]+)$")
_BOOK_PATH = re.compile(r"^/v1/citizens/([^/]+)/health-book(\.html)?$")
_PROFILE_PATH = re.compile(r"^/v1/citizens/([^/]+)/health-book/profile$")
_VACCINATION_PATH = re.compile(r"^/v1/citizens/([^/]+)/health-book/vaccinations/([^/]+)$")
RECORD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


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
class StoredRecord:
    """A profile (``record_id`` None) or a vaccination entry as stored: the body's part, and its key."""

    citizen_key: str
    record_id: str | None
    idempotency_key: str
    receipt_id: str
    stored_at: str
    body: dict[str, Any]


class FakeVneid(FakeService):
    """In-memory VNeID: ``with FakeVneid.start() as fake: client = VneidClient(fake.url, auth=fake.oauth2())``."""

    _server_version = "FakeVNeID/1"
    _thread_name = "fake-vneid"
    _max_body = 2 * 1024 * 1024
    _methods = ("GET", "POST", "PUT")
    _fail_modes = ("5xx", "timeout", "slow")
    _counters = ("token_requests", "puts", "deliveries", "replays", "conflicts",
                 "profile_puts", "profiles_created", "profiles_updated", "profiles_unchanged",
                 "vaccination_puts", "vaccinations_created", "vaccinations_updated", "vaccinations_unchanged")

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
        super().__init__()

    # -- lifecycle

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> FakeVneid:
        fake = cls(**kwargs)
        fake._serve(host, port)
        return fake

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    def oauth2(self, scope: str | None = None) -> Any:
        """OAuth2ClientCredentials for this fake (imported lazily: the fake itself is stdlib only)."""
        from healthbook.vneid.client import OAuth2ClientCredentials

        return OAuth2ClientCredentials(self.token_url, self.client_id, self.client_secret, scope)

    # -- state and failure injection

    def reset(self) -> None:
        """Forget entries, tokens, idempotency records, counters and injected failures."""
        with self._lock:
            super().reset()
            self._books: dict[str, dict[str, StoredEntry]] = {}
            self._idempotency: dict[str, tuple[str, Answer]] = {}
            self._profiles: dict[str, StoredRecord] = {}
            self._vaccinations: dict[str, dict[str, StoredRecord]] = {}
            self._tokens: dict[str, float] = {}
            self._fail_delay = 0.0
            self._slow_delay = 0.0
            self._respond_next: list[tuple[int, float | None]] = []

    def fail(self, mode: FailMode = "5xx", seconds: float = 1.0, *, delay: float = 2.0) -> None:
        """An outage of ``seconds``: every request answers 503 (``5xx``), hangs with no answer until the outage
        ends and then drops the connection (``timeout``), or answers correctly after ``delay`` seconds (``slow``)."""
        with self._lock:
            self._begin_outage(mode, seconds)
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
        # reversed: among equal keys (no admission date, stored in the same second) the later-stored comes first
        return [s.as_json() for s in sorted(reversed(stored), key=_visit_sort_key, reverse=True)]

    def profile(self, citizen_key: str) -> dict[str, Any] | None:
        """The citizen's administrative section as stored (the PUT's ``profile``), or None."""
        with self._lock:
            stored = self._profiles.get(citizen_key)
        return dict(stored.body) if stored is not None else None

    def vaccinations(self, citizen_key: str) -> list[dict[str, Any]]:
        """The citizen's vaccination entries (each the PUT's ``vaccination`` with its ``record_id``), by date, then
        vaccine code and dose."""
        with self._lock:
            stored = list(self._vaccinations.get(citizen_key, {}).values())
        records = [{"record_id": s.record_id, **s.body} for s in stored]
        return sorted(records, key=_vaccination_sort_key)

    # -- request handling (called from handler threads)

    def _injected(self, path: str) -> tuple[str, float, Answer | None]:
        with self._lock:
            action, delay, answer = super()._injected(path)
            if action == "proceed" and self._respond_next and path.startswith("/v1/"):
                status, retry_after = self._respond_next.pop(0)
                self._counts["injected_failures"] += 1
                headers = (("Retry-After", f"{retry_after:g}"),) if retry_after is not None else ()
                action, answer = "answer", json_answer(status, {"error": f"injected_{status}"}, *headers)
            return action, delay if action == "hang" else delay + self._slow_delay, answer

    def _outage(self, mode: str, remaining: float) -> tuple[str, float, Answer | None]:
        if mode == "slow":
            return "answer-late", self._fail_delay, None
        return super()._outage(mode, remaining)

    def _route(self, method: str, path: str, headers: Message, body: bytes) -> Answer:
        fields = dict(headers.items())
        if path == "/oauth/token":
            return self._token(fields, body) if method == "POST" else json_answer(405, {"error": "method"})
        match = _ENTRY_PATH.match(path)
        if match:
            if method != "PUT":
                return json_answer(405, {"error": "method_not_allowed"})
            return self._put_entry(unquote(match[1]), unquote(match[2]), fields, body)
        match = _PROFILE_PATH.match(path) or _VACCINATION_PATH.match(path)
        if match:
            if method != "PUT":
                return json_answer(405, {"error": "method_not_allowed"})
            record_id = unquote(match[2]) if match.re is _VACCINATION_PATH else None
            return self._put_record(unquote(match[1]), record_id, fields, body)
        match = _BOOK_PATH.match(path)
        if match and method == "GET":
            return self._book(unquote(match[1]), as_html=bool(match[2]))
        return json_answer(404, {"error": "not_found"})

    def _token(self, headers: Mapping[str, str], body: bytes) -> Answer:
        self._count("token_requests")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return json_answer(400, {"error": "unsupported_grant_type"})
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = headers.get("Authorization", "")
        if basic.startswith("Basic "):
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode("utf-8").partition(":")
            except ValueError:
                return json_answer(401, {"error": "invalid_client"})
        if not (secrets.compare_digest(client_id or "", self.client_id)
                and secrets.compare_digest(client_secret or "", self.client_secret)):
            return json_answer(401, {"error": "invalid_client"}, ("WWW-Authenticate", 'Basic realm="vneid"'))
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl
        payload: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}
        if form.get("scope"):
            payload["scope"] = form["scope"]
        return json_answer(200, payload, ("Cache-Control", "no-store"))

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        value = headers.get("Authorization", "")
        if not value.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self._tokens.get(value[7:])
        return expiry is not None and time.monotonic() < expiry

    def _refused(self, headers: Mapping[str, str], citizen_key: str) -> Answer | None:
        """What every write answers first: a missing or bad token (401), a malformed citizen key (400)."""
        if not self._authorised(headers):
            return json_answer(401, {"error": "invalid_token"}, ("WWW-Authenticate", 'Bearer error="invalid_token"'))
        if not CITIZEN_KEY.match(citizen_key):
            return json_answer(400, {"error": "invalid_citizen_key"})
        return None

    def _put_entry(self, citizen_key: str, visit_id: str, headers: Mapping[str, str], body: bytes) -> Answer:
        self._count("puts")
        refused = self._refused(headers, citizen_key)
        if refused is not None:
            return refused
        key = headers.get("Idempotency-Key", "")
        if not key or len(key) > 255:
            return json_answer(400, {"error": "idempotency_key_required"})
        request = _json_body(headers, body)
        if isinstance(request, Answer):
            return request
        entry = request.get("entry") if isinstance(request, dict) else None
        version = request.get("version") if isinstance(request, dict) else None
        if not isinstance(entry, dict) or not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return json_answer(400, {"error": "invalid_body"})
        if entry.get("visit_id") != visit_id or entry.get("version") != version:
            return json_answer(400, {"error": "entry_mismatch"})
        fingerprint = hashlib.sha256(f"{citizen_key}\n{visit_id}\n".encode() + body).hexdigest()

        with self._lock:
            previous = self._idempotency.get(key)
            if previous is not None:
                if previous[0] != fingerprint:
                    return json_answer(422, {"error": "idempotency_key_reused"})
                self._counts["replays"] += 1
                original = previous[1]
                return Answer(original.status, original.body, original.content_type,
                              (*original.headers, ("Idempotent-Replayed", "true")))
            book = self._books.setdefault(citizen_key, {})
            current = book.get(visit_id)
            if current is not None and current.version >= version:
                self._counts["conflicts"] += 1
                code = "newer_version_exists" if current.version > version else "version_exists"
                answer = json_answer(409, {"error": code, "current_version": current.version})
            else:
                stored = StoredEntry(
                    citizen_key=citizen_key, visit_id=visit_id, version=version,
                    supersedes=request.get("supersedes"), projection_id=key, receipt_id=str(uuid.uuid4()),
                    stored_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), entry=entry,
                )
                book[visit_id] = stored
                self._counts["deliveries"] += 1
                answer = json_answer(
                    201 if current is None else 200,
                    {"receipt_id": stored.receipt_id, "visit_id": visit_id, "version": version,
                     "replaced_version": current.version if current else None},
                )
            self._idempotency[key] = (fingerprint, answer)
            return answer

    def _put_record(self, citizen_key: str, record_id: str | None, headers: Mapping[str, str],
                    body: bytes) -> Answer:
        """The profile (``record_id`` None) or one vaccination entry: docs/vneid-contract.md "Profile and
        vaccinations". The stored body is compared through its SHA-256, which the client sends as the key."""
        what = "profile" if record_id is None else "vaccination"
        self._count(f"{what}_puts")
        refused = self._refused(headers, citizen_key)
        if refused is not None:
            return refused
        if record_id is not None and not RECORD_ID.match(record_id):
            return json_answer(400, {"error": "invalid_record_id"})
        key = headers.get("Idempotency-Key", "")
        if not key:
            return json_answer(400, {"error": "idempotency_key_required"})
        if key != hashlib.sha256(body).hexdigest():
            return json_answer(400, {"error": "idempotency_key_mismatch"})
        request = _json_body(headers, body)
        if isinstance(request, Answer):
            return request
        part = request.get(what) if isinstance(request, dict) else None
        if not isinstance(part, dict):
            return json_answer(400, {"error": "invalid_body"})
        if request.get("citizen_key") != citizen_key or (
                record_id is not None and request.get("record_id") != record_id):
            return json_answer(400, {"error": "entry_mismatch"})
        plural = "profiles" if record_id is None else "vaccinations"
        with self._lock:
            book = self._vaccinations.setdefault(citizen_key, {}) if record_id is not None else None
            current = self._profiles.get(citizen_key) if book is None else book.get(record_id or "")
            if current is not None and current.idempotency_key == key:
                self._counts[f"{plural}_unchanged"] += 1
                return json_answer(200, {"unchanged": True, "result": "unchanged", "receipt_id": current.receipt_id})
            stored = StoredRecord(citizen_key=citizen_key, record_id=record_id, idempotency_key=key,
                                  receipt_id=str(uuid.uuid4()),
                                  stored_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), body=part)
            if book is None:
                self._profiles[citizen_key] = stored
            else:
                book[record_id or ""] = stored
            result = "created" if current is None else "updated"
            self._counts[f"{plural}_{result}"] += 1
        return json_answer(201 if current is None else 200, {"result": result, "receipt_id": stored.receipt_id})

    def _book(self, citizen_key: str, as_html: bool) -> Answer:
        entries = self.entries(citizen_key)
        profile, vaccinations = self.profile(citizen_key), self.vaccinations(citizen_key)
        if as_html:
            page = render_health_book_html(citizen_key, entries, profile=profile, vaccinations=vaccinations)
            return Answer(200, page.encode("utf-8"), "text/html; charset=utf-8")
        return json_answer(200, {"citizen_key": citizen_key, "entries": entries, "profile": profile,
                                 "vaccinations": vaccinations})

    def _admin_action(self, path: str, args: dict[str, Any]) -> bool:
        if path == "/_admin/fail":
            self.fail(args.get("mode", "5xx"), float(args.get("seconds", 1.0)), delay=float(args.get("delay", 2.0)))
        elif path == "/_admin/slow":
            self.slow(float(args.get("delay", 0.0)))
        elif path == "/_admin/respond-next":
            retry_after = args.get("retry_after")
            self.respond_next(int(args["status"]), times=int(args.get("times", 1)),
                              retry_after=None if retry_after is None else float(retry_after))
        elif path == "/_admin/revoke-tokens":
            self.revoke_tokens()
        else:
            return super()._admin_action(path, args)
        return True


# ------------------------------------------------------------------------------------------------- HTML view
# Renders the projection's entry (schema healthbook-entry/2, docs/health-book.md) by the names of
# healthbook/projection/mapping.json: its groups in order, each group's fields in order, each value formatted by
# the field's transform. The mapping is read as a file, not through healthbook.projection, so the fake stays
# stdlib only. Keys the mapping does not name are still shown, under their own name: nothing is silently hidden.

def _json_body(headers: Mapping[str, str], body: bytes) -> Any:
    """A write's JSON body, or the answer refusing it: not JSON by its Content-Type (415) or by its bytes (400)."""
    if not headers.get("Content-Type", "").lower().startswith("application/json"):
        return json_answer(415, {"error": "unsupported_media_type"})
    try:
        return json.loads(body)
    except ValueError:
        return json_answer(400, {"error": "invalid_json"})


def _mapping_file() -> Path:
    # find_spec locates healthbook.projection without importing it (nor the standard it loads)
    spec = importlib.util.find_spec("healthbook.projection")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the healthbook package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "mapping.json"


_MAPPING_FILE = _mapping_file()
#: transforms whose value is {code, label, label_en} (mapping.json "transforms")
_NAMED_TRANSFORMS = frozenset({"code", "occupation", "province", "commune"})

#: group -> (Vietnamese heading, English subtitle)
GROUP_HEADINGS: dict[str, tuple[str, str]] = {
    "citizen": ("Thông tin hành chính", "Administrative details"),
    "visit": ("Thông tin lần khám bệnh, chữa bệnh", "The visit"),
    "diagnoses": ("Chẩn đoán", "Diagnoses (ICD-10), main first"),
    "drugs": ("Thuốc", "Medicines"),
    "services": ("Dịch vụ kỹ thuật, thủ thuật, vật tư", "Services, procedures and supplies"),
    "results": ("Kết quả cận lâm sàng", "Test and imaging results"),
    "discharge_summary": ("Giấy ra viện / tóm tắt hồ sơ bệnh án", "Discharge summary"),
    "referral": ("Giấy chuyển tuyến", "Referral"),
    "reexam": ("Giấy hẹn khám lại", "Re-examination appointment"),
}

#: group -> field (the mapping's output name) -> Vietnamese label
FIELD_LABELS: dict[str, dict[str, str]] = {
    "citizen": {
        "name": "Họ và tên", "birth_date": "Ngày sinh", "sex": "Giới tính", "ethnicity": "Dân tộc",
        "nationality": "Quốc tịch", "occupation": "Nghề nghiệp", "id_number": "Số định danh cá nhân",
        "phone": "Điện thoại", "insurance_cards": "Thẻ BHYT", "registered_facilities": "Nơi đăng ký KCB ban đầu",
        "card_valid_from": "Thẻ có giá trị từ", "card_valid_to": "Thẻ có giá trị đến", "address": "Địa chỉ",
        "province": "Tỉnh/thành phố", "district": "Quận/huyện (mã)", "commune": "Xã/phường",
    },
    "visit": {
        "facility": "Cơ sở khám chữa bệnh (mã)", "department": "Khoa (mã)", "record_number": "Số hồ sơ bệnh án",
        "admitted_at": "Ngày vào", "inpatient_admitted_at": "Ngày vào nội trú", "discharged_at": "Ngày ra",
        "visit_type": "Hình thức khám chữa bệnh", "reason": "Lý do vào viện",
        "admission_diagnosis_text": "Chẩn đoán vào viện", "discharge_diagnosis_text": "Chẩn đoán ra viện",
        "treatment": "Phương pháp điều trị", "treatment_days": "Số ngày điều trị", "result": "Kết quả điều trị",
        "discharge_type": "Hình thức ra viện", "blood_group": "Nhóm máu", "weight_kg": "Cân nặng (kg)",
        "reexam_dates": "Ngày tái khám",
    },
    "diagnoses": {},  # items are {code, name, main}: rendered as "code – name"
    "drugs": {
        "code": "Mã thuốc", "name": "Tên thuốc", "strength": "Hàm lượng", "form": "Dạng bào chế",
        "route": "Đường dùng", "dosage": "Liều dùng", "instructions": "Cách dùng", "unit": "Đơn vị tính",
        "quantity": "Số lượng", "group": "Nhóm", "registration_number": "Số đăng ký", "ordered_at": "Ngày y lệnh",
        "given_at": "Ngày thực hiện",
    },
    "services": {
        "code": "Mã dịch vụ", "name": "Tên dịch vụ", "supply_code": "Mã vật tư", "supply_name": "Tên vật tư",
        "procedure_codes": "Mã phẫu thuật, thủ thuật", "group": "Nhóm", "unit": "Đơn vị tính",
        "quantity": "Số lượng", "diagnoses": "Mã bệnh", "ordered_at": "Ngày y lệnh",
        "performed_at": "Ngày thực hiện", "result_at": "Ngày có kết quả",
    },
    "results": {
        "service_code": "Mã dịch vụ", "indicator_code": "Mã chỉ số", "indicator_name": "Tên chỉ số",
        "value": "Giá trị", "unit": "Đơn vị đo", "description": "Mô tả", "conclusion": "Kết luận",
        "reported_at": "Ngày có kết quả",
    },
    "discharge_summary": {
        "visit_type": "Hình thức khám chữa bệnh", "admitted_at": "Ngày vào", "discharged_at": "Ngày ra",
        "admission_diagnosis_text": "Chẩn đoán vào viện", "discharge_diagnosis_text": "Chẩn đoán ra viện",
        "course": "Quá trình bệnh lý và diễn biến lâm sàng", "key_results": "Tóm tắt kết quả cận lâm sàng",
        "treatment": "Phương pháp điều trị", "result": "Kết quả điều trị", "note": "Ghi chú",
        "issued_on": "Ngày cấp",
    },
    "referral": {
        "number": "Số chuyển tuyến", "record_number": "Số hồ sơ", "paper": "Số giấy chuyển tuyến",
        "facility": "Cơ sở khám chữa bệnh (mã)", "from_facility": "Nơi chuyển đi (mã)",
        "to_facility": "Nơi chuyển đến (mã)", "admitted_at": "Ngày vào", "discharged_at": "Ngày ra",
        "clinical_signs": "Dấu hiệu lâm sàng", "diagnosis_text": "Chẩn đoán", "main_diagnoses": "Bệnh chính",
        "secondary_diagnoses": "Bệnh kèm theo", "course": "Quá trình bệnh lý và diễn biến lâm sàng",
        "key_results": "Tóm tắt kết quả cận lâm sàng", "treatment": "Phương pháp điều trị",
        "services_given": "Dịch vụ đã thực hiện", "drugs_given": "Thuốc đã dùng",
        "discharge_type": "Hình thức ra viện", "reason": "Lý do chuyển tuyến", "direction": "Hướng điều trị",
        "transport": "Phương tiện vận chuyển",
    },
    "reexam": {
        "number": "Số giấy hẹn khám lại", "facility": "Cơ sở khám chữa bệnh (mã)",
        "appointment_at": "Ngày hẹn khám lại", "diagnosis_text": "Chẩn đoán", "main_diagnoses": "Bệnh chính",
        "secondary_diagnoses": "Bệnh kèm theo", "issued_on": "Ngày cấp",
    },
}

#: list groups: the field that names an item (the first one present), shown first and in bold
ITEM_TITLES: dict[str, tuple[str, ...]] = {
    "drugs": ("name",),
    "services": ("name", "supply_name"),
    "results": ("indicator_name",),
}


#: the administrative section's fields (a participant list's profile): the entry's citizen labels, and its own
PROFILE_LABELS: dict[str, str] = {**FIELD_LABELS["citizen"], "social_insurance_number": "Mã số BHXH"}
_PROFILE_HIDDEN = frozenset({"schema"})
_VACCINATION_COLUMNS = ("Ngày tiêm", "Vắc xin", "Mũi thứ", "Cơ sở tiêm chủng (mã)", "Số lô")


@cache
def vaccine_names() -> dict[str, str]:
    """Vaccine code -> Vietnamese name, from healthbook/standard/data/vaccines.json (read as a file: the fake stays
    stdlib only)."""
    spec = importlib.util.find_spec("healthbook.standard")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the healthbook package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "vaccines.json"
    return {v["code"]: v["name_vi"] for v in json.loads(path.read_text(encoding="utf-8"))["vaccines"]}


def _vaccination_sort_key(record: Mapping[str, Any]) -> tuple[str, str, int]:
    vaccine = record.get("vaccine")
    code = vaccine.get("code") if isinstance(vaccine, Mapping) else None
    dose = record.get("dose_number")
    return (str(record.get("date") or ""), str(code or ""), dose if isinstance(dose, int) else 0)


@cache
def entry_mapping() -> dict[str, Any]:
    """``groups`` of healthbook/projection/mapping.json (group -> {kind, fields: {name: {transform, ...}}})."""
    groups: dict[str, Any] = json.loads(_MAPPING_FILE.read_text(encoding="utf-8"))["groups"]
    return groups


def _empty(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_empty(v) for v in value.values())
    return value is None or value == "" or value == []


def _when(value: str, *, with_time: bool) -> str:
    """ISO 8601 (the projection's timestamp/date) as the Vietnamese dd/mm/yyyy [HH:MM]; unreadable: as is."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%d/%m/%Y %H:%M" if with_time else "%d/%m/%Y")


def _number(value: int | float) -> str:
    return str(value).replace(".", ",")  # Vietnamese decimal comma


def _icd(item: Any) -> str:
    """An ``icd10_list`` item (and a diagnosis): ``{code, name}`` as "code – name"."""
    if not isinstance(item, Mapping):
        return _text(item)
    code, name = _text(item.get("code")), _text(item.get("name"))
    return f"{code} – {name}" if code and name else code or name


def _named(value: Mapping[str, Any]) -> str:
    """A coded value by its Vietnamese name; a code the lists do not name is shown as "mã <code>"."""
    label, code = _text(value.get("label")), _text(value.get("code"))
    return label or (f"mã {code}" if code else "")


def _text(value: Any) -> str:
    """Any JSON value as one line (for values the mapping does not describe)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "có" if value else "không"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list):
        return "; ".join(t for t in (_text(v) for v in value) if t)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items() if not _empty(v))
    return str(value)


def _format(spec: Mapping[str, Any] | None, value: Any) -> str:
    """A field's value as text, by its mapping transform (see mapping.json "transforms")."""
    transform = spec.get("transform") if spec else None
    if transform in ("timestamp", "date") and isinstance(value, str):
        return _when(value, with_time=transform == "timestamp")
    if transform == "date_list" and isinstance(value, list):
        return ", ".join(_when(v, with_time=False) if isinstance(v, str) else _text(v) for v in value)
    if transform in _NAMED_TRANSFORMS and isinstance(value, Mapping):
        return _named(value)
    if transform == "icd10_list" and isinstance(value, list):
        return "; ".join(_icd(v) for v in value)
    return _text(value)


def _fields(group: str, value: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(name, label, text) of the non-empty fields: the mapping's in its order, then any others."""
    specs: Mapping[str, Any] = entry_mapping().get(group, {}).get("fields", {})
    labels = FIELD_LABELS.get(group, {})
    names = [n for n in specs if n in value] + [n for n in value if n not in specs]
    out = []
    for name in names:
        text = _format(specs.get(name), value[name])
        if text:
            out.append((name, labels.get(name, name), text))
    return out


def _render_group(group: str, kind: str, value: Any) -> str:
    """The HTML of one group's body (everything escaped)."""
    e = html.escape
    if kind == "diagnoses" and isinstance(value, list):
        items = [e(_icd(d)) + (" <small>(bệnh chính)</small>" if isinstance(d, Mapping) and d.get("main") is True
                               else "") for d in value if not _empty(d)]
        return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"
    if kind == "list" and isinstance(value, list):
        lines = []
        for item in value:
            if not isinstance(item, Mapping):
                lines.append(e(_text(item)))
                continue
            fields = _fields(group, item)
            title = next((text for name, _, text in fields if name in ITEM_TITLES.get(group, ())), "")
            details = " · ".join(f"{e(label)}: {e(text)}" for _, label, text in fields if text != title)
            lines.append(f"<strong>{e(title)}</strong>" + (f" — {details}" if title and details else details))
        return "<ul>" + "".join(f"<li>{line}</li>" for line in lines if line) + "</ul>"
    if isinstance(value, Mapping):
        rows = "".join(f"<dt>{e(label)}</dt><dd>{e(text)}</dd>" for _, label, text in _fields(group, value))
        return f"<dl>{rows}</dl>"
    return f"<p>{e(_text(value))}</p>"


def _partial_date(value: Any) -> str:
    """An ISO date, possibly partial (1990, 1990-05), the Vietnamese way: 17/05/1990, 05/1990, 1990."""
    text = _text(value)
    if re.fullmatch(r"[0-9]{4}", text):
        return text
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}", text):
        return f"{text[5:7]}/{text[:4]}"
    return _when(text, with_time=False)


def _render_profile(profile: Mapping[str, Any]) -> str:
    """The administrative section: its fields labelled in Vietnamese, in the entry's citizen order."""
    e = html.escape
    specs: Mapping[str, Any] = entry_mapping().get("citizen", {}).get("fields", {})
    names = [n for n in PROFILE_LABELS if n in profile] + [n for n in profile if n not in PROFILE_LABELS]
    rows = []
    for name in names:
        value = profile[name]
        if name in _PROFILE_HIDDEN or _empty(value):
            continue
        text = _partial_date(value) if name == "birth_date" else _format(specs.get(name), value)
        if text:
            rows.append(f"<dt>{e(PROFILE_LABELS.get(name, name))}</dt><dd>{e(text)}</dd>")
    return f"<dl>{''.join(rows)}</dl>"


def _vaccine_name(vaccine: Any) -> str:
    """The vaccine by the code list's name; an unlisted code by the name the province gave, and its code."""
    if not isinstance(vaccine, Mapping):
        return _text(vaccine)
    code, label = _text(vaccine.get("code")), _text(vaccine.get("label"))
    listed = vaccine_names().get(code)
    if listed:
        return listed
    return f"{label} (mã {code}, ngoài danh mục)" if label else f"mã {code} (ngoài danh mục)"


def _render_vaccinations(vaccinations: list[dict[str, Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in _VACCINATION_COLUMNS)
    rows = []
    for record in vaccinations:
        facility = record.get("facility")
        cells = (_partial_date(record.get("date")), _vaccine_name(record.get("vaccine")),
                 _text(record.get("dose_number")),
                 _text(facility.get("code") if isinstance(facility, Mapping) else facility),
                 _text(record.get("lot_number")))
        rows.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _visit_sort_key(stored: StoredEntry) -> tuple[str, str]:
    visit = stored.entry.get("visit")
    admitted = visit.get("admitted_at") if isinstance(visit, Mapping) else None
    return (admitted if isinstance(admitted, str) else "", stored.stored_at)


def render_health_book_html(citizen_key: str, entries: list[dict[str, Any]], *,
                            profile: Mapping[str, Any] | None = None,
                            vaccinations: list[dict[str, Any]] | None = None) -> str:
    """The citizen's view of their health book: the administrative section and the vaccination history when
    there are any (from a province's lists), then visits in the given order (newest first), each group of the
    entry that has content under a Vietnamese heading with an English subtitle; every value escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="vi"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Sổ sức khỏe điện tử</title>",
        "<style>body{font-family:sans-serif;max-width:50em;margin:1em auto;padding:0 1em;color:#222}"
        "section{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:1em 0}"
        "h2{font-size:1.15em;margin:.3em 0}h3{font-size:1em;margin:.9em 0 .2em}"
        "h3 small{display:block;font-weight:normal;color:#666;font-size:.8em}"
        "dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.2em 0}dt{color:#555}dd{margin:0}"
        ".muted{color:#666;font-size:.9em}table{border-collapse:collapse;width:100%}"
        "th,td{border-bottom:1px solid #ddd;padding:.2em .4em;text-align:left}</style></head><body>",
        '<h1>Sổ sức khỏe điện tử <small lang="en" class="muted">Electronic health book</small></h1>',
        f'<p class="muted">Mã công dân (ẩn danh): {e(citizen_key)}</p>',
    ]
    if profile:
        parts.append('<section class="profile"><h2>Thông tin hành chính <small lang="en" class="muted">'
                     "Administrative details</small></h2>")
        parts.append(_render_profile(profile))
        parts.append("</section>")
    if vaccinations:
        parts.append('<section class="vaccinations"><h2>Lịch sử tiêm chủng <small lang="en" class="muted">'
                     "Vaccination history</small></h2>")
        parts.append(_render_vaccinations(vaccinations))
        parts.append("</section>")
    if not entries:
        parts.append("<p>Chưa có lượt khám chữa bệnh nào.</p>")
    groups = entry_mapping()
    for stored in entries:
        entry = stored.get("entry")
        if not isinstance(entry, Mapping):
            entry = {}
        raw_visit = entry.get("visit")
        visit: Mapping[str, Any] = raw_visit if isinstance(raw_visit, Mapping) else {}
        specs = groups.get("visit", {}).get("fields", {})
        start = _format(specs.get("admitted_at"), visit.get("admitted_at"))
        end = _format(specs.get("discharged_at"), visit.get("discharged_at"))
        facility = _text(entry.get("facility"))
        parts.append("<section>")
        parts.append(f"<h2>Cơ sở khám chữa bệnh {e(facility)}</h2>" if facility else
                     "<h2>Cơ sở khám chữa bệnh</h2>")
        when = f"Ngày vào: {e(start) or '—'}" + (f" · Ngày ra: {e(end)}" if end else "")
        parts.append(f'<p class="muted">{when} · Phiên bản {e(_text(stored.get("version")))}</p>')
        for group, spec in groups.items():
            value = entry.get(group)
            if _empty(value):
                continue
            title_vi, title_en = GROUP_HEADINGS.get(group, (str(spec.get("title_vi", group)), group))
            parts.append(f'<h3>{e(title_vi)}<small lang="en">{e(title_en)}</small></h3>')
            parts.append(_render_group(group, str(spec.get("kind", "")), value))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def iter_entries(fake: FakeVneid, citizen_key: str) -> Iterator[dict[str, Any]]:
    """The stored entry bodies only (convenience for the demo)."""
    for stored in fake.entries(citizen_key):
        yield stored["entry"]
