"""Ingestion: the pure service with in-memory fakes, and the Lambda handler end to end against moto."""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
import hashlib
import hmac
import io
import json
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from unittest import mock
from urllib.parse import quote_plus

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.aws.records import DynamoRecords
from healthbook.ingest.model import (
    LATE_AFTER,
    ContentClaim,
    ContentClaimPending,
    ObjectGone,
    ObjectRef,
    StoredObject,
    SubmissionRecord,
    VisitRef,
    VisitVersion,
    VisitWrite,
    counted_month,
    facility_month,
    locate,
    status_shard,
    version_key,
)
from healthbook.ingest.service import Examined, IngestService
from healthbook.signing.receipt import verify_receipt
from healthbook.signing.registry import FacilityRegistry
from healthbook.signing.signer import LocalKeySigner
from healthbook.signing.xml_signer import sign_submission
from healthbook_dev.aws.sandbox import LambdaContext, create_tables, kms_signs_digests_like_aws, load_ingest_handler
from healthbook_dev.fakes.signer import CountingSigner
from healthbook_dev.generate import Visit, build_visit, envelope, submission
from healthbook_dev.pki import dev_pki

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
RECEIVED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
HANOI = ("01001", "Bệnh viện Đa khoa Thành phố Hà Nội", "01")
SAIGON = ("79001", "Bệnh viện Đa khoa Sài Gòn", "79")
PEPPER = "test-pepper-0123456789abcdef"
INBOX, RECEIPTS, QUARANTINE = "healthbook-dev-inbox", "healthbook-dev-receipts", "healthbook-dev-quarantine"
TABLES = {"SUBMISSIONS_TABLE": "healthbook-dev-submissions", "VISITS_TABLE": "healthbook-dev-visits",
          "FACILITIES_TABLE": "healthbook-dev-facilities", "IDEMPOTENCY_TABLE": "healthbook-dev-idempotency",
          "AGGREGATES_TABLE": "healthbook-dev-aggregates"}


# --- shared material ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return dev_pki(tmp_path_factory.mktemp("pki"), now=RECEIVED)


def a_visit(seed: int, facility: tuple[str, str, str] = HANOI) -> Visit:
    return build_visit(random.Random(seed), scenario="outpatient", facility=facility)


def signed(pki: dict[str, Path], visit: Visit, facility: str = "01001") -> bytes:
    key = serialization.load_pem_private_key(pki[f"{facility}-key"].read_bytes(), password=None)
    cert, *chain = x509.load_pem_x509_certificates(pki[facility].read_bytes())
    return sign_submission(submission(visit), key, cert, chain=chain)  # type: ignore[arg-type]


def personal(visit: Visit) -> list[str]:
    row = visit.tables["XML1"][0]
    return [row["HO_TEN"], row["SO_CCCD"], row["MA_THE_BHYT"]]


# --- the pure service, with fakes ---------------------------------------------------------------------------

@dataclass
class FakeStore:
    objects: dict[str, bytes] = field(default_factory=dict)
    receipts: dict[str, bytes] = field(default_factory=dict)
    quarantined: list[str] = field(default_factory=list)
    reads: int = 0

    def read(self, ref: ObjectRef, limit: int) -> StoredObject:
        if ref.key not in self.objects:
            raise ObjectGone(ref.key)
        data = self.objects[ref.key]
        if len(data) > limit:
            return StoredObject(size=len(data), data=None)
        self.reads += 1
        return StoredObject(size=len(data), data=data)

    def put_receipt(self, key: str, body: bytes) -> None:
        self.receipts[key] = body

    def quarantine(self, ref: ObjectRef, size: int) -> str:
        self.quarantined.append(ref.key)
        return ref.key


@dataclass
class FakeRecords:
    """The same rules as DynamoRecords, in memory."""

    submissions: dict[str, SubmissionRecord] = field(default_factory=dict)
    versions: dict[tuple[str, str], tuple[VisitVersion, str]] = field(default_factory=dict)
    latest: dict[str, str] = field(default_factory=dict)
    claims: dict[str, ContentClaim] = field(default_factory=dict)

    def submission_exists(self, submission_id: str) -> bool:
        return submission_id in self.submissions

    def content_claim(self, facility: str, content_sha256: str) -> ContentClaim | None:
        held = self.claims.get(ContentClaim(facility, content_sha256, "", "", "").key)
        return None if held is None else self._holder(held)

    def _holder(self, held: ContentClaim) -> ContentClaim:
        """Confirmed: its holder's submission item exists (or the claim was stored confirmed)."""
        return dataclasses.replace(held, confirmed=held.confirmed or held.submission_id in self.submissions)

    def confirmed(self) -> list[bool]:
        return [self._holder(held).confirmed for held in self.claims.values()]

    def claim_content(self, claim: ContentClaim) -> ContentClaim:
        held = self.claims.get(claim.key)
        if held is not None and held.submission_id != claim.submission_id:
            return self._holder(held)
        self.claims[claim.key] = held or claim
        return claim

    def save_visits(self, visits: Sequence[VisitVersion]) -> list[VisitWrite]:
        return [self.save_visit(visit) for visit in visits]

    def save_visit(self, visit: VisitVersion) -> VisitWrite:
        if (visit.visit_id, visit.version) in self.versions:
            return VisitWrite.PRESENT
        current = self.latest.get(visit.visit_id)
        if current is not None and current > visit.version:
            self.versions[visit.visit_id, visit.version] = (visit, "SUPERSEDED")
            return VisitWrite.LATE
        self.versions[visit.visit_id, visit.version] = (visit, "PENDING")
        self.latest[visit.visit_id] = visit.version
        if current is None:
            return VisitWrite.CREATED
        self.versions[visit.visit_id, current] = (self.versions[visit.visit_id, current][0], "SUPERSEDED")
        return VisitWrite.SUPERSEDING

    def put_submission(self, record: SubmissionRecord, *, release: ContentClaim | None = None) -> bool:
        if record.submission_id in self.submissions:
            return False
        held = self.claims.get(release.key) if release else None
        assert held is None or release is None or held.submission_id == release.submission_id, "held by another"
        self.submissions[record.submission_id] = record
        if release is not None:
            self.claims.pop(release.key, None)
        return True


@dataclass
class FakeRegistrySource:
    registry: FacilityRegistry
    loads: int = 0

    def load_registry(self) -> FacilityRegistry:
        self.loads += 1
        return self.registry


@pytest.fixture(scope="module")
def platform() -> LocalKeySigner:
    return LocalKeySigner(ec.generate_private_key(ec.SECP256R1()))


def fake_service(pki: dict[str, Path], platform: LocalKeySigner, **kwargs: Any) -> tuple[IngestService, FakeStore,
                                                                                         FakeRecords]:
    store, records = FakeStore(), FakeRecords()
    service = IngestService(store=store, records=records,
                            registry=FakeRegistrySource(FacilityRegistry.load(pki["registry"])),
                            anchors=x509.load_pem_x509_certificates(pki["ca"].read_bytes()), signer=platform,
                            pepper=PEPPER.encode(), **kwargs)
    return service, store, records


def ref(key: str, version: str = "v1", at: datetime = RECEIVED) -> ObjectRef:
    return ObjectRef(bucket=INBOX, key=key, version_id=version, received_at=at)


def test_keys_ids_and_shards() -> None:
    assert locate("inbox/01001/2026/11/a.xml").receipt_key == "receipts/01001/a.xml.receipt.json"
    assert locate("inbox/01001/a.xml").facility == "01001"
    for key, folder in (("inbox/1001/a.xml", "1001"), ("a.xml", "unknown"), ("inbox/a.xml", "unknown"),
                        ("uploads/01001/a.xml", "unknown"), ("inbox/../a.xml", "unknown"),
                        ("inbox/٠١٠٠١/a.xml", "unknown")):  # Arabic-Indic digits are not a MACSKCB
        location = locate(key)
        assert location.facility is None and location.folder == folder, key
    sid = ref("inbox/01001/a.xml").submission_id
    assert sid == hashlib.sha256(f"{INBOX}/inbox/01001/a.xml#v1".encode()).hexdigest()
    assert ObjectRef(INBOX, "k", None, RECEIVED, sequencer="00A").submission_id != ObjectRef(
        INBOX, "k", None, RECEIVED, sequencer="00B").submission_id  # unversioned: the sequencer tells them apart
    assert facility_month("01001", datetime(2026, 11, 30, 18, 30, tzinfo=UTC)) == "01001#2026-12"  # UTC+7
    # An item written more than LATE_AFTER after its time goes to its month's late partition (docs/reports.md)
    assert counted_month("01001", RECEIVED, RECEIVED + LATE_AFTER) == "01001#2026-11"
    assert counted_month("01001", RECEIVED, RECEIVED + LATE_AFTER + timedelta(seconds=1)) == "01001#2026-11#late"
    assert status_shard("PENDING", "01001#X") == f"PENDING#{hashlib.sha256(b'01001#X').digest()[0] % 8}"
    assert version_key(RECEIVED, sid) == f"2026-11-22T03:00:00Z#{sid[:16]}"


def test_transaction_ids_name_their_facility_and_their_key_its_folder() -> None:
    from healthbook.kernel import is_transaction_id, new_transaction_id, portal_inbox_key, transaction_of

    first, second = new_transaction_id("01001", RECEIVED), new_transaction_id("01001", RECEIVED)
    assert first != second and first.startswith("01001-20261122100000-") and is_transaction_id(first)
    key = portal_inbox_key(first)
    assert key == f"inbox/01001/portal/{first}.xml" and transaction_of(key) == first
    assert transaction_of(key.replace("inbox/01001/", "inbox/79001/")) is None  # another facility's folder
    assert transaction_of(f"inbox/01001/portal/x/{first}.xml") is None
    assert transaction_of(f"inbox/01001/{first}.xml") is None
    for bad in ("", "1001-20261122100000-0123456789ab", "01001-2026112210000-0123456789ab", f"{first}/../x"):
        assert not is_transaction_id(bad)
        with pytest.raises(ValueError):
            portal_inbox_key(bad)
    with pytest.raises(ValueError):
        new_transaction_id("../01", RECEIVED)


def test_service_accepts_and_is_idempotent(pki: dict[str, Path], platform: LocalKeySigner) -> None:
    service, store, records = fake_service(pki, platform)
    visit = a_visit(1)
    store.objects["inbox/01001/a.xml"] = signed(pki, visit)
    first = service.ingest(ref("inbox/01001/a.xml"))
    assert (first.status, first.visits_accepted, first.visits_stored, first.error_codes) == ("ACCEPTED", 1, 1, [])
    assert verify_receipt(json.loads(store.receipts[first.receipt_key or ""]), platform.public_key_pem()) == []
    again = service.ingest(ref("inbox/01001/a.xml"))
    assert again.status == "DUPLICATE" and store.reads == 1 and len(records.versions) == 1
    assert not any(value in json.dumps(first.to_dict(), ensure_ascii=False) for value in personal(visit))


def test_service_rejections_without_reading(pki: dict[str, Path], platform: LocalKeySigner) -> None:
    from healthbook.parsing.safe_xml import Limits
    from healthbook.validation import Options

    service, store, records = fake_service(pki, platform, options=Options(limits=Limits(max_file_bytes=1000)))
    store.objects["inbox/01001/big.xml"] = b"<x/>" * 1000
    big = service.ingest(ref("inbox/01001/big.xml"))
    assert big.status == "REJECTED" and big.error_codes == ["E002"] and store.reads == 0
    assert store.quarantined == ["inbox/01001/big.xml"]
    receipt = json.loads(store.receipts["receipts/01001/big.xml.receipt.json"])
    assert receipt["errors"][0]["code"] == "E002" and verify_receipt(receipt, platform.public_key_pem()) == []
    outside = service.ingest(ref("elsewhere/x.xml"))
    assert outside.error_codes == ["I502"] and outside.receipt_key == "receipts/unknown/x.xml.receipt.json"
    gone = service.ingest(ref("inbox/01001/deleted.xml"))
    assert gone.status == "GONE" and gone.receipt_key is None
    folder = service.ingest(ref("inbox/01001/2026/"))
    assert folder.status == "SKIPPED"
    assert len(store.receipts) == 2 and len(records.submissions) == 2


@dataclass
class RecordingStarter:
    fail: bool = False
    started: list[tuple[str, list[Any]]] = field(default_factory=list)

    def start(self, name: str, visits: Any) -> None:
        if self.fail:
            raise ConnectionError("states endpoint unreachable")
        self.started.append((name, list(visits)))


def test_accepted_visits_are_leased_and_their_delivery_started(pki: dict[str, Path],
                                                               platform: LocalKeySigner) -> None:
    starter = RecordingStarter()
    now = datetime(2026, 11, 22, 3, 0, 5, tzinfo=UTC)
    service, store, records = fake_service(pki, platform, delivery=starter, deadline=timedelta(seconds=90),
                                           lease=timedelta(seconds=10), now=lambda: now)
    visit = a_visit(31)
    store.objects["inbox/01001/a.xml"] = signed(pki, visit)
    outcome = service.ingest(ref("inbox/01001/a.xml"))
    ((name, refs),) = starter.started
    (stored,) = [v for v, _ in records.versions.values()]
    assert refs == [stored.ref] and name.startswith(f"ingest-{outcome.submission_id[:40]}-")
    assert stored.deadline_at == "2026-11-22T03:01:30Z" and stored.next_attempt_at == "2026-11-22T03:00:15Z"
    assert outcome.delivery_executions == 1 and outcome.delivery_start_failures == 0
    for name, phone in (("b", "0912345678"), ("c", "0987654321")):  # the same visit, corrected: new content
        visit.tables["XML1"][0]["DIEN_THOAI"] = phone
        store.objects[f"inbox/01001/{name}.xml"] = signed(pki, visit)
    service.ingest(ref("inbox/01001/b.xml", at=RECEIVED + timedelta(seconds=1)))  # a resubmission
    assert len({n for n, _ in starter.started}) == 2  # names never repeat
    older = service.ingest(ref("inbox/01001/c.xml", at=RECEIVED - timedelta(seconds=1)))  # arrives late
    assert older.visits_stored == 1 and len(starter.started) == 2  # kept as history, never delivered


def test_a_window_starts_its_visits_together_in_executions_of_fifty(pki: dict[str, Path],
                                                                     platform: LocalKeySigner) -> None:
    """Real files hold a visit or two: a window's visits share executions (one per DELIVERY_BATCH), not one each;
    every file counts the executions that hold its visits."""
    starter = RecordingStarter()
    service, store, records = fake_service(pki, platform, delivery=starter)
    key = serialization.load_pem_private_key(pki["01001-key"].read_bytes(), password=None)
    cert, *chain = x509.load_pem_x509_certificates(pki["01001"].read_bytes())
    sizes = {"a": 30, "b": 25, "c": 5}
    for name, size in sizes.items():
        visits = [a_visit(1000 + 100 * len(name) * ord(name) + n) for n in range(size)]
        store.objects[f"inbox/01001/{name}.xml"] = sign_submission(envelope(visits), key, cert,  # type: ignore[arg-type]
                                                                   chain=chain)
    window = [service.examine(ref(f"inbox/01001/{name}.xml")) for name in sizes]
    service.sign(window)
    outcomes = [service.record(examined) for examined in window]
    assert starter.started == [] and [len(o.to_deliver) for o in outcomes] == [30, 25, 5]  # recorded, not started
    service.start_delivery(outcomes)
    assert [len(refs) for _, refs in starter.started] == [50, 10]
    assert [v for _, refs in starter.started for v in refs] == [v for o in outcomes for v in o.to_deliver]
    assert [o.delivery_executions for o in outcomes] == [1, 2, 1]  # b's visits are in both
    assert {v.ref for v, _ in records.versions.values()} == {v for o in outcomes for v in o.to_deliver}


def test_a_failed_delivery_start_loses_nothing(pki: dict[str, Path], platform: LocalKeySigner) -> None:
    service, store, records = fake_service(pki, platform, delivery=RecordingStarter(fail=True))
    store.objects["inbox/01001/a.xml"] = signed(pki, a_visit(32))
    outcome = service.ingest(ref("inbox/01001/a.xml"))
    assert outcome.status == "ACCEPTED" and outcome.delivery_start_failures == 1
    (stored,) = [v for v, status in records.versions.values() if status == "PENDING"]
    assert stored.next_attempt_at  # leased: the sweep takes it when the lease ends
    assert outcome.submission_id in records.submissions  # the file is done; its receipt stands


@dataclass
class FailingStore(FakeStore):
    """Writing the receipts named in ``broken`` fails (S3 trouble): the object's record raises."""

    broken: set[str] = field(default_factory=set)

    def put_receipt(self, key: str, body: bytes) -> None:
        if key in self.broken:
            raise ConnectionError("S3 unreachable")
        super().put_receipt(key, body)


def _service(pki: dict[str, Path], store: FakeStore, records: FakeRecords, signer: CountingSigner) -> IngestService:
    return IngestService(store=store, records=records,
                         registry=FakeRegistrySource(FacilityRegistry.load(pki["registry"])),
                         anchors=x509.load_pem_x509_certificates(pki["ca"].read_bytes()), signer=signer,
                         pepper=PEPPER.encode())


def test_the_service_signs_a_window_once(pki: dict[str, Path], platform: LocalKeySigner) -> None:
    """examine every object, ONE signature for every receipt among them, record each: a vanished object, a
    folder placeholder and a duplicate get no receipt and take no leaf."""
    counting = CountingSigner(platform)
    store, records = FakeStore(), FakeRecords()
    service = _service(pki, store, records, counting)
    for n in range(4):
        store.objects[f"inbox/01001/w{n}.xml"] = signed(pki, a_visit(90 + n))
    store.objects["inbox/01001/w4.xml"] = b"not xml"
    assert service.ingest(ref("inbox/01001/w0.xml")).status == "ACCEPTED" and counting.calls == 1  # alone
    keys = [*(f"inbox/01001/w{n}.xml" for n in range(5)), "elsewhere/w.xml", "inbox/01001/gone.xml",
            "inbox/01001/2026/"]
    window = [service.examine(ref(key)) for key in keys]
    assert all(isinstance(e, Examined) for e in window) and counting.calls == 1 and store.receipts == {
        "receipts/01001/w0.xml.receipt.json": store.receipts["receipts/01001/w0.xml.receipt.json"]}
    assert [e.outcome.status for e in window if e.body is None] == ["DUPLICATE", "GONE", "SKIPPED"]
    with pytest.raises(ValueError, match="not signed"):
        service.record(window[1])
    assert service.sign(window) == 5 and counting.calls == 2  # w1..w4 and the I502: one signature
    outcomes = [service.record(e) for e in window]
    assert [o.status for o in outcomes] == ["DUPLICATE", "ACCEPTED", "ACCEPTED", "ACCEPTED", "REJECTED",
                                            "REJECTED", "GONE", "SKIPPED"]
    receipts = [json.loads(store.receipts[o.receipt_key or ""]) for o in outcomes[1:6]]
    assert all(verify_receipt(r, platform.public_key_pem()) == [] for r in receipts)
    assert [r["platform_signature"]["batch"]["leaf_index"] for r in receipts] == [0, 1, 2, 3, 4]
    assert {r["platform_signature"]["batch"]["leaves"] for r in receipts} == {5}
    assert service.sign([window[0], window[6], window[7]]) == 0 and counting.calls == 2  # nothing to sign


def test_a_failing_record_leaves_its_window_valid_and_its_retry_converges(pki: dict[str, Path],
                                                                          platform: LocalKeySigner) -> None:
    counting = CountingSigner(platform)
    store, records = FailingStore(broken={"receipts/01001/m1.xml.receipt.json"}), FakeRecords()
    service = _service(pki, store, records, counting)
    for n in range(3):
        store.objects[f"inbox/01001/m{n}.xml"] = signed(pki, a_visit(95 + n))
    window = [service.examine(ref(f"inbox/01001/m{n}.xml")) for n in range(3)]
    service.sign(window)
    done = []
    for examined in window:
        try:
            done.append(service.record(examined).status)
        except ConnectionError:
            done.append("FAILED")
    assert done == ["ACCEPTED", "FAILED", "ACCEPTED"] and counting.calls == 1
    for n in (0, 2):
        receipt = json.loads(store.receipts[f"receipts/01001/m{n}.xml.receipt.json"])
        assert verify_receipt(receipt, platform.public_key_pem()) == []
        assert receipt["platform_signature"]["batch"]["leaves"] == 3
    assert len(records.submissions) == 2 and len(records.claims) == 3  # the middle one's claim: still pending
    store.broken.clear()
    again = service.ingest(ref("inbox/01001/m1.xml"))  # SQS redelivers it: a window of its own
    assert (again.status, again.visits_stored) == ("ACCEPTED", 0)  # its visit was stored before the failure
    receipt = json.loads(store.receipts["receipts/01001/m1.xml.receipt.json"])
    assert verify_receipt(receipt, platform.public_key_pem()) == [] and counting.calls == 2
    assert receipt["platform_signature"]["batch"]["leaves"] == 1
    assert len(records.submissions) == 3 and records.confirmed() == [True, True, True]
    assert service.ingest(ref("inbox/01001/m1.xml")).status == "DUPLICATE" and counting.calls == 2


def test_a_replay_racing_its_original_waits_for_it(pki: dict[str, Path], platform: LocalKeySigner) -> None:
    """The same bytes as content another submission has claimed but not confirmed (in progress, or failing and
    retried): the message fails and is retried, nothing written; once the claim is confirmed, I503."""
    starter = RecordingStarter()
    service, store, records = fake_service(pki, platform, delivery=starter)
    data = store.objects["inbox/01001/copy.xml"] = signed(pki, a_visit(33))
    sha = hashlib.sha256(data).hexdigest()
    other = ContentClaim("01001", sha, "f" * 64, "2026-11-22T02:59:00Z", "receipts/01001/first.xml.receipt.json")
    records.claims[other.key] = other
    with pytest.raises(ContentClaimPending, match="f" * 64) as pending:
        service.ingest(ref("inbox/01001/copy.xml"))
    assert pending.value.holder == "f" * 64  # so that a batch holding the original can retry the copy after it
    assert (store.receipts, store.quarantined, records.submissions, records.versions) == ({}, [], {}, {})
    records.claims[other.key] = dataclasses.replace(other, confirmed=True)
    outcome = service.ingest(ref("inbox/01001/copy.xml"))
    assert (outcome.status, outcome.error_codes, outcome.replay_of) == ("REJECTED", ["I503"], "f" * 64)
    assert outcome.visits_total == 0 and records.versions == {} and starter.started == []
    assert store.quarantined == ["inbox/01001/copy.xml"]
    receipt = json.loads(store.receipts["receipts/01001/copy.xml.receipt.json"])
    (error,) = receipt["errors"]
    assert error["code"] == "I503" and "2026-11-22T02:59:00Z" in error["message_vi"] and "f" * 64 in error["message_en"]
    assert "first.xml" not in json.dumps(receipt, ensure_ascii=False)  # the earlier file's name is never quoted
    assert verify_receipt(receipt, platform.public_key_pem()) == []


def test_the_loser_of_a_claim_race_stores_nothing(pki: dict[str, Path], platform: LocalKeySigner) -> None:
    """Two identical uploads both find the content unclaimed; the one whose claim fails is refused with I503
    before it stores a visit or writes anything but its rejection receipt."""

    @dataclass
    class Racing(FakeRecords):
        def content_claim(self, facility: str, content_sha256: str) -> ContentClaim | None:
            return None  # read before the winner claimed

    store, records = FakeStore(), Racing()
    service = IngestService(store=store, records=records,
                            registry=FakeRegistrySource(FacilityRegistry.load(pki["registry"])),
                            anchors=x509.load_pem_x509_certificates(pki["ca"].read_bytes()), signer=platform,
                            pepper=PEPPER.encode())
    data = store.objects["inbox/01001/a.xml"] = store.objects["inbox/01001/b.xml"] = signed(pki, a_visit(34))
    winner = service.ingest(ref("inbox/01001/a.xml"))
    loser = service.ingest(ref("inbox/01001/b.xml", at=RECEIVED + timedelta(seconds=1)))
    assert (winner.status, loser.status, loser.error_codes) == ("ACCEPTED", "REJECTED", ["I503"])
    assert loser.visits_stored == 0 and len(records.versions) == 1
    assert [record.status for record in records.submissions.values()] == ["ACCEPTED", "REJECTED"]
    (claim,) = records.claims.values()
    assert claim.submission_id == winner.submission_id and records.confirmed() == [True]
    assert claim.key == f"content#01001#{hashlib.sha256(data).hexdigest()}"


def test_only_accepted_content_is_claimed_and_a_stale_claim_of_its_own_is_released(
        pki: dict[str, Path], platform: LocalKeySigner) -> None:
    service, store, records = fake_service(pki, platform)
    defective = a_visit(35)
    defective.tables["XML1"][0]["HO_TEN"] = ""  # no usable identity: H601 keeps the visit out (and a V201 finding)
    data = store.objects["inbox/01001/bad.xml"] = signed(pki, defective)
    # An earlier attempt of this very object found it acceptable and claimed it, then failed; this one rejects it
    # (as after a certificate was revoked in between): the claim goes with the REJECTED submission item.
    own = ContentClaim("01001", hashlib.sha256(data).hexdigest(), ref("inbox/01001/bad.xml").submission_id,
                       "2026-11-22T03:00:00Z", "receipts/01001/bad.xml.receipt.json")
    records.claims[own.key] = own
    assert service.ingest(ref("inbox/01001/bad.xml")).status == "REJECTED"
    assert records.claims == {}
    store.objects["inbox/01001/bad-again.xml"] = data
    again = service.ingest(ref("inbox/01001/bad-again.xml"))
    assert again.error_codes == ["H601"] and store.reads == 2  # validated again: a rejected copy blocks nothing
    assert again.finding_codes == ["V201"]
    assert records.claims == {}


def test_registry_is_reloaded_after_its_ttl(pki: dict[str, Path], platform: LocalKeySigner) -> None:
    now = [0.0]
    store, records = FakeStore(), FakeRecords()
    source = FakeRegistrySource(FacilityRegistry.load(pki["registry"]))
    service = IngestService(store=store, records=records, registry=source, anchors=(), signer=platform,
                            pepper=b"p" * 16, registry_ttl=60, clock=lambda: now[0])
    service.trust()
    service.trust()
    now[0] = 61
    service.trust()
    assert source.loads == 2


# --- AWS (moto) ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app() -> ModuleType:
    return load_ingest_handler()


def _create_tables(ddb: Any) -> None:
    create_tables(ddb, TABLES)


@pytest.fixture
def aws(pki: dict[str, Path], app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    import boto3
    from healthbook.aws.facilities import FacilitiesRepository
    from moto import mock_aws

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_DEFAULT_REGION": "ap-southeast-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "POWERTOOLS_TRACE_DISABLED": "true",
                        "INBOX_BUCKET": INBOX, "RECEIPTS_BUCKET": RECEIPTS, "QUARANTINE_BUCKET": QUARANTINE,
                        "TRUST_BUNDLE_PARAMETER": "/healthbook/dev/trust-bundle",
                        "CITIZEN_PEPPER_SECRET": "healthbook/dev/citizen-pepper", **TABLES}.items():
        monkeypatch.setenv(name, value)
    with mock_aws(), kms_signs_digests_like_aws():
        s3, ddb, kms = boto3.client("s3"), boto3.client("dynamodb"), boto3.client("kms")
        location = {"LocationConstraint": "ap-southeast-1"}
        for bucket in (INBOX, RECEIPTS, QUARANTINE):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration=location)
        s3.put_bucket_versioning(Bucket=INBOX, VersioningConfiguration={"Status": "Enabled"})
        _create_tables(ddb)
        key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
        monkeypatch.setenv("RECEIPT_KEY_ID", key_id)
        boto3.client("ssm").put_parameter(Name="/healthbook/dev/trust-bundle", Type="String",
                                          Value=pki["ca"].read_text(), Tier="Advanced")
        boto3.client("secretsmanager").create_secret(Name="healthbook/dev/citizen-pepper",
                                                     SecretString=json.dumps({"pepper": PEPPER}))
        facilities = FacilitiesRepository(boto3.resource("dynamodb").Table(TABLES["FACILITIES_TABLE"]))
        for code, name, province in (HANOI, SAIGON):
            facilities.put_facility(code, name, province, x509.load_pem_x509_certificate(pki[code].read_bytes()))
        public = b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(
            kms.get_public_key(KeyId=key_id)["PublicKey"]) + b"-----END PUBLIC KEY-----\n"
        app.reset()
        yield SimpleNamespace(s3=s3, ddb=ddb, kms=kms, public=public, facilities=facilities)
        app.reset()


@pytest.fixture(params=[1, 4], ids=["one-record-writer", "four-record-writers"])
def record_writers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """RECORD_WRITERS by default (1) and as the template sets it (4); moto, not thread-safe, answers the record
    writers' threads one at a time (the sandbox's lock, as for the in-process demo)."""
    from healthbook_dev.aws.sandbox import pool_threads_call_moto_one_at_a_time

    monkeypatch.setenv("RECORD_WRITERS", str(request.param))
    with pool_threads_call_moto_one_at_a_time():
        yield request.param


def upload(aws: SimpleNamespace, key: str, data: bytes) -> str:
    return str(aws.s3.put_object(Bucket=INBOX, Key=key, Body=data)["VersionId"])


def message(key: str, version: str | None, *, at: datetime = RECEIVED, message_id: str = "m-1",
            size: int = 1) -> dict[str, Any]:
    """One SQS record from events/sqs_s3_put.json, pointed at an object."""
    record: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / "sqs_s3_put.json").read_text())["Records"][0])
    body = json.loads(record["body"])
    s3 = body["Records"][0]["s3"]
    s3["object"].update(key=quote_plus(key, safe="/"), size=size)  # as S3 sends keys: URL-encoded
    if version is None:
        s3["object"].pop("versionId")
    else:
        s3["object"]["versionId"] = version
    body["Records"][0]["eventTime"] = at.strftime("%Y-%m-%dT%H:%M:%S.123Z")
    record.update(body=json.dumps(body), messageId=message_id)
    return record


def invoke(app: ModuleType, *records: dict[str, Any]) -> list[str]:
    response = app.lambda_handler({"Records": list(records)}, LambdaContext())
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


def ingest_one(aws: SimpleNamespace, app: ModuleType, key: str, data: bytes, *, at: datetime = RECEIVED,
               message_id: str = "m-1") -> dict[str, Any]:
    version = upload(aws, key, data)
    assert invoke(app, message(key, version, at=at, message_id=message_id, size=len(data))) == []
    return message(key, version, at=at, message_id=message_id, size=len(data))


def receipt_at(aws: SimpleNamespace, key: str) -> dict[str, Any]:
    body = aws.s3.get_object(Bucket=RECEIPTS, Key=key)["Body"].read()
    loaded: dict[str, Any] = json.loads(body)
    return loaded


def scan(aws: SimpleNamespace, table: str) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    plain = TypeDeserializer()
    items = aws.ddb.scan(TableName=TABLES[table])["Items"]
    return [{k: plain.deserialize(v) for k, v in item.items()} for item in items]


def counters(aws: SimpleNamespace) -> dict[tuple[str, str], dict[str, int]]:
    """What the report counts by scope and period: the files, from their submission items (since 2026-12-07 ingest
    writes no counter), and any counter item, each period's shards added up."""
    from healthbook.aws.reports import counted_by_day, counters_by_period

    counted = counters_by_period(aws.ddb.scan(TableName=TABLES["AGGREGATES_TABLE"])["Items"])
    assert counted == {}, counted  # ingest counts nothing in the aggregates table
    return counted_by_day(aws.ddb.scan(TableName=TABLES["SUBMISSIONS_TABLE"])["Items"])


def submissions(aws: SimpleNamespace) -> list[dict[str, Any]]:
    """The submission items proper, without the content claims that share their table."""
    return [item for item in scan(aws, "SUBMISSIONS_TABLE") if not item["submission_id"].startswith("content#")]


def claims(aws: SimpleNamespace) -> dict[str, dict[str, Any]]:
    return {item["submission_id"]: item for item in scan(aws, "SUBMISSIONS_TABLE")
            if item["submission_id"].startswith("content#")}


def claims_confirmed(aws: SimpleNamespace) -> list[bool]:
    """Whether each content claim is confirmed, as ingest reads it (its holder's submission item exists)."""
    records = DynamoRecords(aws.ddb, submissions_table=TABLES["SUBMISSIONS_TABLE"], visits_table=TABLES["VISITS_TABLE"])
    found = [records.content_claim(*key.split("#")[1:]) for key in claims(aws)]
    return [claim is not None and claim.confirmed for claim in found]


def visit_items(aws: SimpleNamespace) -> dict[str, dict[str, Any]]:
    """The version items and the pointer; the records items are records_items'."""
    return {item["version"]: item for item in scan(aws, "VISITS_TABLE") if not item["version"].startswith("RECORDS#")}


def records_items(aws: SimpleNamespace) -> dict[str, dict[str, Any]]:
    """Each version's records item, by the version key it belongs to."""
    return {item["version"].removeprefix("RECORDS#"): item for item in scan(aws, "VISITS_TABLE")
            if item["version"].startswith("RECORDS#")}


def sid_of(key: str, version: str) -> str:
    return hashlib.sha256(f"{INBOX}/{key}#{version}".encode()).hexdigest()


def test_sample_events_are_real_shaped() -> None:
    put = json.loads((EVENTS / "sqs_s3_put.json").read_text())["Records"][0]
    assert put["eventSource"] == "aws:sqs" and put["md5OfBody"] == hashlib.md5(put["body"].encode()).hexdigest()
    s3 = json.loads(put["body"])["Records"][0]
    assert s3["eventName"] == "ObjectCreated:Put" and s3["s3"]["object"]["key"] == "inbox/01001/2026/11/sample.xml"
    assert s3["s3"]["object"]["versionId"]
    assert json.loads(json.loads((EVENTS / "sqs_s3_test_event.json").read_text())["Records"][0]["body"])[
        "Event"] == "s3:TestEvent"


def test_a_version_stored_with_its_records_on_it_still_loads(aws: SimpleNamespace) -> None:
    """Versions stored before the records had their own item kept them on the version item: still read there."""
    table = TABLES["VISITS_TABLE"]
    old = {"visit_id": {"S": "01001#OLD"}, "version": {"S": "2026-11-01T00:00:00Z#abc"}, "status": {"S": "PENDING"},
           "received_at": {"S": "2026-11-01T00:00:00Z"}, "deadline_at": {"S": "2026-11-02T00:00:00Z"},
           "records": {"B": b"old-style"}}
    aws.ddb.put_item(TableName=table, Item=old)
    store = DynamoVisitStatus(aws.ddb, visits_table=table)
    ref = VisitRef("01001#OLD", "2026-11-01T00:00:00Z#abc")
    loaded = store.load(ref, with_records=True)
    assert loaded is not None and loaded.records == b"old-style"
    light = store.load(ref)
    assert light is not None and light.records is None  # the light read leaves them out, as ever


def _version(visit_id: str, at: str) -> VisitVersion:
    return VisitVersion(visit_id=visit_id, version=f"{at}#{at[-3:-1]}", submission_id="s" * 64, received_at=at,
                        standard="4750", digest="d" * 64, deadline_at="2026-11-23T03:00:00Z", citizen_key=None,
                        records=b"records of " + at.encode())


class CountingClient:
    """The moto client, with the names of the calls made through it."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, list[str]()

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.client, name)


def test_a_first_version_takes_the_pointer_then_is_written_without_a_transaction(aws: SimpleNamespace) -> None:
    """Two conditional puts (2 write units) rather than a transaction (4); a run that stopped between the two
    is completed by its retry, and a later version meanwhile waits for it."""
    table = TABLES["VISITS_TABLE"]
    counting = CountingClient(aws.ddb)
    records = DynamoRecords(counting, submissions_table=TABLES["SUBMISSIONS_TABLE"], visits_table=table)
    first = _version("01001#A", "2026-11-22T03:00:00Z")
    assert records.save_visit(first) is VisitWrite.CREATED
    assert "transact_write_items" not in counting.calls and counting.calls.count("put_item") == 3  # records too
    items = visit_items(aws)
    assert items["LATEST"]["current"] == first.version and items[first.version]["status"] == "PENDING"
    assert records.save_visit(first) is VisitWrite.PRESENT  # the same object again: nothing new

    # A run that took the pointer and stopped before the version item: its retry writes the version.
    stopped = _version("01001#B", "2026-11-22T04:00:00Z")
    records._put_records(stopped)
    assert records._take_pointer(stopped)
    later = _version("01001#B", "2026-11-22T05:00:00Z")
    with mock.patch("healthbook.aws.records.time.sleep"), pytest.raises(RuntimeError, match="kept changing"):
        records.save_visit(later)  # it would supersede a version not written yet: cancelled, retried by SQS
    assert stopped.version not in visit_items(aws) and later.version not in visit_items(aws)
    assert records.save_visit(stopped) is VisitWrite.CREATED
    assert records.save_visit(later) is VisitWrite.SUPERSEDING
    items = {k: v for k, v in visit_items(aws).items() if v["visit_id"] == "01001#B"}
    assert items["LATEST"]["current"] == later.version and items[later.version]["status"] == "PENDING"
    assert items[stopped.version]["status"] == "SUPERSEDED" and "status_shard" not in items[stopped.version]


class ThreadNoting:
    """A client through which moto is reached one call at a time (as LocalStack serves it), noting which threads
    made the calls."""

    def __init__(self, client: Any) -> None:
        from healthbook_dev.aws.sandbox import SerialisedClient

        self.client, self.threads = SerialisedClient(client), set[str]()

    def __getattr__(self, name: str) -> Any:
        self.threads.add(threading.current_thread().name)
        return getattr(self.client, name)


def test_a_files_visits_are_written_side_by_side_and_one_visit_named_twice_one_version_after_the_other(
        aws: SimpleNamespace) -> None:
    """save_visits: different visits of a file, visit_writers at a time, their results in the order given. A file
    that names one visit twice is written visit by visit: the two share a version key, so its records item is the
    first's, as one after the other leaves it."""
    table = TABLES["VISITS_TABLE"]
    noting = ThreadNoting(aws.ddb)
    records = DynamoRecords(noting, submissions_table=TABLES["SUBMISSIONS_TABLE"], visits_table=table,
                            visit_writers=8)
    at = "2026-11-22T03:00:00Z"
    many = [_version(f"01001#V{n:02d}", at) for n in range(24)]
    records.save_visit(many[5])  # stored before (a retry): PRESENT, in its place among the results
    noting.threads.clear()
    assert records.save_visits(many) == [VisitWrite.PRESENT if n == 5 else VisitWrite.CREATED for n in range(24)]
    assert len(noting.threads) > 1 and threading.current_thread().name not in noting.threads
    assert {item["visit_id"] for item in scan(aws, "VISITS_TABLE") if item["version"] == many[0].version} == {
        v.visit_id for v in many}

    noting.threads.clear()
    twice = [_version("01001#W", at), replace(_version("01001#W", at), records=b"the second copy")]
    assert records.save_visits(twice) == [VisitWrite.CREATED, VisitWrite.PRESENT]
    assert noting.threads == {threading.current_thread().name}
    (records_item,) = [i for i in scan(aws, "VISITS_TABLE") if i["visit_id"] == "01001#W"
                       and i["version"].startswith("RECORDS#")]
    assert bytes(records_item["records"]) == twice[0].records


def test_accepted_file_end_to_end(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    visit = a_visit(1)
    key = "inbox/01001/2026/11/sample.xml"
    data = signed(pki, visit)
    version = upload(aws, key, data)
    app.runtime().wiring().service._now = lambda: RECEIVED + timedelta(minutes=2)  # processed on time
    assert invoke(app, message(key, version, size=len(data))) == []
    sid = sid_of(key, version)

    receipt = receipt_at(aws, "receipts/01001/sample.xml.receipt.json")
    assert verify_receipt(receipt, aws.public) == []
    assert receipt["accepted"] and receipt["submission_id"] == sid and receipt["facility_signature"]["valid"]
    head = aws.s3.head_object(Bucket=RECEIPTS, Key="receipts/01001/sample.xml.receipt.json")
    assert head["ContentType"].startswith("application/json")

    (item,) = submissions(aws)
    assert item == {
        "submission_id": sid, "facility": "01001",
        "facility_month": "01001#2026-11", "received_at": "2026-11-22T03:00:00Z", "object_key": key,
        "version_id": version,
        "content_sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "status": "ACCEPTED",
        "visits_total": 1, "visits_accepted": 1, "standards": {"4750"},
        "receipt_key": "receipts/01001/sample.xml.receipt.json", "merkle_root": receipt["merkle"]["root"],
        "signing_key_id": receipt["platform_signature"]["key_id"]}
    # The content claim: no file name, no personal data; confirmed by the submission item above.
    assert claims(aws) == {f"content#01001#{hashlib.sha256(data).hexdigest()}": {
        "submission_id": f"content#01001#{hashlib.sha256(data).hexdigest()}", "claimed_by": sid,
        "received_at": "2026-11-22T03:00:00Z", "receipt_key": "receipts/01001/sample.xml.receipt.json"}}
    held = DynamoRecords(aws.ddb, submissions_table=TABLES["SUBMISSIONS_TABLE"], visits_table=TABLES["VISITS_TABLE"]
                         ).content_claim("01001", hashlib.sha256(data).hexdigest())
    assert held is not None and held.submission_id == sid and held.confirmed

    visit_id = f"01001#{visit.ma_lk}"
    version_key_ = f"2026-11-22T03:00:00Z#{sid[:16]}"
    items = visit_items(aws)
    assert items["LATEST"] == {"visit_id": visit_id, "version": "LATEST", "current": version_key_}
    stored = items[version_key_]
    cccd = visit.tables["XML1"][0]["SO_CCCD"]
    assert stored["status"] == "PENDING" and stored["status_shard"] == status_shard("PENDING", visit_id)
    assert stored["deadline_at"] == "2026-11-23T03:00:00Z" and stored["submission_id"] == sid
    assert stored["citizen_key"] == hmac.new(PEPPER.encode(), cccd.encode(), hashlib.sha256).hexdigest()
    assert stored["digest"] == receipt["visits"][0]["digest"] and stored["standard"] == "4750"
    assert "records" not in stored  # each status change rewrites the version item: the records are kept apart
    kept = records_items(aws)
    assert list(kept) == [version_key_] and set(kept[version_key_]) == {"visit_id", "version", "records"}
    # What the delivery steps read back (DynamoVisitStatus.load) is that item's records.
    loaded = DynamoVisitStatus(aws.ddb, visits_table=TABLES["VISITS_TABLE"]).load(
        VisitRef(visit_id, version_key_), with_records=True)
    assert loaded is not None and loaded.records == bytes(kept[version_key_]["records"])
    records = gzip.decompress(loaded.records)
    assert hashlib.sha256(records).hexdigest() == stored["digest"]  # the stored records are the receipted ones
    assert json.loads(records)["tables"]["XML1"][0]["SO_CCCD"] == cccd

    # The three GSIs answer their questions.
    by_citizen = aws.ddb.query(TableName=TABLES["VISITS_TABLE"], IndexName="by-citizen",
                               KeyConditionExpression="citizen_key = :c",
                               ExpressionAttributeValues={":c": {"S": stored["citizen_key"]}})["Items"]
    assert [i["visit_id"]["S"] for i in by_citizen] == [visit_id]
    pending = aws.ddb.query(TableName=TABLES["VISITS_TABLE"], IndexName="by-status-deadline",
                            KeyConditionExpression="status_shard = :s AND deadline_at <= :d",
                            ExpressionAttributeValues={":s": {"S": stored["status_shard"]},
                                                       ":d": {"S": "2026-11-24T00:00:00Z"}})["Items"]
    assert len(pending) == 1
    month = aws.ddb.query(TableName=TABLES["SUBMISSIONS_TABLE"], IndexName="by-facility-month",
                          KeyConditionExpression="facility_month = :m",
                          ExpressionAttributeValues={":m": {"S": "01001#2026-11"}})["Items"]
    assert [i["submission_id"]["S"] for i in month] == [sid]
    assert aws.ddb.scan(TableName=TABLES["SUBMISSIONS_TABLE"], IndexName="by-facility-day")["Count"] == 0  # goes

    # no tag is written per file (docs/cost.md): the inbox lifecycle archives by age
    assert aws.s3.get_object_tagging(Bucket=INBOX, Key=key, VersionId=version)["TagSet"] == []
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=QUARANTINE)


def test_same_event_twice_is_processed_once(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    key = "inbox/01001/2026/11/twice.xml"
    event = ingest_one(aws, app, key, signed(pki, a_visit(2)))
    receipt_key = "receipts/01001/twice.xml.receipt.json"
    before = (scan(aws, "SUBMISSIONS_TABLE"), visit_items(aws), receipt_at(aws, receipt_key))
    # The idempotency record is left in progress (no second write per file): within its time it is answered by
    # the submission item, without reading the object again.
    (record,) = scan(aws, "IDEMPOTENCY_TABLE")
    assert record["status"] == "INPROGRESS" and record["id"].startswith("healthbook-ingest-object#")
    service, examined = app.runtime().wiring().service, []
    examine = service.examine
    service.examine = lambda ref: examined.append(ref) or examine(ref)
    assert invoke(app, event) == [] and examined == []
    # Even with the idempotency record gone (expired), the submission item stops a second run.
    aws.ddb.delete_item(TableName=TABLES["IDEMPOTENCY_TABLE"], Key={"id": {"S": record["id"]}})
    assert invoke(app, event) == []
    after = (scan(aws, "SUBMISSIONS_TABLE"), visit_items(aws), receipt_at(aws, receipt_key))
    assert after == before


def test_report_counters_count_each_file_once(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    good = ingest_one(aws, app, "inbox/01001/good.xml", signed(pki, a_visit(5)), message_id="m-good")
    defective = a_visit(6)
    defective.tables["XML1"][0]["HO_TEN"] = ""  # H601 keeps the visit out; V201 is a finding
    bad = ingest_one(aws, app, "inbox/01001/bad.xml", signed(pki, defective), message_id="m-bad")
    for item in scan(aws, "IDEMPOTENCY_TABLE"):  # forget the idempotency records: the submission item must stop it
        aws.ddb.delete_item(TableName=TABLES["IDEMPOTENCY_TABLE"], Key={"id": {"S": item["id"]}})
    assert invoke(app, good, bad) == []  # delivered again, all of it
    ((key, counted),) = counters(aws).items()
    assert key == ("F#01001", "D#2026-11-22")  # 10:00 in Vietnam
    codes = {k: v for k, v in counted.items() if k.startswith(("error#", "finding#"))}
    assert {k: v for k, v in counted.items() if k not in codes} == {
        "files_received": 2, "files_rejected": 1, "visits_accepted": 1, "visits_rejected": 1}
    assert codes["error#H601"] == 1 and codes["finding#V201"] == 1 and set(codes.values()) == {1}


def test_a_racing_second_put_of_a_submission_counts_nothing(aws: SimpleNamespace) -> None:
    """Two runs of one object past the "seen before?" check: one submission item, one count."""

    records = DynamoRecords(aws.ddb, submissions_table=TABLES["SUBMISSIONS_TABLE"],
                            visits_table=TABLES["VISITS_TABLE"])
    record = SubmissionRecord(
        submission_id="a" * 64, facility="01001", received_at=RECEIVED, object_key="inbox/01001/r.xml",
        version_id="v1", content_sha256="b" * 64, size=10, status="PARTIAL", visits_total=3, visits_accepted=2,
        error_codes=("R301",), standards=("4750",), receipt_key="receipts/01001/r.xml.receipt.json",
        quarantine_key=None, merkle_root="c" * 64, signing_key_id="k")
    assert records.put_submission(record) is True
    assert records.put_submission(record) is False
    assert list(counters(aws).values()) == [
        {"files_received": 1, "visits_accepted": 2, "visits_rejected": 1, "error#R301": 1}]


def test_resubmission_supersedes_and_a_late_old_version_stays_history(aws: SimpleNamespace, app: ModuleType,
                                                                      pki: dict[str, Path]) -> None:
    visit = a_visit(3)
    key = "inbox/01001/2026/11/visit.xml"
    first = ingest_one(aws, app, key, signed(pki, visit), message_id="m-1")
    visit.tables["XML1"][0]["DIEN_THOAI"] = "0912345678"  # the facility corrects the visit and sends it again
    second = ingest_one(aws, app, key, signed(pki, visit), at=RECEIVED + timedelta(hours=2), message_id="m-2")
    v1 = version_key(RECEIVED, sid_of(key, json.loads(first["body"])["Records"][0]["s3"]["object"]["versionId"]))
    v2 = version_key(RECEIVED + timedelta(hours=2),
                     sid_of(key, json.loads(second["body"])["Records"][0]["s3"]["object"]["versionId"]))
    items = visit_items(aws)
    assert items["LATEST"]["current"] == v2
    assert items[v2]["status"] == "PENDING"
    assert items[v1]["status"] == "SUPERSEDED" and items[v1]["superseded_by"] == v2
    assert "status_shard" not in items[v1]  # it left the by-status-deadline index
    assert items[v1]["digest"] != items[v2]["digest"]

    # An even older upload processed only now (SQS keeps no order) becomes history, the pointer stays. (Its own
    # content: the same bytes as an accepted file would be a replay, I503.)
    visit.tables["XML1"][0]["DIEN_THOAI"] = "0987654321"
    ingest_one(aws, app, "inbox/01001/2026/11/visit-old.xml", signed(pki, visit),
               at=RECEIVED - timedelta(hours=1), message_id="m-3")
    items = visit_items(aws)
    assert items["LATEST"]["current"] == v2 and len(items) == 4
    assert [i["status"] for k, i in sorted(items.items()) if k != "LATEST"] == ["SUPERSEDED", "SUPERSEDED", "PENDING"]


@pytest.fixture
def deliveries(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The delivery executions the handler starts, recorded instead of started."""
    from healthbook.aws import ingest_runtime

    started: list[list[Any]] = []

    class Starter:
        def __init__(self, sfn: Any, *, state_machine_arn: str) -> None:
            pass

        def start(self, name: str, visits: Any) -> None:
            started.append(list(visits))

    monkeypatch.setenv("DELIVERY_STATE_MACHINE_ARN", "arn:aws:states:ap-southeast-1:123456789012:stateMachine:d")
    monkeypatch.setattr(ingest_runtime, "StepFunctionsStarter", Starter)
    return started


def test_the_outbox_lists_a_windows_visits_and_the_sweep_indexes_only_those_whose_delivery_was_lost(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], deliveries: list[list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/delivery.md, *The outbox*: the visits are listed before they are stored, and stored outside the
    by-status-deadline index; after the lease the sweep reads the lists and indexes (then claims) a visit still
    PENDING and not indexed, and leaves alone one the fast path delivered. A list comes back after the lease and
    says when the invocation that stored its visits ends (docs/delivery.md, *Two limits of the outbox*)."""
    import boto3
    from healthbook.aws.outbox import SqsOutbox
    from healthbook.delivery.service import Sweeper
    from healthbook.ingest.model import is_version_key
    from healthbook_dev.fakes.stores import FakeSweepLease
    from moto.sqs.models import sqs_backends

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="healthbook-dev-outbox")["QueueUrl"]
    monkeypatch.setenv("OUTBOX_QUEUE_URL", url)
    monkeypatch.setenv("LEASE_SECONDS", "30")  # shorter than what is left of the invocation (60 s)
    app.reset()
    app.runtime().wiring().service._now = lambda: RECEIVED + timedelta(minutes=2)  # processed on time
    ingest_one(aws, app, "inbox/01001/delivered.xml", signed(pki, a_visit(60)), message_id="m-1")
    ingest_one(aws, app, "inbox/01001/lost.xml", signed(pki, a_visit(61)), message_id="m-2")
    versions = {VisitRef(i["visit_id"], i["version"]): i for i in scan(aws, "VISITS_TABLE")
                if is_version_key(i["version"])}
    assert len(versions) == 2
    assert all(i["status"] == "PENDING" and "status_shard" not in i for i in versions.values())
    assert _keys(v for started in deliveries for v in started) == _keys(versions)  # the fast path has them
    outbox = SqsOutbox(sqs, queue_url=url)
    assert outbox.due(10) == []  # not before the lease
    queued = sqs_backends["123456789012"]["ap-southeast-1"].get_queue("healthbook-dev-outbox")._messages
    assert [round((m.delayed_until - m.sent_timestamp) / 1000) for m in queued] == [30, 30]
    for m in queued:
        m.delayed_until = 0  # as 30 s later
    listed = outbox.due(10)
    assert _keys(v for held in listed for v in held.visits) == _keys(versions)  # listed exactly as stored
    stored_by = RECEIVED + timedelta(minutes=2, seconds=60)  # the service's now, and the 60 s left of the invocation
    assert all(held.stored_by is not None and stored_by <= held.stored_by <= stored_by + timedelta(seconds=1)
               for held in listed)
    sqs.change_message_visibility_batch(QueueUrl=url, Entries=[  # back to the queue, as after a delay
        {"Id": str(n), "ReceiptHandle": held.handle, "VisibilityTimeout": 0} for n, held in enumerate(listed)])

    delivered, lost = sorted(versions, key=lambda ref: ref.visit_id)
    status = DynamoVisitStatus(aws.ddb, visits_table=TABLES["VISITS_TABLE"])
    assert status.load(lost) is not None
    aws.ddb.update_item(TableName=TABLES["VISITS_TABLE"], Key={"visit_id": {"S": delivered.visit_id},
                                                               "version": {"S": delivered.version}},
                        UpdateExpression="SET #s = :d", ExpressionAttributeNames={"#s": "status"},
                        ExpressionAttributeValues={":d": {"S": "DELIVERED"}})
    restarted: list[list[VisitRef]] = []

    class Starter:
        def start(self, name: str, visits: Sequence[VisitRef]) -> None:
            restarted.append(list(visits))

    after_lease = RECEIVED + timedelta(hours=1)
    report = Sweeper(store=status, starter=Starter(), lease=FakeSweepLease(), outbox=outbox).sweep(after_lease, "s")
    assert (report.outbox_lists, report.stranded, report.claimed, report.outbox_failed) == (2, 1, 1, False)
    assert restarted == [[lost]]
    items = {VisitRef(i["visit_id"], i["version"]): i for i in scan(aws, "VISITS_TABLE")
             if is_version_key(i["version"])}
    assert items[lost]["status_shard"] == status_shard("PENDING", lost.visit_id)
    assert "status_shard" not in items[delivered]
    assert outbox.due(10) == []  # let go
    again = Sweeper(store=status, starter=Starter(), lease=FakeSweepLease(), outbox=outbox).sweep(after_lease, "t")
    assert (again.outbox_lists, again.stranded) == (0, 0)


def _keys(refs: Iterable[VisitRef]) -> list[tuple[str, str]]:
    return sorted((ref.visit_id, ref.version) for ref in refs)


def test_visits_are_stored_indexed_when_the_outbox_cannot_be_reached(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is lost when the list cannot be written: the visits enter the status index, as without an outbox."""
    from healthbook.ingest.model import is_version_key

    monkeypatch.setenv("OUTBOX_QUEUE_URL", "https://sqs.ap-southeast-1.amazonaws.com/123456789012/no-such-queue")
    app.reset()
    ingest_one(aws, app, "inbox/01001/unlisted.xml", signed(pki, a_visit(62)))
    (item,) = [i for i in scan(aws, "VISITS_TABLE") if is_version_key(i["version"])]
    assert item["status"] == "PENDING" and item["status_shard"] == status_shard("PENDING", item["visit_id"])


def test_an_accepted_file_replayed_is_refused_once_with_I503(aws: SimpleNamespace, app: ModuleType,
                                                              pki: dict[str, Path],
                                                              deliveries: list[list[Any]]) -> None:
    aws.s3.put_bucket_versioning(Bucket=RECEIPTS, VersioningConfiguration={"Status": "Enabled"})  # shows 2nd writes
    data = signed(pki, a_visit(40))
    sha = hashlib.sha256(data).hexdigest()
    key, copy_key = "inbox/01001/2026/11/claim.xml", "inbox/01001/2026/11/claim-copy.xml"
    original = ingest_one(aws, app, key, data, message_id="m-1")
    first = sid_of(key, json.loads(original["body"])["Records"][0]["s3"]["object"]["versionId"])
    replay = ingest_one(aws, app, copy_key, data, at=RECEIVED + timedelta(minutes=5), message_id="m-2")

    def receipt_versions(receipt_key: str) -> int:
        listed = aws.s3.list_object_versions(Bucket=RECEIPTS, Prefix=receipt_key).get("Versions", [])
        return len([v for v in listed if v["Key"] == receipt_key])

    copy_receipt = "receipts/01001/claim-copy.xml.receipt.json"
    receipt = receipt_at(aws, copy_receipt)
    assert receipt_versions(copy_receipt) == 1 and verify_receipt(receipt, aws.public) == []
    assert not receipt["accepted"] and receipt["visits"] == [] and receipt["merkle"] is None
    (error,) = receipt["errors"]
    assert error["code"] == "I503" and error["severity"] == "error"
    assert first in error["message_en"] and "2026-11-22T03:00:00Z" in error["message_vi"]
    assert "claim.xml" not in error["message_en"] + error["message_vi"]  # never the earlier file's name
    assert receipt_at(aws, "receipts/01001/claim.xml.receipt.json")["accepted"]  # the original's stands

    items = visit_items(aws)  # one version, the original's, in force; one delivery, the original's
    assert len(items) == 2 and items["LATEST"]["current"] == version_key(RECEIVED, first)
    assert items[version_key(RECEIVED, first)]["status"] == "PENDING"
    assert len(deliveries) == 1
    (copied,) = [s for s in submissions(aws) if s["object_key"] == copy_key]
    assert copied["status"] == "REJECTED" and copied["error_codes"] == {"I503"} and copied["content_sha256"] == sha
    assert copied["visits_total"] == 0 and copied["quarantine_key"] == copy_key
    assert aws.s3.get_object(Bucket=QUARANTINE, Key=copy_key)["Body"].read() == data
    assert {k: v["claimed_by"] for k, v in claims(aws).items()} == {f"content#01001#{sha}": first}

    # The same key again (a new S3 version): a replay too. Its receipt replaces the original's at that key.
    ingest_one(aws, app, key, data, at=RECEIVED + timedelta(minutes=10), message_id="m-3")
    assert [e["code"] for e in receipt_at(aws, "receipts/01001/claim.xml.receipt.json")["errors"]] == ["I503"]
    assert receipt_versions("receipts/01001/claim.xml.receipt.json") == 2 and len(visit_items(aws)) == 2

    assert list(counters(aws).values()) == [
        {"files_received": 3, "files_rejected": 2, "visits_accepted": 1, "error#I503": 2}]

    # The replay's own notification again (its idempotency record gone): DUPLICATE, no second receipt or count.
    before = (scan(aws, "SUBMISSIONS_TABLE"), scan(aws, "AGGREGATES_TABLE"), visit_items(aws))
    for item in scan(aws, "IDEMPOTENCY_TABLE"):
        aws.ddb.delete_item(TableName=TABLES["IDEMPOTENCY_TABLE"], Key={"id": {"S": item["id"]}})
    assert invoke(app, replay, original) == []
    assert (scan(aws, "SUBMISSIONS_TABLE"), scan(aws, "AGGREGATES_TABLE"), visit_items(aws)) == before
    assert receipt_versions(copy_receipt) == 1 and len(deliveries) == 1


def test_the_same_bytes_after_a_rejected_copy_are_processed(aws: SimpleNamespace, app: ModuleType,
                                                            pki: dict[str, Path]) -> None:
    """A file refused (here: its certificate not registered yet) claims nothing: once the facility registers its
    certificate, the very same bytes are validated again and accepted."""
    danang = ("48001", "Bệnh viện Đa khoa Đà Nẵng", "48")
    data = signed(pki, a_visit(41, danang), facility="48001")
    ingest_one(aws, app, "inbox/48001/first.xml", data, message_id="m-1")
    first = receipt_at(aws, "receipts/48001/first.xml.receipt.json")
    assert not first["accepted"] and "K410" in {e["code"] for e in first["errors"]}
    assert claims(aws) == {}
    aws.facilities.put_facility(*danang, x509.load_pem_x509_certificate(pki["48001"].read_bytes()))
    app.reset()  # a cold start reads the registry again (as REGISTRY_TTL_SECONDS would)
    ingest_one(aws, app, "inbox/48001/again.xml", data, at=RECEIVED + timedelta(hours=1), message_id="m-2")
    again = receipt_at(aws, "receipts/48001/again.xml.receipt.json")
    assert again["accepted"] and again["errors"] == []
    assert sorted(s["status"] for s in submissions(aws)) == ["ACCEPTED", "REJECTED"]
    assert len(claims(aws)) == 1 and len([v for v in visit_items(aws) if v != "LATEST"]) == 1


def test_content_claims_are_taken_once_and_confirmed_by_the_holders_submission(aws: SimpleNamespace) -> None:

    records = DynamoRecords(aws.ddb, submissions_table=TABLES["SUBMISSIONS_TABLE"],
                            visits_table=TABLES["VISITS_TABLE"])
    mine = ContentClaim("01001", "d" * 64, "a" * 64, "2026-11-22T03:00:00Z", "receipts/01001/r.xml.receipt.json")
    theirs = dataclasses.replace(mine, submission_id="e" * 64, received_at="2026-11-22T03:00:01Z",
                                 receipt_key="receipts/01001/s.xml.receipt.json")
    assert records.content_claim("01001", "d" * 64) is None
    assert records.claim_content(mine) == mine
    assert records.claim_content(theirs) == mine  # the holder, unconfirmed
    assert records.claim_content(mine) == mine  # a retry of the holder: still its own

    def record(sid: str, status: str) -> SubmissionRecord:
        return SubmissionRecord(
            submission_id=sid, facility="01001", received_at=RECEIVED, object_key=f"inbox/01001/{sid[:4]}.xml",
            version_id="v1", content_sha256="d" * 64, size=10, status=status, visits_total=1,
            visits_accepted=int(status == "ACCEPTED"), error_codes=(), standards=("4750",), receipt_key="r",
            quarantine_key=None, merkle_root=None, signing_key_id="k")

    assert records.put_submission(record("e" * 64, "REJECTED")) is True  # another submission's item: not the holder's
    assert records.content_claim("01001", "d" * 64) == mine  # still unconfirmed
    assert records.put_submission(record("a" * 64, "ACCEPTED")) is True
    assert records.content_claim("01001", "d" * 64) == dataclasses.replace(mine, confirmed=True)
    assert records.claim_content(mine) == mine and records.content_claim("01001", "d" * 64).confirmed  # stays so

    stale = dataclasses.replace(mine, content_sha256="c" * 64, submission_id="b" * 64)
    assert records.claim_content(stale) == stale
    assert records.put_submission(record("b" * 64, "REJECTED"), release=stale) is True
    assert records.content_claim("01001", "c" * 64) is None


def test_defective_file_gets_a_rejection_receipt_and_is_quarantined(aws: SimpleNamespace, app: ModuleType,
                                                                    pki: dict[str, Path]) -> None:
    visit = a_visit(4)
    visit.tables["XML1"][0]["HO_TEN"] = ""  # no name: H601 keeps the only visit out (V201 is a finding)
    key = "inbox/01001/2026/11/defective.xml"
    data = signed(pki, visit)
    version = upload(aws, key, data)
    assert invoke(app, message(key, version, size=len(data))) == []
    receipt = receipt_at(aws, "receipts/01001/defective.xml.receipt.json")
    assert verify_receipt(receipt, aws.public) == [] and not receipt["accepted"] and receipt["merkle"] is None
    (item,) = scan(aws, "SUBMISSIONS_TABLE")
    assert item["status"] == "REJECTED" and item["error_codes"] == {"H601"} and item["quarantine_key"] == key
    assert "V201" in item["finding_codes"]
    assert aws.s3.get_object(Bucket=QUARANTINE, Key=key)["Body"].read() == data
    assert scan(aws, "VISITS_TABLE") == []


def test_a_file_the_portal_api_received_carries_its_transaction_id(aws: SimpleNamespace, app: ModuleType,
                                                                   pki: dict[str, Path]) -> None:
    from healthbook.kernel import new_transaction_id, portal_inbox_key

    transaction = new_transaction_id("01001", RECEIVED)
    key = portal_inbox_key(transaction)
    ingest_one(aws, app, key, signed(pki, a_visit(6)))
    receipt = receipt_at(aws, f"receipts/01001/{transaction}.xml.receipt.json")
    assert verify_receipt(receipt, aws.public) == [] and receipt["transaction_id"] == transaction
    (record,) = [s for s in submissions(aws) if s["object_key"] == key]
    assert record["transaction_id"] == transaction and record["status"] == "ACCEPTED"
    # a file the facility put in S3 itself has none, even in a folder named like the portal's
    ingest_one(aws, app, "inbox/01001/portal/notes.xml", signed(pki, a_visit(7)), message_id="m-2")
    assert receipt_at(aws, "receipts/01001/notes.xml.receipt.json")["transaction_id"] is None


def test_prefix_mismatch_is_I501(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    ingest_one(aws, app, "inbox/79001/from-hanoi.xml", signed(pki, a_visit(5)))  # a 01001 file in 79001's folder
    receipt = receipt_at(aws, "receipts/79001/from-hanoi.xml.receipt.json")
    assert verify_receipt(receipt, aws.public) == []  # signed again, with I501 in it
    assert [e["code"] for e in receipt["errors"]] == ["I501"] and receipt["visits_accepted"] == 0
    assert "79001" in receipt["errors"][0]["message_en"] and "01001" in receipt["errors"][0]["message_en"]
    assert scan(aws, "VISITS_TABLE") == []


@pytest.mark.parametrize(("key", "receipt_key"), [("uploads/x.xml", "receipts/unknown/x.xml.receipt.json"),
                                                  ("inbox/1001/x.xml", "receipts/1001/x.xml.receipt.json")])
def test_outside_a_facility_folder_is_I502(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], key: str,
                                           receipt_key: str) -> None:
    ingest_one(aws, app, key, signed(pki, a_visit(6)))
    receipt = receipt_at(aws, receipt_key)
    assert verify_receipt(receipt, aws.public) == [] and [e["code"] for e in receipt["errors"]] == ["I502"]
    assert aws.s3.head_object(Bucket=QUARANTINE, Key=key)
    (item,) = scan(aws, "SUBMISSIONS_TABLE")
    assert item["status"] == "REJECTED" and "content_sha256" not in item


def test_oversized_object_is_E002_and_never_read(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_OBJECT_BYTES", "1000")
    ingest_one(aws, app, "inbox/01001/big.xml", signed(pki, a_visit(7)))
    receipt = receipt_at(aws, "receipts/01001/big.xml.receipt.json")
    assert [e["code"] for e in receipt["errors"]] == ["E002"] and verify_receipt(receipt, aws.public) == []


def test_an_object_over_the_limit_is_never_read() -> None:
    """One GET: its ContentLength decides, and the body of an object over the limit is closed unread."""
    from healthbook.aws.s3_store import S3Store

    class Body:
        def __init__(self, data: bytes) -> None:
            self.data, self.closed = data, False

        def read(self, amount: int) -> bytes:
            assert len(self.data) <= 1000, "an object over the limit was read"
            return self.data[:amount]

        def close(self) -> None:
            self.closed = True

    class S3:
        def __init__(self) -> None:
            self.calls: list[str] = []
            self.bodies: list[Body] = []

        def get_object(self, **kwargs: Any) -> dict[str, Any]:
            self.calls.append("get_object")
            body = Body(b"x" * (2000 if kwargs["Key"].endswith("big.xml") else 10))
            self.bodies.append(body)
            return {"Body": body, "ContentLength": len(body.data)}

    s3 = S3()
    store = S3Store(s3, receipts_bucket=RECEIPTS, quarantine_bucket=QUARANTINE)
    assert store.read(ref("inbox/01001/big.xml"), 1000) == StoredObject(size=2000, data=None)
    assert store.read(ref("inbox/01001/small.xml"), 1000) == StoredObject(size=10, data=b"x" * 10)
    assert s3.calls == ["get_object", "get_object"] and all(body.closed for body in s3.bodies)


def test_url_encoded_keys_are_decoded(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    ingest_one(aws, app, "inbox/01001/2026/11/hồ sơ 1+2.xml", signed(pki, a_visit(8)))
    assert receipt_at(aws, "receipts/01001/hồ sơ 1+2.xml.receipt.json")["accepted"]


def test_unversioned_event_uses_the_sequencer(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    key = "inbox/01001/no-version.xml"
    upload(aws, key, signed(pki, a_visit(9)))
    assert invoke(app, message(key, None)) == []
    assert receipt_at(aws, "receipts/01001/no-version.xml.receipt.json")["accepted"]


def test_s3_test_event_is_skipped(aws: SimpleNamespace, app: ModuleType) -> None:
    event = json.loads((EVENTS / "sqs_s3_test_event.json").read_text())
    assert app.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=RECEIPTS)
    assert all(scan(aws, table) == [] for table in ("SUBMISSIONS_TABLE", "VISITS_TABLE", "IDEMPOTENCY_TABLE"))


def test_poison_message_fails_alone(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    event = json.loads((EVENTS / "sqs_poison.json").read_text())
    (poison,) = event["Records"]
    assert app.lambda_handler(event, LambdaContext())["batchItemFailures"] == [{"itemIdentifier": poison["messageId"]}]
    not_s3 = dict(poison, messageId="m-json", body=json.dumps({"Records": [{"eventSource": "aws:sns"}]}))
    key = "inbox/01001/good.xml"
    data = signed(pki, a_visit(10))
    good = message(key, upload(aws, key, data), message_id="m-good", size=len(data))
    assert invoke(app, poison, not_s3, good) == [poison["messageId"], "m-json"]
    assert receipt_at(aws, "receipts/01001/good.xml.receipt.json")["accepted"]


def _poison(message_id: str, body: Any) -> dict[str, Any]:
    """An SQS record whose body is ``body`` (a string as it is, anything else as JSON)."""
    record: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / "sqs_poison.json").read_text())["Records"][0])
    record.update(messageId=message_id, body=body if isinstance(body, str) else json.dumps(body))
    return record


def _notification(**changes: Any) -> dict[str, Any]:
    """The S3 record of events/sqs_s3_put.json, with ``changes`` (None removes a field) in its s3.object or, for
    the record's own fields, at the top."""
    record: dict[str, Any] = json.loads(json.loads((EVENTS / "sqs_s3_put.json").read_text())["Records"][0]["body"])[
        "Records"][0]
    for name, value in changes.items():
        where = record["s3"]["object"] if name in ("key", "versionId", "sequencer", "size") else record
        if value is None:
            where.pop(name, None)
        else:
            where[name] = value
    return record


POISON = {  # message id -> body: every kind of message the handler refuses
    "not-json": "hello, this is not an S3 event",
    "json-list": [1, 2],
    "no-records": {"Service": "Amazon S3", "Event": "s3:ObjectCreated:Put"},
    "empty-records": {"Records": []},
    "records-not-a-list": {"Records": {"eventSource": "aws:s3"}},
    "sns-record": {"Records": [{"eventSource": "aws:sns"}]},
    "record-not-an-object": {"Records": ["aws:s3"]},
    "other-bucket": {"Records": [_notification(s3={"bucket": {"name": "someone-else"}, "object": {"key": "k"}})]},
    "no-key": {"Records": [_notification(key=None)]},
    "no-bucket": {"Records": [_notification(s3={"object": {"key": "inbox/01001/x.xml"}})]},
    "s3-not-an-object": {"Records": [_notification(s3="inbox/01001/x.xml")]},
    "no-event-time": {"Records": [_notification(eventTime=None)]},
    "bad-event-time": {"Records": [_notification(eventTime="yesterday")]},
    # one good record does not save a message with a bad one
    "good-then-bad": {"Records": [_notification(), _notification(eventTime="22/11/2026")]},
}


def test_every_kind_of_poison_message_fails_alone(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    poison = [_poison(message_id, body) for message_id, body in POISON.items()]
    key = "inbox/01001/between-poison.xml"
    data = signed(pki, a_visit(11))
    good = message(key, upload(aws, key, data), message_id="m-good", size=len(data))
    logs = io.StringIO()
    handler = app.logger.registered_handler
    previous = handler.setStream(logs)
    try:
        assert invoke(app, *poison[:7], good, *poison[7:]) == list(POISON)
    finally:
        handler.setStream(previous)
    assert receipt_at(aws, "receipts/01001/between-poison.xml.receipt.json")["accepted"]
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    refused = {line["sqs_message_id"]: line["message"] for line in lines if line["level"] == "ERROR"}
    assert set(refused) == set(POISON) and all(text.startswith("poison message: ") for text in refused.values())
    assert refused["not-json"] == "poison message: the message body is not JSON"
    assert refused["other-bucket"] == "poison message: S3 event from a bucket other than the inbox"
    assert refused["no-key"] == "poison message: S3 event record without a usable 'key'"
    assert refused["sns-record"] == "poison message: a record of the message is not an S3 event"
    assert refused["empty-records"] == "poison message: the message is not an S3 event notification"
    assert not any(line["message"].startswith("processing failed") for line in lines)  # none mistaken as transient
    assert len(submissions(aws)) == 1  # the good message's (the sample object of "good-then-bad" does not exist)


def test_non_creation_events_are_skipped(aws: SimpleNamespace, app: ModuleType) -> None:
    removed = _poison("m-removed", {"Records": [_notification(eventName="ObjectRemoved:Delete"),
                                                _notification(eventName="ObjectRestore:Completed", s3=None)]})
    assert invoke(app, removed) == []
    assert submissions(aws) == [] and scan(aws, "IDEMPOTENCY_TABLE") == []


def test_the_s3_test_event_needs_no_settings(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the test event nor a poison message reads the environment: no variable is set here, no AWS."""
    for name in ("INBOX_BUCKET", "RECEIPTS_BUCKET", "IDEMPOTENCY_TABLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    event = json.loads((EVENTS / "sqs_s3_test_event.json").read_text())
    logs = io.StringIO()
    handler = app.logger.registered_handler
    previous = handler.setStream(logs)
    app.reset()
    try:
        assert invoke(app, *event["Records"], _poison("m-poison", "{")) == ["m-poison"]
    finally:
        handler.setStream(previous)
        app.reset()
    messages = [json.loads(line)["message"] for line in logs.getvalue().splitlines()]
    assert messages == ["S3 test event skipped", "poison message: the message body is not JSON"]


def test_a_missing_setting_fails_the_message_and_names_the_variable(aws: SimpleNamespace, app: ModuleType,
                                                                    pki: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    key = "inbox/01001/misconfigured.xml"
    data = signed(pki, a_visit(12))
    event = message(key, upload(aws, key, data), size=len(data))
    monkeypatch.delenv("RECEIPTS_BUCKET")
    monkeypatch.setenv("REGISTRY_TTL_SECONDS", "soon")
    logs = io.StringIO()
    handler = app.logger.registered_handler
    previous = handler.setStream(logs)
    try:
        assert invoke(app, event) == ["m-1"]  # retried, then the DLQ: never a rejection receipt
    finally:
        handler.setStream(previous)
    (line,) = [json.loads(text) for text in logs.getvalue().splitlines() if '"ERROR"' in text]
    assert line["message"] == "processing failed; the message will be retried"
    assert "missing environment variable(s): RECEIPTS_BUCKET" in line["exception"]
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=RECEIPTS) and submissions(aws) == []


def test_a_key_is_url_decoded_exactly_once(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path]) -> None:
    """S3 sends keys URL-encoded (a space as +): decoded once, a "+" or "%41" in the name stays what it is."""
    key = "inbox/01001/2026/11/Hồ sơ khám bệnh Đồng Tháp 1+1 %41 ữ.xml"
    data = signed(pki, a_visit(13))
    sent = message(key, upload(aws, key, data), size=len(data))
    assert "%2B" in sent["body"] and "%2541" in sent["body"] and " " not in json.loads(sent["body"])["Records"][0][
        "s3"]["object"]["key"]
    assert invoke(app, sent) == []
    (item,) = submissions(aws)
    assert item["object_key"] == key
    assert receipt_at(aws, "receipts/01001/Hồ sơ khám bệnh Đồng Tháp 1+1 %41 ữ.xml.receipt.json")["accepted"]


def test_notification_parsing_without_aws() -> None:
    from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from healthbook.aws.ingest_runtime import PoisonMessage, created_object, s3_event

    encoded = quote_plus("inbox/01001/bệnh án 50%+.xml", safe="/")
    found = created_object(S3EventRecord(_notification(key=encoded, versionId="", sequencer=None, size=None)),
                      "healthbook-dev-inbox")
    assert found == {"bucket": "healthbook-dev-inbox", "key": "inbox/01001/bệnh án 50%+.xml", "version_id": None,
                     "sequencer": None, "size": None, "event_time": "2026-11-22T03:00:00.123Z"}
    removed = S3EventRecord(_notification(eventName="ObjectRemoved:Delete"))
    assert created_object(removed, "healthbook-dev-inbox") is None
    with pytest.raises(PoisonMessage, match="bucket other than the inbox"):
        created_object(S3EventRecord(_notification()), "another-inbox")
    test_event = json.loads((EVENTS / "sqs_s3_test_event.json").read_text())["Records"][0]
    assert s3_event(SQSRecord(test_event)) is None
    put = s3_event(SQSRecord(json.loads((EVENTS / "sqs_s3_put.json").read_text())["Records"][0]))
    assert put is not None and [r.event_name for r in put.records] == ["ObjectCreated:Put"]
    for message_id in ("not-json", "json-list", "no-records", "empty-records", "records-not-a-list"):
        with pytest.raises(PoisonMessage):
            s3_event(SQSRecord(_poison(message_id, POISON[message_id])))


def _families(printed: str) -> list[tuple[Any, ...]]:
    """(metric, family, values...) of every EMF document printed with an ErrorFamily dimension, in print order."""
    blobs = [json.loads(line) for line in printed.splitlines() if line.startswith("{") and "ErrorFamily" in line]
    return [(metric["Name"], blob["ErrorFamily"], *blob[metric["Name"]])
            for blob in blobs for directive in blob["_aws"]["CloudWatchMetrics"] for metric in directive["Metrics"]]


def test_per_family_counts_are_one_document_per_metric_and_family_per_batch(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    batch = []
    for n in range(3):  # three files with a visit kept out by H601 (no name)
        visit = a_visit(50 + n)
        visit.tables["XML1"][0]["HO_TEN"] = ""
        key, data = f"inbox/01001/defective-{n}.xml", signed(pki, visit)
        batch.append(message(key, upload(aws, key, data), message_id=f"m-h{n}", size=len(data)))
    for n in range(2):  # two that are not XML: a file-level E error
        key = f"inbox/01001/garbage-{n}.xml"
        batch.append(message(key, upload(aws, key, b"not xml"), message_id=f"m-e{n}", size=7))
    key, data = "inbox/01001/fine.xml", signed(pki, a_visit(55))
    batch.append(message(key, upload(aws, key, data), message_id="m-ok", size=len(data)))
    capsys.readouterr()
    assert invoke(app, *batch) == []
    first = _families(capsys.readouterr().out)
    assert first == [("FilesRejected", "E", 2), ("FilesRejected", "H", 3), ("VisitsRejected", "H", 3)]
    # The next invocation starts from zero: one more defective file counts once, not on top of the last batch.
    visit = a_visit(56)
    visit.tables["XML1"][0]["HO_TEN"] = ""
    key, data = "inbox/01001/defective-again.xml", signed(pki, visit)
    assert invoke(app, message(key, upload(aws, key, data), message_id="m-again", size=len(data))) == []
    assert _families(capsys.readouterr().out) == [("FilesRejected", "H", 1), ("VisitsRejected", "H", 1)]
    assert invoke(app, batch[0], batch[-1]) == []  # both again (SQS redelivers): duplicates
    assert _families(capsys.readouterr().out) == []  # nothing rejected this time, no family document


class CountingKms:
    """The KMS client of the ingest function, counting its Sign calls and failing those it is told to."""

    def __init__(self, inner: Any, fail: list[int]) -> None:
        self._inner, self._fail, self.signed = inner, fail, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def sign(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        self.signed += 1
        if self.signed in self._fail:  # after botocore's own retries have given up
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "Sign")
        return self._inner.sign(**kwargs)


@pytest.fixture
def kms_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[..., CountingKms]:
    """Install a counting KMS client in the ingest runtime (``fail``: which Sign calls, from 1, throttle)."""
    from healthbook.aws import ingest_runtime

    real_client: Callable[[str], Any] = ingest_runtime.client

    def install(fail: tuple[int, ...] = ()) -> CountingKms:
        counting = CountingKms(real_client("kms"), list(fail))
        monkeypatch.setattr(ingest_runtime, "client", lambda service, **options: (
            counting if service == "kms" else real_client(service, **options)))
        return counting

    return install


def test_a_failed_signature_fails_its_window_and_the_retry_converges(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], kms_calls: Callable[..., CountingKms]) -> None:
    """One Sign for the window: KMS throttling it (after botocore's retries) fails every message of the window,
    with nothing written but the content claims (taken again by the retry); SQS redelivers, and all converge."""
    kms = kms_calls(fail=(1,))
    records = []
    for n in (1, 2):
        key = f"inbox/01001/batch-{n}.xml"
        data = signed(pki, a_visit(20 + n))
        records.append(message(key, upload(aws, key, data), message_id=f"m-{n}", size=len(data)))
    assert invoke(app, *records) == ["m-1", "m-2"] and kms.signed == 1
    assert submissions(aws) == [] and scan(aws, "IDEMPOTENCY_TABLE") == []  # no record left behind: it runs again
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=RECEIPTS)
    assert claims_confirmed(aws) == [False, False]
    # SQS redelivers both: the same window again, signed once.
    assert invoke(app, *records) == [] and kms.signed == 2
    assert len(submissions(aws)) == 2 and len(scan(aws, "IDEMPOTENCY_TABLE")) == 2
    assert claims_confirmed(aws) == [True, True]
    receipts = [receipt_at(aws, f"receipts/01001/batch-{n}.xml.receipt.json") for n in (1, 2)]
    assert all(verify_receipt(r, aws.public) == [] and r["accepted"] for r in receipts)
    assert [r["platform_signature"]["batch"]["leaf_index"] for r in receipts] == [0, 1]


def _batch(aws: SimpleNamespace, pki: dict[str, Path], sizes: Sequence[int], *, first: int = 40,
           name: str = "w") -> list[dict[str, Any]]:
    """One message per file (``{name}-{n}``), its S3 event claiming ``sizes[n]`` bytes (the window budget reads
    the event's size)."""
    records = []
    for n, size in enumerate(sizes):
        key = f"inbox/01001/{name}-{n}.xml"
        data = signed(pki, a_visit(first + n))
        records.append(message(key, upload(aws, key, data), message_id=f"{name}-{n}", size=size))
    return records


def test_a_batch_is_signed_in_windows_of_at_most_24_mb(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path],
                                                      kms_calls: Callable[..., CountingKms]) -> None:
    """The files of a window wait in memory for its one signature: three 10 MB files (as their events say) are
    two windows, two Signs; small files share one."""
    from healthbook.aws.ingest_runtime import WINDOW_BYTES

    kms = kms_calls()
    assert invoke(app, *_batch(aws, pki, [10 * 2**20] * 3)) == [] and kms.signed == 2
    leaves = [receipt_at(aws, f"receipts/01001/w-{n}.xml.receipt.json")["platform_signature"]["batch"]["leaves"]
              for n in range(3)]
    assert leaves == [2, 2, 1] and 2 * 10 * 2**20 <= WINDOW_BYTES < 3 * 10 * 2**20
    assert invoke(app, *_batch(aws, pki, [30_000] * 5, first=50, name="s")) == [] and kms.signed == 3


def _in_flight(records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """The messages in a real (moto) queue, received and in flight for 12 minutes as the event source mapping holds
    them, their receipt handles in the records; the function told the queue's URL."""
    import boto3

    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="ingest")["QueueUrl"]
    monkeypatch.setenv("INGEST_QUEUE_URL", queue)
    for record in records:
        sqs.send_message(QueueUrl=queue, MessageBody=record["body"])
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=725)["Messages"]
    by_body = {m["Body"]: m["ReceiptHandle"] for m in received}
    for record in records:
        record["receiptHandle"] = by_body[record["body"]]
    return sqs, queue


def test_a_window_short_of_time_to_record_sets_the_rest_aside(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording can take far longer than examining: once the time left is short, the window's other messages are
    not recorded (nothing of them written, their idempotency released), sent again at once, and their retry ends
    as if they had been alone."""
    from healthbook.aws import ingest_runtime

    left = {"ms": 60_000}
    monkeypatch.setattr(LambdaContext, "get_remaining_time_in_millis", lambda self: left["ms"])
    record = ingest_runtime.IngestRuntime._record

    def slow(self: Any, wiring: Any, message: Any) -> bool:
        recorded: bool = record(self, wiring, message)
        left["ms"] = 10_000  # that one took most of the invocation
        return recorded

    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_record", slow)
    records = _batch(aws, pki, [1_000] * 3)  # one window
    sqs, queue = _in_flight(records, monkeypatch)
    assert invoke(app, *records) == []  # the two set aside are sent again: the originals are done with
    assert len(submissions(aws)) == 1 and len(scan(aws, "IDEMPOTENCY_TABLE")) == 1
    assert [o["Key"] for o in aws.s3.list_objects_v2(Bucket=RECEIPTS)["Contents"]] == [
        "receipts/01001/w-0.xml.receipt.json"]
    again = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=3, MessageAttributeNames=["All"])["Messages"]
    assert sorted(m["Body"] for m in again) == sorted(r["body"] for r in records[1:])
    assert [m["MessageAttributes"][ingest_runtime.POSTPONED]["StringValue"] for m in again] == ["1", "1"]
    left["ms"] = 60_000
    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_record", record)
    assert invoke(app, *records[1:]) == [] and len(submissions(aws)) == 3
    receipts = [receipt_at(aws, f"receipts/01001/w-{n}.xml.receipt.json") for n in range(3)]
    assert all(verify_receipt(r, aws.public) == [] and r["accepted"] for r in receipts)


def test_a_short_invocation_leaves_the_messages_it_cannot_finish_to_sqs(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With too little time left for another window, the rest are left unopened (no idempotency record, no
    receipt) and sent again at once as new messages, counting the postponement in an attribute rather than in a
    receive (five receives send a message to the DLQ); the next batch takes the most-postponed first. A message that
    cannot be sent again fails, visible again at once."""
    from healthbook.aws import ingest_runtime

    monkeypatch.setattr(LambdaContext, "get_remaining_time_in_millis", lambda self: 20_000)
    records = _batch(aws, pki, [20 * 2**20, 20 * 2**20, 1_000])  # three windows' worth
    sqs, queue = _in_flight(records, monkeypatch)
    assert invoke(app, *records) == []
    assert receipt_at(aws, "receipts/01001/w-0.xml.receipt.json")["accepted"]
    assert len(scan(aws, "IDEMPOTENCY_TABLE")) == 1 and len(submissions(aws)) == 1
    # The two postponed are in the queue again at once, not after the visibility timeout, their receives unused.
    again = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=3, MessageAttributeNames=["All"],
                                AttributeNames=["ApproximateReceiveCount"])["Messages"]
    assert sorted(m["Body"] for m in again) == sorted(r["body"] for r in records[1:])
    assert {(m["Attributes"]["ApproximateReceiveCount"], m["MessageAttributes"][ingest_runtime.POSTPONED][
        "StringValue"]) for m in again} == {("1", "1")}

    examined: list[str] = []
    examine = ingest_runtime.IngestRuntime._examine
    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_examine", lambda self, wiring, message, holders: (
        examined.append(message.message_id) or examine(self, wiring, message, holders)))
    postponed = dict(records[2], messageAttributes={
        ingest_runtime.POSTPONED: {"stringValue": "1", "dataType": "Number"}})
    again = [*_batch(aws, pki, [1_000], first=60, name="x"), postponed]
    # The postponed one first; then too little time is left for the other (recording takes about as long).
    assert invoke(app, *again) == [] and examined == ["w-2"]
    monkeypatch.setattr(LambdaContext, "get_remaining_time_in_millis", lambda self: 60_000)
    assert invoke(app, *again) == [] and examined[1:] == ["w-2", "x-0"]  # w-2 answered by idempotency now
    assert len(submissions(aws)) == 3

    monkeypatch.setattr(LambdaContext, "get_remaining_time_in_millis", lambda self: 20_000)
    # One that cannot be sent again fails instead, visible again at once (a receive used).
    failing = _batch(aws, pki, [20 * 2**20, 1_000], first=70, name="f")
    sqs, queue = _in_flight(failing, monkeypatch)
    monkeypatch.setattr(ingest_runtime.SqsRequeue, "send_again", lambda self, messages: set())
    assert invoke(app, *failing) == ["f-1"]
    again = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=3, AttributeNames=["All"])["Messages"]
    assert [(m["Body"], m["Attributes"]["ApproximateReceiveCount"]) for m in again] == [(failing[1]["body"], "2")]
    assert len(submissions(aws)) == 4


def test_a_window_keeps_as_much_time_for_recording_as_recording_took_so_it_records_what_it_examines(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of many visits record for longer than they examine (3-4 times on a saturated emulator). A window that
    kept only as long again for recording examined files it then had to set aside, examined again later for
    nothing. The process measures how much longer recording took and keeps that much the next time. Here on a
    clock of its own: examining a file takes 3 s, recording it 12 s, an invocation has 120 s."""
    from healthbook.aws import ingest_runtime

    clock, deadline = {"s": 0.0}, {"s": 120.0}
    monkeypatch.setattr(ingest_runtime, "time", SimpleNamespace(perf_counter=lambda: clock["s"]))
    monkeypatch.setattr(LambdaContext, "get_remaining_time_in_millis",
                        lambda self: int((deadline["s"] - clock["s"]) * 1000))
    examine, record = ingest_runtime.IngestRuntime._examine, ingest_runtime.IngestRuntime._record
    examined: list[str] = []

    def slow_examine(self: Any, wiring: Any, message: Any, holders: Any) -> bool:
        examined.append(message.message_id)
        clock["s"] += 3
        waits: bool = examine(self, wiring, message, holders)
        return waits

    def slow_record(self: Any, wiring: Any, message: Any) -> bool:
        clock["s"] += 12
        recorded: bool = record(self, wiring, message)
        return recorded

    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_examine", slow_examine)
    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_record", slow_record)
    records = _batch(aws, pki, [1_000] * 20)
    assert app.runtime().record_per_examine == 1.0  # nothing measured yet: as long again
    failed = invoke(app, *records)
    # 16 examined (48 s), 4 recorded in the 72 s left above the margin: 12 examined for nothing
    assert len(examined) == 16 and len(submissions(aws)) == 4 and len(failed) == 16
    assert app.runtime().record_per_examine == 4.0  # 48 s of recording for 12 s of examining
    examined.clear()
    deadline["s"] = clock["s"] + 120
    failed = invoke(app, *[r for r in records if r["messageId"] in failed])
    # 7 examined (21 s): 6 recorded, one set aside on the margin's edge
    assert len(examined) == 7 and len(submissions(aws)) == 10 and len(failed) == 10
    assert app.runtime().record_ms_per_unit == 6_000  # 12 s for a file of one visit: two units
    # 50 s left: two examined; the first recorded (it has the invocation), the second would need 12 s above the
    # margin with 32 s left: set aside. A second window examines one more, and its first message is held to the
    # same rule (an invocation killed at its timeout would leave its whole batch for the visibility timeout).
    deadline["s"] = clock["s"] + 50
    failed = invoke(app, *[r for r in records if r["messageId"] in failed][:3])
    assert len(submissions(aws)) == 11 and len(failed) == 2 and clock["s"] <= deadline["s"] - 29
    low, high = ingest_runtime.RECORD_PER_EXAMINE
    runtime = app.runtime()
    runtime._measure([SimpleNamespace(examine_ms=100.0, record_units=1)], 5_000)  # type: ignore[list-item]
    assert runtime.record_per_examine == high
    runtime._measure([SimpleNamespace(examine_ms=100.0, record_units=1)], 10)  # type: ignore[list-item]
    assert runtime.record_per_examine == low
    runtime._measure([SimpleNamespace(examine_ms=10.0, record_units=1)], 50_000)  # type: ignore[list-item]
    assert runtime.record_per_examine == low  # too short to tell: kept


def test_a_window_keeps_time_for_its_end_so_a_slow_emulator_does_not_run_it_past_the_timeout(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """After its last message is recorded a window starts the delivery and ends each object (until 2026-12-07 its
    idempotency record was completed then). Under load (an AWS call took a second on the emulator) that end
    outlasted the invocation, which was killed and its whole batch left for the visibility timeout. The end is
    measured per object and kept for. Here on a clock of its own: examining a file takes 1 s, recording it 2 s,
    ending it 4 s."""
    from healthbook.aws import ingest_runtime

    clock, deadline = {"s": 0.0}, {"s": 1_000.0}
    monkeypatch.setattr(ingest_runtime, "time", SimpleNamespace(perf_counter=lambda: clock["s"]))
    monkeypatch.setattr(LambdaContext, "get_remaining_time_in_millis",
                        lambda self: int((deadline["s"] - clock["s"]) * 1000))
    examine, record = ingest_runtime.IngestRuntime._examine, ingest_runtime.IngestRuntime._record
    complete = ingest_runtime.IngestRuntime._complete  # one message of one file: 4 s per object

    def slow(step: Any, seconds: float) -> Any:
        def run(*args: Any) -> Any:
            clock["s"] += seconds
            return step(*args)
        return run

    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_examine", slow(examine, 1))
    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_record", slow(record, 2))
    monkeypatch.setattr(ingest_runtime.IngestRuntime, "_complete", slow(complete, 4))
    records = _batch(aws, pki, [1_000] * 25)
    assert invoke(app, *records[:5]) == [] and len(submissions(aws)) == 5  # a long invocation, to measure
    runtime = app.runtime()
    assert runtime.record_per_examine == 6.0  # 10 s recording and 20 s of the end for 5 s of examining
    assert runtime.finish_ms_per_object == pytest.approx(20_000 / 6)  # five objects and the start
    # 120 s: 13 examined (13 s, keeping 6 times as long), recorded (26 s) and completed (52 s) with 29 s to spare.
    # Keeping time only for recording, it examined and recorded all 20 (60 s) and ended at 140 s, killed.
    clock["s"], deadline["s"] = 0.0, 120.0
    failed = invoke(app, *records[5:])
    assert len(submissions(aws)) == 18 and len(failed) == 7
    assert clock["s"] <= deadline["s"] - 29
    # Each message recorded keeps time for the end of all recorded so far, whatever examining kept: with the
    # ratio forced down, 60 s records 3 of the 7 (13 s) and ends them (12 s), the margin kept; all 7 took 49 s.
    # No later window is begun without time to record and end a file (it examined one for nothing, six times).
    runtime.record_per_examine = 1.0
    clock["s"], deadline["s"] = 0.0, 60.0
    assert len(invoke(app, *[r for r in records if r["messageId"] in failed])) == 4
    assert len(submissions(aws)) == 21 and clock["s"] <= deadline["s"] - ingest_runtime.WINDOW_TIME_MARGIN_MS / 1000


def _emf(printed: str) -> dict[str, list[Any]]:
    """Every metric value printed as EMF (documents without dimensions beyond the service), by name."""
    values: dict[str, list[Any]] = {}
    for line in printed.splitlines():
        if not line.startswith("{") or "_aws" not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                values.setdefault(metric["Name"], []).extend(value if isinstance(value, list) else [value])
    return values


def test_a_batch_of_files_costs_one_signature(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path],
                                              kms_calls: Callable[..., CountingKms],
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, record_writers: int) -> None:
    """A full batch: ten files (accepted, kept out, not XML, too far from a facility folder) and a test event,
    one KMS Sign; every receipt verifies alone with the public key, each with its own path to the same root.
    The accepted visits of the whole batch are handed to the delivery at once, after every file is recorded,
    whether the files are recorded one at a time or four."""
    kms = kms_calls()
    starts: list[tuple[int, int]] = []  # (files recorded by then, visits handed over)
    start_delivery = IngestService.start_delivery

    def recorded_first(service: IngestService, outcomes: Any) -> None:
        starts.append((len(submissions(aws)), sum(len(o.to_deliver) for o in outcomes)))
        start_delivery(service, outcomes)

    monkeypatch.setattr(IngestService, "start_delivery", recorded_first)
    batch, keys = [], []
    for n in range(10):
        visit = a_visit(60 + n)
        if n == 3:
            visit.tables["XML1"][0]["HO_TEN"] = ""  # kept out: H601
        key = "elsewhere/x.xml" if n == 7 else f"inbox/01001/window-{n}.xml"
        data = b"not xml" if n == 5 else signed(pki, visit)
        keys.append(key)
        batch.append(message(key, upload(aws, key, data), message_id=f"m-{n}", size=len(data)))
    test_event = json.loads((EVENTS / "sqs_s3_test_event.json").read_text())["Records"][0]
    logs = io.StringIO()
    handler = app.logger.registered_handler
    previous = handler.setStream(logs)
    capsys.readouterr()
    try:
        assert invoke(app, *batch[:4], test_event, *batch[4:]) == []
    finally:
        handler.setStream(previous)
    assert kms.signed == 1
    receipts = [receipt_at(aws, locate(key).receipt_key) for key in keys]
    assert all(verify_receipt(r, aws.public) == [] for r in receipts)
    batches = [r["platform_signature"]["batch"] for r in receipts]
    assert {b["root"] for b in batches} == {batches[0]["root"]} and {b["leaves"] for b in batches} == {10}
    assert [b["leaf_index"] for b in batches] == list(range(10))  # in batch order
    assert len({r["platform_signature"]["value"] for r in receipts}) == 1
    assert [r["accepted"] for r in receipts].count(True) == 7 and len(submissions(aws)) == 10
    assert starts == [(10, 7)]
    metrics = _emf(capsys.readouterr().out)
    assert metrics["ReceiptSignatures"] == [1] and metrics["ReceiptsSigned"] == [10]
    assert metrics["MessagesReceived"] == [11] and metrics["MessagesFailed"] == [0]
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    (signing,) = [line for line in lines if line["message"] == "receipts signed"]
    assert signing["receipts"] == 10 and signing["signing_ms"] >= 0
    objects = [line for line in lines if line["message"].startswith("object ")]
    assert len(objects) == 10 and {line["receipts_per_signature"] for line in objects} == {10}
    assert all({"sqs_message_id", "submission_id", "s3_key", "facility"} <= set(line) for line in objects)


def test_a_failing_record_in_the_middle_leaves_the_others_receipted(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], kms_calls: Callable[..., CountingKms],
        monkeypatch: pytest.MonkeyPatch, record_writers: int) -> None:
    """The window is signed; then writing the second file's receipt fails: its message alone fails, the others
    are recorded with their receipts (valid, from the window of three); the retry signs that file's receipt again
    in its own window and converges to one of everything. The failure's log line names its own message and object,
    though other files were being recorded on other threads at the time."""
    from botocore.exceptions import ClientError
    from healthbook.aws.s3_store import S3Store

    kms = kms_calls()
    real_put = S3Store.put_receipt
    broken = ["receipts/01001/middle-1.xml.receipt.json"]

    def put_receipt(self: S3Store, key: str, body: bytes) -> None:
        if key in broken:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}},
                              "PutObject")
        real_put(self, key, body)

    monkeypatch.setattr(S3Store, "put_receipt", put_receipt)
    batch = []
    for n in range(3):
        key, data = f"inbox/01001/middle-{n}.xml", signed(pki, a_visit(70 + n))
        batch.append(message(key, upload(aws, key, data), message_id=f"m-{n}", size=len(data)))
    logs = io.StringIO()
    handler = app.logger.registered_handler
    previous = handler.setStream(logs)
    try:
        assert invoke(app, *batch) == ["m-1"] and kms.signed == 1
    finally:
        handler.setStream(previous)
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    (failed,) = [line for line in lines if line["message"].startswith("processing failed")]
    assert (failed["sqs_message_id"], failed["s3_key"]) == ("m-1", "inbox/01001/middle-1.xml")
    accepted = {line["s3_key"]: (line["sqs_message_id"], line["submission_id"]) for line in lines
                if line["message"] == "object accepted"}
    assert sorted(accepted) == ["inbox/01001/middle-0.xml", "inbox/01001/middle-2.xml"]
    assert len({sid for _, sid in accepted.values()}) == 2 and "submission_id" not in failed  # no other's keys
    assert [accepted[f"inbox/01001/middle-{n}.xml"][0] for n in (0, 2)] == ["m-0", "m-2"]
    for n in (0, 2):
        receipt = receipt_at(aws, f"receipts/01001/middle-{n}.xml.receipt.json")
        assert verify_receipt(receipt, aws.public) == [] and receipt["platform_signature"]["batch"]["leaves"] == 3
    assert sorted(s["object_key"] for s in submissions(aws)) == ["inbox/01001/middle-0.xml",
                                                                "inbox/01001/middle-2.xml"]
    assert len(scan(aws, "IDEMPOTENCY_TABLE")) == 2  # the failed object's record was released
    stored = len(visit_items(aws))  # the middle file's visit was stored before its receipt failed: kept, not redone
    broken.clear()
    assert invoke(app, batch[1]) == [] and kms.signed == 2
    receipt = receipt_at(aws, "receipts/01001/middle-1.xml.receipt.json")
    assert verify_receipt(receipt, aws.public) == [] and receipt["accepted"]
    assert receipt["platform_signature"]["batch"]["leaves"] == 1
    assert len(submissions(aws)) == 3 and len(visit_items(aws)) == stored
    assert invoke(app, *batch) == [] and kms.signed == 2  # all done: answered from the idempotency table
    assert len(submissions(aws)) == 3


def test_an_object_another_invocation_is_ingesting_fails_its_message_alone(aws: SimpleNamespace, app: ModuleType,
                                                                          pki: dict[str, Path]) -> None:
    """The idempotency record is held from examining to recording: a concurrent run of the same object meets it
    in progress and fails its message (SQS retries it); once the other run gives up, the retry runs."""
    from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
    from healthbook.aws.ingest_runtime import created_object

    key, data = "inbox/01001/busy.xml", signed(pki, a_visit(83))
    busy = message(key, upload(aws, key, data), message_id="m-busy", size=len(data))
    free_key, free = "inbox/01001/free.xml", signed(pki, a_visit(84))
    other = message(free_key, upload(aws, free_key, free), message_id="m-free", size=len(free))
    payload = created_object(S3EventRecord(json.loads(busy["body"])["Records"][0]), INBOX)
    assert payload is not None
    runtime = app.runtime()
    runtime.idempotency.register_lambda_context(LambdaContext())
    idempotency = runtime.wiring().idempotency
    assert idempotency.begin(payload)  # another invocation holds it
    assert invoke(app, busy, other) == ["m-busy"]
    assert [s["object_key"] for s in submissions(aws)] == [free_key]
    idempotency.release(payload, RuntimeError("that invocation failed"))
    assert invoke(app, busy) == [] and len(submissions(aws)) == 2
    # Both records stay in progress until they lapse: the submission items say the objects are done.
    assert [r["status"] for r in scan(aws, "IDEMPOTENCY_TABLE")] == ["INPROGRESS", "INPROGRESS"]
    assert invoke(app, busy, other) == [] and len(submissions(aws)) == 2


def test_the_same_object_twice_in_a_batch_is_done_once(aws: SimpleNamespace, app: ModuleType,
                                                       pki: dict[str, Path], kms_calls: Callable[..., CountingKms],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """S3 and SQS may deliver one event twice, even within one batch: the second waits for the first (a second
    window), is answered from the idempotency table and fails nothing, as it would in the next invocation."""
    kms = kms_calls()
    key, data = "inbox/01001/twice-in-a-batch.xml", signed(pki, a_visit(80))
    first = message(key, upload(aws, key, data), message_id="m-1", size=len(data))
    other_key, other = "inbox/01001/other.xml", signed(pki, a_visit(81))
    second = message(other_key, upload(aws, other_key, other), message_id="m-2", size=len(other))
    capsys.readouterr()
    assert invoke(app, first, second, dict(first, messageId="m-3")) == [] and kms.signed == 1
    assert len(submissions(aws)) == 2 and _emf(capsys.readouterr().out)["FilesDuplicate"] == [1]


def test_an_identical_copy_in_the_same_batch_waits_for_its_original(
        aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path], kms_calls: Callable[..., CountingKms]) -> None:
    """Two uploads of the same bytes in one batch: the second waits for the first to finish (a second window)
    and gets I503, instead of failing its message and waiting out the visibility timeout."""
    kms = kms_calls()
    data = signed(pki, a_visit(82))
    batch = [message(key, upload(aws, key, data), message_id=f"m-{n}", size=len(data))
             for n, key in enumerate(("inbox/01001/original.xml", "inbox/01001/copy.xml"))]
    assert invoke(app, *batch) == [] and kms.signed == 2
    original = receipt_at(aws, "receipts/01001/original.xml.receipt.json")
    copied = receipt_at(aws, "receipts/01001/copy.xml.receipt.json")
    assert original["accepted"] and [e["code"] for e in copied["errors"]] == ["I503"]
    assert all(verify_receipt(r, aws.public) == [] for r in (original, copied))
    assert sorted(s["status"] for s in submissions(aws)) == ["ACCEPTED", "REJECTED"]


def test_logs_and_metrics_carry_no_personal_data(aws: SimpleNamespace, app: ModuleType, pki: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    logs = io.StringIO()
    handler = app.logger.registered_handler
    previous = handler.setStream(logs)
    try:
        good, bad = a_visit(30), a_visit(31)
        bad.tables["XML1"][0]["SO_CCCD"] = "98765432109"  # an invalid ID: its (masked) value lands in the receipt only
        ingest_one(aws, app, "inbox/01001/good.xml", signed(pki, good), message_id="m-1")
        ingest_one(aws, app, "inbox/01001/bad.xml", signed(pki, bad), message_id="m-2")
        ingest_one(aws, app, "inbox/01001/bad.xml", b"not xml", message_id="m-3")
        invoke(app, json.loads((EVENTS / "sqs_poison.json").read_text())["Records"][0])
    finally:
        handler.setStream(previous)
    logged = logs.getvalue()
    printed = capsys.readouterr().out
    lines = [json.loads(line) for line in logged.splitlines()]
    assert {"submission_id", "facility", "s3_key"} <= set(next(x for x in lines if x["message"] == "object accepted"))
    assert any(line["message"].startswith("poison message") for line in lines)
    for value in personal(good) + personal(bad):
        assert value not in logged and value not in printed, "personal data in logs"
    blobs = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    names = {m["Name"] for blob in blobs for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"FilesReceived", "VisitsAccepted", "VisitsRejected", "ProcessingTime"} <= names
    families = {blob.get("ErrorFamily") for blob in blobs if "ErrorFamily" in blob}
    assert families == {"E"}  # the invalid ID is a finding (the card identifies the patient): only not-XML rejects


def test_facility_repository_round_trip(aws: SimpleNamespace, pki: dict[str, Path]) -> None:
    import boto3
    from healthbook.aws.facilities import ConcurrentChange, list_facilities, put_facility
    from healthbook.signing.registry import certificate_sha256

    table = boto3.resource("dynamodb").Table(TABLES["FACILITIES_TABLE"])
    expired = x509.load_pem_x509_certificate(pki["expired"].read_bytes())
    put_facility(table, "01001", HANOI[1], "01", expired, principal_arn="arn:aws:iam::123456789012:user/f-01001")
    put_facility(table, "01001", HANOI[1], "01", expired)  # the same certificate again: no duplicate
    entries = {e.code: e for e in list_facilities(table)}
    assert len(entries["01001"].certificates) == 2 and str(entries["01001"].principal_arn).endswith("f-01001")
    good = certificate_sha256(x509.load_pem_x509_certificate(pki["01001"].read_bytes()))
    aws.facilities.revoke_certificate("01001", good, RECEIVED)
    registry = aws.facilities.load_registry()
    assert registry.is_revoked(good, RECEIVED) and registry.facilities_for(good, RECEIVED - timedelta(days=1)) == [
        "01001"]
    with pytest.raises(ValueError, match="5 digits"):
        put_facility(table, "1001", "x", "01", expired)
    stale = table.get_item(Key={"facility": "79001"})["Item"]
    aws.facilities.put_facility("79001", SAIGON[1], "79", expired)
    with pytest.raises(ConcurrentChange):
        aws.facilities._conditional_put(dict(stale), stale)


def test_settings_name_what_is_missing() -> None:
    from healthbook.aws.settings import IngestSettings

    with pytest.raises(ValueError) as missing:
        IngestSettings.from_env({"INBOX_BUCKET": "x"})
    assert str(missing.value) == (
        "missing environment variable(s): CITIZEN_PEPPER_SECRET, FACILITIES_TABLE, IDEMPOTENCY_TABLE, "
        "QUARANTINE_BUCKET, RECEIPTS_BUCKET, RECEIPT_KEY_ID, SUBMISSIONS_TABLE, TRUST_BUNDLE_PARAMETER, VISITS_TABLE")
    full = {name: "x" for name in ("INBOX_BUCKET", "RECEIPTS_BUCKET", "QUARANTINE_BUCKET", "RECEIPT_KEY_ID",
                                   "TRUST_BUNDLE_PARAMETER", "CITIZEN_PEPPER_SECRET", *TABLES)}
    with pytest.raises(ValueError, match=r"^missing environment variable\(s\): IDEMPOTENCY_TABLE$"):
        IngestSettings.from_env({**full, "IDEMPOTENCY_TABLE": " "})  # empty counts as unset
    settings = IngestSettings.from_env(full)
    assert settings.max_object_bytes == 20 * 1024 * 1024 and settings.delivery_state_machine_arn is None
    assert settings.timing().deadline == timedelta(hours=24)
    assert IngestSettings.from_env({**full, "MAX_OBJECT_BYTES": "5"}).max_object_bytes == 5
    with pytest.raises(ValueError, match="MAX_OBJECT_BYTES must be positive"):
        IngestSettings.from_env({**full, "MAX_OBJECT_BYTES": "0"})
