"""Ingest uploaded objects: locate, read, validate-verify (healthbook.pipeline), sign, store, receipt.

Three phases, so that one signature covers a whole window of receipts (the ingest function's SQS batch):
``examine`` each object (read, validate, verify, settle the content claim; its receipt built, not signed),
``sign`` the window (one ``Signer.sign_digest`` call for all its receipts, docs/receipt.md), then ``record`` each
(visits, receipt, quarantine, submission item, delivery). ``ingest`` is the three for one object alone.

Pure orchestration over ports (Protocols) so it runs in unit tests without AWS; healthbook.aws has the
S3/DynamoDB/KMS adapters and the batch runtime, functions/ingest/app.py the Lambda handler. docs/ingest.md tells
the story.

Failure policy: whatever is wrong with the *file* becomes an issue on its receipt and never raises; whatever
is wrong with the *platform* (throttling, KMS, 5xx, permissions) raises, so the caller fails only that
message and SQS retries it. Every write is conditional or idempotent and the submission item, the
"done" marker, is written last: a retry after a crash anywhere converges to the same items (its receipt is
signed again, in the window of the retry).

Replays: a file byte-identical to an ACCEPTED or PARTIAL file of the same facility is refused with I503. The
content claim that decides it is taken after validation and before anything of the file is stored, so of two
identical uploads racing only one ever stores visits or writes an accepting receipt (docs/ingest.md).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography import x509

from healthbook.ingest.model import (
    DELIVERY_BATCH,
    REJECTED,
    ContentClaim,
    ContentClaimPending,
    DeliveryStarter,
    Location,
    ObjectGone,
    ObjectRef,
    Outbox,
    Outcome,
    StoredObject,
    SubmissionRecord,
    VisitRef,
    VisitVersion,
    VisitWrite,
    deadline,
    error_family,
    locate,
    version_key,
)
from healthbook.kernel import (
    DEADLINE,
    LEASE,
    SubmissionStatus,
    citizen_key,
    iso_utc,
    receipt_status,
    transaction_of,
    visit_key,
)
from healthbook.pipeline import check_submission
from healthbook.signing.merkle import canonical_visit
from healthbook.signing.receipt import receipt_body, sign_receipts
from healthbook.signing.registry import FacilityRegistry
from healthbook.signing.signer import Signer
from healthbook.signing.xmldsig import Trust
from healthbook.validation import FileResult, Options, VisitResult
from healthbook.validation.engine import DEFAULT_OPTIONS
from healthbook.validation.issues import make_issue

__all__ = ["DeliveryStarter", "Examined", "IngestService", "ObjectStore", "Outbox", "RecordsRepository",
           "RegistrySource", "citizen_key", "pack_records"]

log = logging.getLogger(__name__)

_MAX_DETAIL = 200  # I502 quotes the key; a 1 KB key need not be copied whole into a receipt


# --- ports ----------------------------------------------------------------------------------------------

class ObjectStore(Protocol):
    def read(self, ref: ObjectRef, limit: int) -> StoredObject:
        """The object's bytes, or only its size when it is larger than ``limit``; ObjectGone if deleted."""
        ...

    def put_receipt(self, key: str, body: bytes) -> None: ...

    def quarantine(self, ref: ObjectRef, size: int) -> str:
        """Copy the original to the quarantine bucket (same key); returns the key."""
        ...


class RecordsRepository(Protocol):
    def submission_exists(self, submission_id: str) -> bool: ...

    def content_claim(self, facility: str, content_sha256: str) -> ContentClaim | None:
        """Which submission holds this content of this facility, if any (a consistent read)."""
        ...

    def claim_content(self, claim: ContentClaim) -> ContentClaim:
        """Take the claim, unconfirmed, unless another submission holds it; returns the holder."""
        ...

    def save_visit(self, visit: VisitVersion) -> VisitWrite:
        """Store a new version and move the LATEST pointer forward, superseding the version it replaces."""
        ...

    def save_visits(self, visits: Sequence[VisitVersion]) -> list[VisitWrite]:
        """Each as ``save_visit``, their results in the order given. An adapter may write different visits side
        by side; two versions of the same visit it writes one after the other."""
        ...

    def put_submission(self, record: SubmissionRecord, *, release: ContentClaim | None = None) -> bool:
        """Conditional on the id being new; False when it was already there. In the same transaction: this
        submission's claim ``release`` emptied (freed). A claim the submission holds is confirmed by it."""
        ...


class RegistrySource(Protocol):
    def load_registry(self) -> FacilityRegistry: ...


# --- pure helpers ---------------------------------------------------------------------------------------

def pack_records(visit: VisitResult) -> bytes:
    """gzip of the canonical JSON whose SHA-256 is the receipt's digest, so the stored records can be checked
    against the receipt. mtime=0 keeps the bytes reproducible."""
    return gzip.compress(canonical_visit(visit), compresslevel=6, mtime=0)


def _id_number(visit: VisitResult) -> str:
    rows = visit.tables.get("XML1")
    return rows.raw[0].get("SO_CCCD", "") if rows and rows.raw else ""


@dataclass
class Examined:
    """One object after ``IngestService.examine``: its outcome so far and, when it gets a receipt, that receipt
    unsigned (``body``) until ``IngestService.sign`` signs its window (``receipt``). An object that gets none
    (a folder placeholder, a duplicate, a vanished object) has its final outcome already and no ``body``.

    The rest is what reading and validating gave, and the content claim its submission item ``release``s: this
    submission's own, taken by an attempt that accepted the file when this one rejects it."""

    ref: ObjectRef
    location: Location
    outcome: Outcome
    result: FileResult | None = None
    body: dict[str, Any] | None = None  # the receipt before it is signed
    receipt: dict[str, Any] | None = None  # signed, by IngestService.sign
    stored: StoredObject | None = None
    content_sha256: str | None = None
    release: ContentClaim | None = None
    replay_of: str | None = None
    outboxed: bool = False  # its visits are listed in the outbox: stored outside the status index

    @property
    def submission_id(self) -> str:
        return self.outcome.submission_id

    def visits_to_store(self) -> list[VisitRef]:
        """The versions its signed receipt accepts, as they will be stored (before they are)."""
        if self.receipt is None or self.location.facility is None:
            return []
        version = version_key(self.ref.received_at, self.submission_id)
        return [VisitRef(visit_key(self.location.facility, entry["ma_lk"]), version)
                for entry in self.receipt["visits"] if entry["accepted"]]


# --- the service ----------------------------------------------------------------------------------------

class IngestService:
    def __init__(self, *, store: ObjectStore, records: RecordsRepository, registry: RegistrySource,
                 anchors: Sequence[x509.Certificate] | None, signer: Signer, pepper: bytes,
                 options: Options = DEFAULT_OPTIONS, registry_ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, delivery: DeliveryStarter | None = None,
                 deadline: timedelta = DEADLINE, lease: timedelta = LEASE,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC), outbox: Outbox | None = None) -> None:
        """``anchors`` None disables the facility-signature check: development only (the settings of the
        deployed function always load a CA bundle). The registry is re-read every ``registry_ttl`` seconds so
        that a facility registered with ``healthbook facility add`` is accepted without a cold start.

        ``delivery`` starts the health-book delivery of the accepted visits; each is leased for ``lease``
        (the delivery sweep leaves it alone until then) and must reach VNeID within ``deadline`` of receipt.
        ``outbox``, when there is one, lists them before they are stored, so that they are stored outside the
        status index (:meth:`hold`)."""
        if not pepper:
            raise ValueError("the citizen-key pepper must not be empty")
        self._store, self._records, self._registry_source = store, records, registry
        self._anchors = tuple(anchors) if anchors is not None else None
        self._signer, self._pepper, self._options = signer, pepper, options
        self._registry_ttl, self._clock = registry_ttl, clock
        self._delivery, self._deadline, self._lease, self._now = delivery, deadline, lease, now
        self._outbox = outbox
        self._trust: Trust | None = None
        self._trust_loaded = float("-inf")

    @property
    def max_bytes(self) -> int:
        return self._options.limits.max_file_bytes

    def trust(self) -> Trust | None:
        if self._anchors is None:
            return None
        now = self._clock()
        if self._trust is None or now - self._trust_loaded >= self._registry_ttl:
            self._trust = Trust(anchors=self._anchors, registry=self._registry_source.load_registry())
            self._trust_loaded = now
        return self._trust

    def _place(self, facility: str) -> tuple[str, str | None, str | None]:
        """(province, district, commune) of a facility: the registry's, else the province its code starts with."""
        trust = self.trust()
        registered = trust.registry.facilities.get(facility) if trust and trust.registry else None
        if registered is None:
            return facility[:2], None, None
        return registered.province or facility[:2], registered.district or None, registered.commune or None

    def ingest(self, ref: ObjectRef) -> Outcome:
        """One object in a window of its own: examine, sign (one Sign for its receipt alone), record, start."""
        examined = self.examine(ref)
        self.sign([examined])
        self.hold([examined])
        outcome = self.record(examined)
        self.start_delivery([outcome])
        return outcome

    # --- the three phases -------------------------------------------------------------------------------

    def recorded(self, ref: ObjectRef) -> dict[str, Any] | None:
        """How a second run of an object answers when the object is recorded already (its submission item, written
        last, exists): the object's ids, as a DUPLICATE; None while it is not."""
        if not self._records.submission_exists(ref.submission_id):
            return None
        return {"submission_id": ref.submission_id, "object_key": ref.key, "status": SubmissionStatus.DUPLICATE}

    def examine(self, ref: ObjectRef) -> Examined:
        """Phase 1: read, validate and verify the object and settle its content claim; its receipt is built,
        not signed. Raises on platform trouble (the object then stays out of the window and its message fails);
        ContentClaimPending when another submission holding the same content has not finished."""
        location = locate(ref.key)
        outcome = Outcome(submission_id=ref.submission_id, facility=location.folder, object_key=ref.key,
                          status=SubmissionStatus.SKIPPED, receipt_key=location.receipt_key)
        examined = Examined(ref=ref, location=location, outcome=outcome)
        if ref.key.endswith("/"):
            outcome.receipt_key = None  # a console "folder" placeholder, not a submission
            return examined
        if self._records.submission_exists(ref.submission_id):
            outcome.status = SubmissionStatus.DUPLICATE  # the same object version again: its receipt and items stand
            return examined
        try:
            self._examine(examined)
        except ObjectGone:
            outcome.status, outcome.receipt_key = SubmissionStatus.GONE, None
        return examined

    def sign(self, window: Sequence[Examined]) -> int:
        """Phase 2: sign every receipt of the window with ONE ``Signer.sign_digest`` call (none when no object of
        it gets a receipt); returns how many receipts that signature covers."""
        pending = [(examined, examined.body) for examined in window if examined.body is not None]
        receipts = sign_receipts([body for _, body in pending], self._signer)
        for (examined, _), receipt in zip(pending, receipts, strict=True):
            examined.receipt = receipt
        return len(pending)

    def hold(self, window: Sequence[Examined], *, storing_for: timedelta = timedelta(0)) -> None:
        """Between signing and recording: the versions the window will store, listed in the outbox in one go, so
        that they are stored outside the by-status-deadline index. The fast path delivers most of them without
        ever entering it (two write units a visit: the entry and its leaving); a delivery that fails enters it when
        Settle defers the visit, and one that is lost (an execution that never started or never settled) when the
        list comes back to the sweep after the lease (docs/delivery.md, *The outbox*). Listed before anything is
        stored: a crash after storing leaves the list behind. A list that cannot be written loses nothing: the
        window's visits are stored indexed, as without an outbox.

        The list comes back after the lease and says when the invocation storing the window ends (``storing_for``
        from now): a list the sweep reads before then is looked at again after it, so that a visit stored after
        the first look, by an invocation that then crashed, is not stranded (docs/delivery.md, *Two limits of the
        outbox*)."""
        if self._outbox is None:
            return
        listed = [(item, item.visits_to_store()) for item in window]
        visits = [visit for _, visits in listed for visit in visits]
        if not visits:
            return
        try:
            self._outbox.hold(visits, back_after=self._lease, stored_by=self._now() + storing_for)
        except Exception as exc:
            log.warning("outbox not written; the window's visits enter the status index",
                        extra={"visits": len(visits), "error": type(exc).__name__})
            return
        for item, item_visits in listed:
            item.outboxed = bool(item_visits)

    def record(self, examined: Examined) -> Outcome:
        """Phase 3: store what the signed receipt accepts, write the receipt, quarantine, and last the
        submission item. An object without a receipt has nothing to record. Its visits to deliver are left on the
        outcome for :meth:`start_delivery`, once the window's files are recorded."""
        if examined.body is None:
            return examined.outcome
        if examined.receipt is None:
            raise ValueError("the receipt of this object is not signed yet: sign its window first")
        return self._record(examined)

    # --- steps ------------------------------------------------------------------------------------------

    def _examine(self, examined: Examined) -> None:
        """Validate (the result, the unsigned receipt, what was read and its SHA-256), and settle the content
        claim: a replay of content another submission holds is refused here, before anything is stored; an
        ACCEPTED or PARTIAL file takes the claim before its visits are stored."""
        ref, location, sid = examined.ref, examined.location, examined.submission_id
        if location.facility is None:
            detail = ref.key if len(ref.key) <= _MAX_DETAIL else ref.key[:_MAX_DETAIL] + "…"
            result = FileResult(path=ref.key, size=ref.size or 0)
            result.errors.append(make_issue("I502", detail=detail))  # never read: not a facility's folder
            self._refuse(examined, result, StoredObject(size=ref.size or 0, data=None), None)
            return
        stored = self._store.read(ref, self.max_bytes)
        if stored.data is None:
            result = FileResult(path=ref.key, size=stored.size)
            result.errors.append(make_issue("E002", size=stored.size, limit=self.max_bytes))
            self._refuse(examined, result, stored, None)
            return
        content_sha256 = hashlib.sha256(stored.data).hexdigest()
        held = self._records.content_claim(location.facility, content_sha256)
        if held is not None and held.submission_id != sid:
            self._replay(examined, stored, content_sha256, held)  # not even validated again
            return
        # The folder is the uploader's identity (IAM lets a facility write only inbox/{its code}/).
        done = check_submission(stored.data, object_key=ref.key, received_at=ref.received_at, trust=self.trust(),
                                submission_id=sid, options=self._options, uploaded_by=location.facility)
        examined.result, examined.body, examined.stored = done.result, done.body, stored
        examined.content_sha256 = content_sha256
        if receipt_status(done.body) == REJECTED:
            # ``held`` is this submission's own claim only when an earlier attempt accepted the file (a certificate
            # revoked since, say): it goes with this submission item, so that a resubmission is not refused.
            examined.release = held
            return
        claim = ContentClaim(facility=location.facility, content_sha256=content_sha256, submission_id=sid,
                             received_at=iso_utc(ref.received_at), receipt_key=location.receipt_key)
        holder = self._records.claim_content(claim)
        if holder.submission_id != sid:  # an identical upload took the claim since the check above
            self._replay(examined, stored, content_sha256, holder)
            return

    def _replay(self, examined: Examined, stored: StoredObject, content_sha256: str, holder: ContentClaim) -> None:
        """I503: the same bytes as a file another submission accepted. Until that submission's item confirms its
        claim it may still end otherwise (or be in progress right now), so this message is retried later."""
        if not holder.confirmed:
            raise ContentClaimPending(f"submission {holder.submission_id} holds the same content and has not "
                                      "finished yet; retrying later", holder=holder.submission_id)
        result = FileResult(path=examined.ref.key, size=stored.size)
        result.errors.append(make_issue("I503", received_at=holder.received_at, submission=holder.submission_id))
        self._refuse(examined, result, stored, content_sha256)
        examined.replay_of = holder.submission_id

    def _refuse(self, examined: Examined, result: FileResult, stored: StoredObject,
                content_sha256: str | None) -> None:
        """A receipt that refuses the file for what the pipeline found before validating it (I502, E002, I503)."""
        ref = examined.ref
        examined.result, examined.stored, examined.content_sha256 = result, stored, content_sha256
        examined.body = receipt_body(result, submission_id=examined.submission_id, object_key=ref.key,
                                     received_at=ref.received_at)
        examined.release = None

    def _record(self, examined: Examined) -> Outcome:
        ref, location, outcome = examined.ref, examined.location, examined.outcome
        result, receipt, stored = examined.result, examined.receipt, examined.stored
        if result is None or receipt is None or stored is None:  # examine() sets them with the body
            raise ValueError("an object without a result, a signed receipt or what was read has nothing to record")
        entries: list[dict[str, Any]] = receipt["visits"]
        accepted = sum(1 for e in entries if e["accepted"])
        status = receipt_status(receipt)
        codes = sorted({i.code for i in result.errors} | {i.code for v in result.visits for i in v.errors})
        findings = sorted({i.code for i in result.findings})
        file_family = error_family(result.errors[0].code) if result.errors else None
        rejected: Counter[str] = Counter()
        for visit, entry in zip(result.visits, entries, strict=True):
            if not entry["accepted"]:
                first = file_family or (error_family(visit.errors[0].code) if visit.errors else "?")
                rejected[first] += 1
        outcome.status, outcome.size = status, stored.size
        outcome.visits_total, outcome.visits_accepted = len(entries), accepted
        outcome.error_codes, outcome.rejected_by_family = codes, dict(sorted(rejected.items()))
        outcome.finding_codes = findings
        outcome.file_error_family, outcome.replay_of = file_family, examined.replay_of

        # 1. visits: each write is conditional, so a retry finds them present and moves on.
        # Their keys are the ones hold() listed in the outbox: the same function makes both.
        received = iso_utc(ref.received_at)
        leased_until = iso_utc(self._now() + self._lease)
        to_deliver: list[VisitRef] = []
        versions: list[VisitVersion] = []
        province, district, commune = self._place(location.facility) if location.facility else (None, None, None)
        keys = iter(examined.visits_to_store())
        for visit, entry in zip(result.visits, entries, strict=True):
            if not entry["accepted"]:
                continue
            key = next(keys)
            versions.append(VisitVersion(
                visit_id=key.visit_id, version=key.version, submission_id=outcome.submission_id,
                received_at=received, standard=visit.standard, digest=entry["digest"],
                deadline_at=deadline(ref.received_at, self._deadline),
                citizen_key=citizen_key(self._pepper, _id_number(visit)), records=pack_records(visit),
                next_attempt_at=leased_until, province=province, district=district, commune=commune,
                indexed=not examined.outboxed))
        for stored_visit, written in zip(versions, self._records.save_visits(versions), strict=True):
            if written is not VisitWrite.PRESENT:
                outcome.visits_stored += 1
            if written is VisitWrite.SUPERSEDING:
                outcome.visits_superseding += 1
            if written is not VisitWrite.LATE:  # PRESENT too: a retry may follow a crash before the start
                to_deliver.append(stored_visit.ref)
        # 2. the receipt, for every file; 3. the original of a rejected file. (No "processed" tag: at $5 per
        # million files it paid for a lifecycle transition S3 does not make for objects under 128 KB.)
        self._store.put_receipt(location.receipt_key, json.dumps(receipt, ensure_ascii=False, indent=2).encode())
        if status == REJECTED:
            outcome.quarantine_key = self._store.quarantine(ref, stored.size)
        # 4. last: the submission item says "done"; until it exists a retry redoes the steps above. Its existence
        # confirms the content claim taken in _examine (a claim from an earlier attempt, REJECTED now, is released
        # in the same transaction).
        self._records.put_submission(SubmissionRecord(
            submission_id=outcome.submission_id, facility=location.folder, received_at=ref.received_at,
            object_key=ref.key, version_id=ref.version_id, content_sha256=examined.content_sha256, size=stored.size,
            status=status, visits_total=len(entries), visits_accepted=accepted, error_codes=tuple(codes),
            standards=tuple(receipt["standards"]), receipt_key=location.receipt_key,
            quarantine_key=outcome.quarantine_key,
            merkle_root=receipt["merkle"]["root"] if receipt["merkle"] else None,
            signing_key_id=receipt["platform_signature"]["key_id"], finding_codes=tuple(findings),
            transaction_id=transaction_of(ref.key), written_at=self._now()),
            release=examined.release)
        outcome.to_deliver = to_deliver
        return outcome

    def start_delivery(self, outcomes: Sequence[Outcome]) -> None:
        """Phase 4: the delivery of a window's visits, all files together, in executions of DELIVERY_BATCH (one
        execution, not one per file: real files hold a visit or two). Best effort, after the files' "done"
        markers: a start that fails loses nothing, the visits stay PENDING and the delivery sweep takes them when
        their lease ends. Starting twice is harmless (docs/delivery.md). Each outcome counts the executions that
        hold its visits, and the starts that failed."""
        queued = [(outcome, visit) for outcome in outcomes for visit in outcome.to_deliver]
        if self._delivery is None or not queued:
            return
        run = uuid.uuid4().hex[:8]  # a retried ingest starts anew: execution names must not repeat
        for number, start in enumerate(range(0, len(queued), DELIVERY_BATCH)):
            batch = queued[start:start + DELIVERY_BATCH]
            holders = list({id(outcome): outcome for outcome, _ in batch}.values())
            try:
                self._delivery.start(f"ingest-{holders[0].submission_id[:40]}-{run}-{number}",
                                     [visit for _, visit in batch])
                for outcome in holders:
                    outcome.delivery_executions += 1
            except Exception as exc:  # the sweep is the safety net; say so and go on
                log.warning("delivery start failed; the sweep will take these visits",
                            extra={"submission_ids": [outcome.submission_id for outcome in holders],
                                   "error": type(exc).__name__})
                for outcome in holders:
                    outcome.delivery_start_failures += 1

