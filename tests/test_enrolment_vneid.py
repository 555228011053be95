"""The health book's profile and vaccination history on VNeID (docs/vneid-contract.md "Profile and vaccinations"):
VneidClient.put_profile / put_vaccination against the fake over HTTP, the fake's checks, its counters and the
citizen's HTML view."""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from healthbook.vneid import PermanentDeliveryError, RetryableDeliveryError, VneidClient
from healthbook.vneid.client import canonical_json
from healthbook_dev.fakes.vneid import FakeVneid, render_health_book_html, vaccine_names

KEY = "ck_" + "e5f6a7b8" * 4
RECORD = "0f" * 16
PROFILE: dict[str, Any] = {
    "schema": "healthbook-profile/1", "name": "Trần Thị Bình", "birth_date": "1985-07",
    "sex": {"code": "2", "label": "Nữ", "label_en": "female"}, "id_number": "079185000123",
    "social_insurance_number": "7912345678", "insurance_cards": ["HC4797912345678"], "registered_facilities": ["79001"],
    "card_valid_from": ["2026-01-01"], "card_valid_to": ["2026-12-31"],
    "province": {"code": "79", "label": "Thành phố Hồ Chí Minh", "label_en": None},
    "commune": {"code": "26734", "label": None, "label_en": None},
}
DOSE: dict[str, Any] = {
    "schema": "healthbook-vaccination/1",
    "vaccine": {"code": "COVID-AZ", "label": "Vắc xin phòng COVID-19 AstraZeneca (Vaxzevria)",
                "label_en": "COVID-19 vaccine AstraZeneca (Vaxzevria, ChAdOx1-S)", "programme": "COVID19",
                "listed": True},
    "dose_number": 1, "date": "2021-07-10", "facility": {"code": "79001"}, "lot_number": "K38929",
}


@pytest.fixture
def fake() -> Iterator[FakeVneid]:
    with FakeVneid.start() as running:
        yield running


@pytest.fixture
def client(fake: FakeVneid) -> Iterator[VneidClient]:
    with VneidClient(fake.url, auth=fake.oauth2(), timeout=(1.0, 2.0)) as c:
        yield c


def test_a_profile_is_created_then_unchanged_then_updated(fake: FakeVneid, client: VneidClient) -> None:
    assert client.put_profile(KEY, PROFILE) == "created"
    assert client.put_profile(KEY, PROFILE) == "unchanged"
    moved = {**PROFILE, "commune": {"code": "26740", "label": None, "label_en": None}}
    assert client.put_profile(KEY, moved) == "updated"
    assert client.put_profile(KEY, PROFILE) == "updated"  # back to the first body: a change again, not a replay
    assert fake.profile(KEY) == PROFILE and fake.profile("ck_" + "0" * 32) is None
    stats = requests.get(f"{fake.url}/_admin/stats", timeout=5).json()
    assert (stats["profile_puts"], stats["profiles_created"], stats["profiles_unchanged"],
            stats["profiles_updated"]) == (4, 1, 1, 2)
    assert stats["puts"] == 0 and stats["deliveries"] == 0  # the entries' counters are the visits' alone


def test_vaccinations_are_kept_per_record(fake: FakeVneid, client: VneidClient) -> None:
    second = {**DOSE, "dose_number": 2, "date": "2021-09-22"}
    assert client.put_vaccination(KEY, "b" * 32, second) == "created"
    assert client.put_vaccination(KEY, RECORD, DOSE) == "created"
    assert client.put_vaccination(KEY, RECORD, DOSE) == "unchanged"
    assert client.put_vaccination(KEY, RECORD, {**DOSE, "lot_number": "K1"}) == "updated"
    history = fake.vaccinations(KEY)
    assert [(v["record_id"], v["dose_number"], v["lot_number"]) for v in history] == [
        (RECORD, 1, "K1"), ("b" * 32, 2, "K38929")]  # by date
    book = requests.get(f"{fake.url}/v1/citizens/{KEY}/health-book", timeout=5).json()
    assert book["vaccinations"] == history and book["profile"] is None and book["entries"] == []
    assert fake.counts()["vaccinations_created"] == 2 and fake.counts()["vaccinations_unchanged"] == 1


def test_the_request_is_one_put_keyed_by_the_hash_of_its_canonical_body() -> None:
    sent: list[tuple[str, str, bytes, dict[str, str]]] = []

    class Session:
        def request(self, method: str, url: str, *, data: bytes, headers: dict[str, str], **_: Any) -> Any:
            sent.append((method, url, data, headers))
            response = requests.Response()
            response.status_code, response._content = 204, b""
            return response

        def close(self) -> None:
            pass

    from healthbook.vneid import MutualTLS

    client = VneidClient("https://vneid.example/", auth=MutualTLS("c.pem", "k.pem"), session=Session())  # type: ignore[arg-type]
    assert client.put_vaccination("a/b", "r 1", DOSE) == "unchanged"  # 204
    method, url, body, headers = sent[0]
    assert (method, url) == ("PUT", "https://vneid.example/v1/citizens/a%2Fb/health-book/vaccinations/r%201")
    assert body == canonical_json({"citizen_key": "a/b", "record_id": "r 1", "vaccination": DOSE})
    assert json.loads(body) == {"citizen_key": "a/b", "record_id": "r 1", "vaccination": DOSE}
    assert headers["Idempotency-Key"] == hashlib.sha256(body).hexdigest()
    assert headers["Content-Type"].startswith("application/json")
    client.put_profile("a/b", PROFILE)
    assert sent[1][1] == "https://vneid.example/v1/citizens/a%2Fb/health-book/profile"


@pytest.mark.parametrize(("status", "error"), [(503, RetryableDeliveryError), (429, RetryableDeliveryError),
                                               (408, RetryableDeliveryError), (400, PermanentDeliveryError),
                                               (409, PermanentDeliveryError), (422, PermanentDeliveryError)])
def test_answers_are_classified_as_for_deliveries(fake: FakeVneid, client: VneidClient, status: int,
                                                  error: type[Exception]) -> None:
    fake.respond_next(status, retry_after=3)
    with pytest.raises(error) as caught:
        client.put_profile(KEY, PROFILE)
    assert getattr(caught.value, "status", None) == status
    if error is RetryableDeliveryError:
        assert getattr(caught.value, "retry_after", None) == 3
    assert client.put_profile(KEY, PROFILE) == "created"  # the injected answer stored nothing


def test_an_outage_and_a_timeout_are_retryable(fake: FakeVneid) -> None:
    with VneidClient(fake.url, auth=fake.oauth2(), timeout=(1.0, 0.3)) as quick:
        quick.put_profile(KEY, PROFILE)  # takes the token first
        fake.fail("timeout", seconds=1.0)
        with pytest.raises(RetryableDeliveryError) as caught:
            quick.put_vaccination(KEY, RECORD, DOSE)
        assert caught.value.status is None and caught.value.code == "timeout"


def test_a_revoked_token_is_refreshed_once(fake: FakeVneid, client: VneidClient) -> None:
    client.put_profile(KEY, PROFILE)
    fake.revoke_tokens()
    assert client.put_profile(KEY, PROFILE) == "unchanged"
    assert client.token_fetches == 2


def test_arguments_that_are_bugs_send_nothing(fake: FakeVneid, client: VneidClient) -> None:
    with pytest.raises(ValueError, match="citizen_key"):
        client.put_profile("", PROFILE)
    with pytest.raises(ValueError, match="record_id"):
        client.put_vaccination(KEY, "", DOSE)
    with pytest.raises(ValueError, match="mapping"):
        client.put_vaccination(KEY, RECORD, [1, 2])  # type: ignore[arg-type]
    assert fake.request_count == 0


def _put(fake: FakeVneid, path: str, body: bytes, **headers: str) -> requests.Response:
    token = requests.post(fake.token_url, data={"grant_type": "client_credentials"},
                          auth=(fake.client_id, fake.client_secret), timeout=5).json()["access_token"]
    sent = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Idempotency-Key": hashlib.sha256(body).hexdigest(), **headers}
    return requests.put(f"{fake.url}{path}", data=body, headers=sent, timeout=5)


@pytest.mark.parametrize(("path", "document", "headers", "status", "error"), [
    (f"/v1/citizens/{KEY}/health-book/profile", {"citizen_key": KEY, "profile": PROFILE},
     {"Idempotency-Key": "0" * 64}, 400, "idempotency_key_mismatch"),
    (f"/v1/citizens/{KEY}/health-book/profile", {"citizen_key": KEY, "profile": PROFILE},
     {"Idempotency-Key": ""}, 400, "idempotency_key_required"),
    (f"/v1/citizens/{KEY}/health-book/profile", {"citizen_key": "ck_" + "1" * 32, "profile": PROFILE}, {}, 400,
     "entry_mismatch"),
    (f"/v1/citizens/{KEY}/health-book/profile", {"citizen_key": KEY, "profile": "x"}, {}, 400, "invalid_body"),
    (f"/v1/citizens/{KEY}/health-book/vaccinations/{RECORD}",
     {"citizen_key": KEY, "record_id": "other", "vaccination": DOSE}, {}, 400, "entry_mismatch"),
    (f"/v1/citizens/{KEY}/health-book/vaccinations/a.b", {"citizen_key": KEY, "record_id": "a.b",
                                                          "vaccination": DOSE}, {}, 400, "invalid_record_id"),
    ("/v1/citizens/short/health-book/profile", {"citizen_key": "short", "profile": PROFILE}, {}, 400,
     "invalid_citizen_key"),
    (f"/v1/citizens/{KEY}/health-book/profile", {"citizen_key": KEY, "profile": PROFILE},
     {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
])
def test_the_fake_checks_what_the_contract_says(fake: FakeVneid, path: str, document: dict[str, Any],
                                               headers: dict[str, str], status: int, error: str) -> None:
    answer = _put(fake, path, canonical_json(document), **headers)
    assert (answer.status_code, answer.json()["error"]) == (status, error)
    assert fake.profile(KEY) is None and fake.vaccinations(KEY) == []


def test_the_fake_answers_unchanged_with_a_flag(fake: FakeVneid) -> None:
    body = canonical_json({"citizen_key": KEY, "profile": PROFILE})
    first = _put(fake, f"/v1/citizens/{KEY}/health-book/profile", body)
    again = _put(fake, f"/v1/citizens/{KEY}/health-book/profile", body)
    assert (first.status_code, first.json()["result"]) == (201, "created")
    assert (again.status_code, again.json()["unchanged"], again.json()["receipt_id"]) == (
        200, True, first.json()["receipt_id"])
    assert requests.get(f"{fake.url}/v1/citizens/{KEY}/health-book/profile", timeout=5).status_code == 405


def test_the_citizen_sees_the_administrative_section_and_the_vaccination_history(fake: FakeVneid,
                                                                                  client: VneidClient) -> None:
    client.put_profile(KEY, {**PROFILE, "name": "<script>alert(1)</script> Bình"})
    client.put_vaccination(KEY, RECORD, DOSE)
    unlisted = {**DOSE, "vaccine": {"code": "VX-MOI", "label": "Vắc xin mới", "label_en": None, "programme": None,
                                    "listed": False}, "date": "2024-03-01"}
    client.put_vaccination(KEY, "c" * 32, unlisted)
    page = requests.get(f"{fake.url}/v1/citizens/{KEY}/health-book.html", timeout=5).text
    assert "Thông tin hành chính" in page and "Lịch sử tiêm chủng" in page
    assert "<script>" not in page and html.escape("<script>alert(1)</script> Bình") in page
    for label, value in (("Ngày sinh", "07/1985"), ("Giới tính", "Nữ"), ("Mã số BHXH", "7912345678"),
                         ("Tỉnh/thành phố", "Thành phố Hồ Chí Minh"), ("Thẻ có giá trị đến", "31/12/2026")):
        assert f"<dt>{label}</dt><dd>{html.escape(value)}</dd>" in page, label
    assert "healthbook-profile/1" not in page
    assert vaccine_names()["COVID-AZ"] in page and "<td>10/07/2021</td>" in page and "<td>K38929</td>" in page
    assert "Vắc xin mới (mã VX-MOI, ngoài danh mục)" in page
    assert page.index("10/07/2021") < page.index("01/03/2024")  # oldest dose first
    assert "Chưa có lượt khám chữa bệnh nào." in page


def test_the_view_without_lists_is_as_before() -> None:
    page = render_health_book_html(KEY, [])
    assert "Lịch sử tiêm chủng" not in page and "Administrative details" not in page
