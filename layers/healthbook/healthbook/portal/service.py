"""The portal API's use cases over ports: take a token, receive a file (or a check-in document), look up a result,
make an upload link. Pure: the accounts and counters, the inbox, the receipts and the clock are injected
(healthbook.aws.portal_store on AWS, in-memory fakes in the tests).

Every request is one ``handle(Request) -> Handled``: the reply (healthbook.portal.protocol) and what the logs may
say about it (the path, the result, why, the facility, the transaction, sizes; the username only when it is a
well-formed one). What is checked, in order:

- the path and method (405); the body's size, before anything is parsed (413), its type and form (415, 400);
- ``token/take``: the source address not locked (429); ``username`` and ``password`` present (400); a malformed
  username is a 401 without any lookup (and a failure of the source); then one argon2id verification, against a
  dummy hash when there is no such account, so a refusal takes as long either way; a locked user is a 423 before
  any verification. A failure counts against the user (locked at ``lock_after`` failures within ``lock_for``,
  for ``lock_for``) and against the source (refused at ``source_lock_after``). A username with no account keeps
  counters too, which expire: it locks exactly like a real one, so a lockout does not tell that a user exists;
- every other endpoint: the three headers and ``username`` present (400); the token's signature and expiry,
  ``tokenId`` = its id, ``passwordHash`` its password's, ``username`` its user (401); then one read of the account:
  still there with the same generation, i.e. no rotation since (401), not disabled (403), not locked (423); the
  other fields present and well-formed (400); ``maCSKCB`` and ``maTinh`` the token's (403); the file (413, 415);
  the facility's files per minute (429); only then is anything written, and only under the token's facility's
  ``inbox/<facility>/portal/``: the key is made from the transaction id alone, never from the form.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn, Protocol

from healthbook.ingest.model import locate
from healthbook.kernel import (
    MAX_FILE_BYTES,
    PORTAL_TZ,
    PROVINCE_CODE,
    TRANSACTION_ID,
    Metrics,
    NoMetrics,
    is_facility_code,
    iso_utc,
    new_transaction_id,
    portal_inbox_key,
    portal_time,
    receipt_status,
    utc,
)
from healthbook.portal.credentials import SecretHasher, is_username, normalise_md5
from healthbook.portal.protocol import (
    ACCESS_TOKEN,
    CHECK_IN_TYPES,
    DOCUMENT_TYPE,
    FACILITY,
    FILE,
    FORM_OVERHEAD_BYTES,
    PASSWORD,
    PASSWORD_HASH,
    PROVINCE,
    SUBMIT_TYPES,
    TOKEN_ID,
    TRANSACTION,
    USERNAME,
    Action,
    Endpoint,
    FieldError,
    Form,
    Reply,
    ResultCode,
    is_form,
    message,
    parse_form,
    route,
)
from healthbook.portal.tokens import Claims, InvalidToken, TokenKey

INLINE_RECEIPT_BYTES = 4 * 1024 * 1024  # a Lambda reply holds 6 MB: a larger receipt is answered with a link
RECEIVED_VI = "Tiếp nhận hồ sơ thành công."
LINK_VI = "Đã tạo liên kết tải lên. Tải tệp lên bằng PUT với đúng các header uploadHeaders trước khi hết hạn."
FOUND_VI = "Đã có biên nhận."
FORM_ONLY_VI = "Yêu cầu phải là form application/x-www-form-urlencoded."


# --- the ports --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    username: str
    facility: str
    province: str
    secret_hash: str
    generation: int
    disabled: bool = False


@dataclass(frozen=True)
class LoginState:
    """A username's account (None: there is none) and its failed-login counters."""

    account: Account | None
    locked_until: datetime | None = None
    failures: int = 0


@dataclass(frozen=True)
class Subject:
    """What failed logins are counted against: a username (``known``: an account exists) or a source address."""

    kind: Literal["user", "source"]
    name: str
    known: bool = True


class AttemptStore(Protocol):
    """Accounts and failed-login counters (the portal table)."""

    def login_state(self, username: str) -> LoginState: ...

    def source_locked_until(self, source: str) -> datetime | None: ...

    def count_failure(self, subject: Subject, *, now: datetime, window: timedelta) -> int:
        """Add one failure; the failures within the window that ends now, this one included."""
        ...

    def lock(self, subject: Subject, *, now: datetime, until: datetime) -> bool:
        """Lock until ``until``; False when it was already locked at ``now``."""
        ...

    def clear_failures(self, username: str) -> None: ...


class RateLimiter(Protocol):
    def take(self, facility: str, *, now: datetime, limit: int) -> bool:
        """One more file for the facility in the minute of ``now``; False (nothing taken) beyond ``limit``."""
        ...


class Inbox(Protocol):
    def put(self, facility: str, transaction_id: str, data: bytes, *, endpoint: str) -> str:
        """Write the file at portal_inbox_key(transaction_id), which must be under the facility's own
        ``inbox/<facility>/portal/``; the key."""
        ...

    def exists(self, facility: str, transaction_id: str) -> bool: ...


@dataclass(frozen=True)
class UploadLink:
    url: str
    headers: dict[str, str]  # what the PUT must send, exactly


class Presigner(Protocol):
    def upload_link(self, facility: str, transaction_id: str, *, endpoint: str, expires_in: int) -> UploadLink: ...


class ReceiptReader(Protocol):
    def read(self, key: str) -> bytes | None:
        """The receipt's bytes; None when there is none (yet)."""
        ...

    def link(self, key: str, *, expires_in: int) -> str:
        """A presigned GET of the receipt."""
        ...


@dataclass(frozen=True)
class Policy:
    token_ttl: timedelta = timedelta(hours=1)
    rate_per_minute: int = 120
    lock_after: int = 5
    lock_for: timedelta = timedelta(minutes=15)
    source_lock_after: int = 20
    presign_for: timedelta = timedelta(minutes=15)
    max_object_bytes: int = MAX_FILE_BYTES

    @property
    def max_body_bytes(self) -> int:
        """The largest body read at all: the file's base64 and the form around it."""
        return 4 * self.max_object_bytes // 3 + FORM_OVERHEAD_BYTES


# --- requests and what became of them ---------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    method: str
    path: str  # "/api/token/take"
    headers: Mapping[str, str]  # names lower-cased
    body: str | None
    base64_body: bool  # API Gateway's isBase64Encoded
    source_ip: str


@dataclass
class Handled:
    """The reply, and what the log line of the request says (never a value the caller sent, other than a
    well-formed username, facility code or transaction id)."""

    reply: Reply
    path: str | None = None  # the canonical path; None for an unknown one
    reason: str = ""
    facility: str | None = None
    transaction_id: str | None = None
    username: str | None = None
    body_bytes: int = 0
    file_bytes: int | None = None
    failure: Exception | None = None  # what made it a 500 (for the log)

    @property
    def code(self) -> ResultCode:
        return self.reply.code

    def log_fields(self) -> dict[str, Any]:
        fields = {"path": self.path or "(unknown)", "code": self.code.value, "reason": self.reason,
                  "facility": self.facility, "transaction_id": self.transaction_id, "username": self.username,
                  "body_bytes": self.body_bytes, "file_bytes": self.file_bytes}
        return {name: value for name, value in fields.items() if value is not None}


class Refusal(Exception):
    """A request refused with ``code``; ``reason`` for the logs, ``detail`` for thongDiep (a field name...)."""

    def __init__(self, code: ResultCode, reason: str, *, detail: str | None = None, text: str | None = None,
                 extra: dict[str, str] | None = None, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.detail, self.text = code, reason, detail, text  # text: thongDiep itself
        self.extra = extra or {}
        self.retry_after = retry_after


@dataclass
class _Call:
    now: datetime
    endpoint: Endpoint | None
    handled: Handled = field(default_factory=lambda: Handled(Reply(ResultCode.INTERNAL, {})))


# --- the service --------------------------------------------------------------------------------------------

class PortalService:
    def __init__(self, *, attempts: AttemptStore, rates: RateLimiter, inbox: Inbox, presigner: Presigner,
                 receipts: ReceiptReader, token_key: TokenKey, clock: Callable[[], datetime],
                 policy: Policy | None = None, hasher: SecretHasher | None = None, metrics: Metrics | None = None,
                 inline_receipt_bytes: int = INLINE_RECEIPT_BYTES) -> None:
        self._attempts, self._rates, self._inbox = attempts, rates, inbox
        self._presigner, self._receipts, self._key = presigner, receipts, token_key
        self._clock = clock
        self.policy = policy or Policy()
        self._hasher = hasher or SecretHasher()
        self.metrics: Metrics = metrics or NoMetrics()
        self._inline_receipt_bytes = inline_receipt_bytes

    def handle(self, request: Request) -> Handled:
        call = _Call(now=utc(self._clock()), endpoint=route(request.method, request.path))
        handled = call.handled
        handled.path = call.endpoint.path if call.endpoint else None
        try:
            if call.endpoint is None:
                raise Refusal(ResultCode.METHOD_NOT_ALLOWED, "unknown path or method")
            handled.reply = self._dispatch(call.endpoint, request, call)
            handled.reason = handled.reason or "ok"
        except FieldError as missing:
            handled.reason = f"missing or malformed {missing.name}"
            handled.reply = self._refused(call, Refusal(ResultCode.BAD_REQUEST, handled.reason, detail=missing.name))
        except Refusal as refusal:
            handled.reason = refusal.reason
            handled.reply = self._refused(call, refusal)
        except Exception as failure:  # a 500: the details go to the log, never to the caller
            handled.reason, handled.failure = "internal error", failure
            handled.reply = self._refused(call, Refusal(ResultCode.INTERNAL, handled.reason))
        return handled

    # --- the request ------------------------------------------------------------------------------------------

    def _dispatch(self, endpoint: Endpoint, request: Request, call: _Call) -> Reply:
        form = parse_form(self._body(request, call))
        if endpoint.action is Action.TOKEN:
            return self._take_token(form, request.source_ip, call)
        claims = self._authenticate(request.headers, form, call)
        if endpoint.action in (Action.SUBMIT, Action.CHECK_IN):
            return self._receive(endpoint, form, claims, call)
        if endpoint.action is Action.LOOKUP:
            return self._lookup(form, claims, call)
        return self._upload_link(endpoint, form, claims, call)

    def _body(self, request: Request, call: _Call) -> str:
        """The form's text, its size checked before it is decoded or parsed."""
        if not is_form(request.headers.get("content-type")):
            raise Refusal(ResultCode.UNSUPPORTED, "not a form", text=FORM_ONLY_VI)
        limit = self.policy.max_body_bytes
        raw = request.body or ""
        call.handled.body_bytes = len(raw)
        if request.base64_body:
            if len(raw) > 4 * (limit // 3 + 1):
                raise Refusal(ResultCode.TOO_LARGE, "body too large")
            try:
                data = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise FieldError("body") from None
            call.handled.body_bytes = len(data)
            if len(data) > limit:
                raise Refusal(ResultCode.TOO_LARGE, "body too large")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise FieldError("body") from None
        if len(raw) > limit:
            raise Refusal(ResultCode.TOO_LARGE, "body too large")
        return raw

    def _refused(self, call: _Call, refusal: Refusal) -> Reply:
        code = refusal.code
        body: dict[str, Any] = {"maKetQua": code.value}
        action = call.endpoint.action if call.endpoint else None
        if action not in (None, Action.TOKEN):
            transaction = call.handled.transaction_id if action is Action.LOOKUP else None
            match = TRANSACTION_ID.fullmatch(transaction or "")
            body["maGiaoDich"] = transaction or ""
            body["thoiGianTiepNhan"] = match.group(2) if match else (
                "" if action is Action.LOOKUP else portal_time(call.now))
        body["thongDiep"] = refusal.text or message(code, refusal.detail)
        body.update(refusal.extra)
        headers = {}
        if refusal.retry_after is not None:
            headers["Retry-After"] = str(max(1, refusal.retry_after))
        if code is ResultCode.METHOD_NOT_ALLOWED:
            headers["Allow"] = "POST"
        return Reply(code, body, headers)

    # --- token/take -------------------------------------------------------------------------------------------

    def _take_token(self, form: Form, source: str, call: _Call) -> Reply:
        now, policy = call.now, self.policy
        source_locked = self._attempts.source_locked_until(source)
        if source_locked is not None and source_locked > now:
            raise Refusal(ResultCode.THROTTLED, "source locked", retry_after=_seconds(source_locked - now))
        username = form.require(USERNAME)
        password = form.require(PASSWORD)
        if not is_username(username):
            self._login_failed(None, source, call)
            raise Refusal(ResultCode.UNAUTHENTICATED, "malformed username")
        call.handled.username = username
        state = self._attempts.login_state(username)
        if state.locked_until is not None and state.locked_until > now:
            raise _locked(state.locked_until, now, "user locked")
        account = state.account
        md5 = normalise_md5(password)
        verified = self._hasher.verify(account.secret_hash if account else None, password)
        if not verified or account is None or md5 is None:
            self._login_failed(Subject("user", username, known=account is not None), source, call)
        call.handled.facility = account.facility
        if account.disabled:
            raise Refusal(ResultCode.FORBIDDEN, "account disabled")
        if state.failures:
            self._attempts.clear_failures(username)
        token, claims = self._key.issue(username=account.username, facility=account.facility,
                                        province=account.province, generation=account.generation,
                                        jti=str(uuid.uuid4()), md5_upper=md5, now=now, ttl=policy.token_ttl)
        self.metrics.count("PortalTokensIssued")
        call.handled.reason = "token issued"
        return Reply(ResultCode.OK, {"maKetQua": ResultCode.OK.value, "APIKey": {
            "access_token": token, "id_token": claims.jti, "token_type": "Bearer", "username": claims.username,
            "expires_in": iso_utc(claims.expires_at)}})

    def _login_failed(self, user: Subject | None, source: str, call: _Call) -> NoReturn:
        """Count a failed login against the user (when the name is well-formed) and the source; raises the
        refusal: 423 when the user is now locked, else 429 when the source is, else 401."""
        now, policy = call.now, self.policy
        self.metrics.count("PortalLoginFailures")
        user_locked_until: datetime | None = None
        if user is not None:
            failures = self._attempts.count_failure(user, now=now, window=policy.lock_for)
            if failures >= policy.lock_after:
                user_locked_until = now + policy.lock_for
                if self._attempts.lock(user, now=now, until=user_locked_until):
                    self.metrics.count("PortalLockouts")
        source_subject = Subject("source", source)
        source_failures = self._attempts.count_failure(source_subject, now=now, window=policy.lock_for)
        source_locked = source_failures >= policy.source_lock_after
        if source_locked and self._attempts.lock(source_subject, now=now, until=now + policy.lock_for):
            self.metrics.count("PortalLockouts")
        if user_locked_until is not None:
            raise _locked(user_locked_until, now, "wrong password; user locked")
        if source_locked:
            raise Refusal(ResultCode.THROTTLED, "wrong password; source locked",
                          retry_after=_seconds(policy.lock_for))
        raise Refusal(ResultCode.UNAUTHENTICATED, "wrong password" if user and user.known else
                      "unknown user" if user else "malformed username")

    # --- the token on every other call ------------------------------------------------------------------------

    def _authenticate(self, headers: Mapping[str, str], form: Form, call: _Call) -> Claims:
        token = _header(headers, ACCESS_TOKEN)
        token_id = _header(headers, TOKEN_ID)
        password_hash = _header(headers, PASSWORD_HASH)
        username = form.require(USERNAME)
        try:
            claims = self._key.verify(token, call.now)
        except InvalidToken as invalid:
            raise Refusal(ResultCode.UNAUTHENTICATED, f"token {invalid.reason}") from None
        if not _same(token_id, claims.jti):
            raise Refusal(ResultCode.UNAUTHENTICATED, "tokenId is not the token's")
        if not self._key.matches_password(claims, normalise_md5(password_hash)):
            raise Refusal(ResultCode.UNAUTHENTICATED, "passwordHash is not the token's")
        if not _same(username, claims.username):
            raise Refusal(ResultCode.UNAUTHENTICATED, "username is not the token's")
        call.handled.username, call.handled.facility = claims.username, claims.facility
        state = self._attempts.login_state(claims.username)
        account = state.account
        if account is None or account.generation != claims.generation or account.facility != claims.facility:
            raise Refusal(ResultCode.UNAUTHENTICATED, "token revoked (password rotated or account gone)")
        if account.disabled:
            raise Refusal(ResultCode.FORBIDDEN, "account disabled")
        if state.locked_until is not None and state.locked_until > call.now:
            raise _locked(state.locked_until, call.now, "user locked")
        return claims

    def _place(self, form: Form, claims: Claims, *, province: bool = True) -> None:
        """maCSKCB (and maTinh) well-formed (400), then the token's (403). Compared only: a key is never made
        from them."""
        facility = form.require(FACILITY)
        if not is_facility_code(facility):
            raise FieldError(FACILITY)
        given_province = form.require(PROVINCE) if province else None
        if given_province is not None and not PROVINCE_CODE.fullmatch(given_province):
            raise FieldError(PROVINCE)
        if facility != claims.facility:
            raise Refusal(ResultCode.FORBIDDEN, "maCSKCB is not the token's facility")
        if given_province is not None and given_province != claims.province:
            raise Refusal(ResultCode.FORBIDDEN, "maTinh is not the token's province")

    def _take_rate(self, claims: Claims, now: datetime) -> None:
        if not self._rates.take(claims.facility, now=now, limit=self.policy.rate_per_minute):
            raise Refusal(ResultCode.THROTTLED, "facility over its files per minute", retry_after=60 - now.second)

    # --- guiHoSoXml* and checkInKcb* --------------------------------------------------------------------------

    def _receive(self, endpoint: Endpoint, form: Form, claims: Claims, call: _Call) -> Reply:
        allowed = CHECK_IN_TYPES if endpoint.action is Action.CHECK_IN else SUBMIT_TYPES
        if form.require(DOCUMENT_TYPE) not in allowed:
            raise FieldError(DOCUMENT_TYPE)
        encoded = form.require(FILE)
        self._place(form, claims)
        data = decode_file(encoded, self.policy.max_object_bytes)
        call.handled.file_bytes = len(data)
        self._take_rate(claims, call.now)
        transaction = new_transaction_id(claims.facility, call.now)
        self._inbox.put(claims.facility, transaction, data, endpoint=endpoint.name)
        call.handled.transaction_id = transaction
        call.handled.reason = "file received"
        self.metrics.count("PortalFilesReceived")
        return Reply(ResultCode.OK, {"maKetQua": ResultCode.OK.value, "maGiaoDich": transaction,
                                     "thoiGianTiepNhan": portal_time(call.now), "thongDiep": RECEIVED_VI})

    # --- traCuuKetQua -----------------------------------------------------------------------------------------

    def _lookup(self, form: Form, claims: Claims, call: _Call) -> Reply:
        self._place(form, claims, province=False)
        transaction = form.require(TRANSACTION)
        match = TRANSACTION_ID.fullmatch(transaction)
        if match is None:
            raise Refusal(ResultCode.NOT_FOUND, "malformed transaction id")
        call.handled.transaction_id = transaction
        if match.group(1) != claims.facility:
            raise Refusal(ResultCode.NOT_FOUND, "another facility's transaction")
        key = receipt_key(transaction)
        data = self._receipts.read(key)
        envelope = {"maGiaoDich": transaction, "thoiGianTiepNhan": match.group(2)}
        if data is None:
            if self._inbox.exists(claims.facility, transaction):
                call.handled.reason = "no receipt yet"
                return Reply(ResultCode.PROCESSING, {"maKetQua": ResultCode.PROCESSING.value, **envelope,
                                                     "thongDiep": ResultCode.PROCESSING.message_vi})
            raise Refusal(ResultCode.NOT_FOUND, "neither a receipt nor a file")
        receipt = json.loads(data)
        if not isinstance(receipt, dict):
            raise ValueError(f"the receipt at {key} is not a JSON object")
        body: dict[str, Any] = {"maKetQua": ResultCode.OK.value, **envelope, "thongDiep": FOUND_VI,
                                "trangThai": receipt_status(receipt).value, "bienNhan": receipt}
        if len(data) > self._inline_receipt_bytes:
            body["bienNhan"] = None
            body["lienKetBienNhan"] = self._receipts.link(key, expires_in=_seconds(self.policy.presign_for))
        call.handled.reason = "receipt found"
        return Reply(ResultCode.OK, body)

    # --- taoLienKetTaiLen -------------------------------------------------------------------------------------

    def _upload_link(self, endpoint: Endpoint, form: Form, claims: Claims, call: _Call) -> Reply:
        if form.require(DOCUMENT_TYPE) not in SUBMIT_TYPES | CHECK_IN_TYPES:
            raise FieldError(DOCUMENT_TYPE)
        self._place(form, claims)
        self._take_rate(claims, call.now)
        transaction = new_transaction_id(claims.facility, call.now)
        seconds = _seconds(self.policy.presign_for)
        link = self._presigner.upload_link(claims.facility, transaction, endpoint=endpoint.name, expires_in=seconds)
        call.handled.transaction_id = transaction
        call.handled.reason = "upload link made"
        self.metrics.count("PortalUploadLinks")
        return Reply(ResultCode.OK, {
            "maKetQua": ResultCode.OK.value, "maGiaoDich": transaction, "thoiGianTiepNhan": portal_time(call.now),
            "thongDiep": LINK_VI, "uploadUrl": link.url, "uploadMethod": "PUT", "uploadHeaders": link.headers,
            "hetHan": portal_time(call.now + timedelta(seconds=seconds))})  # Vietnam time, as thoiGianTiepNhan


# --- helpers --------------------------------------------------------------------------------------------------

_IGNORED = str.maketrans("", "", "\r\n\t")


def decode_file(encoded: str, max_bytes: int) -> bytes:
    """``fileHSBase64`` as bytes: line breaks ignored, a space read as "+", strict base64; too large (413), not
    base64 or not XML (415). The size is checked before decoding."""
    cleaned = encoded.translate(_IGNORED).replace(" ", "+")
    if len(cleaned) > 4 * -(-max_bytes // 3):
        raise Refusal(ResultCode.TOO_LARGE, "file too large")
    try:
        data = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(ResultCode.UNSUPPORTED, "file not base64") from None
    if len(data) > max_bytes:
        raise Refusal(ResultCode.TOO_LARGE, "file too large")
    if not looks_like_xml(data):
        raise Refusal(ResultCode.UNSUPPORTED, "file not XML")
    return data


def looks_like_xml(data: bytes) -> bool:
    """Starts, after an optional UTF-8 BOM and whitespace, with "<". The ingest function reads it properly."""
    return data.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"<")


def receipt_key(transaction_id: str) -> str:
    """Where ingest writes the receipt of the file a transaction named: receipts/<facility>/<txn>.xml.receipt.json."""
    return locate(portal_inbox_key(transaction_id)).receipt_key


def _header(headers: Mapping[str, str], name: str) -> str:
    value = (headers.get(name.lower()) or "").strip()
    if not value:
        raise FieldError(name)
    return value


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _seconds(delta: timedelta) -> int:
    return max(1, int(-(-delta.total_seconds() // 1)))


def _locked(until: datetime, now: datetime, reason: str) -> Refusal:
    local = until.astimezone(PORTAL_TZ)
    return Refusal(ResultCode.LOCKED, reason, detail=f"Mở khóa lúc {local:%H:%M:%S %d/%m/%Y} (giờ Việt Nam).",
                   extra={"thoiGianMoKhoa": portal_time(until)}, retry_after=_seconds(until - now))
