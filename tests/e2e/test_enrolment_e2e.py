"""End-to-end: a province's lists through the real enrolment workflow on LocalStack (docs/enrolment.md, "On AWS").

template.yaml deployed as for the pipeline tests (healthbook-local), with the fake VNeID and population services
of this process. A participant list of 2,000 generated people (some unknown to the population database, some rows
duplicated, some identified by the social-insurance number alone) is uploaded under imports/<province>/enrolment/:
S3's event on EventBridge starts the Standard workflow, whose Distributed Map (ItemReader over the canonical CSV,
ItemBatcher, Express children, ResultWriter) runs the batch function. Then a corrected list, a vaccination file,
and the same files again. Each time: the fake VNeID holds exactly the expected books and vaccination entries, the
outcome file and the report counters agree, and the personal data has left the bucket. Run:
``make localstack-up && HEALTHBOOK_E2E=1 .venv/bin/pytest -m localstack tests/e2e/test_enrolment_e2e.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.localstack

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = Path(os.environ.get("HB_E2E_TEMPLATE") or REPO / "template.yaml")
STACK = os.environ.get("HB_E2E_STACK") or "healthbook-local"
STAGE = os.environ.get("HB_E2E_STAGE") or "local"
PROVINCE = "01"
PEOPLE = 2000
# As tests/e2e/test_localstack.py deploys the stack (an EventBridge rule cannot be updated on LocalStack), plus
# the Map's shape: 40 children of 50 rows, 8 at a time, rate limits that do not slow the fakes down.
DELIVERY_TIMING = {"DeadlineSeconds": "90", "SafetyMarginSeconds": "30", "LeaseSeconds": "10",
                   "RetryBaseSeconds": "2", "RetryMaxSeconds": "5", "SweepEveryMinutes": "2"}
ENROLMENT = {"EnrolmentBatchSize": "50", "EnrolmentMaxConcurrency": "8", "EnrolmentToleratedFailurePercentage": "0",
             "VneidRatePerSecond": "500", "PopulationRatePerSecond": "500"}


@dataclass
class Run:
    """One uploaded file and what became of it."""

    key: str
    list_id: str
    summary: dict[str, Any]
    outcome: list[dict[str, str]]
    execution: dict[str, Any]
    history: str
    seconds: float

    def by_outcome(self) -> Counter[str]:
        return Counter(row["outcome"] for row in self.outcome)


@dataclass
class Enrolment:
    aws: Callable[..., Any]
    outputs: dict[str, str]
    vneid: Any
    population: Any
    registry: Any
    pepper: bytes
    seed: int
    runs: list[Run] = field(default_factory=list)

    @property
    def bucket(self) -> str:
        return self.outputs["ImportsBucketName"]

    def key_of(self, id_number: str) -> str:
        from healthbook.kernel import citizen_key

        key = citizen_key(self.pepper, id_number)
        assert key is not None
        return key

    def upload(self, kind: str, body: bytes, wait_for: Callable[..., Any]) -> Run:
        """Upload as the province would, and wait for the workflow to finish the list."""
        from healthbook.aws.enrolment_runtime import list_id, outcome_keys

        s3, sfn = self.aws("s3"), self.aws("stepfunctions")
        key = f"imports/{PROVINCE}/{kind}/{kind}-{uuid.uuid4().hex[:10]}.csv"
        started = time.monotonic()
        version = s3.put_object(Bucket=self.bucket, Key=key, Body=body, ServerSideEncryption="aws:kms")["VersionId"]
        identifier = list_id(kind, key, version)
        csv_key, summary_key = outcome_keys(PROVINCE, identifier)

        def finished() -> dict[str, Any] | None:
            for execution in sfn.list_executions(stateMachineArn=self.outputs["EnrolmentStateMachineArn"])[
                    "executions"]:
                described = sfn.describe_execution(executionArn=execution["executionArn"])
                if key in described.get("input", "") and described["status"] != "RUNNING":
                    return dict(described)
            return None

        execution = wait_for(f"the workflow to finish {key}", finished, timeout=600, interval=2.0)
        seconds = time.monotonic() - started
        assert execution["status"] == "SUCCEEDED", (execution.get("error"), execution.get("cause"))
        summary = json.loads(s3.get_object(Bucket=self.bucket, Key=summary_key)["Body"].read())
        data = s3.get_object(Bucket=self.bucket, Key=csv_key)["Body"].read().decode("utf-8-sig")
        history = json.dumps(sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)[
            "events"], default=str, ensure_ascii=False)
        run = Run(key, identifier, summary, list(csv.DictReader(io.StringIO(data))), execution, history, seconds)
        self.runs.append(run)
        print(f"\n[e2e] {kind}: {len(run.outcome)} rows in {seconds:.1f} s {dict(run.by_outcome())}")
        return run

    def counters(self) -> Counter[str]:
        """The report counters, summed: ``metric`` over every scope, ``P34:metric`` over the provinces,
        ``XA:metric`` over the communes; and the distinct-citizen markers a report counts, ``markers:<kind>``
        (``ALL``, ``BOOK``) the same way."""
        totals: Counter[str] = Counter()
        paginator = self.aws("dynamodb").get_paginator("scan")
        for page in paginator.paginate(TableName=self.outputs["AggregatesTableName"], ConsistentRead=True):
            for item in page["Items"]:
                level = item["scope"]["S"].split("#", 1)[0]
                if item["period"]["S"].startswith("citizen#"):
                    kind = item["scope"]["S"].rsplit("#", 1)[1]
                    totals[f"markers:{kind}"] += 1
                    totals[f"{level}:markers:{kind}"] += 1
                    continue
                for name, value in item.items():
                    if "N" in value and name != "expires_at":
                        totals[name] += int(value["N"])
                        totals[f"{level}:{name}"] += int(value["N"])
        return totals

    def leftovers(self, run: Run) -> list[str]:
        """Every version or delete marker the list left under imports/, work/ or results/."""
        s3, found = self.aws("s3"), []
        for prefix in (run.key, f"work/{run.list_id}", f"results/{run.list_id}/"):
            page = s3.list_object_versions(Bucket=self.bucket, Prefix=prefix)
            found += [e["Key"] for e in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        return found


@pytest.fixture(scope="module")
def enrolment(aws: Callable[..., Any], deploy: Callable[..., dict[str, str]]) -> Iterator[Enrolment]:
    from healthbook.aws.settings import load_pepper
    from healthbook_dev.fakes.population import FakePopulation
    from healthbook_dev.fakes.population_server import FakePopulationServer
    from healthbook_dev.fakes.vneid import FakeVneid

    registry = FakePopulation()
    with FakeVneid.start() as vneid, FakePopulationServer.start(registry) as population:
        outputs = deploy(TEMPLATE, STACK, STAGE, VneidBaseUrl=vneid.url, PopulationBaseUrl=population.url,
                         **DELIVERY_TIMING, **ENROLMENT)
        if "EnrolmentStateMachineArn" not in outputs:
            pytest.skip(f"{TEMPLATE.name} has no enrolment workflow")
        aws("secretsmanager").put_secret_value(SecretId=outputs["VneidCredentialsSecretArn"], SecretString=json.dumps(
            {"type": "oauth2", "token_url": vneid.token_url, "client_id": vneid.client_id,
             "client_secret": vneid.client_secret}))
        lam = aws("lambda")  # a warm batch function may hold an earlier module's VNeID credentials: start cold
        name = f"healthbook-{STAGE}-enrolment-batch"
        variables = lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
        lam.update_function_configuration(FunctionName=name, Environment={"Variables": {
            **variables, "HB_E2E_RUN": uuid.uuid4().hex}})
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        pepper = load_pepper(aws("secretsmanager"), outputs["CitizenPepperSecretArn"])
        # people no earlier run on this LocalStack listed: their markers and counters start at nothing
        seed = int(time.time()) % 100_000
        yield Enrolment(aws, outputs, vneid, population, registry, pepper, seed)


@dataclass
class Lists:
    original: Any
    corrected: Any
    vaccinations: list[dict[str, str]]


@pytest.fixture(scope="module")
def lists(enrolment: Enrolment) -> Lists:
    from healthbook_dev.generate.enrolment import corrected, enrolment_list, vaccination_rows

    original = enrolment_list(PEOPLE, seed=enrolment.seed, unknown_rate=0.05, duplicates=25, bhxh_only_rate=0.05)
    for person in original.registered:
        enrolment.registry.add(person.citizen())
    return Lists(original, corrected(original, share=0.05, seed=enrolment.seed),
                 vaccination_rows(original.registered[:250], seed=enrolment.seed, per_person=(1, 4)))


def _no_personal_data(enrolment: Enrolment, run: Run, people: list[Any]) -> None:
    """The outcome file and the workflow's history hold no ID, social-insurance number or name; the upload, the
    work files and the Map's results are gone, every version."""
    outcome = json.dumps(run.outcome, ensure_ascii=False)
    for person in people:
        for value in (person.so_cccd, person.ma_so_bhxh, person.ho_ten):
            assert value not in outcome and value not in run.history
    assert enrolment.leftovers(run) == []


def test_a_participant_list_becomes_health_books(enrolment: Enrolment, lists: Lists,
                                                 wait_for: Callable[..., Any]) -> None:
    from healthbook_dev.generate.enrolment import enrolment_csv

    original = lists.original
    labels = Counter(original.labels)
    before = enrolment.counters()
    run = enrolment.upload("enrolment", enrolment_csv(original.rows), wait_for)

    assert len(run.outcome) == len(original.rows)
    duplicates_of_unknown = sum(1 for row, label in zip(original.rows, original.labels, strict=True)
                                if label == "duplicate" and not enrolment.registry.lookup_by_social_insurance(
                                    row["MA_SO_BHXH"]))
    assert run.by_outcome() == Counter({"created": len(original.registered),
                                        "unchanged": labels["duplicate"] - duplicates_of_unknown,
                                        "not_matched": labels["unknown"] + duplicates_of_unknown})
    assert run.summary["status"] == "COMPLETED" and run.summary["failed_batches"] == 0
    assert run.summary["by_outcome"]["created"] == len(original.registered)
    # VNeID holds exactly one book per registered person, as listed
    assert enrolment.vneid.counts()["profiles_created"] == len(original.registered)
    for person in original.registered:
        profile = enrolment.vneid.profile(enrolment.key_of(person.so_cccd))
        assert profile is not None and profile["name"] == person.ho_ten and profile["id_number"] == person.so_cccd
    for person in original.listed:
        if person not in original.registered:
            assert enrolment.vneid.profile(enrolment.key_of(person.so_cccd)) is None
    # the markers agree with the outcome file: one new citizen and one book per province for each created row
    after = enrolment.counters()
    assert after["markers:ALL"] - before["markers:ALL"] == len(original.registered)
    assert after["P34:markers:BOOK"] - before["P34:markers:BOOK"] == len(original.registered)
    _no_personal_data(enrolment, run, original.listed)


def test_a_corrected_list_updates_only_the_rows_it_corrects(enrolment: Enrolment, lists: Lists,
                                                            wait_for: Callable[..., Any]) -> None:
    from healthbook_dev.generate.enrolment import enrolment_csv

    fixed = lists.corrected
    labels = Counter(fixed.labels)
    assert labels["corrected"] > 10
    before = enrolment.counters()
    run = enrolment.upload("enrolment", enrolment_csv(fixed.rows), wait_for)
    assert run.by_outcome() == Counter({"updated": labels["corrected"], "unchanged": labels["person"] + labels[
        "bhxh_only"], "not_matched": labels["unknown"]})
    assert enrolment.vneid.counts()["profiles_updated"] == labels["corrected"]
    for row, label in zip(fixed.rows, fixed.labels, strict=True):
        if label == "corrected":
            number = row["SO_CCCD"] or next(p.so_cccd for p in fixed.registered if p.ma_so_bhxh == row["MA_SO_BHXH"])
            profile = enrolment.vneid.profile(enrolment.key_of(number))
            assert profile is not None and profile["commune"]["code"] == row["MAXA_CU_TRU"]
    after = enrolment.counters()
    assert after["markers:ALL"] == before["markers:ALL"]  # nobody new
    assert after["P34:markers:BOOK"] == before["P34:markers:BOOK"]
    moved = after["XA:markers:BOOK"] - before["XA:markers:BOOK"]
    assert 0 < moved <= labels["corrected"]  # a citizen counts once in the commune they moved to
    _no_personal_data(enrolment, run, fixed.listed)


def test_a_vaccination_file_becomes_vaccination_history(enrolment: Enrolment, lists: Lists,
                                                        wait_for: Callable[..., Any]) -> None:
    from healthbook_dev.generate.enrolment import vaccination_csv

    rows = lists.vaccinations
    before = enrolment.counters()
    run = enrolment.upload("vaccination", vaccination_csv(rows), wait_for)
    assert run.by_outcome() == Counter({"created": len(rows)})
    expected: Counter[str] = Counter(row["SO_CCCD"] or row["MA_SO_BHXH"] for row in rows)
    by_bhxh = {p.ma_so_bhxh: p.so_cccd for p in lists.original.registered}
    held: Counter[str] = Counter()
    for number, doses in expected.items():
        cccd = by_bhxh.get(number, number)
        held[number] = len(enrolment.vneid.vaccinations(enrolment.key_of(cccd)))
        assert held[number] == doses, number
    assert enrolment.vneid.counts()["vaccinations_created"] == len(rows)
    after = enrolment.counters()
    assert after["vaccinations_recorded"] - before["vaccinations_recorded"] == len(rows)
    _no_personal_data(enrolment, run, lists.original.registered[:250])


def test_the_same_files_again_change_nothing(enrolment: Enrolment, lists: Lists,
                                             wait_for: Callable[..., Any]) -> None:
    from healthbook_dev.generate.enrolment import enrolment_csv, vaccination_csv

    before, vneid = enrolment.counters(), enrolment.vneid.counts()
    again = enrolment.upload("enrolment", enrolment_csv(lists.corrected.rows), wait_for)
    labels = Counter(lists.corrected.labels)
    assert again.by_outcome() == Counter({"unchanged": len(lists.corrected.rows) - labels["unknown"],
                                          "not_matched": labels["unknown"]})
    doses = enrolment.upload("vaccination", vaccination_csv(lists.vaccinations), wait_for)
    assert doses.by_outcome() == Counter({"unchanged": len(lists.vaccinations)})
    counts = enrolment.vneid.counts()
    for name in ("profiles_created", "profiles_updated", "vaccinations_created", "vaccinations_updated"):
        assert counts[name] == vneid[name], name
    assert enrolment.counters() == before
