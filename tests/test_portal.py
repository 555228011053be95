"""The portal API's use cases (healthbook.portal) with in-memory fakes: the protocol, tokens, logins and lockouts,
submissions, check-ins, result lookups and upload links. tests/test_portal_aws.py runs the same through the real
adapters and the Lambda handler on moto."""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from argon2 import PasswordHasher
from healthbook.kernel import is_transaction_id, new_transaction_id, portal_inbox_key, portal_time, receipt_status
from healthbook.portal.credentials import SecretHasher, password_md5
from healthbook.portal.protocol import ENDPOINTS, ResultCode, route
from healthbook.portal.service import (
    Account,
    Handled,
    LoginState,
    Policy,
    PortalService,
    Request,
    Subject,
    UploadLink,
    looks_like_xml,
    receipt_key,
)
from healthbook.portal.tokens import InvalidToken, TokenKey

NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)
KEY = b"k" * 32
FAST = SecretHasher(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))  # same argon2id, test-cheap
PASSWORD = "Mat-khau-thu-nghiem-01001"
MD5 = password_md5(PASSWORD)
XML = (b'<?xml version="1.0" encoding="utf-8"?>\n'
       b"<GIAMDINHHS><THONGTINDONVI><MACSKCB>01001</MACSKCB></THONGTINDONVI></GIAMDINHHS>")
CHECK_IN = b"<CHI_TIEU_TRANG_THAI_KCB><DSACH_TRANG_THAI_KCB/><CHUKYDONVI/></CHI_TIEU_TRANG_THAI_KCB>"
SUBMIT = "/api/qd130/guiHoSoXmlQD4750"
SOURCE = "198.51.100.7"


# --- fakes: the same rules as healthbook.aws.portal_store, in memory ----------------------------------------

@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Counters:
    failures: int = 0
    window_start: datetime | None = None
    locked_until: datetime | None = None


@dataclass
class FakeTable:
    """AttemptStore and RateLimiter."""

    accounts: dict[str, Account] = field(default_factory=dict)
    counters: dict[tuple[str, str], Counters] = field(default_factory=dict)
    rates: Counter[tuple[str, str]] = field(default_factory=Counter)
    lookups: list[str] = field(default_factory=list)

    def add(self, username: str, facility: str = "01001", province: str = "01", md5: str = MD5) -> Account:
        account = Account(username=username, facility=facility, province=province, secret_hash=FAST.hash(md5),
                          generation=1)
        self.accounts[username] = account
        return account

    def rotate(self, username: str, md5: str) -> None:
        old = self.accounts[username]
        self.accounts[username] = replace(old, secret_hash=FAST.hash(md5), generation=old.generation + 1)

    def login_state(self, username: str) -> LoginState:
        self.lookups.append(username)
        counters = self.counters.get(("user", username), Counters())
        return LoginState(self.accounts.get(username), counters.locked_until, counters.failures)

    def source_locked_until(self, source: str) -> datetime | None:
        return self.counters.get(("source", source), Counters()).locked_until

    def count_failure(self, subject: Subject, *, now: datetime, window: timedelta) -> int:
        counters = self.counters.setdefault((subject.kind, subject.name), Counters())
        if counters.window_start is None or counters.window_start <= now - window:
            counters.failures, counters.window_start = 1, now
        else:
            counters.failures += 1
        return counters.failures

    def lock(self, subject: Subject, *, now: datetime, until: datetime) -> bool:
        counters = self.counters.setdefault((subject.kind, subject.name), Counters())
        if counters.locked_until is not None and counters.locked_until > now:
            return False
        counters.locked_until = until
        return True

    def clear_failures(self, username: str) -> None:
        self.counters[("user", username)] = Counters()

    def take(self, facility: str, *, now: datetime, limit: int) -> bool:
        minute = (facility, now.strftime("%Y%m%d%H%M"))
        if self.rates[minute] >= limit:
            return False
        self.rates[minute] += 1
        return True


@dataclass
class FakeInbox:
    """Inbox and Presigner."""

    objects: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    broken: bool = False

    def put(self, facility: str, transaction_id: str, data: bytes, *, endpoint: str) -> str:
        if self.broken:
            raise OSError("S3 is down (test)")
        key = portal_inbox_key(transaction_id)
        assert key.startswith(f"inbox/{facility}/portal/")
        self.objects[key] = (data, {"transaction-id": transaction_id, "channel": "portal", "endpoint": endpoint})
        return key

    def exists(self, facility: str, transaction_id: str) -> bool:
        return portal_inbox_key(transaction_id) in self.objects

    def upload_link(self, facility: str, transaction_id: str, *, endpoint: str, expires_in: int) -> UploadLink:
        key = portal_inbox_key(transaction_id)
        self.links.append(key)
        return UploadLink(url=f"https://inbox.example/{key}?X-Amz-Expires={expires_in}",
                          headers={"Content-Type": "application/xml", "x-amz-meta-endpoint": endpoint})


@dataclass
class FakeReceipts:
    objects: dict[str, bytes] = field(default_factory=dict)

    def read(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def link(self, key: str, *, expires_in: int) -> str:
        return f"https://receipts.example/{key}?X-Amz-Expires={expires_in}"


@dataclass
class Metrics:
    counts: Counter[str] = field(default_factory=Counter)

    def count(self, name: str, value: int = 1, **dimensions: str) -> None:
        self.counts[name] += value

    def latency(self, name: str, milliseconds: float) -> None:
        pass


class CountingHasher(SecretHasher):
    def __init__(self) -> None:
        super().__init__(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        self.verified: list[str | None] = []

    def verify(self, stored_hash: str | None, md5_hex: str) -> bool:
        self.verified.append(stored_hash)
        return super().verify(stored_hash, md5_hex)


@dataclass
class Portal:
    service: PortalService
    table: FakeTable
    inbox: FakeInbox
    receipts: FakeReceipts
    clock: Clock
    metrics: Metrics
    hasher: CountingHasher

    def post(self, path: str, form: dict[str, str] | None = None, *, headers: dict[str, str] | None = None,
             body: str | None = None, method: str = "POST", source: str = SOURCE, base64_body: bool = False,
             ) -> Handled:
        text = body if body is not None else urlencode(form or {})
        names = {name.lower(): value for name, value in (headers or {}).items()}
        names.setdefault("content-type", "application/x-www-form-urlencoded")
        return self.service.handle(Request(method=method, path=path, headers=names, body=text,
                                           base64_body=base64_body, source_ip=source))

    def login(self, username: str = "bv01001.his", md5: str = MD5, source: str = SOURCE) -> Handled:
        return self.post("/api/token/take", {"username": username, "password": md5}, source=source)

    def token(self, username: str = "bv01001.his", md5: str = MD5) -> dict[str, str]:
        handled = self.login(username, md5)
        assert handled.code is ResultCode.OK, reply(handled)
        api_key = reply(handled)["APIKey"]
        return {"accessToken": api_key["access_token"], "tokenId": api_key["id_token"], "passwordHash": md5}

    def submit(self, headers: dict[str, str], data: bytes = XML, path: str = SUBMIT, **fields: str) -> Handled:
        form = {"username": "bv01001.his", "loaiHoSo": "130", "maTinh": "01", "maCSKCB": "01001",
                "fileHSBase64": base64.b64encode(data).decode("ascii"), **fields}
        return self.post(path, {name: value for name, value in form.items() if value is not None}, headers=headers)


def reply(handled: Handled) -> dict[str, Any]:
    http = handled.reply.http()
    assert http["statusCode"] == int(handled.code.value)
    assert http["headers"]["Content-Type"] == "application/json; charset=utf-8"
    body: dict[str, Any] = json.loads(http["body"])
    assert body["maKetQua"] == handled.code.value
    return body


def make_portal(**policy: Any) -> Portal:
    table, inbox, receipts, clock, metrics = FakeTable(), FakeInbox(), FakeReceipts(), Clock(), Metrics()
    hasher = CountingHasher()
    service = PortalService(attempts=table, rates=table, inbox=inbox, presigner=inbox, receipts=receipts,
                            token_key=TokenKey(KEY), clock=clock, policy=Policy(**policy), hasher=hasher,
                            metrics=metrics, inline_receipt_bytes=4096)
    table.add("bv01001.his")
    table.add("bv79001.his", facility="79001", province="79", md5=password_md5("another-password-79001"))
    return Portal(service, table, inbox, receipts, clock, metrics, hasher)


@pytest.fixture
def portal() -> Portal:
    return make_portal(lock_after=5, source_lock_after=20, lock_for=timedelta(seconds=900), rate_per_minute=120)


# --- the protocol -----------------------------------------------------------------------------------------

def test_every_endpoint_routes_case_insensitively_and_only_for_post() -> None:
    for endpoint in ENDPOINTS:
        assert route("POST", endpoint.path) is endpoint
        assert route("post", endpoint.path.upper() + "/") is endpoint
        assert route("GET", endpoint.path) is None
    assert route("POST", "/api/qd130/guiHoSoXmlQD9999") is None
    assert route("POST", "/") is None


def test_result_codes_have_both_languages_and_are_their_http_status() -> None:
    for code in ResultCode:
        assert code.message_vi and code.message_en
        assert code.status == int(code.value)


def test_xml_sniffing() -> None:
    assert looks_like_xml(b"\xef\xbb\xbf \r\n\t<GIAMDINHHS/>")
    assert not looks_like_xml(b"GIAMDINHHS")
    assert not looks_like_xml(b"")
    assert not looks_like_xml(b"\xff\xfe<\x00")  # UTF-16: ingest reads UTF-8 only


def test_receipt_key_and_status() -> None:
    txn = new_transaction_id("01001", NOW)
    assert receipt_key(txn) == f"receipts/01001/{txn}.xml.receipt.json"
    assert receipt_status({"accepted": True, "visits": []}) == "ACCEPTED"
    assert receipt_status({"accepted": False, "visits": [{"accepted": False}, {"accepted": True}]}) == "PARTIAL"
    assert receipt_status({"accepted": False, "rejected": True, "visits": [{"accepted": False}]}) == "REJECTED"


# --- tokens -----------------------------------------------------------------------------------------------

def _issue(key: TokenKey, now: datetime = NOW) -> str:
    token, _ = key.issue(username="u.ser", facility="01001", province="01", generation=1, jti="id-1", md5_upper=MD5,
                         now=now, ttl=timedelta(hours=1))
    return token


def test_a_token_verifies_until_it_expires() -> None:
    key = TokenKey(KEY)
    token = _issue(key)
    assert token.startswith("v1.") and token.count(".") == 2
    claims = key.verify(token, NOW + timedelta(minutes=59))
    assert (claims.username, claims.facility, claims.province, claims.generation, claims.jti) == \
        ("u.ser", "01001", "01", 1, "id-1")
    assert key.matches_password(claims, MD5) and not key.matches_password(claims, "0" * 32)
    assert not key.matches_password(claims, None)
    with pytest.raises(InvalidToken, match="expired"):
        key.verify(token, NOW + timedelta(hours=1))


@pytest.mark.parametrize("part", [1, 2])
def test_a_flipped_byte_anywhere_is_refused(part: int) -> None:
    key = TokenKey(KEY)
    token = _issue(key)
    pieces = token.split(".")
    for index in range(len(pieces[part])):
        text = pieces[part]
        flipped = text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1:]
        forged = ".".join([*pieces[:part], flipped, *pieces[part + 1:]])
        with pytest.raises(InvalidToken):
            key.verify(forged, NOW)


def test_a_token_of_another_key_or_edited_claims_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        TokenKey(KEY).verify(_issue(TokenKey(b"x" * 32)), NOW)
    token = _issue(TokenKey(KEY))
    version, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["facility"] = "79001"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="signature"):
        TokenKey(KEY).verify(f"{version}.{edited}.{signature}", NOW)
    for garbage in ("", "v1", "v1..", "v2." + token[3:], token + ".x", "x" * 5000, "v1.!!!.???"):
        with pytest.raises(InvalidToken):
            TokenKey(KEY).verify(garbage, NOW)


def test_the_token_key_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="32"):
        TokenKey(b"short")


# --- token/take -------------------------------------------------------------------------------------------

def test_token_take(portal: Portal) -> None:
    handled = portal.login()
    body = reply(handled)
    assert handled.code is ResultCode.OK
    api_key = body["APIKey"]
    assert set(api_key) == {"access_token", "id_token", "token_type", "username", "expires_in"}
    assert api_key["token_type"] == "Bearer" and api_key["username"] == "bv01001.his"
    assert api_key["expires_in"] == "2026-11-22T04:00:00Z"
    assert api_key["access_token"].startswith("v1.")
    assert portal.metrics.counts["PortalTokensIssued"] == 1
    assert handled.log_fields()["username"] == "bv01001.his" and handled.facility == "01001"


def test_the_md5_may_come_in_lower_case(portal: Portal) -> None:
    assert portal.login(md5=MD5.lower()).code is ResultCode.OK


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer_for_the_same_work(portal: Portal) -> None:
    wrong = portal.login(md5=password_md5("not the password"))
    unknown = portal.login(username="nobody.here")
    assert wrong.code is unknown.code is ResultCode.UNAUTHENTICATED
    assert reply(wrong) == reply(unknown)
    assert "APIKey" not in reply(wrong)
    # one argon2 verification each: against the account's hash, and against the dummy
    assert len(portal.hasher.verified) == 2
    assert portal.hasher.verified[0] is not None and portal.hasher.verified[1] is None
    assert portal.metrics.counts["PortalLoginFailures"] == 2


def test_a_plain_password_instead_of_its_md5_is_a_wrong_password(portal: Portal) -> None:
    assert portal.login(md5=PASSWORD).code is ResultCode.UNAUTHENTICATED
    assert portal.table.counters[("user", "bv01001.his")].failures == 1


@pytest.mark.parametrize("username", ["' OR 1=1 --", "$(rm -rf /)", "a" * 200, "ab", "bv01001 his",
                                      "bv01001.his\x00", "ü.user"])
def test_a_malformed_username_is_refused_without_a_lookup_and_counts_against_the_source(portal: Portal,
                                                                                        username: str) -> None:
    handled = portal.login(username=username)
    assert handled.code is ResultCode.UNAUTHENTICATED
    assert portal.table.lookups == [] and portal.hasher.verified == []
    assert portal.table.counters[("source", SOURCE)].failures == 1
    assert "username" not in handled.log_fields()
    assert username not in json.dumps(reply(handled), ensure_ascii=False)


@pytest.mark.parametrize("missing", ["username", "password"])
def test_token_take_names_a_missing_field(portal: Portal, missing: str) -> None:
    form = {"username": "bv01001.his", "password": MD5}
    form[missing] = ""
    handled = portal.post("/api/token/take", form)
    assert handled.code is ResultCode.BAD_REQUEST
    assert missing in reply(handled)["thongDiep"]


def test_a_user_is_locked_after_n_failures_and_unlocked_after_lock_seconds(portal: Portal) -> None:
    wrong = password_md5("guess")
    for _ in range(4):
        assert portal.login(md5=wrong).code is ResultCode.UNAUTHENTICATED
    locked = portal.login(md5=wrong)
    assert locked.code is ResultCode.LOCKED
    body = reply(locked)
    assert body["thoiGianMoKhoa"] == portal_time(NOW + timedelta(seconds=900)) == "20261122101500"
    assert "10:15:00 22/11/2026" in body["thongDiep"]
    assert locked.reply.http()["headers"]["Retry-After"] == "900"
    assert portal.metrics.counts["PortalLockouts"] == 1
    verified = len(portal.hasher.verified)
    # even the right password is refused while locked, and is not verified at all
    portal.clock.advance(899)
    assert portal.login().code is ResultCode.LOCKED
    assert len(portal.hasher.verified) == verified
    portal.clock.advance(1)
    assert portal.login().code is ResultCode.OK


def test_failures_outside_the_window_do_not_add_up(portal: Portal) -> None:
    wrong = password_md5("guess")
    for _ in range(4):
        portal.login(md5=wrong)
    portal.clock.advance(901)
    for _ in range(4):
        assert portal.login(md5=wrong).code is ResultCode.UNAUTHENTICATED


def test_a_successful_login_resets_the_users_failures(portal: Portal) -> None:
    wrong = password_md5("guess")
    for _ in range(4):
        portal.login(md5=wrong)
    assert portal.login().code is ResultCode.OK
    for _ in range(4):
        assert portal.login(md5=wrong).code is ResultCode.UNAUTHENTICATED


def test_an_unknown_user_locks_like_a_real_one(portal: Portal) -> None:
    answers = [portal.login(username="nobody.here").code for _ in range(6)]
    assert answers == [ResultCode.UNAUTHENTICATED] * 4 + [ResultCode.LOCKED] * 2


def test_a_source_is_refused_after_its_failures_whoever_it_tried() -> None:
    portal = make_portal(lock_after=5, source_lock_after=3, lock_for=timedelta(seconds=900))
    assert portal.login(username="first.name").code is ResultCode.UNAUTHENTICATED
    assert portal.login(username="' OR 1=1 --").code is ResultCode.UNAUTHENTICATED
    third = portal.login(username="second.name")
    assert third.code is ResultCode.THROTTLED
    lookups = len(portal.table.lookups)
    refused = portal.login()  # even the right password, from there
    assert refused.code is ResultCode.THROTTLED and len(portal.table.lookups) == lookups
    assert refused.reply.http()["headers"]["Retry-After"] == "900"
    assert portal.login(source="192.0.2.44").code is ResultCode.OK  # elsewhere
    portal.clock.advance(900)
    assert portal.login().code is ResultCode.OK


def test_a_disabled_account_gets_no_token(portal: Portal) -> None:
    portal.table.accounts["bv01001.his"] = replace(portal.table.accounts["bv01001.his"], disabled=True)
    assert portal.login().code is ResultCode.FORBIDDEN
    assert portal.login(md5=password_md5("guess")).code is ResultCode.UNAUTHENTICATED


# --- guiHoSoXml* ------------------------------------------------------------------------------------------

def test_submit(portal: Portal) -> None:
    handled = portal.submit(portal.token())
    body = reply(handled)
    assert handled.code is ResultCode.OK
    assert set(body) == {"maKetQua", "maGiaoDich", "thoiGianTiepNhan", "thongDiep"}
    txn = body["maGiaoDich"]
    assert is_transaction_id(txn) and txn.startswith("01001-20261122100000-")
    assert body["thoiGianTiepNhan"] == "20261122100000"
    data, metadata = portal.inbox.objects[f"inbox/01001/portal/{txn}.xml"]
    assert data == XML
    assert metadata == {"transaction-id": txn, "channel": "portal", "endpoint": "guiHoSoXmlQD4750"}
    assert portal.metrics.counts["PortalFilesReceived"] == 1
    assert handled.transaction_id == txn and handled.file_bytes == len(XML)


@pytest.mark.parametrize("path", ["/api/qd130/guiHoSoXmlQD3176", "/api/qd130/guiHoSoXmlQD130",
                                  "/API/QD130/GUIHOSOXMLQD4750/"])
@pytest.mark.parametrize("kind", ["130", "4750", "3176"])
def test_every_submit_path_and_document_type(portal: Portal, path: str, kind: str) -> None:
    handled = portal.submit(portal.token(), path=path, loaiHoSo=kind)
    assert handled.code is ResultCode.OK
    (_, metadata), = portal.inbox.objects.values()
    assert metadata["endpoint"] == route("POST", path).name  # type: ignore[union-attr]


def test_check_in(portal: Portal) -> None:
    headers = portal.token()
    handled = portal.submit(headers, CHECK_IN, path="/api/qd130/checkInKcbQd4750", loaiHoSo="0")
    assert handled.code is ResultCode.OK
    (data, metadata), = portal.inbox.objects.values()
    assert data == CHECK_IN and metadata["endpoint"] == "checkInKcbQd4750"
    refused = portal.submit(headers, CHECK_IN, path="/api/qd130/checkInKcbQd4750", loaiHoSo="130")
    assert refused.code is ResultCode.BAD_REQUEST and "loaiHoSo" in reply(refused)["thongDiep"]
    assert portal.submit(headers, loaiHoSo="0").code is ResultCode.BAD_REQUEST


@pytest.mark.parametrize("missing", ["accessToken", "tokenId", "passwordHash", "username", "loaiHoSo", "maTinh",
                                     "maCSKCB", "fileHSBase64"])
def test_a_missing_field_is_named_and_nothing_is_written(portal: Portal, missing: str) -> None:
    headers = portal.token()
    secret_values = set(headers.values())
    if missing in headers:
        headers[missing] = " "
        handled = portal.submit(headers)
    else:
        handled = portal.submit(headers, **{missing: ""})
    body = reply(handled)
    assert handled.code is ResultCode.BAD_REQUEST
    assert body["thongDiep"].endswith(f": {missing}.")
    assert body["maGiaoDich"] == ""
    assert not portal.inbox.objects
    assert not any(value in handled.reply.http()["body"] for value in secret_values)


def test_malformed_codes_are_400_and_a_field_given_twice_too(portal: Portal) -> None:
    headers = portal.token()
    assert portal.submit(headers, maCSKCB="1001").code is ResultCode.BAD_REQUEST
    assert portal.submit(headers, maTinh="1").code is ResultCode.BAD_REQUEST
    twice = portal.post(SUBMIT, body=urlencode({"username": "bv01001.his", "loaiHoSo": "130", "maTinh": "01",
                                                "maCSKCB": "01001", "fileHSBase64": base64.b64encode(XML).decode()})
                        + "&MACSKCB=79001", headers=headers)
    assert twice.code is ResultCode.BAD_REQUEST and "maCSKCB" in reply(twice)["thongDiep"]
    assert not portal.inbox.objects


def test_header_and_field_names_are_case_insensitive(portal: Portal) -> None:
    headers = {name.upper(): value for name, value in portal.token().items()}
    form = {"USERNAME": "bv01001.his", "LoaiHoSo": "130", "matinh": "01", "MACSKCB": "01001",
            "filehsbase64": base64.b64encode(XML).decode()}
    assert portal.post(SUBMIT, form, headers=headers).code is ResultCode.OK


def test_a_plus_sent_unencoded_arrives_as_a_space_and_is_read_back(portal: Portal) -> None:
    data = b"<a>" + bytes(range(256)) * 3 + b"</a>"
    encoded = base64.encodebytes(data).decode()  # with line breaks, as .NET's InsertLineBreaks and MIME do
    assert "+" in encoded and "\n" in encoded
    body = urlencode({"username": "bv01001.his", "loaiHoSo": "130", "maTinh": "01", "maCSKCB": "01001"})
    body += "&fileHSBase64=" + encoded.replace("\n", "%0D%0A").replace("/", "%2F")  # "+" left as it is
    handled = portal.post(SUBMIT, body=body, headers=portal.token())
    assert handled.code is ResultCode.OK
    assert next(iter(portal.inbox.objects.values()))[0] == data


def test_a_base64_encoded_event_body_is_read(portal: Portal) -> None:
    form = {"username": "bv01001.his", "loaiHoSo": "130", "maTinh": "01", "maCSKCB": "01001",
            "fileHSBase64": base64.b64encode(XML).decode()}
    body = base64.b64encode(urlencode(form).encode()).decode()
    assert portal.post(SUBMIT, body=body, headers=portal.token(), base64_body=True).code is ResultCode.OK
    assert portal.post(SUBMIT, body="%%%not base64", headers=portal.token(),
                       base64_body=True).code is ResultCode.BAD_REQUEST


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize("encoded", ["this is not base64!", "PGE", "PGE+Pg=", "PGE+Pg==Pg==", _b64(b"hello, not XML"),
                                     _b64(b"%PDF-1.7 ..."), _b64(b" \r\n "), _b64(b"\xff\xfe<\x00a\x00>\x00")])
def test_a_file_that_is_not_base64_xml_is_415(portal: Portal, encoded: str) -> None:
    handled = portal.submit(portal.token(), fileHSBase64=encoded)
    assert handled.code is ResultCode.UNSUPPORTED
    assert encoded not in handled.reply.http()["body"]
    assert not portal.inbox.objects


def test_a_file_with_a_bom_and_leading_whitespace_is_xml(portal: Portal) -> None:
    assert portal.submit(portal.token(), b"\xef\xbb\xbf\r\n  " + XML).code is ResultCode.OK


def test_a_form_of_another_content_type_is_415(portal: Portal) -> None:
    headers = {**portal.token(), "Content-Type": "multipart/form-data; boundary=x"}
    handled = portal.post(SUBMIT, {"username": "bv01001.his"}, headers=headers)
    assert handled.code is ResultCode.UNSUPPORTED
    assert "application/x-www-form-urlencoded" in reply(handled)["thongDiep"]


def test_too_large_decoded_or_as_a_body_is_413_with_the_upload_link_alternative() -> None:
    portal = make_portal(max_object_bytes=1000)
    headers = portal.token()
    assert portal.submit(headers, b"<a>" + b"x" * 993 + b"</a>").code is ResultCode.OK  # exactly 1000 bytes
    too_large = portal.submit(headers, b"<a>" + b"x" * 994 + b"</a>")
    assert too_large.code is ResultCode.TOO_LARGE
    assert "taoLienKetTaiLen" in reply(too_large)["thongDiep"]
    # a body over the form's limit is refused before it is parsed: this one would otherwise be a 400
    body = "%ZZ" * (portal.service.policy.max_body_bytes // 3 + 1)
    assert portal.post(SUBMIT, body=body, headers=headers).code is ResultCode.TOO_LARGE
    assert len(portal.inbox.objects) == 1


def test_an_expired_token_is_401(portal: Portal) -> None:
    headers = portal.token()
    portal.clock.advance(3600)
    handled = portal.submit(headers)
    assert handled.code is ResultCode.UNAUTHENTICATED and handled.reason == "token expired"


@pytest.mark.parametrize("part", [1, 2])
def test_a_forged_token_is_401(portal: Portal, part: int) -> None:
    headers = portal.token()
    pieces = headers["accessToken"].split(".")
    middle = len(pieces[part]) // 2
    pieces[part] = pieces[part][:middle] + ("A" if pieces[part][middle] != "A" else "B") + pieces[part][middle + 1:]
    handled = portal.submit({**headers, "accessToken": ".".join(pieces)})
    assert handled.code is ResultCode.UNAUTHENTICATED
    assert not portal.inbox.objects


def test_another_facilitys_code_is_403_and_nothing_is_written(portal: Portal) -> None:
    handled = portal.submit(portal.token(), maCSKCB="79001")
    assert handled.code is ResultCode.FORBIDDEN
    assert not portal.inbox.objects
    # even with the other facility's own token and username, a file goes to the token's facility only
    other = portal.token("bv79001.his", password_md5("another-password-79001"))
    assert portal.submit(other, username="bv79001.his", maCSKCB="01001", maTinh="79").code is ResultCode.FORBIDDEN
    assert portal.submit(other, username="bv79001.his", maCSKCB="79001", maTinh="79").code is ResultCode.OK
    assert [key.split("/")[1] for key in portal.inbox.objects] == ["79001"]


def test_another_province_is_403(portal: Portal) -> None:
    assert portal.submit(portal.token(), maTinh="79").code is ResultCode.FORBIDDEN
    assert not portal.inbox.objects


@pytest.mark.parametrize(("change", "reason"), [
    ({"tokenId": "00000000-0000-4000-8000-000000000000"}, "tokenId"),
    ({"passwordHash": password_md5("something else")}, "passwordHash"),
    ({"passwordHash": "not-an-md5"}, "passwordHash"),
])
def test_a_header_that_is_not_the_tokens_is_401(portal: Portal, change: dict[str, str], reason: str) -> None:
    handled = portal.submit({**portal.token(), **change})
    assert handled.code is ResultCode.UNAUTHENTICATED and reason in handled.reason
    assert not portal.inbox.objects


def test_a_username_that_is_not_the_tokens_is_401(portal: Portal) -> None:
    handled = portal.submit(portal.token(), username="bv79001.his")
    assert handled.code is ResultCode.UNAUTHENTICATED and "username" in handled.reason


def test_a_rotated_password_revokes_earlier_tokens(portal: Portal) -> None:
    old = portal.token()
    new_md5 = password_md5("a brand new password")
    portal.table.rotate("bv01001.his", new_md5)
    assert portal.submit(old).code is ResultCode.UNAUTHENTICATED
    assert portal.login().code is ResultCode.UNAUTHENTICATED
    assert portal.submit(portal.token(md5=new_md5)).code is ResultCode.OK


def test_a_disabled_or_locked_account_cannot_use_its_token(portal: Portal) -> None:
    headers = portal.token()
    for _ in range(5):
        portal.login(md5=password_md5("guess"))
    assert portal.submit(headers).code is ResultCode.LOCKED
    portal.table.clear_failures("bv01001.his")
    portal.table.accounts["bv01001.his"] = replace(portal.table.accounts["bv01001.his"], disabled=True)
    assert portal.submit(headers).code is ResultCode.FORBIDDEN
    assert not portal.inbox.objects


def test_the_facility_rate_limit_is_429_and_writes_nothing() -> None:
    portal = make_portal(rate_per_minute=2)
    headers = portal.token()
    portal.clock.advance(15)
    assert [portal.submit(headers).code for _ in range(3)] == [ResultCode.OK, ResultCode.OK, ResultCode.THROTTLED]
    assert len(portal.inbox.objects) == 2
    refused = portal.submit(headers)
    assert refused.reply.http()["headers"]["Retry-After"] == "45"
    # the other facility has its own minute
    other = portal.token("bv79001.his", password_md5("another-password-79001"))
    assert portal.submit(other, username="bv79001.his", maCSKCB="79001", maTinh="79").code is ResultCode.OK
    portal.clock.advance(45)  # the next minute
    assert portal.submit(headers).code is ResultCode.OK


def test_an_unknown_path_or_method_is_405(portal: Portal) -> None:
    for handled in (portal.post("/api/qd130/xoaHoSo", {}), portal.post("/api/token/take", {}, method="GET"),
                    portal.post("/../../etc/passwd", {})):
        assert handled.code is ResultCode.METHOD_NOT_ALLOWED
        assert handled.reply.http()["headers"]["Allow"] == "POST"
        assert handled.path is None and handled.log_fields()["path"] == "(unknown)"


def test_an_internal_error_is_500_with_no_details(portal: Portal) -> None:
    portal.inbox.broken = True
    handled = portal.submit(portal.token())
    assert handled.code is ResultCode.INTERNAL
    assert isinstance(handled.failure, OSError)
    assert "S3" not in handled.reply.http()["body"]


# --- traCuuKetQua -----------------------------------------------------------------------------------------

def _lookup(portal: Portal, headers: dict[str, str], txn: str, facility: str = "01001") -> Handled:
    return portal.post("/api/qd130/traCuuKetQua", {"username": "bv01001.his", "maCSKCB": facility,
                                                   "maGiaoDich": txn}, headers=headers)


def test_lookup_404_202_200(portal: Portal) -> None:
    headers = portal.token()
    txn = reply(portal.submit(headers))["maGiaoDich"]
    processing = _lookup(portal, headers, txn)
    assert processing.code is ResultCode.PROCESSING
    assert reply(processing) == {"maKetQua": "202", "maGiaoDich": txn, "thoiGianTiepNhan": "20261122100000",
                                 "thongDiep": "Hồ sơ đang được xử lý."}
    receipt = {"receipt_version": "2", "transaction_id": txn, "accepted": False, "rejected": False,
               "visits": [{"accepted": True}, {"accepted": False}]}
    portal.receipts.objects[f"receipts/01001/{txn}.xml.receipt.json"] = json.dumps(receipt).encode()
    found = reply(_lookup(portal, headers, txn))
    assert found["maKetQua"] == "200" and found["trangThai"] == "PARTIAL" and found["bienNhan"] == receipt
    unknown = new_transaction_id("01001", NOW)
    assert reply(_lookup(portal, headers, unknown)) == {
        "maKetQua": "404", "maGiaoDich": unknown, "thoiGianTiepNhan": "20261122100000",
        "thongDiep": "Không tìm thấy giao dịch."}


def test_lookup_of_a_malformed_or_another_facilitys_id_is_404(portal: Portal) -> None:
    headers = portal.token()
    malformed = reply(_lookup(portal, headers, "../../receipts/79001/x"))
    assert malformed["maKetQua"] == "404" and malformed["maGiaoDich"] == "" and "79001" not in json.dumps(malformed)
    theirs = new_transaction_id("79001", NOW)
    portal.receipts.objects[receipt_key(theirs)] = b'{"accepted": true}'
    assert _lookup(portal, headers, theirs).code is ResultCode.NOT_FOUND
    assert _lookup(portal, headers, theirs, facility="79001").code is ResultCode.FORBIDDEN


def test_a_large_receipt_is_answered_with_a_link(portal: Portal) -> None:
    headers = portal.token()
    txn = reply(portal.submit(headers))["maGiaoDich"]
    receipt = {"accepted": True, "visits": [{"accepted": True, "pad": "x" * 5000}]}
    portal.receipts.objects[receipt_key(txn)] = json.dumps(receipt).encode()
    body = reply(_lookup(portal, headers, txn))
    assert body["trangThai"] == "ACCEPTED" and body["bienNhan"] is None
    assert body["lienKetBienNhan"].startswith(f"https://receipts.example/{receipt_key(txn)}")


# --- taoLienKetTaiLen -------------------------------------------------------------------------------------

def test_upload_link(portal: Portal) -> None:
    headers = portal.token()
    form = {"username": "bv01001.his", "maTinh": "01", "maCSKCB": "01001", "loaiHoSo": "130"}
    handled = portal.post("/api/qd130/taoLienKetTaiLen", form, headers=headers)
    body = reply(handled)
    assert handled.code is ResultCode.OK
    txn = body["maGiaoDich"]
    assert portal.inbox.links == [portal_inbox_key(txn)] and txn.startswith("01001-")
    assert body["uploadUrl"].startswith(f"https://inbox.example/inbox/01001/portal/{txn}.xml")
    assert body["uploadMethod"] == "PUT" and body["uploadHeaders"]["Content-Type"] == "application/xml"
    assert body["hetHan"] == "20261122101500"
    assert _lookup(portal, headers, txn).code is ResultCode.NOT_FOUND  # nothing uploaded yet
    assert portal.post("/api/qd130/taoLienKetTaiLen", {**form, "maCSKCB": "79001"},
                       headers=headers).code is ResultCode.FORBIDDEN
    assert portal.post("/api/qd130/taoLienKetTaiLen", {**form, "loaiHoSo": "9"},
                       headers=headers).code is ResultCode.BAD_REQUEST
    assert portal.table.rates[("01001", "202611220300")] == 1  # links count against the facility's rate
