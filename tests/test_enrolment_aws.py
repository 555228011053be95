"""The enrolment workflow's AWS side (docs/enrolment.md, "On AWS"): its template resources, its state machine read
against the handlers' contracts (as tests/test_delivery_contracts.py does for delivery), and the three handlers
(functions/enrolment/app.py) with their real adapters on moto (S3, DynamoDB, Secrets Manager) against the fake
population service and the fake VNeID over HTTP. The Distributed Map itself is played here the way Step Functions
plays it (ItemReader rows, ItemBatcher batches, ResultWriter files); LocalStack runs the real one
(tests/e2e/test_enrolment_e2e.py)."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cfnlint.decode import decode
from healthbook.aws.enrolment_runtime import (
    BatchEvent,
    BatchInput,
    BatchResult,
    EnrolmentRuntime,
    PrepareInput,
    PrepareResult,
    SummariseInput,
    SummariseResult,
    TokenBucket,
    Upload,
    list_id,
)
from healthbook.aws.settings import EnrolmentBatchSettings, EnrolmentPrepareSettings, EnrolmentSummariseSettings
from healthbook.reconcile.matching import Citizen
from healthbook_dev.aws.sandbox import NAMES, LambdaContext, create_tables, load_function

ROOT = Path(__file__).resolve().parents[1]
ASL_PATH = ROOT / "infra" / "statemachine" / "enrolment.asl.json"
ASL = json.loads(ASL_PATH.read_text(encoding="utf-8"))
REGION = "ap-southeast-1"
BUCKET = "healthbook-test-imports"
AGGREGATES = NAMES["AGGREGATES_TABLE"]
PEPPER = "enrolment-test-pepper-0123456789abcdef"
PROVINCE = "01"
ENROLMENT_HEADER = ("SO_CCCD", "MA_SO_BHXH", "HO_TEN", "NGAY_SINH", "GIOI_TINH", "MATINH_CU_TRU", "MAXA_CU_TRU")
VACCINATION_HEADER = ("SO_CCCD", "HO_TEN", "NGAY_SINH", "MA_VACCINE", "MUI_THU", "NGAY_TIEM", "MA_CSKCB")
FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi")
GIVEN = ("Văn An", "Thị Bình", "Minh Châu", "Quốc Dũng", "Thu Hà", "Đức Long", "Ngọc Mai", "Gia Huy")


# --- the template ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode(str(ROOT / "template.yaml"))
    assert not problems and decoded is not None
    return decoded


def _props(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][name]["Properties"]
    return properties


def _statements(template: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for policy in _props(template, name)["Policies"] if isinstance(policy, dict) and "Statement" in policy
            for s in policy["Statement"]]


def _grants(template: dict[str, Any], name: str) -> dict[str, list[str]]:
    grants: dict[str, list[str]] = {}
    for statement in _statements(template, name):
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            grants.setdefault(action, []).extend(json.dumps(r, sort_keys=True) for r in resources)
    return grants


def test_the_state_machine_is_standard_wired_by_substitutions_and_logs_no_data(template: dict[str, Any]) -> None:
    p = _props(template, "EnrolmentStateMachine")
    assert p["Type"] == "STANDARD" and p["DefinitionUri"] == "infra/statemachine/enrolment.asl.json"
    text = ASL_PATH.read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(p["DefinitionSubstitutions"])
    for name, value in p["DefinitionSubstitutions"].items():
        target = value.get("Fn::GetAtt", [value.get("Ref")])[0]
        assert target == ("ImportsBucket" if name == "ImportsBucketName" else name.removesuffix("Arn")), name
    assert p["Logging"]["IncludeExecutionData"] is False and p["Logging"]["Level"] == "ERROR"
    assert p["Tracing"] == {"Enabled": True}
    assert template["Outputs"]["EnrolmentStateMachineArn"]["Value"] == {"Ref": "EnrolmentStateMachine"}
    assert template["Outputs"]["ImportsBucketName"]["Value"] == {"Ref": "ImportsBucket"}


def test_an_upload_under_imports_starts_the_workflow_through_eventbridge(template: dict[str, Any]) -> None:
    bucket = _props(template, "ImportsBucket")
    assert bucket["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    (event,) = _props(template, "EnrolmentStateMachine")["Events"].values()
    assert event["Type"] == "EventBridgeRule"
    pattern = event["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"] == {"bucket": {"name": [{"Ref": "ImportsBucket"}]},
                                 "object": {"key": [{"prefix": "imports/"}]}}
    # the definition reads what S3's event on EventBridge carries
    assert ASL["States"]["Prepare"]["Parameters"]["Payload"] == {"bucket.$": "$.detail.bucket.name",
                                                                 "object.$": "$.detail.object"}


def test_the_imports_bucket_expires_personal_data_and_keeps_outcomes(template: dict[str, Any]) -> None:
    rules = {r.get("Prefix"): r for r in _props(template, "ImportsBucket")["LifecycleConfiguration"]["Rules"]}
    for prefix, days in (("imports/", 7), ("work/", 7), ("results/", 30)):
        assert rules[prefix]["Status"] == "Enabled" and rules[prefix]["ExpirationInDays"] == days, prefix
        assert rules[prefix]["NoncurrentVersionExpiration"]["NoncurrentDays"] <= 1, prefix
    assert "outcomes/" not in rules


def test_a_province_principal_writes_only_its_own_imports_and_reads_only_its_own_outcomes(
        template: dict[str, Any]) -> None:
    own_imports = {"Fn::Join": ["", [{"Fn::GetAtt": ["ImportsBucket", "Arn"]},
                                     "/imports/${aws:PrincipalTag/province}/*"]]}
    own_outcomes = {"Fn::Join": ["", [{"Fn::GetAtt": ["ImportsBucket", "Arn"]},
                                      "/outcomes/${aws:PrincipalTag/province}/*"]]}
    tagged = {"Null": {"aws:PrincipalTag/province": "false"}}
    (policy,) = [p["Properties"]["PolicyDocument"] for p in template["Resources"].values()
                 if p["Type"] == "AWS::S3::BucketPolicy" and p["Properties"]["Bucket"] == {"Ref": "ImportsBucket"}]
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ProvinceUploadsUnderItsOwnPrefix"]["Resource"] == own_imports
    assert by_sid["ProvinceUploadsUnderItsOwnPrefix"]["Condition"] == tagged
    deny = by_sid["DenyProvinceUploadsOutsideItsOwnPrefix"]
    assert deny["Effect"] == "Deny" and deny["NotResource"] == own_imports and deny["Condition"] == tagged
    assert by_sid["ProvinceReadsItsOwnOutcomes"]["Resource"] == own_outcomes
    assert by_sid["DenyProvinceReadsOutsideItsOwnOutcomes"]["NotResource"] == own_outcomes
    assert by_sid["DenyFacilityPrincipals"]["Condition"] == {"Null": {"aws:PrincipalTag/facility": "false"}}
    province = {s["Sid"]: s for s in _props(template, "ProvincePolicy")["PolicyDocument"]["Statement"]}
    assert province["UploadUnderOwnImportsPrefix"]["Resource"] == own_imports
    assert province["ReadOwnOutcomes"]["Resource"] == own_outcomes
    assert province["UseTheDataKeyThroughS3Only"]["Condition"]["StringEquals"]["kms:ViaService"] == {
        "Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}
    assert template["Outputs"]["ProvincePolicyArn"]["Value"] == {"Ref": "ProvincePolicy"}


SETTINGS = {"EnrolmentPrepareFunction": EnrolmentPrepareSettings, "EnrolmentBatchFunction": EnrolmentBatchSettings,
            "EnrolmentSummariseFunction": EnrolmentSummariseSettings}
SHARED = {"STAGE", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL", "LOG_LEVEL",
          "POWERTOOLS_TRACER_CAPTURE_RESPONSE", "POWERTOOLS_TRACER_CAPTURE_ERROR"}


@pytest.mark.parametrize("function", sorted(SETTINGS))
def test_each_function_sets_exactly_what_its_settings_read(template: dict[str, Any], function: str) -> None:
    variables = set(_props(template, function)["Environment"]["Variables"]) - SHARED
    fields = {name.upper(): spec for name, spec in SETTINGS[function].model_fields.items()}
    assert variables <= set(fields), variables - set(fields)
    assert {name for name, spec in fields.items() if spec.is_required()} <= variables
    assert _props(template, function)["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "enrolment"


def test_the_functions_reach_only_their_prefixes(template: dict[str, Any]) -> None:
    def sub(path: str) -> str:
        return json.dumps({"Fn::Sub": "${ImportsBucket.Arn}/" + path}, sort_keys=True)

    prepare = _grants(template, "EnrolmentPrepareFunction")
    assert prepare["s3:GetObject"] == [sub("imports/*")]
    assert sorted(prepare["s3:PutObject"]) == sorted([sub("work/*"), sub("outcomes/*")])
    assert prepare["s3:DeleteObjectVersion"] == [sub("imports/*")]
    assert not [a for a in prepare if a.startswith(("dynamodb:", "secretsmanager:"))]
    batch = _grants(template, "EnrolmentBatchFunction")
    assert not [a for a in batch if a.startswith("s3:")]
    assert set(batch["secretsmanager:GetSecretValue"]) == {json.dumps({"Ref": n}) for n in (
        "CitizenPepperSecret", "PopulationApiKeySecret", "VneidCredentialsSecret")}
    summarise = _grants(template, "EnrolmentSummariseFunction")
    assert summarise["s3:PutObject"] == [sub("outcomes/*")]
    assert sorted(summarise["s3:DeleteObjectVersion"]) == sorted([sub("imports/*"), sub("work/*"), sub("results/*")])
    assert not [a for a in summarise if a.startswith(("dynamodb:", "secretsmanager:"))]
    machine = {s["Sid"]: s for s in _statements(template, "EnrolmentStateMachine")}
    assert machine["ReadTheCanonicalCsv"]["Resource"] == {"Fn::Sub": "${ImportsBucket.Arn}/work/*"}
    assert machine["WriteTheMapResults"]["Resource"] == {"Fn::Sub": "${ImportsBucket.Arn}/results/*"}
    assert machine["RunChildExecutions"]["Resource"]["Fn::Sub"].endswith(":stateMachine:healthbook-${Stage}-enrolment")


def test_the_map_shape_comes_from_the_template_parameters(template: dict[str, Any]) -> None:
    variables = _props(template, "EnrolmentPrepareFunction")["Environment"]["Variables"]
    assert variables["BATCH_SIZE"] == {"Ref": "EnrolmentBatchSize"}
    assert variables["MAX_CONCURRENCY"] == {"Ref": "EnrolmentMaxConcurrency"}
    assert variables["TOLERATED_FAILURE_PERCENTAGE"] == {"Ref": "EnrolmentToleratedFailurePercentage"}
    batch = _props(template, "EnrolmentBatchFunction")["Environment"]["Variables"]
    assert batch["VNEID_RATE_PER_SECOND"] == {"Ref": "VneidRatePerSecond"}
    assert batch["POPULATION_RATE_PER_SECOND"] == {"Ref": "PopulationRatePerSecond"}
    parameters = template["Parameters"]
    assert parameters["EnrolmentBatchSize"]["MaxValue"] <= EnrolmentPrepareSettings.model_fields[
        "batch_size"].metadata[1].le


# --- the definition against the contracts ------------------------------------------------------------------------

ROWS = ASL["States"]["Rows"]
PREPARED = set(PrepareResult.model_fields)


def _path_field(path: str) -> str:
    assert path.startswith("$.") and path.count(".") == 1, path
    return path[2:]


def test_the_map_is_distributed_over_the_canonical_csv_with_express_children() -> None:
    assert ROWS["Type"] == "Map"
    assert ROWS["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}
    reader = ROWS["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["ReaderConfig"] == {"InputType": "CSV", "CSVHeaderLocation": "FIRST_ROW"}
    assert reader["Parameters"]["Bucket"] == "${ImportsBucketName}"
    assert _path_field(reader["Parameters"]["Key.$"]) == "work_key"
    writer = ROWS["ResultWriter"]
    assert writer["Resource"] == "arn:aws:states:::s3:putObject"
    assert writer["Parameters"]["Prefix.$"] == "States.Format('results/{}', $.list_id)"
    for field_path in (ROWS["ItemBatcher"]["MaxItemsPerBatchPath"], ROWS["MaxConcurrencyPath"],
                       ROWS["ToleratedFailurePercentagePath"]):
        assert _path_field(field_path) in PREPARED, field_path


def test_batch_input_is_the_batch_contract_and_the_child_passes_it_whole() -> None:
    batch_input = ROWS["ItemBatcher"]["BatchInput"]
    assert {k.removesuffix(".$") for k in batch_input} == set(BatchInput.model_fields)
    assert all(_path_field(v) in PREPARED for v in batch_input.values())
    (task,) = ROWS["ItemProcessor"]["States"].values()
    assert task["Parameters"] == {"FunctionName": "${EnrolmentBatchFunctionArn}", "Payload.$": "$"}
    assert task["OutputPath"] == "$.Payload"
    assert {f.alias for f in BatchEvent.model_fields.values()} == {"Items", "BatchInput"}


def test_summarise_reads_prepares_result_and_the_maps() -> None:
    summarise = ASL["States"]["Summarise"]
    payload = summarise["Parameters"]["Payload"]
    assert {k.removesuffix(".$") for k in payload} == set(SummariseInput.model_fields)
    for key, path in payload.items():
        assert _path_field(path) in PREPARED | {"rows_run"}, key
    assert ROWS["ResultPath"] == "$.rows_run" and ROWS["Catch"][0]["ResultPath"] == "$.rows_run"
    assert ROWS["Catch"][0]["Next"] == "Summarise"
    assert ASL["States"]["Prepare"]["Parameters"]["Payload"].keys() == {f"{k}.$" for k in PrepareInput.model_fields}


def test_branches_name_statuses_the_steps_return() -> None:
    prepared = ASL["States"]["Prepared?"]["Choices"][0]
    assert prepared["Variable"] == "$.status" and prepared["StringEquals"] in PrepareResult.model_fields[
        "status"].annotation.__args__  # type: ignore[union-attr]
    completed = ASL["States"]["Completed?"]["Choices"][0]
    assert completed["StringEquals"] in SummariseResult.model_fields["status"].annotation.__args__  # type: ignore[union-attr]


def test_every_error_the_children_retry_is_raised_by_the_code() -> None:
    from healthbook.reconcile import PopulationUnavailable
    from healthbook.vneid import RetryableDeliveryError

    (task,) = ROWS["ItemProcessor"]["States"].values()
    named = {e for rule in task["Retry"] for e in rule["ErrorEquals"] if not e.startswith(("States.", "Lambda."))}
    assert named == {PopulationUnavailable.__name__, RetryableDeliveryError.__name__}


# --- the runtime on moto, the fakes over HTTP --------------------------------------------------------------------

@dataclass
class Person:
    cccd: str
    name: str
    birth: str
    sex: str

    def row(self) -> dict[str, str]:
        return {"SO_CCCD": self.cccd, "MA_SO_BHXH": "", "HO_TEN": self.name, "NGAY_SINH": self.birth,
                "GIOI_TINH": self.sex, "MATINH_CU_TRU": PROVINCE, "MAXA_CU_TRU": "00004"}

    def citizen(self) -> Citizen:
        return Citizen(self.cccd, self.name, self.birth, self.sex)


def people(n: int, seed: int) -> list[Person]:
    """``n`` residents of Hà Nội with distinct 12-digit IDs (province 001, the century-and-sex digit, the year)."""
    rng = random.Random(seed)
    found = []
    for i in range(n):
        sex, year = rng.choice("12"), rng.randrange(1940, 2020)
        century_sex = int(sex) - 1 + (0 if year < 2000 else 2)
        found.append(Person(f"001{century_sex}{year % 100:02d}{seed % 100:02d}{i:04d}",
                            f"{rng.choice(FAMILY)} {rng.choice(GIVEN)}",
                            f"{year}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}", sex))
    return found


def csv_bytes(header: tuple[str, ...], rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in header})
    return out.getvalue().encode("utf-8")


@dataclass
class Stack:
    app: ModuleType
    s3: Any
    ddb: Any
    vneid: Any
    population: Any
    registry: Any
    batch_size: int = 7

    def upload(self, key: str, body: bytes) -> dict[str, Any]:
        put = self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return {"bucket": BUCKET, "object": {"key": key, "size": len(body), "version-id": put["VersionId"]}}

    def run(self, key: str, body: bytes, *, fail_batches: set[int] | None = None) -> dict[str, Any]:
        """The workflow as Step Functions runs it: Prepare, the Distributed Map (ItemReader, ItemBatcher, the
        children, ResultWriter), Summarise; the state between the steps as the definition shapes it."""
        state = self.app.prepare_handler(self.upload(key, body), LambdaContext(function_name="prepare"))
        if state["status"] != "PREPARED":
            return state
        assert state["batch_size"] == self.batch_size
        data = self.s3.get_object(Bucket=BUCKET, Key=state["work_key"])["Body"].read().decode("utf-8")
        items = list(csv.DictReader(io.StringIO(data)))
        batch_input = {"list_id": state["list_id"], "kind": state["kind"], "province": state["province"]}
        succeeded, failed = [], []
        for index in range(0, len(items), state["batch_size"]):
            child_input = {"Items": items[index:index + state["batch_size"]], "BatchInput": batch_input}
            entry = {"ExecutionArn": f"arn:aws:states:{REGION}:123456789012:express:m/Rows:{index}",
                     "Input": json.dumps(child_input), "InputDetails": {"Included": True}, "Name": str(index)}
            if fail_batches and index // state["batch_size"] in fail_batches:
                failed.append({**entry, "Status": "FAILED", "Error": "PopulationUnavailable", "Cause": "down"})
                continue
            output = self.app.batch_handler(child_input, LambdaContext(function_name="batch"))
            succeeded.append({**entry, "Status": "SUCCEEDED", "Output": json.dumps(output),
                              "OutputDetails": {"Included": True}})
        prefix = f"results/{state['list_id']}/run-1"
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        for status, entries in (("SUCCEEDED", succeeded), ("FAILED", failed)):
            if entries:
                body_ = json.dumps(entries).encode()
                self.s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{status}_0.json", Body=body_)
                files[status].append({"Key": f"{prefix}/{status}_0.json", "Size": len(body_)})
        self.s3.put_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json", Body=json.dumps(
            {"DestinationBucket": BUCKET, "MapRunArn": "arn", "ResultFiles": files}).encode())
        exceeded = failed and len(failed) * 100 > 5 * (len(failed) + len(succeeded))
        state["rows_run"] = ({"Error": "States.ExceedToleratedFailureThreshold", "Cause": "too many"} if exceeded
                             else {"MapRunArn": "arn", "ResultWriterDetails": {"Bucket": BUCKET,
                                                                               "Key": f"{prefix}/manifest.json"}})
        summary_input = {k: state[k] for k in SummariseInput.model_fields}
        result: dict[str, Any] = self.app.summarise_handler(summary_input, LambdaContext(function_name="summarise"))
        return result

    def outcome_rows(self, key: str) -> list[dict[str, str]]:
        data = self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8-sig")
        return list(csv.DictReader(io.StringIO(data)))

    def json(self, key: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        return document

    def versions(self, prefix: str = "") -> list[str]:
        page = self.s3.list_object_versions(Bucket=BUCKET, Prefix=prefix)
        return sorted(e["Key"] for e in page.get("Versions", []) + page.get("DeleteMarkers", []))

    def markers(self) -> Counter[str]:
        """The distinct-citizen markers by kind (``BOOK``: province and commune; ``ALL``: coverage), each with its
        first day (what a report counts)."""
        kinds: Counter[str] = Counter()
        for item in self.ddb.scan(TableName=AGGREGATES)["Items"]:
            if item["period"]["S"].startswith("citizen#"):
                assert "first_day" in item, item["scope"]
                kinds[item["scope"]["S"].rsplit("#", 1)[1]] += 1
        return kinds

    def counters(self) -> Counter[str]:
        """The report counters (not the markers), summed over every item."""
        totals: Counter[str] = Counter()
        for item in self.ddb.scan(TableName=AGGREGATES)["Items"]:
            if item["period"]["S"].startswith("citizen#"):
                continue
            totals.update({k: int(v["N"]) for k, v in item.items() if "N" in v and k != "expires_at"})
        return totals


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    import boto3
    from healthbook_dev.fakes.population import FakePopulation
    from healthbook_dev.fakes.population_server import FakePopulationServer
    from healthbook_dev.fakes.vneid import FakeVneid
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION, "POWERTOOLS_TRACE_DISABLED": "true",
                        "POWERTOOLS_METRICS_NAMESPACE": "Healthbook"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    registry = FakePopulation()
    with mock_aws(), FakeVneid.start() as vneid, FakePopulationServer.start(registry, api_key="pk") as population:
        s3, ddb, secrets = boto3.client("s3"), boto3.client("dynamodb"), boto3.client("secretsmanager")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        create_tables(ddb, {"AGGREGATES_TABLE": AGGREGATES})
        environment = {
            "IMPORTS_BUCKET": BUCKET, "BATCH_SIZE": "7", "MAX_CONCURRENCY": "3", "TOLERATED_FAILURE_PERCENTAGE": "5",
            "AGGREGATES_TABLE": AGGREGATES, "POPULATION_URL": population.url, "VNEID_URL": vneid.url,
            "CITIZEN_PEPPER_SECRET": secrets.create_secret(Name="pepper", SecretString=PEPPER)["ARN"],
            "POPULATION_API_KEY_SECRET": secrets.create_secret(Name="population", SecretString="pk")["ARN"],
            "VNEID_SECRET": secrets.create_secret(Name="vneid", SecretString=json.dumps({
                "type": "oauth2", "token_url": vneid.token_url, "client_id": vneid.client_id,
                "client_secret": vneid.client_secret}))["ARN"],
            "VNEID_RATE_PER_SECOND": "1000", "POPULATION_RATE_PER_SECOND": "1000",
            "POWERTOOLS_SERVICE_NAME": "enrolment"}
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        app = load_function("enrolment")
        app.reset()
        yield Stack(app=app, s3=s3, ddb=ddb, vneid=vneid, population=population, registry=registry)
        app.reset()


def _citizen_key(cccd: str) -> str:
    from healthbook.kernel import citizen_key

    key = citizen_key(PEPPER.encode(), cccd)
    assert key is not None
    return key


def test_a_participant_list_becomes_books_once_and_its_personal_data_leaves(stack: Stack) -> None:
    listed = people(40, seed=1)
    for person in listed[:34]:  # the last 6 are unknown to the population database
        stack.registry.add(person.citizen())
    rows = [p.row() for p in listed] + [listed[0].row()]  # the first person twice
    rows.append({**listed[1].row(), "NGAY_SINH": "31/02/1990"})  # invalid
    key = f"imports/{PROVINCE}/enrolment/danh-sach.csv"
    result = stack.run(key, csv_bytes(ENROLMENT_HEADER, rows))

    assert result["status"] == "COMPLETED" and result["failed_batches"] == 0
    assert result["counts"] == {"created": 34, "unchanged": 1, "not_matched": 6, "invalid": 1}
    outcome = stack.outcome_rows(result["outcome_key"])
    assert [int(r["row"]) for r in outcome] == list(range(2, len(rows) + 2))  # the header is row 1
    by_outcome = Counter(r["outcome"] for r in outcome)
    assert by_outcome == Counter(created=34, unchanged=1, not_matched=6, invalid=1)
    assert {r["code"] for r in outcome if r["outcome"] == "not_matched"} == {"UNKNOWN_ID"}
    assert all(r["reason"] and r["reason_vi"] for r in outcome if r["outcome"] in ("not_matched", "invalid"))
    text = json.dumps(outcome, ensure_ascii=False)
    for person in listed:
        assert person.cccd not in text and person.name not in text
    assert outcome[0]["masked_id"] == listed[0].cccd[:4] + "******" + listed[0].cccd[-2:]
    summary = stack.json(result["summary_key"])
    assert summary["by_outcome"]["created"] == 34 and summary["status"] == "COMPLETED"
    assert summary["source"] == key and summary["list_id"] == result["list_id"]

    for person in listed[:34]:
        profile = stack.vneid.profile(_citizen_key(person.cccd))
        assert profile is not None and profile["name"] == person.name
    assert stack.vneid.counts()["profiles_created"] == 34
    assert stack.markers() == {"BOOK": 2 * 34, "ALL": 34}  # the province and the commune; coverage
    assert not stack.counters()  # no counter: a report counts the markers
    # nothing personal is left: the upload, the work files and the results are gone, every version
    assert stack.versions("imports/") == [] and stack.versions("work/") == [] and stack.versions("results/") == []
    assert stack.versions("outcomes/") == sorted([result["outcome_key"], result["summary_key"]])

    # the same list again: nothing changes in VNeID or the counters
    again = stack.run(key, csv_bytes(ENROLMENT_HEADER, rows))
    assert again["list_id"] != result["list_id"]  # another upload, another list
    assert again["counts"] == {"unchanged": 35, "not_matched": 6, "invalid": 1}
    assert stack.vneid.counts()["profiles_created"] == 34 and stack.vneid.counts()["profiles_updated"] == 0
    assert stack.markers() == {"BOOK": 2 * 34, "ALL": 34}


def test_a_corrected_list_updates_the_books_it_changes(stack: Stack) -> None:
    listed = people(10, seed=2)
    for person in listed:
        stack.registry.add(person.citizen())
    key = f"imports/{PROVINCE}/enrolment/list.csv"
    first = stack.run(key, csv_bytes(ENROLMENT_HEADER, [p.row() for p in listed]))
    assert first["counts"] == {"created": 10}
    corrected = [{**p.row(), "MAXA_CU_TRU": "00007"} if i < 3 else p.row() for i, p in enumerate(listed)]
    second = stack.run(key, csv_bytes(ENROLMENT_HEADER, corrected))
    assert second["counts"] == {"updated": 3, "unchanged": 7}
    assert stack.vneid.profile(_citizen_key(listed[0].cccd))["commune"]["code"] == "00007"  # type: ignore[index]
    assert stack.markers()["BOOK"] == 2 * 10 + 3  # the three moved to another commune count there


def test_a_vaccination_file_records_each_dose_once(stack: Stack) -> None:
    listed = people(12, seed=3)
    for person in listed:
        stack.registry.add(person.citizen())
    doses = [{"SO_CCCD": p.cccd, "HO_TEN": p.name, "NGAY_SINH": p.birth, "MA_VACCINE": "BCG", "MUI_THU": "1",
              "NGAY_TIEM": "20250110", "MA_CSKCB": "01001"} for p in listed]
    doses.append({**doses[0], "MA_VACCINE": "VGB", "MUI_THU": "2"})
    key = f"imports/{PROVINCE}/vaccination/tiem-chung.csv"
    result = stack.run(key, csv_bytes(VACCINATION_HEADER, doses))
    assert result["counts"]["created"] == 13, result
    assert len(stack.vneid.vaccinations(_citizen_key(listed[0].cccd))) == 2
    assert stack.counters()["vaccinations_recorded"] == 13
    again = stack.run(key, csv_bytes(VACCINATION_HEADER, doses))
    assert again["counts"] == {"unchanged": 13}
    assert stack.counters()["vaccinations_recorded"] == 13


def test_a_refused_file_gets_an_outcome_saying_why_and_leaves(stack: Stack) -> None:
    key = f"imports/{PROVINCE}/enrolment/khong-co-tieu-de.csv"
    result = stack.run(key, b"no header here\n1,2,3\n")
    assert result["status"] == "REFUSED"
    outcome = stack.outcome_rows(f"outcomes/{PROVINCE}/{result['list_id']}.csv")
    assert [r["code"] for r in outcome] == ["N009"]
    summary = stack.json(f"outcomes/{PROVINCE}/{result['list_id']}.summary.json")
    assert summary["status"] == "REFUSED" and summary["code"] == "N009" and summary["reason_vi"]
    assert stack.versions("imports/") == []


def test_an_upload_outside_the_layout_is_ignored_and_a_processed_one_is_gone(stack: Stack) -> None:
    ignored = stack.app.prepare_handler(stack.upload("imports/hanoi/enrolment/x.csv", b"x"), LambdaContext())
    assert ignored["status"] == "IGNORED" and stack.versions("imports/") == []
    gone = stack.app.prepare_handler({"bucket": BUCKET, "object": {"key": "imports/01/enrolment/never.csv"}},
                                     LambdaContext())
    assert gone["status"] == "GONE"
    with pytest.raises(ValueError, match="another bucket"):
        stack.app.prepare_handler({"bucket": "elsewhere", "object": {"key": "imports/01/enrolment/x.csv"}},
                                  LambdaContext())


def test_the_workflow_state_holds_keys_and_counts_only(stack: Stack) -> None:
    listed = people(9, seed=4)
    for person in listed:
        stack.registry.add(person.citizen())
    state = stack.app.prepare_handler(stack.upload(f"imports/{PROVINCE}/enrolment/a.csv", csv_bytes(
        ENROLMENT_HEADER, [p.row() for p in listed])), LambdaContext())
    assert set(state) == set(PrepareResult.model_fields)
    data = stack.s3.get_object(Bucket=BUCKET, Key=state["work_key"])["Body"].read().decode()
    items = list(csv.DictReader(io.StringIO(data)))
    output = stack.app.batch_handler({"Items": items, "BatchInput": {"list_id": state["list_id"], "kind": "enrolment",
                                                                     "province": PROVINCE}}, LambdaContext())
    BatchResult.model_validate(output)
    carried = json.dumps([state, output], ensure_ascii=False)
    for person in listed:
        assert person.cccd not in carried and person.name not in carried and person.birth not in carried
    assert {tuple(sorted(o)) for o in output["outcomes"]} == {("code", "masked_id", "outcome", "row")}


def test_failed_batches_mark_their_rows_and_fail_the_list_past_the_tolerance(stack: Stack) -> None:
    listed = people(21, seed=5)
    for person in listed:
        stack.registry.add(person.citizen())
    key = f"imports/{PROVINCE}/enrolment/b.csv"
    result = stack.run(key, csv_bytes(ENROLMENT_HEADER, [p.row() for p in listed]), fail_batches={1})
    assert result["status"] == "FAILED" and result["error"] == "States.ExceedToleratedFailureThreshold"
    assert result["counts"] == {"created": 14, "failed": 7} and result["failed_batches"] == 1
    outcome = stack.outcome_rows(result["outcome_key"])
    failed = [r for r in outcome if r["outcome"] == "failed"]
    assert [int(r["row"]) for r in failed] == list(range(9, 16)) and all(r["masked_id"] for r in failed)
    assert {r["code"] for r in failed} == {"N302"} and all("upload the list again" in r["reason"] for r in failed)
    assert stack.versions("results/") == [] and stack.versions("work/") == []  # the failed inputs leave too
    # the list sent again: the rows that failed are created now, the others are unchanged
    again = stack.run(key, csv_bytes(ENROLMENT_HEADER, [p.row() for p in listed]))
    assert again["status"] == "COMPLETED" and again["counts"] == {"created": 7, "unchanged": 14}


def test_a_service_that_is_down_fails_the_batch_with_the_error_the_map_retries(stack: Stack) -> None:
    from healthbook.reconcile import PopulationUnavailable

    listed = people(3, seed=6)
    state = stack.app.prepare_handler(stack.upload(f"imports/{PROVINCE}/enrolment/c.csv", csv_bytes(
        ENROLMENT_HEADER, [p.row() for p in listed])), LambdaContext())
    items = list(csv.DictReader(io.StringIO(stack.s3.get_object(Bucket=BUCKET, Key=state["work_key"])["Body"]
                                            .read().decode())))
    stack.population.fail("5xx", seconds=30)
    with pytest.raises(PopulationUnavailable):
        stack.app.batch_handler({"Items": items, "BatchInput": {"list_id": state["list_id"], "kind": "enrolment",
                                                                "province": PROVINCE}}, LambdaContext())


def test_the_token_bucket_keeps_to_its_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(30):
        bucket.acquire()
    # a burst of 10 at once, then one every 0.1 s: 30 calls take 2 s
    assert now[0] == pytest.approx(2.0) and len(slept) == 20
    now[0] += 5  # idle: the bucket refills to its burst, no more
    for _ in range(10):
        bucket.acquire()
    assert len(slept) == 20
    bucket.acquire()
    assert slept[-1] == pytest.approx(0.1)


def test_summarise_builds_outcomes_child_by_child_sharing_the_reasons_of_a_code() -> None:
    """A million rows must fit Summarise's memory (bench/enrol_limits.py): one text per code, not per row."""
    from healthbook.aws.enrolment_runtime import outcomes_of

    def child(rows: range) -> dict[str, Any]:
        return {"Status": "SUCCEEDED", "Output": json.dumps({"list_id": "l", "counts": {}, "outcomes": [
            {"row": r, "outcome": "not_matched", "code": "R001", "masked_id": "001******789"} for r in rows]})}

    failed = {"Status": "FAILED", "Input": json.dumps({"Items": [{"ROW": "9", "SO_CCCD": "001234567890"}]})}
    files = {"ok.json": json.dumps([child(range(2, 5)), child(range(5, 7))]).encode(),
             "failed.json": json.dumps([failed]).encode(),
             "pending.jsonl": b""}

    class Results:
        def read(self, key: str) -> bytes:
            return files[key]

    manifest = {"ResultFiles": {"SUCCEEDED": [{"Key": "ok.json"}], "FAILED": [{"Key": "failed.json"}],
                                "PENDING": [{"Key": "pending.jsonl"}]}}
    outcomes, failed_batches = outcomes_of(Results(), manifest)  # type: ignore[arg-type]
    assert failed_batches == 1
    assert [(o.row, o.outcome) for o in outcomes] == [(2, "not_matched"), (3, "not_matched"), (4, "not_matched"),
                                                      (5, "not_matched"), (6, "not_matched"), (9, "failed")]
    assert outcomes[-1].masked_id != "001234567890" and outcomes[-1].code == "N302"
    assert len({id(o.reason) for o in outcomes[:5]}) == 1 and len({id(o.reason_vi) for o in outcomes[:5]}) == 1
    assert outcomes_of(Results(), None) == ([], 0)  # the Map wrote no manifest


def test_the_problems_of_many_rows_share_their_texts() -> None:
    from healthbook.enrolment.codes import problem

    first, second = problem("N022", 2, "HO_TEN"), problem("N022", 3, "HO_TEN")
    assert (first.row, second.row) == (2, 3) and first.reason is second.reason and first.reason_vi is second.reason_vi
    named = problem("N010", None, "HO_TEN")  # a text naming its column is kept per column
    assert "HO_TEN" in named.reason and "NGAY_SINH" in problem("N010", None, "NGAY_SINH").reason


def test_keys_and_list_ids() -> None:
    assert Upload.parse("imports/01/enrolment/a/b.csv") == Upload("01", "enrolment", "b.csv")
    for bad in ("imports/1/enrolment/a.csv", "imports/01/visits/a.csv", "imports/01/enrolment/", "inbox/01/x.csv",
                "imports/01/enrolment"):
        assert Upload.parse(bad) is None, bad
    first = list_id("enrolment", "imports/01/enrolment/a.csv", "v1")
    assert first == list_id("enrolment", "imports/01/enrolment/a.csv", "v1")
    assert first != list_id("enrolment", "imports/01/enrolment/a.csv", "v2")
    BatchInput(list_id=first, kind="enrolment", province="01")


def test_each_step_names_the_variables_it_is_missing() -> None:
    with pytest.raises(ValueError, match=r"^missing environment variable\(s\): IMPORTS_BUCKET$"):
        EnrolmentRuntime(env={}).settings(EnrolmentPrepareSettings)
    with pytest.raises(ValueError, match="CITIZEN_PEPPER_SECRET, POPULATION_URL, VNEID_SECRET, VNEID_URL"):
        EnrolmentRuntime(env={}).settings(EnrolmentBatchSettings)
    with pytest.raises(ValueError, match="VNEID_RATE_PER_SECOND must be positive"):
        EnrolmentRuntime(env={"CITIZEN_PEPPER_SECRET": "p", "POPULATION_URL": "http://x", "VNEID_SECRET": "s",
                              "VNEID_URL": "http://v", "VNEID_RATE_PER_SECOND": "0"}).settings(EnrolmentBatchSettings)


def test_report_counters_that_keep_conflicting_fail_the_batch_with_the_error_the_map_retries(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another transaction holds every shard of the province's day item. A participant list's markers make no
    transaction, so its batch goes through and counts every book once. A vaccination batch whose counter update
    kept conflicting (TransactionConflicts) fails with RetryableDeliveryError, which the Map retries."""
    from datetime import UTC, datetime

    from healthbook.aws import enrolment_runtime
    from healthbook.aws.records import TransactionConflicts, counter_update
    from healthbook.reports.aggregates import COUNTER_SHARDS, vaccination_count
    from healthbook.vneid.client import RetryableDeliveryError
    from healthbook_dev.aws.sandbox import transaction_conflicts

    listed = people(4, seed=9)
    for person in listed:
        stack.registry.add(person.citizen())

    def child(kind: str, body: bytes) -> dict[str, Any]:
        state = stack.app.prepare_handler(stack.upload(f"imports/{PROVINCE}/{kind}/h.csv", body), LambdaContext())
        items = list(csv.DictReader(io.StringIO(stack.s3.get_object(Bucket=BUCKET, Key=state["work_key"])["Body"]
                                                .read().decode())))
        return {"Items": items, "BatchInput": {"list_id": state["list_id"], "kind": kind, "province": PROVINCE}}

    books = child("enrolment", csv_bytes(ENROLMENT_HEADER, [p.row() for p in listed]))
    province_day = vaccination_count(PROVINCE, datetime.now(UTC), 1)
    with transaction_conflicts(hold_ms=60_000) as model:
        stack.ddb.transact_write_items(TransactItems=[
            counter_update(AGGREGATES, province_day, shard=shard) for shard in range(COUNTER_SHARDS)])
        stack.app.batch_handler(books, LambdaContext(function_name="batch"))
        assert model.counts["conflicts"] == 0
    assert stack.markers() == {"BOOK": 2 * 4, "ALL": 4}
    stack.app.batch_handler(books, LambdaContext(function_name="batch"))  # the Map's retry: nothing twice
    assert stack.markers() == {"BOOK": 2 * 4, "ALL": 4}

    def conflicting(*_: Any) -> None:
        raise TransactionConflicts("counters of P34: cancelled by concurrent transactions 5 times")

    monkeypatch.setattr(enrolment_runtime, "add_counters", conflicting)  # the emulator refuses transactions only
    doses = child("vaccination", csv_bytes(VACCINATION_HEADER, [
        {"SO_CCCD": p.cccd, "HO_TEN": p.name, "NGAY_SINH": p.birth, "MA_VACCINE": "BCG", "MUI_THU": "1",
         "NGAY_TIEM": "20250110", "MA_CSKCB": "01001"} for p in listed]))
    with pytest.raises(RetryableDeliveryError, match="report counters"):
        stack.app.batch_handler(doses, LambdaContext(function_name="batch"))
