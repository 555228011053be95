"""The population database over HTTP: PopulationClient against FakePopulationServer on 127.0.0.1, a stub session
for the wire details, and the standalone server (python -m healthbook_dev.fakes.population_server)."""

from __future__ import annotations

import copy
import json
import logging
import random
import signal
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from healthbook.reconcile import (
    Citizen,
    PopulationClient,
    PopulationError,
    PopulationRegistry,
    PopulationUnavailable,
    identity_from_summary,
    reconcile,
)
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.population_server import FakePopulationServer
from healthbook_dev.generate import build_visit

ID = "001203004567"
NAME = "Nguyễn Thị Hằng"
SOCIAL_INSURANCE = "7912345678"
PERSON = Citizen(ID, NAME, "20030412", "2", SOCIAL_INSURANCE)
NFD_PERSON = Citizen("079085001234", unicodedata.normalize("NFD", "Trần Văn Đạt"), "19850000", "1")
UNKNOWN = "001203009999"
UNKNOWN_CARD_NUMBER = "7999999999"
PASSPORT = "B1234567"
VISITS = [build_visit(random.Random(n)) for n in range(40)]
ANSWER = {"id_number": ID, "full_name": NAME, "birth": "20030412", "sex": "2",
          "social_insurance_number": SOCIAL_INSURANCE}


@pytest.fixture
def population() -> FakePopulation:
    return FakePopulation([PERSON, NFD_PERSON])


@pytest.fixture
def server(population: FakePopulation) -> Iterator[FakePopulationServer]:
    with FakePopulationServer.start(population) as running:
        yield running


@pytest.fixture
def client(server: FakePopulationServer) -> Iterator[PopulationClient]:
    with PopulationClient(server.url, timeout=(1.0, 2.0)) as c:
        yield c


def no_personal_data(error: BaseException, *values: str) -> None:
    """Neither the message nor anything chained to it mentions a number, a name or a body."""
    assert error.__cause__ is None and error.__context__ is None
    for value in (ID, UNKNOWN, NAME, SOCIAL_INSURANCE, UNKNOWN_CARD_NUMBER, *values):
        assert value not in str(error) and value not in repr(error)


# ------------------------------------------------------------------------------------------------ round trip


def test_match_unknown_and_counts(server: FakePopulationServer, client: PopulationClient,
                                  population: FakePopulation) -> None:
    assert isinstance(client, PopulationRegistry)
    assert client.lookup(ID) == PERSON
    assert client.lookup(UNKNOWN) is None
    assert client.lookup(PASSPORT) is None  # another ID shape, URL-safe either way
    assert server.lookups == 3 == population.calls
    assert server.counts() == {"requests": 3, "lookups": 3, "social_insurance_lookups": 0, "found": 1,
                               "not_found": 2, "unauthorised": 0, "injected_failures": 0}


def test_lookup_by_social_insurance_and_counts(server: FakePopulationServer, client: PopulationClient,
                                              population: FakePopulation) -> None:
    assert client.lookup_by_social_insurance(SOCIAL_INSURANCE) == PERSON
    assert client.lookup_by_social_insurance(UNKNOWN_CARD_NUMBER) is None
    assert client.lookup(NFD_PERSON.id_number) == NFD_PERSON  # a citizen without a number answers ""
    assert server.lookups == 3 == population.calls
    assert server.counts() == {"requests": 3, "lookups": 3, "social_insurance_lookups": 2, "found": 2,
                               "not_found": 1, "unauthorised": 0, "injected_failures": 0}


def test_names_keep_their_normalisation_form(client: PopulationClient) -> None:
    citizen = client.lookup(NFD_PERSON.id_number)
    assert citizen == NFD_PERSON and unicodedata.is_normalized("NFD", citizen.full_name)
    assert citizen.birth == "19850000"  # unknown month/day pass through as 00


def test_reconcile_over_http_equals_reconcile_in_memory(tmp_path: Path) -> None:
    visits = copy.deepcopy(VISITS)
    for visit in visits[::3]:  # a third without SO_CCCD: found by the card's social-insurance number
        visit.tables["XML1"][0]["SO_CCCD"] = ""
    seeded = FakePopulation.from_visits(visits, mismatch_rate=0.3, unknown_rate=0.15, seed=3)
    identities = [identity_from_summary(v.tables["XML1"][0]) for v in visits]
    direct = [reconcile(identity, seeded) for identity in identities]
    assert {r.status for r in direct} == {"MATCHED", "NEEDS_RECONCILIATION"}
    assert {"UNKNOWN_ID", "UNKNOWN_SOCIAL_INSURANCE"} <= {reason for r in direct for reason in r.reasons}
    seeded.dump(tmp_path / "population.json")  # what the standalone server serves
    with FakePopulationServer.start(FakePopulation.load(tmp_path / "population.json")) as server, \
            PopulationClient(server.url) as client:
        over_http = [reconcile(identity, client) for identity in identities]
        assert server.lookups == seeded.calls and server.counts()["social_insurance_lookups"] >= len(visits) // 3
    assert over_http == direct
    assert [r.citizen_key_material for r in over_http] == [r.citizen_key_material for r in direct]


# ------------------------------------------------------------------------------------------------ failures


def test_5xx_outage_is_unavailable_until_it_ends(server: FakePopulationServer, client: PopulationClient) -> None:
    server.fail("5xx", seconds=0.4)
    with pytest.raises(PopulationUnavailable) as caught:
        client.lookup(ID)
    assert "503" in str(caught.value)
    no_personal_data(caught.value)
    with pytest.raises(PopulationUnavailable):
        reconcile(identity_from_summary({"SO_CCCD": ID, "HO_TEN": NAME, "NGAY_SINH": "20030412",
                                         "GIOI_TINH": "2"}), client)  # propagates: a retry, not UNKNOWN_ID
    deadline = time.monotonic() + 5
    while True:
        try:
            assert client.lookup(ID) == PERSON
            break
        except PopulationUnavailable:
            assert time.monotonic() < deadline, "the outage should have ended"
            time.sleep(0.1)
    assert server.counts()["injected_failures"] >= 2 and server.lookups == 1


def test_failures_of_the_social_insurance_lookup_are_unavailable(server: FakePopulationServer) -> None:
    identity = identity_from_summary({"SO_CCCD": "", "HO_TEN": NAME, "NGAY_SINH": "20030412", "GIOI_TINH": "2",
                                      "MA_THE_BHYT": "GD479" + SOCIAL_INSURANCE})
    with PopulationClient(server.url, timeout=(1.0, 0.2)) as client:
        for mode in ("5xx", "timeout"):
            server.fail(mode, seconds=2)  # type: ignore[arg-type]
            with pytest.raises(PopulationUnavailable) as caught:
                reconcile(identity, client)  # propagates: a retry, not UNKNOWN_SOCIAL_INSURANCE
            no_personal_data(caught.value)
            server.fail(mode, seconds=0)  # type: ignore[arg-type]
        assert reconcile(identity, client).citizen_key_material == ID
    assert server.lookups == 1


def test_timeout_is_unavailable(server: FakePopulationServer) -> None:
    with PopulationClient(server.url, timeout=(1.0, 0.2)) as client:
        server.fail("timeout", seconds=2)
        started = time.monotonic()
        with pytest.raises(PopulationUnavailable) as caught:
            client.lookup(ID)
        assert time.monotonic() - started < 1.5
        no_personal_data(caught.value)
        server.fail("timeout", seconds=0)
        assert client.lookup(ID) == PERSON


def test_connection_refused_is_unavailable() -> None:
    with FakePopulationServer.start(FakePopulation()) as gone:
        url = gone.url
    with PopulationClient(url, timeout=(0.5, 0.5)) as client, pytest.raises(PopulationUnavailable) as caught:
        client.lookup(ID)
    no_personal_data(caught.value, url)  # requests' own message holds the URL, hence the ID


def test_api_key_is_enforced(population: FakePopulation) -> None:
    with FakePopulationServer.start(population, api_key="k3y-value") as server:
        with PopulationClient(server.url, api_key="k3y-value") as client:
            assert client.lookup(ID) == PERSON
        for key in (None, "wrong-key"):
            with PopulationClient(server.url, api_key=key) as client, pytest.raises(PopulationError) as caught:
                client.lookup(ID)
            assert caught.value.status == 401
            no_personal_data(caught.value, "k3y-value", "wrong-key")
            assert "k3y-value" not in repr(client) and "wrong-key" not in repr(client)
        with PopulationClient(server.url, api_key="wrong-key") as client, pytest.raises(PopulationError) as caught:
            client.lookup_by_social_insurance(SOCIAL_INSURANCE)
        assert caught.value.status == 401
        assert server.counts()["unauthorised"] == 3 and server.lookups == 1


def test_admin_endpoint_drives_failures(server: FakePopulationServer, client: PopulationClient) -> None:
    assert requests.post(f"{server.url}/_admin/fail", json={"mode": "5xx", "seconds": 30}, timeout=5).ok
    with pytest.raises(PopulationUnavailable):
        client.lookup(ID)
    requests.post(f"{server.url}/_admin/fail", json={"mode": "5xx", "seconds": 0}, timeout=5)
    assert client.lookup(ID) == PERSON
    stats = requests.get(f"{server.url}/_admin/stats", timeout=5).json()
    assert stats["lookups"] == 1 and stats["injected_failures"] == 1
    assert requests.post(f"{server.url}/_admin/fail", json={"mode": "bogus"}, timeout=5).status_code == 400
    with pytest.raises(ValueError, match="mode"):
        server.fail("slow", 1)  # type: ignore[arg-type]


def test_the_server_refuses_malformed_ids_and_unknown_paths(server: FakePopulationServer,
                                                            client: PopulationClient) -> None:
    answer = requests.get(f"{server.url}/v1/citizens/12345", timeout=5)
    assert (answer.status_code, answer.json()) == (400, {"error": "invalid_id_number"})
    for number in ("12345", ID, "GD479" + SOCIAL_INSURANCE):
        answer = requests.get(f"{server.url}/v1/citizens/by-social-insurance/{number}", timeout=5)
        assert (answer.status_code, answer.json()) == (400, {"error": "invalid_social_insurance_number"})
    assert requests.get(f"{server.url}/v1/other/{ID}", timeout=5).json() == {"error": "not_found"}
    for path in ("by-social-insurance/", f"by-social-insurance/{SOCIAL_INSURANCE}/x"):
        answer = requests.get(f"{server.url}/v1/citizens/{path}", timeout=5)
        assert (answer.status_code, answer.json()) == (404, {"error": "not_found"})
    assert requests.delete(f"{server.url}/v1/citizens/{ID}", timeout=5).status_code == 405
    assert requests.delete(f"{server.url}/v1/citizens/by-social-insurance/{SOCIAL_INSURANCE}",
                           timeout=5).status_code == 405
    # A wrong base URL answers 404 for everything: that must never read as "no such citizen".
    with PopulationClient(f"{server.url}/wrong-prefix") as misconfigured:
        for lookup, number in ((misconfigured.lookup, ID),
                               (misconfigured.lookup_by_social_insurance, SOCIAL_INSURANCE)):
            with pytest.raises(PopulationError) as caught:
                lookup(number)
            assert caught.value.status == 404
    assert server.lookups == 0


# ------------------------------------------------------------------------------------------------ wire details


class StubSession:
    def __init__(self, status: int = 200, body: Any = None, raw: bytes | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.status, self.body, self.raw = status, body, raw

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.calls.append((method, url, kwargs))
        response = requests.Response()
        response.status_code = self.status
        if self.raw is not None:
            response._content = self.raw
        else:
            response._content = json.dumps(self.body).encode() if self.body is not None else b""
        return response

    def close(self) -> None:
        pass


def stub_client(session: StubSession, **kwargs: Any) -> PopulationClient:
    return PopulationClient("https://dancu.example/api/", session=session, **kwargs)  # type: ignore[arg-type]


def lookups(client: PopulationClient) -> dict[str, tuple[Any, str]]:
    """Both lookups, each with a well-formed number to ask."""
    return {"id": (client.lookup, ID), "social_insurance": (client.lookup_by_social_insurance, SOCIAL_INSURANCE)}


def test_request_shape() -> None:
    session = StubSession(body=ANSWER)
    assert stub_client(session, api_key="k3y").lookup(ID) == PERSON
    assert stub_client(session).lookup(PASSPORT) == PERSON  # the registry's number, whatever was asked
    assert stub_client(session, api_key="k3y").lookup_by_social_insurance(SOCIAL_INSURANCE) == PERSON
    (method, url, kwargs), (_, passport_url, plain), (card_method, card_url, card_kwargs) = session.calls
    assert card_method == "GET"
    assert card_url == f"https://dancu.example/api/v1/citizens/by-social-insurance/{SOCIAL_INSURANCE}"
    assert card_kwargs == kwargs
    assert method == "GET" and url == f"https://dancu.example/api/v1/citizens/{ID}"
    assert passport_url.endswith(f"/v1/citizens/{PASSPORT}")
    assert kwargs["headers"]["X-Api-Key"] == "k3y" and "X-Api-Key" not in plain["headers"]
    assert kwargs["headers"]["Accept"] == "application/json"
    assert kwargs["timeout"] == (3.05, 5) and kwargs["allow_redirects"] is False
    assert PopulationClient("http://x", session=session).citizen_url("a/b c") == "http://x/v1/citizens/a%2Fb%20c"  # type: ignore[arg-type]


def test_a_citizen_without_a_social_insurance_number() -> None:
    for answer in ({**ANSWER, "social_insurance_number": ""},
                   {k: v for k, v in ANSWER.items() if k != "social_insurance_number"}):
        citizen = stub_client(StubSession(body=answer)).lookup(ID)
        assert citizen is not None and citizen.social_insurance_number == ""


def test_an_old_id_may_answer_with_the_new_number() -> None:
    old = "123456789"
    session = StubSession(body={"id_number": ID, "full_name": NAME, "birth": "20030412", "sex": "2"})
    identity = identity_from_summary({"SO_CCCD": old, "HO_TEN": NAME, "NGAY_SINH": "200304120000", "GIOI_TINH": "2"})
    result = reconcile(identity, stub_client(session))
    assert result.matched and result.citizen_key_material == ID


@pytest.mark.parametrize(("status", "body", "expected"), [
    (404, {"error": "citizen_not_found"}, None),
    (404, {"error": "not_found"}, PopulationError),
    (404, None, PopulationError),
    (408, None, PopulationUnavailable),
    (429, {"error": "throttled"}, PopulationUnavailable),
    (500, None, PopulationUnavailable),
    (503, {"error": "service_unavailable"}, PopulationUnavailable),
    (400, {"error": "invalid_id_number"}, PopulationError),
    (401, None, PopulationError),
    (403, None, PopulationError),
    (302, None, PopulationError),
    (204, None, PopulationError),
])
@pytest.mark.parametrize("path", ["id", "social_insurance"])
def test_classification(status: int, body: Any, expected: Any, path: str) -> None:
    lookup, number = lookups(stub_client(StubSession(status, body)))[path]
    if expected is None:
        assert lookup(number) is None
    else:
        with pytest.raises(expected) as caught:
            lookup(number)
        no_personal_data(caught.value)


@pytest.mark.parametrize("raw", [
    b"<html>" + NAME.encode() + b" " + ID.encode() + b"</html>",
    json.dumps([ID, NAME]).encode(),
    json.dumps({"id_number": ID, "full_name": NAME, "birth": "20030412"}).encode(),
    json.dumps({"id_number": ID, "full_name": NAME, "birth": 20030412, "sex": "2"}).encode(),
    json.dumps({"id_number": ID, "full_name": NAME, "birth": "2003-04-12", "sex": "2"}).encode(),
    json.dumps({"id_number": ID, "full_name": NAME, "birth": "20030412", "sex": "F"}).encode(),
    json.dumps({"id_number": "", "full_name": NAME, "birth": "20030412", "sex": "2"}).encode(),
    json.dumps({**ANSWER, "social_insurance_number": "791234567"}).encode(),
    json.dumps({**ANSWER, "social_insurance_number": "GD4797912345678"}).encode(),
    json.dumps({**ANSWER, "social_insurance_number": 7912345678}).encode(),
    json.dumps({**ANSWER, "social_insurance_number": None}).encode(),
])
@pytest.mark.parametrize("path", ["id", "social_insurance"])
def test_malformed_answers_are_permanent_and_quote_nothing(raw: bytes, path: str) -> None:
    lookup, number = lookups(stub_client(StubSession(200, raw=raw)))[path]
    with pytest.raises(PopulationError) as caught:
        lookup(number)
    assert caught.value.status == 200
    no_personal_data(caught.value, "2003-04-12", "20030412", "791234567", "GD4797912345678")


@pytest.mark.parametrize(("path", "malformed"), [("id", " 001203004567"), ("social_insurance", " 7912345678"),
                                                 ("social_insurance", "GD4797912345678"),
                                                 ("social_insurance", "791234567")])
def test_a_malformed_number_is_a_bug_upstream(path: str, malformed: str) -> None:
    session = StubSession()
    lookup, _ = lookups(stub_client(session))[path]
    with pytest.raises(ValueError) as caught:
        lookup(malformed)
    assert malformed.strip() not in str(caught.value) and not session.calls


def test_only_status_and_elapsed_time_are_logged(caplog: pytest.LogCaptureFixture, client: PopulationClient,
                                                 server: FakePopulationServer) -> None:
    caplog.set_level(logging.DEBUG, logger="healthbook.reconcile.http")
    client.lookup(ID)
    client.lookup(UNKNOWN)
    client.lookup_by_social_insurance(SOCIAL_INSURANCE)
    client.lookup_by_social_insurance(UNKNOWN_CARD_NUMBER)
    server.fail("5xx", 5)
    with pytest.raises(PopulationUnavailable):
        client.lookup(ID)
    with pytest.raises(PopulationUnavailable):
        client.lookup_by_social_insurance(SOCIAL_INSURANCE)
    records = [r for r in caplog.records if r.name == "healthbook.reconcile.http"]
    assert [getattr(r, "status", None) for r in records] == [200, 404, 200, 404, 503, 503]
    assert [r.getMessage() for r in records][2] == "population: social-insurance lookup answered"
    assert all(isinstance(getattr(r, "elapsed_ms", None), int) for r in records)
    for record in records:
        text = repr(record.__dict__) + record.getMessage()
        for value in (ID, UNKNOWN, NAME, SOCIAL_INSURANCE, UNKNOWN_CARD_NUMBER):
            assert value not in text


# ------------------------------------------------------------------------------------------------ configuration


def test_the_deliver_settings_name_a_missing_or_bad_population_url_never_its_value() -> None:
    from healthbook.aws.settings import DeliverSettings

    base = {"VISITS_TABLE": "v", "CITIZEN_PEPPER_SECRET": "p", "VNEID_URL": "https://vneid.example",
            "VNEID_SECRET": "s"}
    settings = DeliverSettings.from_env({**base, "POPULATION_URL": "https://dancu.example"})
    client = PopulationClient(settings.population_url, api_key="k3y")
    assert isinstance(client, PopulationRegistry) and "k3y" not in repr(client)
    with pytest.raises(ValueError, match="POPULATION_URL"):
        DeliverSettings.from_env(base)
    with pytest.raises(ValueError, match=r"^POPULATION_URL is not in the expected form$") as caught:
        DeliverSettings.from_env({**base, "POPULATION_URL": "dancu.example/s3cr3t"})
    assert "s3cr3t" not in str(caught.value)


# ------------------------------------------------------------------------------------------------ standalone


def test_the_module_serves_a_dumped_population_until_killed(tmp_path: Path) -> None:
    path = tmp_path / "population.json"
    FakePopulation([PERSON]).dump(path)
    process = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "healthbook_dev.fakes.population_server", "--population", str(path),
         "--port", "0", "--api-key", "k3y"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with PopulationClient(url, api_key="k3y") as client:
            assert client.lookup(ID) == PERSON and client.lookup(UNKNOWN) is None
            assert client.lookup_by_social_insurance(SOCIAL_INSURANCE) == PERSON
            requests.post(f"{url}/_admin/fail", json={"mode": "5xx", "seconds": 30}, timeout=5)
            with pytest.raises(PopulationUnavailable):
                client.lookup(ID)
        stats = requests.get(f"{url}/_admin/stats", timeout=5).json()
        assert stats["lookups"] == 3 and stats["social_insurance_lookups"] == 1
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0 and stderr == ""  # nothing logged (request lines hold IDs), no warnings
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_module_refuses_a_missing_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "healthbook_dev.fakes.population_server", "--population",
                           str(tmp_path / "absent.json")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "cannot load" in done.stderr and not done.stdout
