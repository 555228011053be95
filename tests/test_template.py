"""template.yaml: cfn-lint and `sam validate --lint` clean, and the properties the ingestion issue asks for.

The template is read with cfn-lint's decoder (it understands !Ref, !Sub, !GetAtt ... and gives plain
dicts with the long forms: {"Ref": ...}, {"Fn::Sub": ...}). The SAM CLI (aws-sam-cli) lives in its own
virtualenv (.venv-sam) because it pins boto3 and pydantic; its tests skip without it, except under CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
REGION = "ap-southeast-1"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode(str(TEMPLATE))
    assert not problems, problems
    assert decoded is not None
    return decoded


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    return template["Resources"][name].get("Properties", {})


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def referenced(node: Any) -> set[str]:
    """Logical ids and parameters that a value names through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    for item in walk(node):
        if not isinstance(item, dict):
            continue
        if "Ref" in item:
            found.add(item["Ref"])
        if "Fn::GetAtt" in item:
            target = item["Fn::GetAtt"]
            found.add(target[0] if isinstance(target, list) else target.split(".")[0])
        if "Fn::Sub" in item:
            text = item["Fn::Sub"] if isinstance(item["Fn::Sub"], str) else item["Fn::Sub"][0]
            found |= {m.split(".")[0] for m in re.findall(r"\$\{(?!!)([^}]+)\}", text)}
    return found


def is_ref(value: Any, name: str) -> bool:
    return value == {"Ref": name}


def is_arn_of(value: Any, name: str) -> bool:
    return value in ({"Fn::GetAtt": [name, "Arn"]}, {"Fn::GetAtt": f"{name}.Arn"})


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return as_list(policy["Statement"])


# ---- linters ---------------------------------------------------------------------------------------------

def test_cfn_lint_is_clean() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=[REGION]))
    serious = [m for m in matches if m.rule.severity in ("error", "warning")]
    assert not serious, "\n".join(str(m) for m in serious)


def sam_cli() -> str:
    # $SAM_CLI, PATH, the venv infra/localstack/install.sh makes, or a .venv-sam beside .venv.
    candidates = (os.environ.get("SAM_CLI"), shutil.which("sam"),
                  str(ROOT / "infra" / "localstack" / ".work" / "venv-sam" / "bin" / "sam"),
                  str(ROOT / ".venv-sam" / "bin" / "sam"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    if os.environ.get("CI"):
        pytest.fail("CI must run the SAM CLI (infra/localstack/install.sh sam, on PATH or $SAM_CLI), but it is missing")
    pytest.skip("aws-sam-cli not installed (infra/localstack/install.sh sam, sam on PATH, or $SAM_CLI)")


def sam_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": REGION})
    return env


def test_sam_validate_lint() -> None:
    result = subprocess.run([sam_cli(), "validate", "--lint", "--template", str(TEMPLATE), "--region", REGION],
                            capture_output=True, text=True, cwd=ROOT, env=sam_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_build_builds_a_layer_per_architecture(tmp_path: Path) -> None:
    """`sam build` (BuildMethod makefile) builds both layers, each fit for its architecture, and the function."""
    if shutil.which("make") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs make for sam build")
        pytest.skip("make not installed")
    sam = sam_cli()
    tree = tmp_path / "tree"
    for part in ("template.yaml", "pyproject.toml"):
        (tree / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / part, tree / part)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "infra" / "layer", tree / "infra" / "layer", ignore=ignore)
    shutil.copytree(ROOT / "layers" / "healthbook" / "healthbook", tree / "layers" / "healthbook" / "healthbook",
                    ignore=ignore)
    function = ROOT / "functions" / "ingest"
    if (function / "app.py").is_file():
        shutil.copytree(function, tree / "functions" / "ingest", ignore=ignore)
    else:  # the handler arrives in its own change; the build only copies it
        (tree / "functions" / "ingest").mkdir(parents=True)
        (tree / "functions" / "ingest" / "app.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    env = sam_env() | {"PYTHON": sys.executable}  # infra/layer/Makefile: any CPython >= 3.11 with pip
    out = tmp_path / "built"
    result = subprocess.run([sam, "build", "--build-dir", str(out), "--parameter-overrides", "Architecture=x86_64"],
                            capture_output=True, text=True, cwd=tree, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    spec = importlib.util.spec_from_file_location("layer_build", ROOT / "infra" / "layer" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.check(out / "HealthbookLayerArm64", "arm64") == []
    assert build.check(out / "HealthbookLayerX8664", "x86_64") == []
    assert (out / "IngestFunction" / "app.py").is_file()
    assert not (out / "IngestFunction" / "python").exists()
    built, _ = decode(str(out / "template.yaml"))
    assert built is not None
    assert props(built, "HealthbookLayerArm64")["ContentUri"] == "HealthbookLayerArm64"
    assert props(built, "IngestFunction")["CodeUri"] == "IngestFunction"


# ---- parameters and conditions ---------------------------------------------------------------------------

def test_parameters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    stage = re.compile(params["Stage"]["AllowedPattern"])
    for good in ("dev", "test", "prod", "dev-an", "test-e2e1"):
        assert stage.fullmatch(good), good
    for bad in ("Prod", "staging", "dev_x", "", "prod-"):
        assert not stage.fullmatch(bad), bad
    # Bucket names: healthbook-<stage>-quarantine-<12-digit account>-<region of up to 14 chars> <= 63.
    assert len("healthbook--quarantine-123456789012-ap-southeast-1") + params["Stage"]["MaxLength"] <= 63
    assert set(params["Architecture"]["AllowedValues"]) == {"arm64", "x86_64"}
    assert params["Architecture"]["Default"] == "arm64"
    assert params["LogRetentionDays"]["Type"] == "Number"
    assert params["IngestMaxConcurrency"]["MinValue"] >= 2
    assert params["IngestMaxConcurrency"]["MaxValue"] <= 1000
    assert {"DEBUG", "INFO", "WARNING", "ERROR"} <= set(params["LogLevel"]["AllowedValues"])


def test_transform_is_sam(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"


# ---- keys ------------------------------------------------------------------------------------------------

def test_data_key_is_symmetric_rotated_and_serves_s3_and_logs(template: dict[str, Any]) -> None:
    key = props(template, "DataKey")
    assert key["EnableKeyRotation"] is True
    assert key.get("KeySpec", "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT"
    services = {}
    for statement in statements(key["KeyPolicy"]):
        principal = statement.get("Principal", {})
        if isinstance(principal, dict) and "Service" in principal:
            service = principal["Service"]
            services[service if isinstance(service, str) else service.get("Fn::Sub")] = statement
    s3 = services["s3.amazonaws.com"]
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= set(as_list(s3["Action"]))
    assert is_ref(s3["Condition"]["StringEquals"]["aws:SourceAccount"], "AWS::AccountId")
    logs = services["logs.${AWS::Region}.amazonaws.com"]
    assert "kms:EncryptionContext:aws:logs:arn" in logs["Condition"]["ArnLike"]
    assert template["Resources"]["DataKey"]["DeletionPolicy"] == "Retain"


def test_receipt_signing_key_is_asymmetric_p256(template: dict[str, Any]) -> None:
    key = props(template, "ReceiptSigningKey")
    assert key["KeySpec"] == "ECC_NIST_P256"
    assert key["KeyUsage"] == "SIGN_VERIFY"


def test_key_aliases_carry_the_stage(template: dict[str, Any]) -> None:
    aliases = {props(template, n)["TargetKeyId"]["Ref"]: props(template, n)["AliasName"]
               for n in resources(template, "AWS::KMS::Alias")}
    assert set(aliases) == {"DataKey", "ReceiptSigningKey"}
    for alias in aliases.values():
        assert "${Stage}" in alias["Fn::Sub"] and alias["Fn::Sub"].startswith("alias/")


# ---- buckets ---------------------------------------------------------------------------------------------

BUCKETS = {"InboxBucket": "inbox", "ReceiptsBucket": "receipts", "QuarantineBucket": "quarantine",
           "ReportsBucket": "reports", "ProjectionsBucket": "projections"}


def bucket_policy(template: dict[str, Any], bucket: str) -> dict[str, Any]:
    found = [p for p in resources(template, "AWS::S3::BucketPolicy").values()
             if is_ref(p["Properties"]["Bucket"], bucket)]
    assert len(found) == 1, f"{bucket} needs exactly one bucket policy"
    return dict(found[0]["Properties"]["PolicyDocument"])


def test_exactly_the_buckets_of_the_design(template: dict[str, Any]) -> None:
    assert set(resources(template, "AWS::S3::Bucket")) == set(BUCKETS)
    for name, role in BUCKETS.items():
        assert props(template, name)["BucketName"] == {
            "Fn::Sub": f"healthbook-${{Stage}}-{role}-${{AWS::AccountId}}-${{AWS::Region}}"}


@pytest.mark.parametrize("bucket", sorted(BUCKETS))
def test_bucket_is_kms_encrypted_private_versioned_and_tls_only(template: dict[str, Any], bucket: str) -> None:
    p = props(template, bucket)
    rules = p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert len(rules) == 1
    assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert is_arn_of(rules[0]["ServerSideEncryptionByDefault"]["KMSMasterKeyID"], "DataKey")
    assert rules[0]["BucketKeyEnabled"] is True
    block = p["PublicAccessBlockConfiguration"]
    assert all(block[k] is True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls",
                                          "RestrictPublicBuckets"))
    assert p["VersioningConfiguration"]["Status"] == "Enabled"
    tls = [s for s in statements(bucket_policy(template, bucket))
           if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(tls) == 1
    deny = tls[0]
    assert deny["Principal"] == "*" and deny["Action"] in ("s3:*", ["s3:*"])
    targets = as_list(deny["Resource"])
    assert any(is_arn_of(t, bucket) for t in targets)
    assert {"Fn::Sub": f"${{{bucket}.Arn}}/*"} in targets


def test_inbox_lifecycle_moves_processed_objects_and_expires_old_versions(template: dict[str, Any]) -> None:
    rules = props(template, "InboxBucket")["LifecycleConfiguration"]["Rules"]
    processed = [r for r in rules if {"Key": "processed", "Value": "true"} in r.get("TagFilters", [])]
    assert len(processed) == 1 and processed[0]["Status"] == "Enabled"
    assert processed[0]["Transitions"]
    assert any("NoncurrentVersionExpiration" in r and r["Status"] == "Enabled" for r in rules)


def test_inbox_notifies_the_queue_for_new_objects_under_inbox(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["InboxBucket"]
    (config,) = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Event"] == "s3:ObjectCreated:*"
    assert is_arn_of(config["Queue"], "IngestQueue")
    assert config["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": "inbox/"}]
    # S3 checks it may send before it saves the configuration: the queue policy must exist first.
    assert "IngestQueuePolicy" in as_list(bucket["DependsOn"])


def test_queue_policy_admits_only_the_inbox_bucket_of_this_account(template: dict[str, Any]) -> None:
    policy = props(template, "IngestQueuePolicy")
    assert policy["Queues"] == [{"Ref": "IngestQueue"}]
    (allow,) = [s for s in statements(policy["PolicyDocument"]) if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert as_list(allow["Action"]) == ["sqs:SendMessage"]
    assert is_arn_of(allow["Resource"], "IngestQueue")
    inbox_name = props(template, "InboxBucket")["BucketName"]["Fn::Sub"]
    assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{inbox_name}"}
    assert is_ref(allow["Condition"]["StringEquals"]["aws:SourceAccount"], "AWS::AccountId")
    # The same name-built ARN in the data key's policy (S3 encrypts the notification with it).
    key_statements = statements(props(template, "DataKey")["KeyPolicy"])
    s3 = next(s for s in key_statements if s.get("Principal") == {"Service": "s3.amazonaws.com"})
    assert s3["Condition"]["ArnLike"]["aws:SourceArn"] == allow["Condition"]["ArnEquals"]["aws:SourceArn"]


def test_facility_isolation_by_principal_tag(template: dict[str, Any]) -> None:
    # Fn::Join, not Fn::Sub with ${!...}: LocalStack's CloudFormation does not understand that escape.
    own_inbox = {"Fn::Join": ["", [{"Fn::GetAtt": ["InboxBucket", "Arn"]}, "/inbox/${aws:PrincipalTag/facility}/*"]]}
    own_receipts = {"Fn::Join": ["", [{"Fn::GetAtt": ["ReceiptsBucket", "Arn"]},
                                      "/receipts/${aws:PrincipalTag/facility}/*"]]}
    tagged = {"Null": {"aws:PrincipalTag/facility": "false"}}

    inbox = statements(bucket_policy(template, "InboxBucket"))
    allow = [s for s in inbox if s["Effect"] == "Allow"]
    assert len(allow) == 1
    assert as_list(allow[0]["Action"]) == ["s3:PutObject"]
    assert allow[0]["Resource"] == own_inbox
    assert allow[0]["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    assert allow[0]["Condition"] == tagged
    deny = [s for s in inbox if s["Effect"] == "Deny" and "NotResource" in s]
    assert len(deny) == 1 and deny[0]["NotResource"] == own_inbox and deny[0]["Condition"] == tagged

    receipts = statements(bucket_policy(template, "ReceiptsBucket"))
    allow = [s for s in receipts if s["Effect"] == "Allow"]
    assert len(allow) == 1
    assert as_list(allow[0]["Action"]) == ["s3:GetObject"]
    assert allow[0]["Resource"] == own_receipts
    assert allow[0]["Condition"] == tagged
    deny = [s for s in receipts if s["Effect"] == "Deny" and "NotResource" in s]
    assert len(deny) == 1 and deny[0]["NotResource"] == own_receipts

    facility = statements(props(template, "FacilityPolicy")["PolicyDocument"])
    by_sid = {s["Sid"]: s for s in facility}
    assert by_sid["UploadUnderOwnInboxPrefix"]["Resource"] == own_inbox
    assert by_sid["ReadOwnReceipts"]["Resource"] == own_receipts
    kms = by_sid["UseTheDataKeyThroughS3Only"]
    assert is_arn_of(kms["Resource"], "DataKey")
    assert kms["Condition"]["StringEquals"]["kms:ViaService"] == {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}
    for statement in facility:
        assert "*" not in as_list(statement["Resource"])
    assert is_ref(template["Outputs"]["FacilityPolicyArn"]["Value"], "FacilityPolicy")


# ---- queues ----------------------------------------------------------------------------------------------

def test_queues(template: dict[str, Any]) -> None:
    assert set(resources(template, "AWS::SQS::Queue")) == {"IngestQueue", "IngestDeadLetterQueue"}
    main, dlq = props(template, "IngestQueue"), props(template, "IngestDeadLetterQueue")
    timeout = props(template, "IngestFunction")["Timeout"]
    assert main["VisibilityTimeout"] >= 6 * timeout
    assert main["RedrivePolicy"]["maxReceiveCount"] >= 3
    assert is_arn_of(main["RedrivePolicy"]["deadLetterTargetArn"], "IngestDeadLetterQueue")
    for queue in (main, dlq):
        assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
        assert is_arn_of(queue["KmsMasterKeyId"], "DataKey")
    # The DLQ accepts redrive from the main queue only (its ARN built from the same name).
    assert dlq["RedriveAllowPolicy"]["sourceQueueArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:" + main["QueueName"]["Fn::Sub"]}]


# ---- tables (docs/data-model.md) -------------------------------------------------------------------------

TABLES = {
    "SubmissionsTable": ("submissions", [("submission_id", "HASH")],
                         {"by-facility-day": [("facility_day", "HASH"), ("received_at", "RANGE")]}),
    "VisitsTable": ("visits", [("visit_id", "HASH"), ("version", "RANGE")],
                    {"by-citizen": [("citizen_key", "HASH"), ("received_at", "RANGE")],
                     "by-status-deadline": [("status_shard", "HASH"), ("deadline_at", "RANGE")]}),
    "FacilitiesTable": ("facilities", [("facility", "HASH")], {}),
    "IdempotencyTable": ("idempotency", [("id", "HASH")], {}),
    "AggregatesTable": ("aggregates", [("scope", "HASH"), ("period", "RANGE")], {}),
}


def _keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def test_exactly_the_tables_of_the_data_model(template: dict[str, Any]) -> None:
    assert set(resources(template, "AWS::DynamoDB::Table")) == set(TABLES)
    doc = (ROOT / "docs" / "data-model.md").read_text(encoding="utf-8")
    for logical, (suffix, keys, indexes) in TABLES.items():
        p = props(template, logical)
        assert p["TableName"] == {"Fn::Sub": f"healthbook-${{Stage}}-{suffix}"}
        assert f"`{suffix}`" in doc
        assert _keys(p["KeySchema"]) == keys
        found = {i["IndexName"]: _keys(i["KeySchema"]) for i in p.get("GlobalSecondaryIndexes", [])}
        assert found == indexes
        for index in indexes:
            assert f"`{index}`" in doc
        key_attributes = {name for name, _ in keys} | {n for schema in indexes.values() for n, _ in schema}
        assert {a["AttributeName"]: a["AttributeType"] for a in p["AttributeDefinitions"]} == dict.fromkeys(
            key_attributes, "S")


@pytest.mark.parametrize("table", sorted(TABLES))
def test_table_is_on_demand_with_pitr_and_kms(template: dict[str, Any], table: str) -> None:
    p = props(template, table)
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    sse = p["SSESpecification"]
    assert sse["SSEEnabled"] is True and sse["SSEType"] == "KMS"
    assert is_arn_of(sse["KMSMasterKeyId"], "DataKey")


def test_status_index_projects_what_the_sweep_reads(template: dict[str, Any]) -> None:
    from healthbook.aws.delivery import STATUS_INDEX, STATUS_INDEX_ATTRIBUTES

    index = {i["IndexName"]: i for i in props(template, "VisitsTable")["GlobalSecondaryIndexes"]}[STATUS_INDEX]
    assert index["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(STATUS_INDEX_ATTRIBUTES)}


def test_idempotency_table_expires_on_expiration(template: dict[str, Any]) -> None:
    assert props(template, "IdempotencyTable")["TimeToLiveSpecification"] == {"AttributeName": "expiration",
                                                                             "Enabled": True}


# ---- the layer and the function ---------------------------------------------------------------------------

def test_one_layer_per_architecture_built_by_the_makefile(template: dict[str, Any]) -> None:
    layers = resources(template, "AWS::Serverless::LayerVersion")
    assert set(layers) == {"HealthbookLayerArm64", "HealthbookLayerX8664"}
    makefile = (ROOT / "infra" / "layer" / "Makefile").read_text(encoding="utf-8")
    for name, arch, condition in (("HealthbookLayerArm64", "arm64", "IsArm64"),
                                  ("HealthbookLayerX8664", "x86_64", "IsX8664")):
        layer = layers[name]
        assert layer["Condition"] == condition
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
        assert layer["Properties"]["CompatibleArchitectures"] == [arch]
        assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": arch,
                                     "ContextPath": "infra/layer"}
        assert f"build-{name}:" in makefile
    conditions = template["Conditions"]
    assert conditions["IsArm64"] == {"Fn::Equals": [{"Ref": "Architecture"}, "arm64"]}
    assert conditions["IsX8664"] == {"Fn::Not": [{"Condition": "IsArm64"}]}
    selected = {"Fn::If": ["IsArm64", {"Ref": "HealthbookLayerArm64"}, {"Ref": "HealthbookLayerX8664"}]}
    assert props(template, "IngestFunction")["Layers"] == [selected]
    assert template["Outputs"]["HealthbookLayerArn"]["Value"] == selected


# function -> (code folder, handler, name suffix)
FUNCTIONS = {"IngestFunction": ("functions/ingest/", "app.lambda_handler", "ingest"),
             "ReconcileFunction": ("functions/delivery/", "app.reconcile_handler", "reconcile"),
             "ProjectFunction": ("functions/delivery/", "app.project_handler", "project"),
             "DeliverFunction": ("functions/delivery/", "app.deliver_handler", "deliver"),
             "SettleFunction": ("functions/delivery/", "app.settle_handler", "settle"),
             "SweepFunction": ("functions/delivery/", "app.sweep_handler", "sweep")}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_is_built_alike_and_its_handler_exists(template: dict[str, Any], function: str) -> None:
    assert set(resources(template, "AWS::Serverless::Function")) == set(FUNCTIONS)
    code, handler, suffix = FUNCTIONS[function]
    p = props(template, function)
    assert (p["CodeUri"], p["Handler"]) == (code, handler)
    assert f"def {handler.removeprefix('app.')}(" in (ROOT / code / "app.py").read_text(encoding="utf-8")
    assert p["FunctionName"] == {"Fn::Sub": f"healthbook-${{Stage}}-{suffix}"}
    assert p["Runtime"] == "python3.13" and p["Tracing"] == "Active"
    assert p["Architectures"] == [{"Ref": "Architecture"}]
    assert template["Resources"][function]["Metadata"] == {"BuildMethod": "makefile", "ContextPath": "infra/layer"}
    assert f"build-{function}" in (ROOT / "infra" / "layer" / "Makefile").read_text(encoding="utf-8")
    log_group = props(template, p["LoggingConfig"]["LogGroup"]["Ref"])
    assert log_group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/healthbook-${{Stage}}-{suffix}"}
    assert is_arn_of(log_group["KmsKeyId"], "DataKey")
    variables = p["Environment"]["Variables"]
    assert variables["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
    assert variables["POWERTOOLS_TRACER_CAPTURE_ERROR"] == "false"


def test_ingest_function(template: dict[str, Any]) -> None:
    p = props(template, "IngestFunction")
    assert p["CodeUri"] == "functions/ingest/"
    assert p["Handler"] == "app.lambda_handler"
    assert p["Runtime"] == "python3.13"
    assert p["Architectures"] == [{"Ref": "Architecture"}]
    assert p["Tracing"] == "Active"
    assert p["FunctionName"] == {"Fn::Sub": "healthbook-${Stage}-ingest"}
    metadata = template["Resources"]["IngestFunction"]["Metadata"]
    assert metadata == {"BuildMethod": "makefile", "ContextPath": "infra/layer"}
    (event,) = p["Events"].values()
    assert event["Type"] == "SQS"
    sqs = event["Properties"]
    assert is_arn_of(sqs["Queue"], "IngestQueue")
    assert sqs["BatchSize"] == 10
    assert sqs["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert sqs["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "IngestMaxConcurrency"}


ENVIRONMENT = {
    "INBOX_BUCKET": {"Ref": "InboxBucket"},
    "RECEIPTS_BUCKET": {"Ref": "ReceiptsBucket"},
    "QUARANTINE_BUCKET": {"Ref": "QuarantineBucket"},
    "SUBMISSIONS_TABLE": {"Ref": "SubmissionsTable"},
    "VISITS_TABLE": {"Ref": "VisitsTable"},
    "FACILITIES_TABLE": {"Ref": "FacilitiesTable"},
    "IDEMPOTENCY_TABLE": {"Ref": "IdempotencyTable"},
    "RECEIPT_KEY_ID": {"Fn::GetAtt": ["ReceiptSigningKey", "Arn"]},
    "TRUST_BUNDLE_PARAMETER": {"Ref": "TrustBundleParameter"},
    "CITIZEN_PEPPER_SECRET": {"Ref": "CitizenPepperSecret"},
    "POWERTOOLS_SERVICE_NAME": "ingest",
    "POWERTOOLS_METRICS_NAMESPACE": "Healthbook",
    "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
    "LOG_LEVEL": {"Ref": "LogLevel"},
}


def test_ingest_environment(template: dict[str, Any]) -> None:
    variables = props(template, "IngestFunction")["Environment"]["Variables"]
    for name, value in ENVIRONMENT.items():
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            assert is_arn_of(variables[name], value["Fn::GetAtt"][0]), name
        else:
            assert variables[name] == value, name
    try:  # the settings the handler reads, when that module is there
        from healthbook.aws.settings import REQUIRED
    except ImportError:
        return
    assert set(REQUIRED) <= set(variables)


def test_trust_bundle_and_pepper(template: dict[str, Any]) -> None:
    parameter = props(template, "TrustBundleParameter")
    assert parameter["Name"] == {"Fn::Sub": "/healthbook/${Stage}/trust-bundle"}
    assert "PLACEHOLDER" in parameter["Value"]
    secret = props(template, "CitizenPepperSecret")
    assert is_arn_of(secret["KmsKeyId"], "DataKey")
    assert secret["GenerateSecretString"]["PasswordLength"] >= 32


def test_function_log_group(template: dict[str, Any]) -> None:
    group = props(template, "IngestLogGroup")
    assert group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/healthbook-${Stage}-ingest"}
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert is_arn_of(group["KmsKeyId"], "DataKey")
    assert props(template, "IngestFunction")["LoggingConfig"]["LogGroup"] == {"Ref": "IngestLogGroup"}


def function_statements(template: dict[str, Any], function: str = "IngestFunction") -> list[dict[str, Any]]:
    found = []
    for policy in props(template, function)["Policies"]:
        if isinstance(policy, dict) and "Statement" in policy:
            found += statements(policy)
    return found


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_policies_name_exact_resources(template: dict[str, Any], function: str) -> None:
    policies = props(template, function)["Policies"]
    for policy in policies:  # managed policies by name: only X-Ray's would do (Tracing adds it anyway)
        if isinstance(policy, str):
            assert policy in {"AWSXRayDaemonWriteAccess", "AWSXrayWriteOnlyAccess"}
        else:
            assert "Statement" in policy, f"SAM policy templates are not used here: {policy}"
    data_resources = set(resources(template, "AWS::S3::Bucket")) | set(resources(template, "AWS::DynamoDB::Table"))
    data_resources |= {"DataKey", "ReceiptSigningKey", "TrustBundleParameter", "CitizenPepperSecret",
                       "VneidCredentialsSecret", "PopulationApiKeySecret", "DeliveryStateMachine", "DeadlineTopic"}
    for statement in function_statements(template, function):
        if statement["Effect"] == "Deny":  # only to narrow what SAM's managed SQS policy grants on "*"
            assert statement["Sid"] == "PollOnlyTheIngestQueue"
            assert is_arn_of(statement["NotResource"], "IngestQueue")
            assert all(a.startswith("sqs:") for a in as_list(statement["Action"]))
            continue
        assert statement["Effect"] == "Allow"
        targets = as_list(statement["Resource"])
        for target in targets:
            assert isinstance(target, dict), f"{statement['Sid']}: literal resource {target!r}"
            assert referenced(target) & data_resources, f"{statement['Sid']}: {target} names no data resource"
        assert "*" not in targets and "NotResource" not in statement
        assert not any(a in {"*", "s3:*", "dynamodb:*", "kms:*"} for a in as_list(statement["Action"]))


def _grants(template: dict[str, Any]) -> dict[str, list[Any]]:
    """action -> resources granted to the function."""
    grants: dict[str, list[Any]] = {}
    for statement in function_statements(template):
        if statement["Effect"] != "Allow":
            continue
        for action in as_list(statement["Action"]):
            grants.setdefault(action, []).extend(as_list(statement["Resource"]))
    return grants


def test_function_gets_what_ingestion_needs(template: dict[str, Any]) -> None:
    grants = _grants(template)
    inbox = {"Fn::Sub": "${InboxBucket.Arn}/inbox/*"}
    for action in ("s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:GetObjectVersionTagging"):
        assert grants[action] == [inbox], action
    assert inbox in grants["s3:PutObjectTagging"] and inbox in grants["s3:PutObjectVersionTagging"]
    assert {"Fn::Sub": "${ReceiptsBucket.Arn}/receipts/*"} in grants["s3:PutObject"]
    assert {"Fn::Sub": "${QuarantineBucket.Arn}/*"} in grants["s3:PutObject"]
    assert not [r for r in grants["s3:PutObject"] if "InboxBucket" in referenced(r)]
    for table in set(TABLES) - {"AggregatesTable"}:
        assert any(is_arn_of(r, table) for r in grants["dynamodb:GetItem"]), table
    # the report counters: added to, never read, by ingestion
    assert [r for r in grants["dynamodb:UpdateItem"] if is_arn_of(r, "AggregatesTable")]
    assert not [r for r in grants["dynamodb:GetItem"] + grants["dynamodb:Query"] if is_arn_of(r, "AggregatesTable")]
    for table in ("SubmissionsTable", "VisitsTable"):
        assert {"Fn::Sub": f"${{{table}.Arn}}/index/*"} in grants["dynamodb:Query"]
    assert [r for r in grants["dynamodb:Scan"] if referenced(r) - {"FacilitiesTable"}] == []
    assert [r for r in grants["dynamodb:DeleteItem"] if not is_arn_of(r, "IdempotencyTable")] == []
    assert all(is_arn_of(r, "ReceiptSigningKey") for r in grants["kms:Sign"] + grants["kms:GetPublicKey"])
    assert all(is_arn_of(r, "DataKey") for r in grants["kms:Decrypt"] + grants["kms:GenerateDataKey"])
    assert referenced(grants["ssm:GetParameter"]) == {"TrustBundleParameter", "AWS::Partition", "AWS::Region",
                                                      "AWS::AccountId"}
    assert grants["secretsmanager:GetSecretValue"] == [{"Ref": "CitizenPepperSecret"}]


# ---- outputs ---------------------------------------------------------------------------------------------

def test_outputs_name_every_bucket_table_queue_key_layer_function_and_policy(template: dict[str, Any]) -> None:
    named = set()
    for output in template["Outputs"].values():
        named |= referenced(output["Value"])
    wanted = set(BUCKETS) | set(TABLES) | {"IngestQueue", "IngestDeadLetterQueue", "DataKey", "ReceiptSigningKey",
                                           "HealthbookLayerArm64", "HealthbookLayerX8664", "IngestFunction",
                                           "FacilityPolicy", "TrustBundleParameter", "CitizenPepperSecret"}
    assert wanted <= named, wanted - named
    # Names the CLI reads (healthbook upload / facility add).
    for key in ("InboxBucketName", "ReceiptsBucketName", "DataKeyArn", "FacilitiesTableName", "FacilityPolicyArn"):
        assert key in template["Outputs"]


def test_every_reference_resolves(template: dict[str, Any]) -> None:
    known = set(template["Resources"]) | set(template["Parameters"])
    pseudo = {"AWS::AccountId", "AWS::Region", "AWS::Partition", "AWS::StackName", "AWS::URLSuffix"}
    assert referenced(template["Resources"]) | referenced(template["Outputs"]) <= known | pseudo


def test_deploy_doc_covers_parameters_environment_and_outputs(template: dict[str, Any]) -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    missing = [f"parameter {name}" for name in template["Parameters"] if f"`{name}`" not in doc]
    variables = props(template, "IngestFunction")["Environment"]["Variables"]
    missing += [f"variable {name}" for name in variables if f"`{name}" not in doc]
    missing += [f"output {name}" for name in template["Outputs"]
                if f"`{name}`" not in doc and f"`{name.removesuffix('Arn').removesuffix('Url')}" not in doc]
    missing += [f"resource {name}" for name in template["Resources"] if f"`{name}`" not in doc]
    assert not missing, missing


# ---- the delivery workflow ------------------------------------------------------------------------------------

def test_delivery_state_machine_is_express_wired_by_substitutions_and_logs_no_data(template: dict[str, Any]) -> None:
    import re

    p = props(template, "DeliveryStateMachine")
    assert p["Type"] == "EXPRESS"  # docs/cost.md: no Standard transitions at $25 per million
    text = (ROOT / p["DefinitionUri"]).read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(p["DefinitionSubstitutions"])
    for name, value in p["DefinitionSubstitutions"].items():
        target = value.get("Fn::GetAtt", [value.get("Ref")])[0]
        assert name.removesuffix("Arn") == target, f"{name} must name {name.removesuffix('Arn')}"
    assert p["Logging"]["IncludeExecutionData"] is False and p["Logging"]["Level"] == "ERROR"


def test_every_error_the_workflow_matches_is_raised_by_the_code(template: dict[str, Any]) -> None:
    from healthbook.reconcile import PopulationUnavailable
    from healthbook.vneid import RetryableDeliveryError

    raised = {PopulationUnavailable.__name__, RetryableDeliveryError.__name__}
    definition = json.loads((ROOT / "infra" / "statemachine" / "delivery.asl.json").read_text(encoding="utf-8"))
    named: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("Retry", []) + node.get("Catch", []):
                named.update(e for e in rule["ErrorEquals"] if not e.startswith(("States.", "Lambda.")))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(definition)
    assert named == raised


def test_sweep_runs_on_the_schedule_and_breaches_raise_the_alarm(template: dict[str, Any]) -> None:
    (event,) = props(template, "SweepFunction")["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == {"Fn::Sub": "rate(${SweepEveryMinutes} minutes)"}
    alarm = props(template, "DeadlineBreachedAlarm")
    assert alarm["MetricName"] == "DeadlineBreached" and alarm["Namespace"] == "Healthbook"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "delivery"}]
    assert alarm["AlarmActions"] == [{"Ref": "DeadlineTopic"}]
    for function in ("SettleFunction", "SweepFunction"):  # both emit the metric, under the alarm's dimension
        assert props(template, function)["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "delivery"


@pytest.mark.parametrize("function", ["IngestFunction", "ReconcileFunction", "DeliverFunction", "SettleFunction",
                                      "SweepFunction"])
def test_every_function_that_changes_what_reports_count_adds_to_the_counters(template: dict[str, Any],
                                                                              function: str) -> None:
    assert props(template, function)["Environment"]["Variables"]["AGGREGATES_TABLE"] == {"Ref": "AggregatesTable"}
    (grant,) = [s for s in function_statements(template, function) if s.get("Sid") == "CountForReports"]
    assert grant["Action"] == "dynamodb:UpdateItem" and is_arn_of(grant["Resource"], "AggregatesTable")
