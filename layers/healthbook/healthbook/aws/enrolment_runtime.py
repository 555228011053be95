"""The enrolment workflow's runtime (infra/statemachine/enrolment.asl.json, docs/enrolment.md "On AWS"): a province's
list of residents, or of vaccinations, uploaded under ``imports/<province>/<kind>/`` in the imports bucket, into
the citizens' health books in VNeID through a Step Functions Distributed Map.

Three steps, three functions from one code folder (functions/enrolment/app.py), each with its own settings
(healthbook.aws.settings) and its own role:

``prepare``    the upload -> ``prepare()`` -> the canonical CSV ``work/<list_id>.csv`` that the Map's ItemReader
               reads, the row problems ``work/<list_id>.problems.json``, and the Map's shape (batch size,
               concurrency, tolerated failures); a refused file gets its outcome files at once and leaves.
``batch``      one child execution's rows (ItemBatcher: ``{"Items": [...], "BatchInput": {...}}``) ->
               ``process_batch()`` against the population service and VNeID, each call rate limited per
               container, and the report counters: distinct-citizen markers (``book_markers`` through
               ``DynamoVisitStatus.count_citizen``) and vaccination counters, for the rows created or updated.
               It returns row numbers, outcome codes and masked ids: nothing else of a person enters the
               workflow's state. A service that is down raises its error (PopulationUnavailable,
               RetryableDeliveryError), which the Map's Retry matches; the batch is idempotent.
``summarise``  the ResultWriter's manifest and result files -> ``outcomes/<province>/<list_id>.csv`` and
               ``.summary.json``; then the personal data leaves: the uploaded list (every version), the work
               files and the result files (a failed child's result holds its input rows).

The workflow's state carries keys and counts only. Logs name the list id, the province, keys and counts.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from healthbook.aws.delivery import DynamoVisitStatus
from healthbook.aws.records import TransactionConflicts, add_counters
from healthbook.aws.runtime_cache import CachedRuntime
from healthbook.aws.settings import (
    EnrolmentBatchSettings,
    EnrolmentPrepareSettings,
    EnrolmentSummariseSettings,
    client,
    error_code,
    load_pepper,
)
from healthbook.kernel import PROVINCE_CODE, iso_utc

IMPORTS, WORK, RESULTS, OUTCOMES = "imports/", "work/", "results/", "outcomes/"
KINDS = ("enrolment", "vaccination")  # healthbook.enrolment.schema.Kind's values: the second folder of an upload
CHANGED = ("created", "updated")  # a vaccination entry VNeID stored: counted
WRITTEN = ("created", "updated", "unchanged")  # a profile VNeID holds as sent: its (idempotent) markers committed
FAILED = "failed"  # rows of a child execution that failed for good (its retries spent): upload the list again
FAILED_CODE = "N302"

# One metric per row outcome (service=enrolment); the scan in tests/test_template.py follows this table.
OUTCOME_METRICS = {"created": "EnrolmentRowsCreated", "updated": "EnrolmentRowsUpdated",
                   "unchanged": "EnrolmentRowsUnchanged", "not_matched": "EnrolmentRowsNotMatched",
                   "invalid": "EnrolmentRowsInvalid", FAILED: "EnrolmentRowsFailed"}

_MODEL = ConfigDict(frozen=True, extra="forbid", defer_build=True)


# --- the contracts: what each step receives and returns (the state machine's paths name these fields) ---------

class UploadedObject(BaseModel):
    """``detail.object`` of S3's "Object Created" event on EventBridge (key, size, etag, version-id, sequencer)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, defer_build=True)
    key: Annotated[str, Field(min_length=1, max_length=1024)]
    version_id: str | None = Field(default=None, alias="version-id")


class PrepareInput(BaseModel):
    model_config = _MODEL
    bucket: str
    object: UploadedObject


Status = Literal["PREPARED", "REFUSED", "IGNORED", "GONE"]


class PrepareResult(BaseModel):
    """The execution's state from Prepare on: keys and counts. The Map reads ``work_key`` (ItemReader),
    ``batch_size`` (ItemBatcher), ``max_concurrency``, ``tolerated_failure_percentage`` and the BatchInput
    fields; Summarise reads the rest."""

    model_config = _MODEL
    status: Status
    list_id: str = ""
    kind: str = ""
    province: str = ""
    source_key: str = ""
    work_key: str = ""
    rows: int = 0
    problems: int = 0
    batch_size: int = 1
    max_concurrency: int = 1
    tolerated_failure_percentage: float = 0.0


class BatchInput(BaseModel):
    """ItemBatcher's BatchInput: the same for every batch of a list."""

    model_config = _MODEL
    list_id: Annotated[str, Field(pattern=r"^[a-z]+-[0-9a-f]{20}$")]
    kind: Literal["enrolment", "vaccination"]
    province: Annotated[str, Field(pattern=r"^[0-9]{2}$")]


class BatchEvent(BaseModel):
    """What a child execution's task receives: the rows of the canonical CSV (ItemReader, header row first:
    every value a string) and the BatchInput."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, defer_build=True)
    items: Annotated[list[dict[str, str]], Field(alias="Items", max_length=10_000)]
    batch_input: BatchInput = Field(alias="BatchInput")


class RowResult(BaseModel):
    """One row's outcome as the workflow carries it: the row number, the outcome and its code, the masked id."""

    model_config = _MODEL
    row: int
    outcome: str
    code: str | None = None
    masked_id: str | None = None


class BatchResult(BaseModel):
    model_config = _MODEL
    list_id: str
    outcomes: list[RowResult]
    counts: dict[str, int]


class SummariseInput(BaseModel):
    """Prepare's result and, under ``rows_run``, the Map's: ``{"MapRunArn", "ResultWriterDetails": {"Bucket",
    "Key"}}``, or ``{"Error", "Cause"}`` when the Map failed (its Catch)."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)
    list_id: str
    kind: Literal["enrolment", "vaccination"]
    province: Annotated[str, Field(pattern=r"^[0-9]{2}$")]
    source_key: str
    work_key: str
    rows: int = 0
    problems: int = 0
    rows_run: dict[str, Any] = Field(default_factory=dict)


class SummariseResult(BaseModel):
    model_config = _MODEL
    status: Literal["COMPLETED", "FAILED"]
    list_id: str
    outcome_key: str
    summary_key: str
    counts: dict[str, int]
    failed_batches: int = 0
    error: str | None = None  # the Map's error name when it failed (States.ExceedToleratedFailureThreshold...)


# --- keys ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Upload:
    """An upload's place: ``imports/<province>/<kind>/<name>``."""

    province: str
    kind: str
    name: str

    @classmethod
    def parse(cls, key: str) -> Upload | None:
        parts = key.split("/")
        if len(parts) < 4 or parts[0] + "/" != IMPORTS or not PROVINCE_CODE.fullmatch(parts[1]):
            return None
        if parts[2] not in KINDS or not parts[-1]:
            return None
        return cls(province=parts[1], kind=parts[2], name=parts[-1])


def list_id(kind: str, key: str, version: str | None) -> str:
    """The list's id: its kind and a digest of the object version it was read from, so that a retried Prepare
    (or a duplicated event) finds the same list, and an upload of a corrected list is a new one."""
    digest = hashlib.sha256(f"{key}\n{version or ''}".encode()).hexdigest()[:20]
    return f"{kind}-{digest}"


def work_key(list_id: str) -> str:
    return f"{WORK}{list_id}.csv"


def problems_key(list_id: str) -> str:
    return f"{WORK}{list_id}.problems.json"


def outcome_keys(province: str, list_id: str) -> tuple[str, str]:
    return f"{OUTCOMES}{province}/{list_id}.csv", f"{OUTCOMES}{province}/{list_id}.summary.json"


def results_prefix(list_id: str) -> str:
    return f"{RESULTS}{list_id}/"


# --- rate limits ----------------------------------------------------------------------------------------------

class TokenBucket:
    """At most ``rate`` calls per second, in bursts of at most ``burst`` (a second's worth by default), for all
    the threads of a container. A caller that finds the bucket empty reserves the next token and sleeps until
    it is due, so concurrent callers queue in order."""

    def __init__(self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, rate if burst is None else burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.capacity
        self._at = clock()
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting, in total (the batch logs it)

    def acquire(self) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate) - 1
            self._at = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            self.waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait


class ThrottledPopulation:
    """A PopulationRegistry whose every lookup first takes a token."""

    def __init__(self, inner: Any, bucket: TokenBucket) -> None:
        self._inner, self.bucket = inner, bucket

    def lookup(self, id_number: str) -> Any:
        self.bucket.acquire()
        return self._inner.lookup(id_number)

    def lookup_by_social_insurance(self, number: str) -> Any:
        self.bucket.acquire()
        return self._inner.lookup_by_social_insurance(number)


class ThrottledBooks:
    """A HealthBookSink (the VNeID client) whose every write first takes a token."""

    def __init__(self, inner: Any, bucket: TokenBucket) -> None:
        self._inner, self.bucket = inner, bucket

    def put_profile(self, citizen_key: str, profile: Any) -> Any:
        self.bucket.acquire()
        return self._inner.put_profile(citizen_key, profile)

    def put_vaccination(self, citizen_key: str, record_id: str, record: Any) -> Any:
        self.bucket.acquire()
        return self._inner.put_vaccination(citizen_key, record_id, record)


# --- S3 --------------------------------------------------------------------------------------------------------

class ImportsBucket:
    """The imports bucket: uploads in, work files, the Map's results, outcome files out."""

    def __init__(self, s3: Any, *, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def head(self, key: str, version: str | None = None) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self.bucket, Key=key,
                                                        **({"VersionId": version} if version else {}))
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NoSuchVersion", "NotFound"):
                return None
            raise
        return head

    def read(self, key: str, version: str | None = None) -> bytes:
        response = self._s3.get_object(Bucket=self.bucket, Key=key, **({"VersionId": version} if version else {}))
        with response["Body"] as body:
            data: bytes = body.read()
        return data

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def erase(self, key: str) -> int:
        """Every version and delete marker of exactly ``key`` (the bucket is versioned: a plain delete would
        keep the data as a noncurrent version). Returns how many were deleted."""
        doomed: list[dict[str, str]] = []
        for page in self._s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
            for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if entry["Key"] == key:
                    doomed.append({"Key": key, "VersionId": entry["VersionId"]})
        for start in range(0, len(doomed), 1000):
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": doomed[start:start + 1000],
                                                                "Quiet": True})
        return len(doomed)

    def erase_prefix(self, prefix: str) -> int:
        return sum(self.erase(key) for key in sorted({entry["Key"] for entry in self._all_versions(prefix)}))

    def _all_versions(self, prefix: str) -> Iterator[dict[str, Any]]:
        for page in self._s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Versions", [])
            yield from page.get("DeleteMarkers", [])


# --- serialising the domain's records ----------------------------------------------------------------------

def _plain(record: Any) -> dict[str, Any]:
    if is_dataclass(record) and not isinstance(record, type):
        return asdict(record)
    dump = getattr(record, "model_dump", None)
    if callable(dump):
        return dict(dump())
    return dict(vars(record))


def problems_document(problems: Iterable[Any]) -> bytes:
    return json.dumps([_plain(p) for p in problems], ensure_ascii=False).encode("utf-8")


def load_problems(data: bytes) -> list[Any]:
    from healthbook.enrolment.reader import RowProblem

    return [RowProblem(**entry) for entry in json.loads(data)]


def row_results(outcomes: Iterable[Any]) -> list[RowResult]:
    """What the workflow may carry of each row: its number, outcome, code and masked id."""
    return [RowResult(row=int(o.row), outcome=str(o.outcome), code=o.code or None, masked_id=o.masked_id or None)
            for o in outcomes]


# --- the runtime -------------------------------------------------------------------------------------------

@dataclass
class EnrolmentRuntime(CachedRuntime):
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def _bucket(self, name: str) -> ImportsBucket:
        return self._cached("imports", lambda: ImportsBucket(client("s3"), bucket=name))

    # --- 1. prepare ------------------------------------------------------------------------------------------

    def prepare(self, event: Mapping[str, Any]) -> PrepareResult:
        from healthbook.enrolment import Kind
        from healthbook.enrolment.reader import FileRefused, Limits, prepare

        settings = self.settings(EnrolmentPrepareSettings)
        given = PrepareInput.model_validate(dict(event))
        if given.bucket != settings.imports_bucket:
            raise ValueError("the event names another bucket than IMPORTS_BUCKET")
        bucket = self._bucket(settings.imports_bucket)
        key, version = given.object.key, given.object.version_id
        head = bucket.head(key, version)
        if head is None and ("%" in key or "+" in key):  # an event that carried the key URL-encoded
            from urllib.parse import unquote_plus

            key = unquote_plus(key)
            head = bucket.head(key, version)
        if head is None:  # already processed and erased (a duplicated event), or removed by its uploader
            self.metrics.count("EnrolmentUploadsGone")
            return PrepareResult(status="GONE", source_key=key)
        upload = Upload.parse(key)
        if upload is None:  # not imports/<province>/<enrolment|vaccination>/<name>: nobody to answer
            bucket.erase(key)
            self.metrics.count("EnrolmentUploadsIgnored")
            return PrepareResult(status="IGNORED", source_key=key)
        version = version or head.get("VersionId")
        identifier = list_id(upload.kind, key, version)
        shape = PrepareResult(status="PREPARED", list_id=identifier, kind=upload.kind, province=upload.province,
                              source_key=key, work_key=work_key(identifier), batch_size=settings.batch_size,
                              max_concurrency=settings.max_concurrency,
                              tolerated_failure_percentage=settings.tolerated_failure_percentage)
        self.metrics.count("EnrolmentListsReceived")
        limits = Limits(max_bytes=settings.max_object_bytes)
        try:
            if int(head.get("ContentLength", 0)) > limits.max_bytes:  # refused unread
                raise FileRefused.of("N002", limit=limits.max_bytes)
            prepared = prepare(bucket.read(key, version), name=upload.name, kind=Kind(upload.kind), limits=limits)
        except FileRefused as refused:
            self._refuse(bucket, upload, identifier, key, refused)
            return shape.model_copy(update={"status": "REFUSED"})
        bucket.put(work_key(identifier), prepared.canonical_csv, "text/csv; charset=utf-8")
        bucket.put(problems_key(identifier), problems_document(prepared.problems), "application/json")
        self.metrics.count("EnrolmentRowsPrepared", prepared.kept)
        self.metrics.count("EnrolmentRowProblems", len(prepared.problems))
        return shape.model_copy(update={"rows": prepared.kept, "problems": len(prepared.problems)})

    def _refuse(self, bucket: ImportsBucket, upload: Upload, identifier: str, key: str, refused: Any) -> None:
        """A refused file: the outcome files say why (the file's problem, its code and reasons), and the upload
        leaves at once."""
        from healthbook.enrolment.outcome import outcome_csv

        csv_key, summary_key = outcome_keys(upload.province, identifier)
        bucket.put(csv_key, outcome_csv([], [refused.as_problem()]), "text/csv; charset=utf-8")
        summary = {"list_id": identifier, "kind": upload.kind, "province": upload.province, "source": key,
                   "status": "REFUSED", "code": refused.code, "reason": refused.reason,
                   "reason_vi": refused.reason_vi, "finished_at": iso_utc(self.now())}
        bucket.put(summary_key, json.dumps(summary, ensure_ascii=False, indent=1).encode("utf-8"), "application/json")
        bucket.erase(key)
        self.metrics.count("EnrolmentListsRefused")

    # --- 2. a batch of rows -----------------------------------------------------------------------------------

    def batch(self, event: Mapping[str, Any]) -> BatchResult:
        from healthbook.enrolment import Kind
        from healthbook.enrolment.process import process_batch

        settings = self.settings(EnrolmentBatchSettings)
        given = BatchEvent.model_validate(dict(event))
        now = self.now()
        result = process_batch(given.items, kind=Kind(given.batch_input.kind), population=self._population(settings),
                               books=self._books(settings), pepper=self._pepper(settings), now=now)
        self._count(settings, given.batch_input, result.outcomes, now)
        counts = Counter(str(o.outcome) for o in result.outcomes)
        for outcome, n in sorted(counts.items()):
            name = OUTCOME_METRICS.get(outcome)
            if name:
                self.metrics.count(name, n)
        return BatchResult(list_id=given.batch_input.list_id, outcomes=row_results(result.outcomes),
                           counts=dict(sorted(counts.items())))

    def _count(self, settings: EnrolmentBatchSettings, batch: BatchInput, outcomes: Sequence[Any],
               now: datetime) -> None:
        """The report counters. A participant's book: its ``book_markers`` (kept markers, once per citizen and
        scope ever, with the day first written), written as a delivery's, for every row written (created, updated,
        and unchanged too: a marker already there adds nothing, so a re-run adds nothing, while a batch retried
        after its VNeID write and before its markers still counts the book). Vaccinations: the entries created or
        updated, one counter update per province (a retry after VNeID wrote and before the update undercounts
        them). Counter writes that concurrent batches kept cancelling (TransactionConflicts) fail the batch with
        RetryableDeliveryError, which the Map's Retry matches."""
        from healthbook.reports.aggregates import book_markers, vaccination_count
        from healthbook.vneid.client import RetryableDeliveryError

        if not settings.aggregates_table:
            return
        store = self._markers(settings)
        try:
            if batch.kind == "enrolment":
                for outcome in outcomes:
                    if str(outcome.outcome) in WRITTEN and outcome.citizen_key:
                        store.count_citizen(book_markers(outcome.citizen_key, now,
                                                         province=outcome.province or batch.province,
                                                         commune=outcome.commune))
                return
            per_province = Counter(str(o.province or batch.province) for o in outcomes
                                   if str(o.outcome) in CHANGED and o.citizen_key)
            db = self._cached("dynamodb", lambda: client("dynamodb"))
            for province, n in sorted(per_province.items()):
                add_counters(db, settings.aggregates_table, vaccination_count(province, now, n), store.conflicts)
        except TransactionConflicts as exc:
            raise RetryableDeliveryError(f"report counters: {exc}", code="TransactionConflict") from exc

    # --- 3. summarise ------------------------------------------------------------------------------------------

    def summarise(self, event: Mapping[str, Any]) -> SummariseResult:
        from healthbook.enrolment.outcome import outcome_csv, summarise

        settings = self.settings(EnrolmentSummariseSettings)
        given = SummariseInput.model_validate(dict(event))
        bucket = self._bucket(settings.imports_bucket)
        manifest = self._manifest(bucket, given)
        outcomes, failed_batches = outcomes_of(bucket, manifest)
        outcomes.sort(key=lambda o: int(o.row))
        problems_at = problems_key(given.list_id)
        problems = load_problems(bucket.read(problems_at)) if bucket.head(problems_at) else []
        csv_key, summary_key = outcome_keys(given.province, given.list_id)
        bucket.put(csv_key, outcome_csv(outcomes, problems), "text/csv; charset=utf-8")
        error = str(given.rows_run.get("Error") or "") or None
        status: Literal["COMPLETED", "FAILED"] = "FAILED" if error else "COMPLETED"
        summary = dict(summarise(outcomes, problems))
        summary.update({"list_id": given.list_id, "kind": given.kind, "province": given.province,
                        "source": given.source_key, "status": status, "rows": given.rows,
                        "failed_batches": failed_batches, "finished_at": iso_utc(self.now())})
        if error:
            summary["error"] = error
        bucket.put(summary_key, json.dumps(summary, ensure_ascii=False, indent=1, default=str).encode("utf-8"),
                   "application/json")
        # Personal data leaves: the upload, the work files, and the Map's results (a failed child's holds rows).
        for key in (given.source_key, given.work_key, problems_at):
            bucket.erase(key)
        bucket.erase_prefix(results_prefix(given.list_id))
        counts = dict(sorted(Counter(str(o.outcome) for o in outcomes).items()))
        if problems:
            counts["problems"] = len(problems)
        if error:
            self.metrics.count("EnrolmentListsFailed")
        else:
            self.metrics.count("EnrolmentListsCompleted")
        if failed_batches:
            self.metrics.count("EnrolmentBatchesFailed", failed_batches)
        return SummariseResult(status=status, list_id=given.list_id, outcome_key=csv_key, summary_key=summary_key,
                               counts=counts, failed_batches=failed_batches, error=error)

    def _manifest(self, bucket: ImportsBucket, given: SummariseInput) -> dict[str, Any] | None:
        """The ResultWriter's manifest: where the Map said, else (the Map failed) the latest under the list's
        results prefix, if the Map got as far as writing one."""
        details = given.rows_run.get("ResultWriterDetails") or {}
        key = details.get("Key") if isinstance(details, dict) else None
        if not key:
            found = sorted((e for e in bucket.keys(results_prefix(given.list_id))
                            if e["Key"].endswith("/manifest.json")), key=lambda e: e["LastModified"])
            key = found[-1]["Key"] if found else None
        if not key:
            return None
        document: dict[str, Any] = json.loads(bucket.read(str(key)))
        return document

    # --- what the batch is built from ---------------------------------------------------------------------------

    def _markers(self, settings: EnrolmentBatchSettings) -> DynamoVisitStatus:
        # Only count_citizen is used: the distinct-citizen markers, in the aggregates table.
        return self._cached("markers", lambda: DynamoVisitStatus(client("dynamodb"), visits_table="",
                                                                 aggregates_table=settings.aggregates_table,
                                                                 conflicts=self._conflicts()))

    def _pepper(self, settings: EnrolmentBatchSettings) -> bytes:
        return self._cached("pepper", lambda: load_pepper(client("secretsmanager"), settings.citizen_pepper_secret))

    def _population(self, settings: EnrolmentBatchSettings) -> ThrottledPopulation:
        bucket = self._cached("population-rate", lambda: TokenBucket(settings.population_rate_per_second))

        def build() -> ThrottledPopulation:
            from healthbook.reconcile.http import PopulationClient

            key = None
            if settings.population_api_key_secret:
                key = str(client("secretsmanager").get_secret_value(
                    SecretId=settings.population_api_key_secret)["SecretString"]).strip() or None
            return ThrottledPopulation(PopulationClient(settings.population_url, api_key=key), bucket)

        return self._cached("population", build, settings.secrets_ttl_seconds)

    def _books(self, settings: EnrolmentBatchSettings) -> ThrottledBooks:
        bucket = self._cached("vneid-rate", lambda: TokenBucket(settings.vneid_rate_per_second))

        def build() -> ThrottledBooks:
            from healthbook.vneid import VneidClient, credentials_from_secret

            secret = client("secretsmanager").get_secret_value(SecretId=settings.vneid_secret)
            return ThrottledBooks(VneidClient(settings.vneid_url, auth=credentials_from_secret(secret["SecretString"]),
                                              timeout=(3.05, settings.vneid_timeout_seconds)), bucket)

        return self._cached("vneid", build, settings.secrets_ttl_seconds)


def _json(value: Any) -> dict[str, Any]:
    """A result entry's Input or Output: a JSON string (as AWS writes it), or already a document."""
    document = json.loads(value) if isinstance(value, str | bytes) else value
    return document if isinstance(document, dict) else {}


def outcomes_of(bucket: ImportsBucket, manifest: dict[str, Any] | None) -> tuple[list[Any], int]:
    """Every row's outcome: those the successful child executions returned, and ``failed`` for each input row
    of a failed one; and the number of failed children. Built child by child, the texts of a code shared, so
    a list of ``Limits.max_rows`` rows fits the function's memory (docs/enrolment.md, "Limits")."""
    outcomes: list[Any] = []
    failed = 0
    if manifest is None:
        return outcomes, failed
    files = manifest.get("ResultFiles", {})
    texts: dict[str, tuple[str, str]] = {}
    for entry in files.get("SUCCEEDED", []):
        for execution in _result_entries(bucket.read(entry["Key"])):
            outcomes += [_outcome(row, texts)
                         for row in BatchResult.model_validate(_json(execution.get("Output"))).outcomes]
    for status in ("FAILED", "PENDING"):
        for entry in files.get(status, []):
            for execution in _result_entries(bucket.read(entry["Key"])):
                failed += 1
                outcomes += [_failed(item, texts) for item in _json(execution.get("Input")).get("Items", [])]
    return outcomes, failed


def _texts(code: str, texts: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """The English and Vietnamese reasons of a "+"-joined code cell, made once per cell and shared (``texts``
    holds those met so far, so a million rows hold a few strings)."""
    from healthbook.enrolment.codes import reasons

    if code not in texts:
        texts[code] = (reasons(code), reasons(code, vietnamese=True))
    return texts[code]


def _outcome(row: RowResult, texts: dict[str, tuple[str, str]]) -> Any:
    """A row's outcome again, its reasons from its codes (the workflow carried the codes only)."""
    from healthbook.enrolment.process import RowOutcome

    english, vietnamese = _texts(row.code, texts) if row.code else (None, None)
    return RowOutcome(row=row.row, outcome=row.outcome, code=row.code, reason=english,
                      masked_id=row.masked_id or "", citizen_key=None, province=None, commune=None,
                      reason_vi=vietnamese)


def _failed(item: Mapping[str, str], texts: dict[str, tuple[str, str]]) -> Any:
    """A row of a batch that failed for good: ``failed``, masked, to be sent again."""
    from healthbook.enrolment.outcome import mask_id
    from healthbook.enrolment.process import RowOutcome

    english, vietnamese = _texts(FAILED_CODE, texts)
    number = (item.get("SO_CCCD") or "").strip() or (item.get("MA_SO_BHXH") or "").strip()
    return RowOutcome(row=int(item.get("ROW", "0") or 0), outcome=FAILED, code=FAILED_CODE, reason=english,
                      masked_id=mask_id(number), citizen_key=None, province=None, commune=None,
                      reason_vi=vietnamese)


def _result_entries(data: bytes) -> list[dict[str, Any]]:
    """A result file: a JSON array of child executions (OutputType JSON), or one per line (JSONL)."""
    text = data.decode("utf-8").strip()
    if not text:
        return []
    if text.startswith("["):
        entries: list[dict[str, Any]] = json.loads(text)
        return entries
    return [json.loads(line) for line in text.splitlines() if line.strip()]
