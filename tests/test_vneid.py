"""VNeID delivery: the client against the fake service on 127.0.0.1, plus a stub session for mTLS arguments."""

from __future__ import annotations

import html
import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import pytest
import requests
from healthbook.projection import mapping as projection_mapping
from healthbook.projection import project
from healthbook.signing.merkle import canonical_visit
from healthbook.validation import validate_bytes
from healthbook.vneid import (
    MutualTLS,
    OAuth2ClientCredentials,
    PermanentDeliveryError,
    RetryableDeliveryError,
    VneidClient,
    credentials_from_secret,
)
from healthbook.vneid.client import parse_retry_after
from healthbook_dev.fakes.vneid import (
    FIELD_LABELS,
    GROUP_HEADINGS,
    ITEM_TITLES,
    FakeVneid,
    entry_mapping,
    render_health_book_html,
)
from healthbook_dev.generate import build_visit, submission

KEY = "ck_" + "a1b2c3d4" * 4
VISIT = "7900124012791786709"


def make_entry(visit: str = VISIT, version: int = 1, *, facility: str = "Bệnh viện Chợ Rẫy",
               start: str = "2025-03-01", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "projection_id": f"{visit}.v{version}.{facility.encode().hex()[:8]}",
        "visit_id": visit,
        "version": version,
        "supersedes": None if version == 1 else f"{visit}.v{version - 1}",
        "citizen": {"citizen_key": KEY},
        "facility": {"code": "79001", "name": facility},
        "period": {"start": start, "end": start},
        "diagnoses": [{"code": "J18.9", "name": "Viêm phổi, không đặc hiệu"}],
        "drugs": [{"name": "Amoxicillin", "strength": "500mg", "quantity": 14}],
        "results": [{"name": "Bạch cầu", "value": 12.1, "unit": "G/L", "flag": "H"}],
    }
    entry.update(extra)
    return entry


@pytest.fixture
def fake() -> Iterator[FakeVneid]:
    with FakeVneid.start() as running:
        yield running


@pytest.fixture
def client(fake: FakeVneid) -> Iterator[VneidClient]:
    with VneidClient(fake.url, auth=fake.oauth2(), timeout=(1.0, 2.0)) as c:
        yield c


# ------------------------------------------------------------------------------------------------ delivery


def test_delivery_is_stored(fake: FakeVneid, client: VneidClient) -> None:
    entry = make_entry()
    delivery = client.deliver(KEY, entry)
    assert delivery.outcome == "delivered" and not delivery.superseded
    assert delivery.status == 201 and delivery.receipt_id and delivery.elapsed_ms >= 0
    assert (delivery.visit_id, delivery.version) == (VISIT, 1)
    stored = fake.entries(KEY)
    assert len(stored) == 1 and stored[0]["entry"] == entry and stored[0]["receipt_id"] == delivery.receipt_id
    book = requests.get(f"{fake.url}/v1/citizens/{KEY}/health-book", timeout=5).json()
    assert book["entries"][0]["entry"] == entry and book["entries"][0]["projection_id"] == entry["projection_id"]


def test_same_idempotency_key_twice_stores_once_and_replays_the_answer(fake: FakeVneid, client: VneidClient) -> None:
    entry = make_entry()
    first = client.deliver(KEY, entry)
    second = client.deliver(KEY, entry)
    assert (second.status, second.receipt_id, second.outcome) == (first.status, first.receipt_id, "delivered")
    assert second.replayed and not first.replayed
    assert fake.delivery_count == 1 and fake.counts()["replays"] == 1
    assert len(fake.entries(KEY)) == 1


def test_same_idempotency_key_with_another_body_is_refused(fake: FakeVneid, client: VneidClient) -> None:
    client.deliver(KEY, make_entry())
    tampered = make_entry(diagnoses=[{"code": "A09", "name": "Tiêu chảy"}])
    with pytest.raises(PermanentDeliveryError) as caught:
        client.deliver(KEY, tampered)
    assert (caught.value.status, caught.value.code) == (422, "idempotency_key_reused")


def test_newer_version_replaces_and_older_is_superseded(fake: FakeVneid, client: VneidClient) -> None:
    client.deliver(KEY, make_entry(version=1))
    replaced = client.deliver(KEY, make_entry(version=3))
    assert (replaced.status, replaced.outcome) == (200, "delivered")
    older = client.deliver(KEY, make_entry(version=2))  # never delivered before: a new key, an older version
    assert older.outcome == "superseded" and older.superseded
    assert (older.status, older.current_version, older.receipt_id) == (409, 3, None)
    # a late replay of v1 gets its original answer but changes nothing
    assert client.deliver(KEY, make_entry(version=1)).replayed
    stored = fake.entries(KEY)
    assert [s["version"] for s in stored] == [3]
    assert fake.delivery_count == 2


def test_entry_without_projection_id_is_a_bug_not_a_delivery(client: VneidClient) -> None:
    entry = make_entry()
    del entry["projection_id"]
    with pytest.raises(ValueError, match="projection_id"):
        client.deliver(KEY, entry)
    with pytest.raises(ValueError, match="version"):
        client.deliver(KEY, make_entry(version=0))


# ------------------------------------------------------------------------------------------------ failures


def test_5xx_outage_is_retryable_until_it_ends(fake: FakeVneid, client: VneidClient) -> None:
    client.deliver(KEY, make_entry(visit="V1"))  # token in hand
    fake.fail("5xx", seconds=0.5)
    failures = 0
    deadline = time.monotonic() + 5
    while True:
        try:
            delivery = client.deliver(KEY, make_entry())
            break
        except RetryableDeliveryError as exc:
            assert exc.status == 503
            failures += 1
            assert time.monotonic() < deadline, "the outage should have ended"
            time.sleep(0.1)
    assert failures >= 1 and delivery.outcome == "delivered"
    assert fake.delivery_count == 2


def test_timeout_is_retryable(fake: FakeVneid) -> None:
    with VneidClient(fake.url, auth=fake.oauth2(), timeout=(1.0, 0.2)) as client:
        client.deliver(KEY, make_entry(visit="V1"))
        fake.fail("timeout", seconds=2)
        started = time.monotonic()
        with pytest.raises(RetryableDeliveryError) as caught:
            client.deliver(KEY, make_entry())
        assert caught.value.code == "timeout" and caught.value.status is None
        assert time.monotonic() - started < 1.5


def test_slow_answers_within_the_timeout_still_deliver(fake: FakeVneid, client: VneidClient) -> None:
    fake.slow(0.2)
    delivery = client.deliver(KEY, make_entry())
    assert delivery.outcome == "delivered" and delivery.elapsed_ms >= 200


def test_429_carries_retry_after(fake: FakeVneid, client: VneidClient) -> None:
    client.deliver(KEY, make_entry(visit="V1"))
    fake.respond_next(429, retry_after=7)
    with pytest.raises(RetryableDeliveryError) as caught:
        client.deliver(KEY, make_entry())
    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
    assert client.deliver(KEY, make_entry()).outcome == "delivered"  # the injected answer stored nothing


def test_retry_after_as_http_date() -> None:
    now = time.time()
    assert parse_retry_after(formatdate(now + 120, usegmt=True), now=lambda: now) == pytest.approx(120, abs=1)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_400_is_permanent(fake: FakeVneid, client: VneidClient) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        client.deliver("not a citizen key!", make_entry())
    assert (caught.value.status, caught.value.code) == (400, "invalid_citizen_key")
    fake.respond_next(400)
    with pytest.raises(PermanentDeliveryError):
        client.deliver(KEY, make_entry())
    assert fake.delivery_count == 0


def test_connection_refused_is_retryable() -> None:
    with FakeVneid.start() as gone:
        url, auth = gone.url, gone.oauth2()
    with VneidClient(url, auth=auth, timeout=(0.5, 0.5)) as client, \
            pytest.raises(RetryableDeliveryError) as caught:
        client.deliver(KEY, make_entry())
    assert caught.value.code == "token_unreachable"


def test_admin_endpoint_drives_failures(fake: FakeVneid, client: VneidClient) -> None:
    answer = requests.post(f"{fake.url}/_admin/fail", json={"mode": "5xx", "seconds": 30}, timeout=5)
    assert answer.status_code == 200
    with pytest.raises(RetryableDeliveryError):
        client.deliver(KEY, make_entry())
    requests.post(f"{fake.url}/_admin/fail", json={"mode": "5xx", "seconds": 0}, timeout=5)
    assert client.deliver(KEY, make_entry()).outcome == "delivered"
    stats = requests.get(f"{fake.url}/_admin/stats", timeout=5).json()
    assert stats["deliveries"] == 1 and stats["injected_failures"] >= 1


# ------------------------------------------------------------------------------------------------ OAuth2


def test_token_is_cached_and_refreshed_before_expiry(fake: FakeVneid) -> None:
    now = [1000.0]
    with VneidClient(fake.url, auth=fake.oauth2(), clock=lambda: now[0]) as client:
        client.deliver(KEY, make_entry(visit="V1"))
        client.deliver(KEY, make_entry(visit="V2"))
        assert fake.counts()["token_requests"] == 1 == client.token_fetches
        now[0] += fake.token_ttl - 10  # inside the refresh margin
        client.deliver(KEY, make_entry(visit="V3"))
        assert fake.counts()["token_requests"] == 2


def test_401_refreshes_the_token_once(fake: FakeVneid, client: VneidClient) -> None:
    client.deliver(KEY, make_entry(visit="V1"))
    fake.revoke_tokens()
    assert client.deliver(KEY, make_entry()).outcome == "delivered"
    assert fake.counts()["token_requests"] == 2
    fake.respond_next(401, times=2)
    with pytest.raises(PermanentDeliveryError) as caught:
        client.deliver(KEY, make_entry(visit="V3"))
    assert caught.value.status == 401 and fake.counts()["token_requests"] == 3  # one refresh, no loop


def test_bad_client_secret_is_permanent(fake: FakeVneid) -> None:
    auth = OAuth2ClientCredentials(fake.token_url, fake.client_id, "wrong")
    with VneidClient(fake.url, auth=auth) as client, pytest.raises(PermanentDeliveryError) as caught:
        client.deliver(KEY, make_entry())
    assert caught.value.status == 401 and "wrong" not in str(caught.value)
    assert "wrong" not in repr(auth)


# ------------------------------------------------------------------------------------------------ HTML view


def test_html_view_shows_the_visit_and_escapes(fake: FakeVneid, client: VneidClient) -> None:
    client.deliver(KEY, make_entry(visit="OLD", start="2024-01-05", facility="Trạm Y tế Phường 1"))
    client.deliver(KEY, make_entry(
        diagnoses=[{"code": "J18.9", "name": "<script>alert('x')</script>"}], start="2025-03-01"))
    page = requests.get(f"{fake.url}/v1/citizens/{KEY}/health-book.html", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    text = page.text
    assert "Bệnh viện Chợ Rẫy" in text and "Amoxicillin" in text and "Bạch cầu" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert text.index("Bệnh viện Chợ Rẫy") < text.index("Trạm Y tế Phường 1")  # newest visit first


# The view of real entries: generated visit -> validate_bytes -> canonical_visit -> project (as in
# tests/test_health_book_flow.py), rendered by the names of healthbook/projection/mapping.json.

RECEIVED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def real_entry(seed: int, scenario: str, *, version: int = 1,
               edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    visit = build_visit(random.Random(seed), scenario=scenario)
    result = validate_bytes(submission(visit))
    assert result.accepted
    stored: dict[str, Any] = json.loads(canonical_visit(result.visits[0]))
    if edit is not None:
        edit(stored)
    return project(stored, facility=visit.facility, received_at=RECEIVED, version=version)


def test_html_view_renders_a_real_entry_by_the_mapping_names(fake: FakeVneid, client: VneidClient) -> None:
    hostile = 'Thuốc <script>alert("x")</script> & <b>Co.</b>'

    def poison(stored: dict[str, Any]) -> None:
        stored["tables"]["XML2"][0]["TEN_THUOC"] = hostile

    entry = real_entry(11, "inpatient", edit=poison)
    client.deliver(KEY, entry)
    page = requests.get(f"{fake.url}/v1/citizens/{KEY}/health-book.html", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    text = page.text
    main = entry["diagnoses"][0]
    assert main["main"] and main["code"] and main["name"]
    assert f"{html.escape(main['code'])} – {html.escape(main['name'])}" in text  # diagnosis code and name
    other_drug = next(d["name"] for d in entry["drugs"] if d["name"] != hostile)
    assert html.escape(other_drug) in text
    # escaped, never markup: the poisoned drug name comes through as text
    assert "<script>" not in text and "<b>Co." not in text
    assert html.escape(hostile) in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;Co.&lt;/b&gt;" in text
    # Vietnamese headings with the English subtitle, dates in dd/mm/yyyy
    assert '<h3>Chẩn đoán<small lang="en">Diagnoses (ICD-10), main first</small></h3>' in text
    assert '<h3>Thuốc<small lang="en">Medicines</small></h3>' in text
    admitted = datetime.fromisoformat(entry["visit"]["admitted_at"])
    assert f"Ngày vào: {admitted:%d/%m/%Y %H:%M}" in text
    assert html.escape(entry["citizen"]["name"]) in text and entry["visit"]["visit_type"]["label"] in text


@pytest.mark.parametrize(("seed", "scenario"), [(11, "inpatient"), (3, "referral"), (5, "outpatient_reexam"),
                                                (7, "outpatient")])
def test_html_view_shows_exactly_the_groups_present(seed: int, scenario: str) -> None:
    entry = real_entry(seed, scenario)
    text = render_health_book_html(KEY, [{"version": 1, "entry": entry}])
    for group, (title_vi, title_en) in GROUP_HEADINGS.items():
        heading = f'<h3>{html.escape(title_vi)}<small lang="en">{html.escape(title_en)}</small></h3>'
        present = bool(entry[group])
        assert (heading in text) == present, (scenario, group)
    for group in ("drugs", "services", "results"):
        for item in entry[group]:
            title = next(item[n] for n in ITEM_TITLES[group] if item[n])
            assert f"<strong>{html.escape(title)}</strong>" in text, (group, title)


def test_html_view_labels_every_field_the_mapping_names() -> None:
    groups = projection_mapping()["groups"]
    assert entry_mapping() == groups  # the fake reads the projection's own file
    assert list(GROUP_HEADINGS) == list(groups)
    for name, group in groups.items():
        assert set(FIELD_LABELS[name]) == set(group.get("fields", {})), name


def test_html_view_shows_names_not_codes() -> None:
    def in_soc_trang_2024(stored: dict[str, Any]) -> None:
        stored["tables"]["XML1"][0].update(MA_DANTOC="08", MA_QUOCTICH="410", MA_NGHE_NGHIEP="51310",
                                           MATINH_CU_TRU="94", MAHUYEN_CU_TRU="941", MAXA_CU_TRU="31234",
                                           NGAY_VAO="202403051000")

    entry = real_entry(11, "inpatient", edit=in_soc_trang_2024)
    assert entry["schema"] == "healthbook-entry/2"
    text = render_health_book_html(KEY, [{"version": 1, "entry": entry}])
    for label, shown in (("Dân tộc", "HMông"), ("Quốc tịch", "Hàn Quốc"),
                         ("Nghề nghiệp", "Nhân viên dịch vụ và bán hàng"),
                         ("Tỉnh/thành phố", "Tỉnh Sóc Trăng"), ("Quận/huyện (mã)", "941"),
                         ("Xã/phường", "mã 31234"),  # no commune list held: the code, said to be one
                         ("Giới tính", entry["citizen"]["sex"]["label"])):
        assert f"<dt>{label}</dt><dd>{html.escape(shown)}</dd>" in text, label
    assert "Republic of Korea" not in text  # the citizen's view is Vietnamese


def test_html_view_still_renders_a_version_1_entry() -> None:
    old = {"schema": "healthbook-entry/1", "citizen": {"ethnicity": "01", "province": "79"},
           "visit": {"result": {"code": "1", "label": "Khỏi / cured"}}}
    text = render_health_book_html(KEY, [{"version": 1, "entry": old}])
    assert "<dt>Dân tộc</dt><dd>01</dd>" in text and "<dt>Tỉnh/thành phố</dt><dd>79</dd>" in text
    assert "<dt>Kết quả điều trị</dt><dd>Khỏi / cured</dd>" in text


def test_html_view_orders_real_entries_by_admission_newest_first(fake: FakeVneid, client: VneidClient) -> None:
    newer, older = sorted((real_entry(11, "inpatient"), real_entry(3, "referral")),
                          key=lambda entry: entry["visit"]["admitted_at"], reverse=True)
    assert newer["visit"]["admitted_at"] > older["visit"]["admitted_at"]
    client.deliver(KEY, newer)
    client.deliver(KEY, older)  # delivered last, admitted first
    assert [e["visit_id"] for e in fake.entries(KEY)] == [newer["visit_id"], older["visit_id"]]
    text = requests.get(f"{fake.url}/v1/citizens/{KEY}/health-book.html", timeout=5).text
    assert text.index(f"Cơ sở khám chữa bệnh {newer['facility']}") < text.index(
        f"Cơ sở khám chữa bệnh {older['facility']}")


# ------------------------------------------------------------------------------------------------ mTLS, wire


class StubSession:
    def __init__(self, status: int = 201, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.status, self.body, self.headers = status, body, headers or {}

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.calls.append((method, url, kwargs))
        response = requests.Response()
        response.status_code = self.status
        response._content = json.dumps(self.body).encode() if self.body is not None else b""
        response.headers.update(self.headers)
        return response

    def close(self) -> None:
        pass


def test_mtls_passes_cert_and_ca_bundle() -> None:
    session = StubSession(body={"receipt_id": "r-1"})
    auth = MutualTLS("/etc/vneid/client.pem", "/etc/vneid/client.key", ca_bundle="/etc/vneid/ca.pem")
    client = VneidClient("https://vneid.example/", auth=auth, session=session)  # type: ignore[arg-type]
    entry = make_entry(visit="79001/2025 01")
    delivery = client.deliver(KEY, entry)
    assert delivery.receipt_id == "r-1"
    [(method, url, kwargs)] = session.calls
    assert method == "PUT"
    assert url == f"https://vneid.example/v1/citizens/{KEY}/health-book/entries/79001%2F2025%2001"
    assert kwargs["cert"] == ("/etc/vneid/client.pem", "/etc/vneid/client.key")
    assert kwargs["verify"] == "/etc/vneid/ca.pem"
    assert kwargs["timeout"] == (3.05, 10) and kwargs["allow_redirects"] is False
    headers = kwargs["headers"]
    assert "Authorization" not in headers
    assert headers["Idempotency-Key"] == entry["projection_id"]
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(kwargs["data"]) == {"entry": entry, "version": 1, "supersedes": None}
    assert MutualTLS("c", "k").request_kwargs() == {"cert": ("c", "k"), "verify": True}


@pytest.mark.parametrize(("status", "body", "expected"), [
    (204, None, "delivered"),
    (409, {"error": "newer_version_exists", "current_version": 9}, "superseded"),
    (409, {"error": "other_conflict"}, PermanentDeliveryError),
    (408, None, RetryableDeliveryError),
    (502, None, RetryableDeliveryError),
    (404, {"error": "unknown_citizen"}, PermanentDeliveryError),
    (302, None, PermanentDeliveryError),
])
def test_classification(status: int, body: Any, expected: Any) -> None:
    client = VneidClient("https://vneid.example", auth=MutualTLS("c", "k"),
                         session=StubSession(status, body))  # type: ignore[arg-type]
    if isinstance(expected, str):
        assert client.deliver(KEY, make_entry()).outcome == expected
    else:
        with pytest.raises(expected):
            client.deliver(KEY, make_entry())


# ------------------------------------------------------------------------------------------------ secrets


def test_credentials_from_secret() -> None:
    oauth = credentials_from_secret(json.dumps({
        "type": "oauth2", "token_url": "https://id.vneid.example/oauth/token",
        "client_id": "healthbook", "client_secret": "s3cr3t-value", "scope": "healthbook.write"}))
    assert oauth == OAuth2ClientCredentials("https://id.vneid.example/oauth/token", "healthbook", "s3cr3t-value",
                                            "healthbook.write")
    assert "s3cr3t-value" not in repr(oauth)
    mtls = credentials_from_secret('{"type": "mtls", "cert_path": "/opt/c.pem", "key_path": "/opt/k.pem"}')
    assert mtls == MutualTLS("/opt/c.pem", "/opt/k.pem", None)


@pytest.mark.parametrize("secret", [
    "s3cr3t-value not json",
    '["s3cr3t-value"]',
    '{"type": "basic", "password": "s3cr3t-value"}',
    '{"type": "oauth2", "token_url": "https://x", "client_id": "a"}',
    '{"type": "mtls", "cert_path": "/c", "key_path": 7}',
])
def test_bad_secret_names_no_value(secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        credentials_from_secret(secret)
    assert "s3cr3t-value" not in str(caught.value) and caught.value.__cause__ is None
