"""template.yaml: cfn-lint and `sam validate --lint` clean, and the properties the ingestion issue asks for.

The template is read with cfn-lint's decoder (it understands !Ref, !Sub, !GetAtt ... and gives plain
dicts with the long forms: {"Ref": ...}, {"Fn::Sub": ...}). The SAM CLI (aws-sam-cli) lives in its own
virtualenv (.venv-sam) because it pins boto3 and pydantic; its tests skip without it, except under CI.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


# How SAM merges the Globals section into a resource (aws-sam-translator, samtranslator/plugins/globals/globals.py,
# GlobalProperties; the "Globals section of the AWS SAM template" guide): where either side is a scalar or an
# intrinsic function ({"Ref": ...}, {"Fn::...": ...}, {"Condition": ...}), or the two differ in type, the resource's
# value wins; two maps merge key by key, recursively (Environment.Variables name by name); two lists are joined,
# Globals' items first (Layers), except the paths below, whose list the resource's replaces (as 1.115 does; older
# releases joined Architectures too: test_globals_hold_only_what_every_function_shares makes both readings agree by
# forbidding a function to repeat a list that Globals sets).
SAM_LISTS_REPLACED = {"Function.Architectures"}


def _sam_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if not isinstance(value, dict):
        return "scalar"
    intrinsic = len(value) == 1 and any(key in ("Ref", "Condition") or key.startswith("Fn::") for key in value)
    return "scalar" if intrinsic else "map"


def sam_merge(global_value: Any, local_value: Any, path: str) -> Any:
    kind = _sam_kind(global_value)
    if kind != _sam_kind(local_value) or kind == "scalar":
        return local_value
    if kind == "list":
        return local_value if path in SAM_LISTS_REPLACED else [*global_value, *local_value]
    merged = dict(global_value)
    for key, value in local_value.items():
        merged[key] = sam_merge(merged[key], value, f"{path}.{key}") if key in merged else value
    return merged


def function_props(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's properties as SAM deploys them: its own merged over the template's Globals.Function."""
    merged: dict[str, Any] = sam_merge(template.get("Globals", {}).get("Function", {}), props(template, name),
                                       "Function")
    return merged


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


@pytest.mark.network  # the SAM CLI's own venv (make sam)
def test_sam_validate_lint() -> None:
    result = subprocess.run([sam_cli(), "validate", "--lint", "--template", str(TEMPLATE), "--region", REGION],
                            capture_output=True, text=True, cwd=ROOT, env=sam_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.network  # the SAM CLI's own venv (make sam) and the package index
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
           "ReportsBucket": "reports", "ProjectionsBucket": "projections", "ImportsBucket": "imports"}


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


def test_the_citizen_index_projects_keys_only(template: dict[str, Any]) -> None:
    indexes = {i["IndexName"]: i for i in props(template, "VisitsTable")["GlobalSecondaryIndexes"]}
    # nothing reads the records through it; ALL doubled the write units of every visit write (docs/cost.md)
    assert indexes["by-citizen"]["Projection"] == {"ProjectionType": "KEYS_ONLY"}


def test_the_tables_kept_for_ever_take_the_infrequent_access_class_only_when_asked(template: dict[str, Any]) -> None:
    """Storage outgrows the writes of the visits and submissions tables within months (docs/cost.md): the operators
    switch their class by a parameter; the default, STANDARD, leaves the property out (what every emulator knows)."""
    parameter = template["Parameters"]["KeptTablesClass"]
    assert parameter["Default"] == "STANDARD"
    assert set(parameter["AllowedValues"]) == {"STANDARD", "STANDARD_INFREQUENT_ACCESS"}
    assert template["Conditions"]["KeptTablesInfrequentAccess"] == {
        "Fn::Equals": [{"Ref": "KeptTablesClass"}, "STANDARD_INFREQUENT_ACCESS"]}
    classes = {name: r["Properties"].get("TableClass") for name, r in template["Resources"].items()
               if r["Type"] == "AWS::DynamoDB::Table"}
    switched = {"Fn::If": ["KeptTablesInfrequentAccess", "STANDARD_INFREQUENT_ACCESS", {"Ref": "AWS::NoValue"}]}
    assert {name for name, table_class in classes.items() if table_class == switched} == {"VisitsTable",
                                                                                      "SubmissionsTable"}
    assert all(table_class in (None, switched) for table_class in classes.values())


def test_the_projections_bucket_is_kept_and_no_one_writes_it_any_more(template: dict[str, Any]) -> None:
    """It holds the entries delivered before Deliver built them in memory (docs/deploy.md): an update keeps it and
    its objects for audit until they expire, and nothing in the stack may write it (or even name it) any more."""
    bucket = template["Resources"]["ProjectionsBucket"]
    (rule,) = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert (rule["Status"], rule["ExpirationInDays"]) == ("Enabled", 400)
    naming = {name for name, resource in template["Resources"].items()
              if "ProjectionsBucket" in referenced(resource) or any(
                  isinstance(value, str) and "-projections-" in value for value in walk(resource))}
    assert naming == {"ProjectionsBucket", "ProjectionsBucketPolicy"}
    policy = bucket_policy(template, "ProjectionsBucket")
    assert [s["Effect"] for s in statements(policy)] == ["Deny"]  # TLS only; it grants nothing


def test_inbox_lifecycle_archives_old_objects_and_expires_old_versions(template: dict[str, Any]) -> None:
    rules = props(template, "InboxBucket")["LifecycleConfiguration"]["Rules"]
    archived = [r for r in rules if r.get("Transitions")]
    assert len(archived) == 1 and archived[0]["Status"] == "Enabled" and archived[0]["Prefix"] == "inbox/"
    assert "TagFilters" not in archived[0]  # by age: no tag is written per file (docs/cost.md)
    assert archived[0]["ObjectSizeGreaterThan"] == 131071
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

@pytest.mark.parametrize(("queue", "dead_letters", "consumer"), [
    ("IngestQueue", "IngestDeadLetterQueue", "IngestFunction"),
    ("OutboxQueue", "OutboxDeadLetterQueue", "SweepFunction")])
def test_queues(template: dict[str, Any], queue: str, dead_letters: str, consumer: str) -> None:
    assert set(resources(template, "AWS::SQS::Queue")) == {"IngestQueue", "IngestDeadLetterQueue", "OutboxQueue",
                                                           "OutboxDeadLetterQueue"}
    main, dlq = props(template, queue), props(template, dead_letters)
    timeout = function_props(template, consumer)["Timeout"]
    # the ingest queue: 6 times the function's timeout, as AWS advises for an event source; the outbox, read by
    # the sweep itself, longer than a run, so that a list is never taken twice at once
    assert main["VisibilityTimeout"] >= (6 if queue == "IngestQueue" else 1) * timeout
    assert main["RedrivePolicy"]["maxReceiveCount"] >= 3
    assert is_arn_of(main["RedrivePolicy"]["deadLetterTargetArn"], dead_letters)
    for one in (main, dlq):
        assert one["MessageRetentionPeriod"] == 14 * 24 * 3600
        assert is_arn_of(one["KmsMasterKeyId"], "DataKey")
    # The DLQ accepts redrive from the main queue only (its ARN built from the same name).
    assert dlq["RedriveAllowPolicy"]["sourceQueueArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:" + main["QueueName"]["Fn::Sub"]}]


def test_the_outbox_hides_its_lists_for_the_visits_lease(template: dict[str, Any]) -> None:
    """A list comes back to the sweep only once the fast path had the visits' lease to deliver them (SQS delays
    a message at most 15 minutes: the lease cannot be longer)."""
    assert props(template, "OutboxQueue")["DelaySeconds"] == {"Ref": "LeaseSeconds"}
    assert template["Parameters"]["LeaseSeconds"]["MaxValue"] <= 900
    for function in ("IngestFunction", "SweepFunction"):
        assert function_props(template, function)["Environment"]["Variables"]["OUTBOX_QUEUE_URL"] == {
            "Ref": "OutboxQueue"}
    sent = [s for s in function_statements(template, "IngestFunction") if s.get("Sid") == "ListVisitsInTheOutbox"]
    assert [as_list(s["Action"]) for s in sent] == [["sqs:SendMessage"]]
    read = [s for s in function_statements(template, "SweepFunction") if s.get("Sid") == "ReadTheOutbox"]
    assert [sorted(as_list(s["Action"])) for s in read] == [
        ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"]]
    assert all(is_arn_of(r, "OutboxQueue") for s in sent + read for r in as_list(s["Resource"]))


# ---- tables (docs/data-model.md) -------------------------------------------------------------------------

TABLES = {
    "SubmissionsTable": ("submissions", [("submission_id", "HASH")],
                         {"by-facility-day": [("facility_day", "HASH"), ("received_at", "RANGE")],
                          "by-facility-month": [("facility_month", "HASH"), ("received_at", "RANGE")]}),
    "VisitsTable": ("visits", [("visit_id", "HASH"), ("version", "RANGE")],
                    {"by-citizen": [("citizen_key", "HASH"), ("received_at", "RANGE")],
                     "by-status-deadline": [("status_shard", "HASH"), ("deadline_at", "RANGE")],
                     "by-facility-delivered": [("delivered_month", "HASH"), ("delivered_at", "RANGE")]}),
    "FacilitiesTable": ("facilities", [("facility", "HASH")], {}),
    "IdempotencyTable": ("idempotency", [("id", "HASH")], {}),
    "AggregatesTable": ("aggregates", [("scope", "HASH"), ("period", "RANGE")], {}),
    "PortalTable": ("portal", [("pk", "HASH")], {}),
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
    from healthbook_dev.template import deployed_resources

    p = props(template, table)
    assert deployed_resources()[table]["Properties"]["BillingMode"] == "PAY_PER_REQUEST"  # at the defaults
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    sse = p["SSESpecification"]
    assert sse["SSEEnabled"] is True and sse["SSEType"] == "KMS"
    assert is_arn_of(sse["KMSMasterKeyId"], "DataKey")


# TablesCapacity PROVISIONED switches these; the aggregates table stays on demand (the reports read its markers in
# bursts of minutes that auto scaling, following in steps of minutes, would throttle), and so do the small ones.
PROVISIONED_TABLES = {"VisitsTable", "SubmissionsTable", "IdempotencyTable"}


def test_no_auto_scaling_and_no_capacity_on_demand() -> None:
    from healthbook_dev.template import deployed_resources

    deployed = deployed_resources()
    assert not [name for name, r in deployed.items() if r["Type"].startswith("AWS::ApplicationAutoScaling::")]
    assert "ProvisionedThroughput" not in json.dumps(deployed)


def test_provisioned_tables_scale_reads_and_writes_of_every_table_and_index() -> None:
    """With TablesCapacity PROVISIONED each table and index of the provisioned tables is created at its mapping
    floor, and auto scaling holds its reads and its writes between floor and ceiling at the target utilisation
    (an index left without scaling would throttle its table's writes); only an index with no ceiling, which
    nothing reads or writes, keeps its fixed floor."""
    from healthbook_dev.template import deployed_resources, template_document, template_resources

    deployed = deployed_resources({"TablesCapacity": "PROVISIONED"})
    mapping = template_document()["Mappings"]["ProvisionedCapacity"]
    targets = {name: r["Properties"] for name, r in deployed.items()
               if r["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget"}
    policies = {name: r["Properties"] for name, r in deployed.items()
                if r["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"}
    assert {t for t in TABLES if deployed[t]["Properties"]["BillingMode"] == "PROVISIONED"} == PROVISIONED_TABLES

    def mapping_key(throughput: dict[str, Any]) -> str:  # as written: !If [ProvisionedTables, {...FindInMap}, ...]
        return str(throughput["Fn::If"][1]["WriteCapacityUnits"]["Fn::FindInMap"][1])

    checked: set[str] = set()
    keys: set[str] = set()
    for table in sorted(PROVISIONED_TABLES):
        written, p = template_resources()[table]["Properties"], deployed[table]["Properties"]
        indexes = zip(written.get("GlobalSecondaryIndexes", []), p.get("GlobalSecondaryIndexes", []), strict=True)
        entities = [(f"table/${{{table}}}", "table", written, p)] + [
            (f"table/${{{table}}}/index/{w['IndexName']}", "index", w, d) for w, d in indexes]
        for resource_id, kind, as_written, as_deployed in entities:
            key = mapping_key(as_written["ProvisionedThroughput"])
            keys.add(key)
            capacity = mapping[key]
            for dimension in ("Write", "Read"):
                floor = capacity[f"{dimension}Min"]
                assert as_deployed["ProvisionedThroughput"][f"{dimension}CapacityUnits"] == floor, resource_id
                scaling = [name for name, t in targets.items()
                           if t["ResourceId"] == {"Fn::Sub": resource_id}
                           and t["ScalableDimension"] == f"dynamodb:{kind}:{dimension}CapacityUnits"]
                if f"{dimension}Max" not in capacity:
                    assert not scaling, resource_id
                    continue
                (target,) = scaling
                checked.add(target)
                t = targets[target]
                assert t["ServiceNamespace"] == "dynamodb" and "RoleARN" not in t  # the service-linked role
                assert (t["MinCapacity"], t["MaxCapacity"]) == (floor, capacity[f"{dimension}Max"]), target
                assert 1 <= floor < t["MaxCapacity"]
                for action in t.get("ScheduledActions", []):
                    assert floor <= action["ScalableTargetAction"]["MinCapacity"] <= t["MaxCapacity"], target
                    assert action["Timezone"] == "Asia/Ho_Chi_Minh"
                (policy,) = [p for p in policies.values() if p["ScalingTargetId"] == {"Ref": target}]
                assert policy["PolicyType"] == "TargetTrackingScaling"
                tracking = policy["TargetTrackingScalingPolicyConfiguration"]
                assert tracking["TargetValue"] == {"Ref": "ProvisionedTargetUtilisation"}
                assert tracking["PredefinedMetricSpecification"] == {
                    "PredefinedMetricType": f"DynamoDB{dimension}CapacityUtilization"}
    assert checked == set(targets) and len(policies) == len(targets)
    assert keys == set(mapping)


def test_status_index_projects_what_the_sweep_reads(template: dict[str, Any]) -> None:
    from healthbook.aws.delivery import STATUS_INDEX, STATUS_INDEX_ATTRIBUTES

    index = {i["IndexName"]: i for i in props(template, "VisitsTable")["GlobalSecondaryIndexes"]}[STATUS_INDEX]
    assert index["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(STATUS_INDEX_ATTRIBUTES)}


def test_idempotency_table_expires_on_expiration(template: dict[str, Any]) -> None:
    assert props(template, "IdempotencyTable")["TimeToLiveSpecification"] == {"AttributeName": "expiration",
                                                                             "Enabled": True}


def test_the_sandbox_creates_every_table_as_the_template_defines_it(template: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The moto sandbox of the tests and `healthbook demo` (healthbook_dev.aws.sandbox) builds its tables from this
    template: every one, under the variable the functions name it by, with the same keys, attribute definitions,
    indexes (keys and projections), billing mode and TTL."""
    import boto3
    from healthbook_dev.aws.sandbox import NAMES, create_tables
    from healthbook_dev.aws.sandbox import TABLES as SANDBOX_TABLES
    from healthbook_dev.template import as_deployed
    from moto import mock_aws

    def attributes(table: dict[str, Any]) -> dict[str, str]:
        return {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}

    def indexes(table: dict[str, Any], kind: str = "Global") -> dict[str, tuple[Any, Any]]:
        return {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table.get(f"{kind}SecondaryIndexes", [])}

    assert set(SANDBOX_TABLES.values()) == set(resources(template, "AWS::DynamoDB::Table")) == set(TABLES)
    assert set(SANDBOX_TABLES) <= set(NAMES)
    for function in FUNCTIONS:
        for variable, value in function_props(template, function)["Environment"]["Variables"].items():
            if isinstance(value, dict) and value.get("Ref") in TABLES:
                assert SANDBOX_TABLES.get(variable) == value["Ref"], f"{function}: {variable} names {value['Ref']}"
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_tables(ddb, NAMES)
        assert sorted(ddb.list_tables()["TableNames"]) == sorted(NAMES[variable] for variable in SANDBOX_TABLES)
        for variable, logical in SANDBOX_TABLES.items():
            declared, name = as_deployed(props(template, logical)), NAMES[variable]  # at the defaults
            created = ddb.describe_table(TableName=name)["Table"]
            assert created["KeySchema"] == declared["KeySchema"], logical
            assert attributes(created) == attributes(declared), logical
            assert indexes(created) == indexes(declared), logical
            assert indexes(created, "Local") == indexes(declared, "Local"), logical
            assert created["BillingModeSummary"]["BillingMode"] == declared["BillingMode"], logical
            ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            wanted = declared.get("TimeToLiveSpecification")
            assert ttl == ({"TimeToLiveStatus": "ENABLED", "AttributeName": wanted["AttributeName"]} if wanted
                           else {"TimeToLiveStatus": "DISABLED"}), logical


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
    assert function_props(template, "IngestFunction")["Layers"] == [selected]
    assert template["Outputs"]["HealthbookLayerArn"]["Value"] == selected


# function -> (code folder, handler, name suffix)
FUNCTIONS = {"IngestFunction": ("functions/ingest/", "app.lambda_handler", "ingest"),
             "DeliverFunction": ("functions/delivery/", "app.deliver_handler", "deliver"),
             "SettleFunction": ("functions/delivery/", "app.settle_handler", "settle"),
             "SweepFunction": ("functions/delivery/", "app.sweep_handler", "sweep"),
             "ReportFunction": ("functions/report/", "app.lambda_handler", "report"),
             "PortalFunction": ("functions/portal/", "app.lambda_handler", "portal"),
             "EnrolmentPrepareFunction": ("functions/enrolment/", "app.prepare_handler", "enrolment-prepare"),
             "EnrolmentBatchFunction": ("functions/enrolment/", "app.batch_handler", "enrolment-batch"),
             "EnrolmentSummariseFunction": ("functions/enrolment/", "app.summarise_handler", "enrolment-summarise")}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_is_built_alike_and_its_handler_exists(template: dict[str, Any], function: str) -> None:
    assert set(resources(template, "AWS::Serverless::Function")) == set(FUNCTIONS)
    code, handler, suffix = FUNCTIONS[function]
    p = function_props(template, function)
    assert (p["CodeUri"], p["Handler"]) == (code, handler)
    from healthbook_dev.aws.sandbox import load_function

    module = load_function(code.rstrip("/").split("/")[-1])  # the handler module as Lambda imports it
    assert callable(getattr(module, handler.removeprefix("app."), None)), handler
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

# ---- Globals: what every function shares, merged into each the way SAM merges it (issue 14) --------------------

# Each function's properties as deployed, frozen from template.yaml as it was before it had a Globals section:
# whatever moves between a function and Globals, function_props must still give exactly this. Policies and Events
# are left out: SAM takes neither from Globals. Change this only with a deliberate change to a function.
_BEFORE_SHARED = {
    "Runtime": "python3.13", "Architectures": [{"Ref": "Architecture"}], "Tracing": "Active",
    "KmsKeyArn": {"Fn::GetAtt": ["DataKey", "Arn"]},
    "Layers": [{"Fn::If": ["IsArm64", {"Ref": "HealthbookLayerArm64"}, {"Ref": "HealthbookLayerX8664"}]}],
}
_BEFORE_VARIABLES = {
    "STAGE": {"Ref": "Stage"}, "POWERTOOLS_METRICS_NAMESPACE": "Healthbook",
    "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"}, "LOG_LEVEL": {"Ref": "LogLevel"},
    "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false", "POWERTOOLS_TRACER_CAPTURE_ERROR": "false",
}
_BEFORE_DELIVERY_VARIABLES = {
    **_BEFORE_VARIABLES, "POWERTOOLS_SERVICE_NAME": "delivery", "VISITS_TABLE": {"Ref": "VisitsTable"},
    "AGGREGATES_TABLE": {"Ref": "AggregatesTable"}, "DEADLINE_SECONDS": {"Ref": "DeadlineSeconds"},
    "SAFETY_MARGIN_SECONDS": {"Ref": "SafetyMarginSeconds"}, "LEASE_SECONDS": {"Ref": "LeaseSeconds"},
    "RETRY_BASE_SECONDS": {"Ref": "RetryBaseSeconds"}, "RETRY_MAX_SECONDS": {"Ref": "RetryMaxSeconds"},
}
# issue 17 (cost): the three task functions run once per visit at 256 MB, logging WARNING and above by default.
_DELIVERY_TASK_VARIABLES = {**_BEFORE_DELIVERY_VARIABLES, "POWERTOOLS_LOG_LEVEL": {"Ref": "DeliveryLogLevel"},
                            "LOG_LEVEL": {"Ref": "DeliveryLogLevel"}}
FUNCTIONS_BEFORE_GLOBALS: dict[str, dict[str, Any]] = {
    "IngestFunction": {
        **_BEFORE_SHARED, "FunctionName": {"Fn::Sub": "healthbook-${Stage}-ingest"},
        "Description": "Validates, verifies and stores uploaded claim files; signs a receipt for each.",
        "CodeUri": "functions/ingest/", "Handler": "app.lambda_handler", "MemorySize": 768, "Timeout": 120,  # issue 17
        "LoggingConfig": {"LogGroup": {"Ref": "IngestLogGroup"}},
        "Environment": {"Variables": {
            **_BEFORE_VARIABLES, "POWERTOOLS_SERVICE_NAME": "ingest",
            "INBOX_BUCKET": {"Ref": "InboxBucket"}, "RECEIPTS_BUCKET": {"Ref": "ReceiptsBucket"},
            "QUARANTINE_BUCKET": {"Ref": "QuarantineBucket"}, "SUBMISSIONS_TABLE": {"Ref": "SubmissionsTable"},
            "VISITS_TABLE": {"Ref": "VisitsTable"}, "FACILITIES_TABLE": {"Ref": "FacilitiesTable"},
            "IDEMPOTENCY_TABLE": {"Ref": "IdempotencyTable"},
            "RECEIPT_KEY_ID": {"Fn::GetAtt": ["ReceiptSigningKey", "Arn"]},
            "TRUST_BUNDLE_PARAMETER": {"Ref": "TrustBundleParameter"},
            "CITIZEN_PEPPER_SECRET": {"Ref": "CitizenPepperSecret"},  # issue 17: no AGGREGATES_TABLE, no counter
            "DELIVERY_STATE_MACHINE_ARN": {"Ref": "DeliveryStateMachine"},
            "INGEST_QUEUE_URL": {"Ref": "IngestQueue"},  # issue 17: postponed messages sent again at once
            "OUTBOX_QUEUE_URL": {"Ref": "OutboxQueue"},  # issue 17: each window's visits listed before stored
            "VISIT_WRITERS": 8,  # issue 17: a file's visits written 8 at a time
            "RECORD_WRITERS": 4,  # issue 17: a window's files recorded 4 at a time
            "MAX_VISITS_PER_FILE": {"Ref": "MaxVisitsPerFile"},  # issue 17, after the globals
            "DEADLINE_SECONDS": {"Ref": "DeadlineSeconds"}, "SAFETY_MARGIN_SECONDS": {"Ref": "SafetyMarginSeconds"},
            "LEASE_SECONDS": {"Ref": "LeaseSeconds"}}},
    },
    # issue 17: the project step went; Deliver builds the entry itself and reads no projections bucket. And the
    # reconcile step went: Deliver matches the citizen itself (one invocation and one read of the visit).
    "DeliverFunction": {
        **_BEFORE_SHARED, "FunctionName": {"Fn::Sub": "healthbook-${Stage}-deliver"},
        "Description": "Delivery step - matches the citizen against the population database, builds the "
                       "health-book entry (QĐ 1332) and PUTs it to VNeID (one attempt; the workflow retries).",
        "CodeUri": "functions/delivery/", "Handler": "app.deliver_handler", "MemorySize": 256, "Timeout": 30,
        "LoggingConfig": {"LogGroup": {"Ref": "DeliverFunctionLogGroup"}},
        "Environment": {"Variables": {
            **_DELIVERY_TASK_VARIABLES, "CITIZEN_PEPPER_SECRET": {"Ref": "CitizenPepperSecret"},
            "POPULATION_URL": {"Ref": "PopulationBaseUrl"},
            "POPULATION_API_KEY_SECRET": {"Ref": "PopulationApiKeySecret"}, "VNEID_URL": {"Ref": "VneidBaseUrl"},
            "VNEID_SECRET": {"Ref": "VneidCredentialsSecret"}}},
    },
    "SettleFunction": {
        **_BEFORE_SHARED, "FunctionName": {"Fn::Sub": "healthbook-${Stage}-settle"},
        "Description": "Delivery Catch path - retry later, or DEADLINE_BREACHED at the cutoff; and the execution "
                       "summary.",
        "CodeUri": "functions/delivery/", "Handler": "app.settle_handler", "MemorySize": 256, "Timeout": 30,
        "LoggingConfig": {"LogGroup": {"Ref": "SettleFunctionLogGroup"}},
        "Environment": {"Variables": {**_DELIVERY_TASK_VARIABLES}},
    },
    "SweepFunction": {
        **_BEFORE_SHARED, "FunctionName": {"Fn::Sub": "healthbook-${Stage}-sweep"},
        "Description": "Every few minutes - restarts due deliveries, backstops the deadline.",
        "CodeUri": "functions/delivery/", "Handler": "app.sweep_handler", "MemorySize": 512, "Timeout": 120,
        "LoggingConfig": {"LogGroup": {"Ref": "SweepFunctionLogGroup"}},
        "Environment": {"Variables": {
            **_BEFORE_DELIVERY_VARIABLES, "DELIVERY_STATE_MACHINE_ARN": {"Ref": "DeliveryStateMachine"},
            "DEADLINE_TOPIC_ARN": {"Ref": "DeadlineTopic"},
            "OUTBOX_QUEUE_URL": {"Ref": "OutboxQueue"}}},  # issue 17: the lists of visits it indexes if stranded
    },
    "ReportFunction": {
        **_BEFORE_SHARED, "FunctionName": {"Fn::Sub": "healthbook-${Stage}-report"},
        "Description": "Builds the daily SLA, monthly and six-monthly reports from the aggregates into the reports "
                       "bucket.",
        "CodeUri": "functions/report/", "Handler": "app.lambda_handler", "MemorySize": 1769, "Timeout": 900,
        "LoggingConfig": {"LogGroup": {"Ref": "ReportFunctionLogGroup"}},
        "Environment": {"Variables": {
            **_BEFORE_VARIABLES, "POWERTOOLS_SERVICE_NAME": "report", "AGGREGATES_TABLE": {"Ref": "AggregatesTable"},
            # issue 17: files and deliveries counted from their items
            "SUBMISSIONS_TABLE": {"Ref": "SubmissionsTable"}, "VISITS_TABLE": {"Ref": "VisitsTable"},
            "FACILITIES_TABLE": {"Ref": "FacilitiesTable"}, "REPORTS_BUCKET": {"Ref": "ReportsBucket"}}},
    },
}
NOT_FROM_GLOBALS = ("Policies", "Events")  # SAM rejects them in Globals (with FunctionName and Role)


def _deployed(template: dict[str, Any], function: str) -> dict[str, Any]:
    return {k: v for k, v in function_props(template, function).items() if k not in NOT_FROM_GLOBALS}


# Functions added since have no "before": test_every_function_is_built_alike_and_its_handler_exists covers them.
FUNCTIONS_SINCE_GLOBALS = {"PortalFunction", "EnrolmentPrepareFunction", "EnrolmentBatchFunction",
                           "EnrolmentSummariseFunction"}


@pytest.mark.parametrize("function", sorted(FUNCTIONS_BEFORE_GLOBALS))
def test_globals_keep_every_function_as_it_was(template: dict[str, Any], function: str) -> None:
    """The proof that Globals changed nothing deployed: each function, merged the way SAM merges, is what it was."""
    functions = set(resources(template, "AWS::Serverless::Function"))
    assert functions == set(FUNCTIONS_BEFORE_GLOBALS) | FUNCTIONS_SINCE_GLOBALS
    assert _deployed(template, function) == FUNCTIONS_BEFORE_GLOBALS[function]


# Variables every function has, with one value, that stay with each function all the same: they name a resource,
# and a function's resources are read beside the policy statements that grant them.
SHARED_BUT_OWN = {"AGGREGATES_TABLE"}


def test_globals_hold_only_what_every_function_shares(template: dict[str, Any]) -> None:
    """Globals hold the common settings and the functions only what differs: a property or variable that all
    seven set alike belongs in Globals, and a function restates nothing Globals already says."""
    assert set(template["Globals"]) == {"Function"}
    shared = template["Globals"]["Function"]
    assert not set(shared) & {*NOT_FROM_GLOBALS, "FunctionName", "Role"}
    functions = [props(template, name) for name in FUNCTIONS]
    for name, own in zip(FUNCTIONS, functions, strict=True):
        for key, value in own.items():
            if key in shared and key != "Environment":
                # Lists: older aws-sam-translator releases join Architectures, newer ones replace it; never both.
                assert not isinstance(value, list), f"{name} sets {key}, which Globals sets: SAM would join them"
                assert value != shared[key], f"{name} restates Globals' {key}"
        for variable, value in own.get("Environment", {}).get("Variables", {}).items():
            assert shared["Environment"]["Variables"].get(variable) != value, f"{name} restates Globals' {variable}"
    for key in set.intersection(*(set(p) for p in functions)) - {"Environment"}:
        assert len({json.dumps(p[key], sort_keys=True) for p in functions}) > 1, f"all functions set {key} alike"
    variables = [p.get("Environment", {}).get("Variables", {}) for p in functions]
    for variable in set.intersection(*(set(v) for v in variables)) - SHARED_BUT_OWN:
        assert len({json.dumps(v[variable], sort_keys=True) for v in variables}) > 1, f"all functions set {variable}"


def _sam_python() -> str:
    """The interpreter beside the SAM CLI test_sam_validate_lint runs: its virtualenv has aws-sam-translator."""
    python = Path(sam_cli()).resolve().parent / "python"
    probe = [str(python), "-c", "import samtranslator"]
    if not python.is_file() or subprocess.run(probe, capture_output=True, timeout=60).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs aws-sam-translator beside {sam_cli()}")
        pytest.skip("aws-sam-translator is not beside the SAM CLI")
    return str(python)


SAM_MERGE = """
import json, sys
from samtranslator.plugins.globals.globals import Globals
from samtranslator.yaml_helper import yaml_parse
template = yaml_parse(open(sys.argv[1], encoding="utf-8").read())
merged = Globals(template)
print(json.dumps({name: merged.merge(r["Type"], r["Properties"], name) for name, r in template["Resources"].items()
                  if r["Type"] == "AWS::Serverless::Function"}))
"""


@pytest.mark.network  # the SAM CLI's own venv (make sam)
def test_sam_itself_merges_globals_into_what_the_functions_were(template: dict[str, Any]) -> None:
    """The same proof with SAM's own merge (aws-sam-translator, as `sam build` and CloudFormation's transform run it),
    which also checks that function_props reads SAM's rules right."""
    result = subprocess.run([_sam_python(), "-c", SAM_MERGE, str(TEMPLATE)], capture_output=True, text=True,
                            timeout=120, env=sam_env())
    assert result.returncode == 0, result.stderr[-4000:]
    merged = json.loads(result.stdout)
    assert set(merged) == set(FUNCTIONS_BEFORE_GLOBALS) | FUNCTIONS_SINCE_GLOBALS
    for name, properties in merged.items():
        if name in FUNCTIONS_SINCE_GLOBALS:
            assert properties["Runtime"] == "python3.13" and properties["Tracing"] == "Active", name
            continue
        deployed = {k: v for k, v in properties.items() if k not in NOT_FROM_GLOBALS}
        assert deployed == FUNCTIONS_BEFORE_GLOBALS[name], name
        assert properties == function_props(template, name), name


def test_ingest_function(template: dict[str, Any]) -> None:
    p = function_props(template, "IngestFunction")
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
    assert sqs["BatchSize"] == {"Ref": "IngestBatchSize"}
    assert template["Parameters"]["IngestBatchSize"]["Default"] == 50  # 50 small files, one kms:Sign
    assert template["Parameters"]["IngestBatchSize"]["MaxValue"] <= 10_000
    assert sqs["MaximumBatchingWindowInSeconds"] == 5  # batches fill at low rates: one kms:Sign per batch
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
    variables = function_props(template, "IngestFunction")["Environment"]["Variables"]
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
                       "VneidCredentialsSecret", "PopulationApiKeySecret", "DeliveryStateMachine", "DeadlineTopic",
                       "PortalTokenKeySecret", "IngestQueue", "OutboxQueue"}
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


def test_the_portal_api_reaches_only_its_table_the_portal_folders_and_receipts(template: dict[str, Any]) -> None:
    grants: dict[str, list[Any]] = {}
    for statement in function_statements(template, "PortalFunction"):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            grants.setdefault(action, []).extend(as_list(statement["Resource"]))
    assert grants.pop("s3:PutObject") == [{"Fn::Sub": "${InboxBucket.Arn}/inbox/*/portal/*"}]
    assert sorted(map(str, grants.pop("s3:GetObject"))) == sorted(map(str, [
        {"Fn::Sub": "${InboxBucket.Arn}/inbox/*/portal/*"}, {"Fn::Sub": "${ReceiptsBucket.Arn}/receipts/*"}]))
    assert all(is_arn_of(r, "PortalTable") for action in ("dynamodb:GetItem", "dynamodb:UpdateItem")
               for r in grants.pop(action))
    assert set(grants) == {"s3:ListBucket", "kms:Decrypt", "kms:GenerateDataKey", "secretsmanager:GetSecretValue"}
    assert grants["secretsmanager:GetSecretValue"] == [{"Ref": "PortalTokenKeySecret"}]
    api = props(template, "PortalApi")
    assert api["EndpointConfiguration"] == {"Type": "REGIONAL"} and api["TracingEnabled"] is True
    assert {"ThrottlingRateLimit", "ThrottlingBurstLimit"} <= set(api["MethodSettings"][0])
    assert "$context.identity.sourceIp" in api["AccessLogSetting"]["Format"]
    assert not re.search(r"\$(input|context\.authorizer|method\.request)", api["AccessLogSetting"]["Format"])
    for kind in ("REQUEST_TOO_LARGE", "THROTTLED", "DEFAULT_4XX", "DEFAULT_5XX"):
        envelope = json.loads(api["GatewayResponses"][kind]["ResponseTemplates"]["application/json"])
        assert envelope["maKetQua"].isdigit() and envelope["thongDiep"], kind
    assert "taoLienKetTaiLen" in api["GatewayResponses"]["REQUEST_TOO_LARGE"]["ResponseTemplates"]["application/json"]
    event = function_props(template, "PortalFunction")["Events"]["Portal"]["Properties"]
    assert event == {"RestApiId": {"Ref": "PortalApi"}, "Path": "/api/{proxy+}", "Method": "POST"}


def test_function_gets_what_ingestion_needs(template: dict[str, Any]) -> None:
    grants = _grants(template)
    inbox = {"Fn::Sub": "${InboxBucket.Arn}/inbox/*"}
    for action in ("s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:GetObjectVersionTagging"):
        assert grants[action] == [inbox], action
    assert inbox not in grants.get("s3:PutObjectTagging", []) and "s3:PutObjectVersionTagging" not in grants
    assert {"Fn::Sub": "${ReceiptsBucket.Arn}/receipts/*"} in grants["s3:PutObject"]
    assert {"Fn::Sub": "${QuarantineBucket.Arn}/*"} in grants["s3:PutObject"]
    assert not [r for r in grants["s3:PutObject"] if "InboxBucket" in referenced(r)]
    for table in set(TABLES) - {"AggregatesTable", "PortalTable"}:
        assert any(is_arn_of(r, table) for r in grants["dynamodb:GetItem"]), table
    # the report counters: not touched by ingestion since 2026-12-07 (the reports count the submission items)
    assert not [r for action, resources in grants.items() for r in resources if is_arn_of(r, "AggregatesTable")]
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
    wanted = set(BUCKETS) | set(TABLES) | {"IngestQueue", "IngestDeadLetterQueue", "OutboxQueue",
                                           "OutboxDeadLetterQueue", "DataKey", "ReceiptSigningKey",
                                           "HealthbookLayerArm64", "HealthbookLayerX8664", "IngestFunction",
                                           "FacilityPolicy", "TrustBundleParameter", "CitizenPepperSecret"}
    assert wanted <= named, wanted - named
    # Names the CLI reads (healthbook upload / facility add).
    for key in ("InboxBucketName", "ReceiptsBucketName", "DataKeyArn", "FacilitiesTableName", "FacilityPolicyArn"):
        assert key in template["Outputs"]


def test_every_reference_resolves(template: dict[str, Any]) -> None:
    known = set(template["Resources"]) | set(template["Parameters"])
    pseudo = {"AWS::AccountId", "AWS::Region", "AWS::Partition", "AWS::StackName", "AWS::URLSuffix", "AWS::NoValue"}
    assert referenced(template["Resources"]) | referenced(template["Outputs"]) <= known | pseudo


def test_deploy_doc_covers_parameters_environment_and_outputs(template: dict[str, Any]) -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    missing = [f"parameter {name}" for name in template["Parameters"] if f"`{name}`" not in doc]
    variables = function_props(template, "IngestFunction")["Environment"]["Variables"]
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
    assert {"Ref": "DeadlineTopic"} in alarm["AlarmActions"]  # and the ops topic (test_every_alarm_notifies_...)
    for function in ("SettleFunction", "SweepFunction"):  # both emit the metric, under the alarm's dimension
        assert function_props(template, function)["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "delivery"


@pytest.mark.parametrize("function", ["DeliverFunction", "SettleFunction", "SweepFunction", "EnrolmentBatchFunction"])
def test_every_function_that_changes_what_reports_count_adds_to_the_counters(template: dict[str, Any],
                                                                              function: str) -> None:
    assert function_props(template, function)["Environment"]["Variables"]["AGGREGATES_TABLE"] == {
        "Ref": "AggregatesTable"}
    (grant,) = [s for s in function_statements(template, function) if s.get("Sid") == "CountForReports"]
    assert grant["Action"] == "dynamodb:UpdateItem" and is_arn_of(grant["Resource"], "AggregatesTable")


def test_only_deliver_marks_distinct_citizens_and_the_markers_expire(template: dict[str, Any]) -> None:
    marking = {function for function in FUNCTIONS
               if [s for s in function_statements(template, function) if s.get("Sid") == "MarkCitizensForReports"]}
    assert marking == {"DeliverFunction", "EnrolmentBatchFunction"}  # a delivered visit, an enrolled resident
    # Plain writes, no transaction: a batch of period markers (deliveries only; a list sets kept markers alone) and
    # an UpdateItem per kept marker, its first day set only if absent (docs/reports.md)
    actions = {"DeliverFunction": ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"],
               "EnrolmentBatchFunction": ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"]}
    for function in sorted(marking):
        (grant,) = [s for s in function_statements(template, function) if s.get("Sid") == "MarkCitizensForReports"]
        assert grant["Action"] == actions[function]
        assert is_arn_of(grant["Resource"], "AggregatesTable")
    assert props(template, "AggregatesTable")["TimeToLiveSpecification"] == {"AttributeName": "expires_at",
                                                                            "Enabled": True}


@pytest.mark.parametrize("function", ["DeliverFunction", "SettleFunction", "SweepFunction"])
def test_the_delivery_functions_touch_no_bucket(template: dict[str, Any], function: str) -> None:
    """Deliver builds the entry in memory: no S3 hand-off between steps, so no delivery role has an S3 action."""
    actions = {action for s in function_statements(template, function) for action in as_list(s["Action"])}
    assert not [action for action in actions if action.startswith("s3:")]
    assert not [name for name in function_props(template, function)["Environment"]["Variables"] if "BUCKET" in name]


def test_the_markers_deliver_writes_carry_the_attribute_the_aggregates_ttl_reads(template: dict[str, Any]) -> None:
    import boto3
    from healthbook.aws.delivery import DynamoVisitStatus
    from healthbook.reports.aggregates import citizen_markers
    from healthbook_dev.aws.sandbox import NAMES, REGION, create_tables
    from moto import mock_aws

    ttl = props(template, "AggregatesTable")["TimeToLiveSpecification"]["AttributeName"]
    markers = citizen_markers("ab" * 32, datetime(2026, 11, 22, 3, tzinfo=UTC), facility="01001", province="01",
                              district=None, commune="00004")
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_tables(ddb, NAMES)
        DynamoVisitStatus(ddb, visits_table=NAMES["VISITS_TABLE"],
                          aggregates_table=NAMES["AGGREGATES_TABLE"]).count_citizen(markers)
        items = ddb.scan(TableName=NAMES["AGGREGATES_TABLE"])["Items"]
    written = {(i["scope"]["S"], i["period"]["S"]): i for i in items}
    expiring = [m for m in markers if m.expires_at is not None]
    assert expiring, "a month's markers expire"
    for marker in markers:
        item = written[(marker.scope, marker.period)]
        assert (int(item[ttl]["N"]) if ttl in item else None) == marker.expires_at
        assert (item["first_day"]["S"] if "first_day" in item else None) == marker.first_day  # kept: no TTL


# ---- reports: the function and its schedules (docs/operations.md) ------------------------------------------------

def test_report_function_environment_and_size(template: dict[str, Any]) -> None:
    p = function_props(template, "ReportFunction")
    assert (p["Timeout"], p["MemorySize"]) == (900, 1769)  # a national half-year: docs/capacity.md
    variables = p["Environment"]["Variables"]
    assert variables["AGGREGATES_TABLE"] == {"Ref": "AggregatesTable"}
    assert variables["VISITS_TABLE"] == {"Ref": "VisitsTable"}
    assert variables["FACILITIES_TABLE"] == {"Ref": "FacilitiesTable"}
    assert variables["REPORTS_BUCKET"] == {"Ref": "ReportsBucket"}
    assert variables["POWERTOOLS_SERVICE_NAME"] == "report"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "Healthbook"
    # The common variables of every other function, with the same values.
    common = {"STAGE", "POWERTOOLS_LOG_LEVEL", "LOG_LEVEL", "POWERTOOLS_TRACER_CAPTURE_RESPONSE",
              "POWERTOOLS_TRACER_CAPTURE_ERROR", "POWERTOOLS_METRICS_NAMESPACE"}
    ingest = function_props(template, "IngestFunction")["Environment"]["Variables"]
    assert {name: variables[name] for name in common} == {name: ingest[name] for name in common}
    assert p["Layers"] == function_props(template, "IngestFunction")["Layers"]
    group = props(template, "ReportFunctionLogGroup")
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_report_function_is_least_privilege(template: dict[str, Any]) -> None:
    """Exactly: read the counters (Query, Scan), put the facility days' rollups (to ``F#`` partitions only), query
    the files' and the delivered visits' indexes (never the tables: no records), scan the registry, put under
    reports/, and the data key for those; nothing with a wildcard action or resource, no Deny tricks, no managed
    policies."""
    assert all(isinstance(policy, dict) for policy in props(template, "ReportFunction")["Policies"])
    grants: dict[str, list[Any]] = {}
    for statement in function_statements(template, "ReportFunction"):
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        for action in as_list(statement["Action"]):
            assert "*" not in action, action
            grants.setdefault(action, []).extend(as_list(statement["Resource"]))
    aggregates, facilities = {"Fn::GetAtt": ["AggregatesTable", "Arn"]}, {"Fn::GetAtt": ["FacilitiesTable", "Arn"]}
    data_key = {"Fn::GetAtt": ["DataKey", "Arn"]}
    files = {"Fn::Sub": "${SubmissionsTable.Arn}/index/by-facility-month"}
    delivered = {"Fn::Sub": "${VisitsTable.Arn}/index/by-facility-delivered"}
    assert grants == {"dynamodb:Query": [aggregates, files, delivered], "dynamodb:Scan": [aggregates, facilities],
                      "dynamodb:BatchWriteItem": [aggregates],
                      "s3:PutObject": [{"Fn::Sub": "${ReportsBucket.Arn}/reports/*"}],
                      "kms:Decrypt": [data_key], "kms:GenerateDataKey": [data_key]}
    (roll_up,) = [s for s in function_statements(template, "ReportFunction") if s["Sid"] == "RollUpFacilityDays"]
    assert roll_up["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["F#*"]}}


SCHEDULES = {"ReportDaySchedule": ("cron(30 1 * * ? *)", {"kind": "day"}),
             "ReportMonthSchedule": ("cron(0 2 1 * ? *)", {"kind": "month"}),
             "ReportHalfYearSchedule": ("cron(0 3 1 1,7 ? *)", {"kind": "half"})}


def test_report_schedules_run_in_vietnam_time_with_their_inputs(template: dict[str, Any]) -> None:
    assert set(resources(template, "AWS::Scheduler::Schedule")) == set(SCHEDULES)
    for name, (expression, payload) in SCHEDULES.items():
        p = props(template, name)
        assert p["ScheduleExpression"] == expression, name
        assert p["ScheduleExpressionTimezone"] == "Asia/Ho_Chi_Minh", name
        assert p["FlexibleTimeWindow"] == {"Mode": "OFF"}, name
        assert p["State"] == {"Ref": "ReportSchedulesState"}, name
        assert p["GroupName"] == {"Ref": "ReportScheduleGroup"}, name
        target = p["Target"]
        assert is_arn_of(target["Arn"], "ReportFunction") and is_arn_of(target["RoleArn"], "ReportSchedulerRole")
        assert json.loads(target["Input"]) == payload, name
        assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
        assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 3600
    state = template["Parameters"]["ReportSchedulesState"]
    assert state["Default"] == "ENABLED" and set(state["AllowedValues"]) == {"ENABLED", "DISABLED"}


def test_the_scheduler_role_may_only_invoke_the_report_function(template: dict[str, Any]) -> None:
    role = props(template, "ReportSchedulerRole")
    (trust,) = statements(role["AssumeRolePolicyDocument"])
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert is_ref(trust["Condition"]["StringEquals"]["aws:SourceAccount"], "AWS::AccountId")
    assert is_arn_of(trust["Condition"]["ArnEquals"]["aws:SourceArn"], "ReportScheduleGroup")
    granted = [s for policy in role["Policies"] for s in statements(policy["PolicyDocument"])]
    assert [(s["Effect"], as_list(s["Action"]), as_list(s["Resource"])) for s in granted] == [
        ("Allow", ["lambda:InvokeFunction"], [{"Fn::GetAtt": ["ReportFunction", "Arn"]}])]
    assert "ManagedPolicyArns" not in role


# ---- the ops console: topic, alarms, dashboard ------------------------------------------------------------------

def test_ops_topic_is_encrypted_with_a_key_cloudwatch_may_use(template: dict[str, Any]) -> None:
    assert is_arn_of(props(template, "OpsAlarmTopic")["KmsMasterKeyId"], "DataKey")
    key_statements = statements(props(template, "DataKey")["KeyPolicy"])
    cloudwatch = [s for s in key_statements if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    assert cloudwatch and {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(as_list(cloudwatch[0]["Action"]))


ALARMS = {"IngestDlqNotEmptyAlarm", "OutboxDlqNotEmptyAlarm", "IngestQueueAgeAlarm", "IngestFailuresAlarm",
          "DeliveryWorkflowFailuresAlarm", "DeliveryLatencyAlarm", "DeadlineBreachedAlarm", "SweepErrorsAlarm",
          "ReportFailedAlarm", "EnrolmentFailedAlarm"}


def test_every_alarm_notifies_the_ops_topic_and_says_how_to_treat_missing_data(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    assert set(alarms) == ALARMS
    runbook = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, alarm in alarms.items():
        p = alarm["Properties"]
        assert {"Ref": "OpsAlarmTopic"} in p["AlarmActions"], name
        assert {"Ref": "OpsAlarmTopic"} in p["OKActions"], name
        assert p["TreatMissingData"] in ("notBreaching", "breaching", "ignore", "missing"), name
        alarm_name = p["AlarmName"]["Fn::Sub"]
        assert alarm_name.startswith("healthbook-${Stage}-"), name
        assert f"`{alarm_name.replace('${Stage}', '<stage>')}`" in runbook, f"docs/operations.md lacks {alarm_name}"


def test_alarm_thresholds_are_parameters(template: dict[str, Any]) -> None:
    expected = {"IngestQueueAgeAlarm": ("IngestQueueAgeAlarmMinutes", 15),
                "IngestFailuresAlarm": ("IngestFailuresAlarmThreshold", 1),
                "DeliveryLatencyAlarm": ("DeliveryLatencyAlarmSeconds", 3600)}
    for alarm, (parameter, default) in expected.items():
        assert props(template, alarm)["Threshold"] == {"Ref": parameter}
        assert template["Parameters"][parameter]["Default"] == default
    # The metrics are in seconds (SQS age) and milliseconds (DeliveryLatency): the alarms convert them.
    expressions = {m["Id"]: m.get("Expression") for m in props(template, "IngestQueueAgeAlarm")["Metrics"]}
    assert "age / 60" in expressions.values()
    latency = props(template, "DeliveryLatencyAlarm")["Metrics"]
    assert any(m.get("MetricStat", {}).get("Stat") == "p95" for m in latency)
    assert "latency / 1000" in {m.get("Expression") for m in latency}


def render_sub(template: dict[str, Any], text: str) -> str:
    """A Fn::Sub string as CloudFormation would make it, with parameters at their defaults and every resource
    reference as "<LogicalId>" or "<LogicalId.Attribute>" (inside the JSON strings of the dashboard)."""
    parameters = template["Parameters"]
    pseudo = {"AWS::Region": REGION, "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in parameters:
            return str(parameters[name]["Default"])
        if name in pseudo:
            return pseudo[name]
        assert name.split(".")[0] in template["Resources"], f"${{{name}}} names nothing"
        return f"<{name}>"

    return re.sub(r"\$\{(?!!)([^}]+)\}", value, text)


def render(template: dict[str, Any], node: Any) -> Any:
    """An alarm's Ref / GetAtt / Sub values rendered like render_sub."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return render_sub(template, "${" + node["Ref"] + "}")
        if set(node) == {"Fn::GetAtt"}:
            target = node["Fn::GetAtt"]
            return f"<{'.'.join(target) if isinstance(target, list) else target}>"
        if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
            return render_sub(template, node["Fn::Sub"])
        return {key: render(template, value) for key, value in node.items()}
    if isinstance(node, list):
        return [render(template, value) for value in node]
    return node


def dashboard(template: dict[str, Any]) -> dict[str, Any]:
    body = props(template, "OpsDashboard")["DashboardBody"]["Fn::Sub"]
    parsed: dict[str, Any] = json.loads(render_sub(template, body))
    return parsed


@dataclass(frozen=True)
class MetricRef:
    """A metric the console names: where, namespace, name, {dimension: value}."""

    where: str
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str | None], ...]  # value None: any (a SEARCH over that dimension)
    stat: str | None = None


SEARCH = re.compile(r"SEARCH\(\s*'(?P<query>[^']*)'")


def _search_refs(where: str, expression: str) -> list[MetricRef]:
    found = []
    for match in SEARCH.finditer(expression):
        query = match.group("query")
        schema = re.search(r"\{([^}]*)\}", query)
        assert schema, f"{where}: a SEARCH without a {{Namespace,dimension,...}} schema: {query}"
        namespace, *names = [part.strip() for part in schema.group(1).split(",")]
        terms = dict(re.findall(r'(\w+)="([^"]*)"', query))
        assert "MetricName" in terms, f"{where}: a SEARCH must name its metric exactly: {query}"
        dimensions = tuple(sorted((name, terms.get(name)) for name in names))
        found.append(MetricRef(where, namespace, terms["MetricName"], dimensions))
    return found


def dashboard_refs(template: dict[str, Any]) -> list[MetricRef]:
    refs: list[MetricRef] = []
    for widget in dashboard(template)["widgets"]:
        properties = widget["properties"]
        where = f"widget {properties.get('title', widget['type'])!r}"
        previous: list[Any] = []
        for row in properties.get("metrics", []):
            options = row[-1] if row and isinstance(row[-1], dict) else {}
            if "expression" in options:
                refs += _search_refs(where, options["expression"])
                continue
            fields = [previous[i] if value == "." and i < len(previous) else value
                      for i, value in enumerate(row[:-1] if options else row)]
            previous = fields
            namespace, name, *pairs = fields
            assert len(pairs) % 2 == 0, f"{where}: {row}"
            dimensions = tuple(sorted(zip(pairs[::2], pairs[1::2], strict=True)))
            refs.append(MetricRef(where, namespace, name, dimensions, options.get("stat", properties.get("stat"))))
    return refs


def alarm_refs(template: dict[str, Any]) -> list[MetricRef]:
    refs = []
    for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
        p = render(template, alarm["Properties"])
        metrics = [(p, p.get("Statistic") or p.get("ExtendedStatistic"))] if "MetricName" in p else [
            (m["MetricStat"]["Metric"], m["MetricStat"]["Stat"]) for m in p["Metrics"] if "MetricStat" in m]
        for metric, stat in metrics:
            dimensions = tuple(sorted((d["Name"], d["Value"]) for d in metric.get("Dimensions", [])))
            refs.append(MetricRef(f"alarm {name}", metric["Namespace"], metric["MetricName"], dimensions, stat))
        for m in p.get("Metrics", []):
            refs += _search_refs(f"alarm {name}", m.get("Expression", ""))
    return refs


# -- what the code emits: scanned from the sources, never listed by hand ---------------------------------------------

@dataclass
class Emission:
    name: str
    dimensions: frozenset[str]  # the EMF dimension names the metric carries
    path: Path
    line: int


@dataclass
class Scan:
    emitted: list[Emission] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # call sites whose metric name the scan cannot know


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _receiver(call: ast.Call) -> str:
    """'metrics' for metrics.count(...) and self.metrics.count(...)."""
    func = call.func
    if isinstance(func, ast.Attribute):
        value = func.value
        return value.attr if isinstance(value, ast.Attribute) else value.id if isinstance(value, ast.Name) else ""
    return ""


def _argument(call: ast.Call, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[0] if call.args else None


def _first_leaf(target: ast.expr) -> ast.expr:
    while isinstance(target, ast.Tuple) and target.elts:
        target = target.elts[0]
    return target


def scan_metrics(path: Path, source: str) -> Scan:
    """Metric names and dimensions a module emits with Powertools: ``*.add_metric(name=...)`` (the function's
    ``service`` dimension), ``single_metric(name=..., default_dimensions={...})`` with the ``add_dimension`` calls
    of its block, and the metrics port, ``metrics.count("X", reason=...)`` / ``metrics.latency("X", ...)`` (or
    ``port.count``, the handlers' name for it)
    (service, plus each keyword capitalised: healthbook.aws.observability.PowertoolsMetrics). A name that is not a
    literal is followed through module constants, ``D.get(...)`` / ``D[...]`` of a module-level dict literal, and
    ``for (name, ...) in C.items()`` over a mapping filled as ``C["X", ...] += n``; a name that is a parameter of
    the enclosing function is passed through (its callers are scanned). Anything else is reported unresolved, so
    a new way of naming metrics fails the test instead of slipping past it."""
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    strings: dict[str, str] = {}
    dicts: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if not isinstance(target, ast.Name):
                    continue
                if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    strings[target.id] = node.value.value
                elif isinstance(node.value, ast.Dict):
                    dicts[target.id] = [v.value for v in node.value.values
                                        if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    keyed: dict[str, set[str]] = {}  # C -> first elements of the literal keys C["X", ...] is given
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and isinstance(node.ctx, ast.Store):
            key = _first_leaf(node.slice)
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                keyed.setdefault(node.value.id, set()).add(key.value)

    def enclosing(node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def resolve(expr: ast.expr | None, at: ast.AST) -> set[str] | None:
        """The names ``expr`` may hold; None for a parameter passed through; empty when unknown."""
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if not isinstance(expr, ast.Name):
            return set()
        function = enclosing(at)
        if function is not None:
            arguments = function.args
            if expr.id in {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}:
                return None
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == expr.id
                                                        for t in node.targets):
                    value = node.value
                    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
                            and value.func.attr == "get" and isinstance(value.func.value, ast.Name):
                        value = value.func.value
                    elif isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name):
                        value = value.value
                    if isinstance(value, ast.Name) and value.id in dicts:
                        return set(dicts[value.id])
                    return resolve(value, node)
                if isinstance(node, ast.For | ast.comprehension):
                    leaf = _first_leaf(node.target)
                    if isinstance(leaf, ast.Name) and leaf.id == expr.id:
                        sources = {n.id for n in ast.walk(node.iter) if isinstance(n, ast.Name)} & set(keyed)
                        if len(sources) == 1:
                            return set(keyed[sources.pop()])
        return {strings[expr.id]} if expr.id in strings else set()

    def dimension_names(call: ast.Call) -> set[str] | None:
        names: set[str] = set()
        for kw in call.keywords:
            if kw.arg == "default_dimensions":
                if not isinstance(kw.value, ast.Dict):
                    return None
                for key in kw.value.keys:
                    if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                        return None
                    names.add(key.value)
        with_node = parents.get(parents.get(call, call), call)
        if isinstance(with_node, ast.With):
            for node in ast.walk(with_node):
                if isinstance(node, ast.Call) and _call_name(node) == "add_dimension":
                    named = resolve(_argument(node, "name"), node)
                    if not named:
                        return None
                    names |= named
        return names

    scan = Scan()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kind = _call_name(node)
        if kind == "add_metric":
            dimensions: set[str] | None = {"service"}
        elif kind == "single_metric":
            dimensions = dimension_names(node)
        elif kind in ("count", "latency") and _receiver(node) in ("metrics", "port"):
            dimensions = {"service"} | {kw.arg[:1].upper() + kw.arg[1:] for kw in node.keywords
                                        if kw.arg not in (None, "name", "value", "milliseconds")}
        elif kind in ("add_dimension", "set_default_dimensions") and not _inside_single_metric(node, parents):
            scan.unresolved.append(f"{path}:{node.lineno}: {kind} outside a single_metric block (dimensions of "
                                   "the function's metrics that this scan does not follow)")
            continue
        else:
            continue
        names = resolve(_argument(node, "name"), node)
        if names is None:
            continue  # a pass-through wrapper
        if not names or dimensions is None:
            scan.unresolved.append(f"{path}:{node.lineno}: {ast.unparse(node)[:100]}")
            continue
        scan.emitted += [Emission(name, frozenset(dimensions), path, node.lineno) for name in sorted(names)]
    return scan


def _inside_single_metric(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.With) and any(isinstance(item.context_expr, ast.Call)
                                              and _call_name(item.context_expr) == "single_metric"
                                              for item in node.items):
            return True
    return False


METRIC_SOURCES = (ROOT / "functions", ROOT / "layers" / "healthbook" / "healthbook")


def emitted_metrics(template: dict[str, Any]) -> tuple[dict[str, set[tuple[str, frozenset[str]]]], list[str]]:
    """metric name -> {(service, dimension names)} over every source file, and the unresolved call sites.

    The service of a metric emitted in functions/<dir>/ is POWERTOOLS_SERVICE_NAME of the functions built from
    that folder; one emitted in the layer belongs to the functions whose handler module binds the layer's metrics
    port (PowertoolsMetrics) and may load that module (its static import closure, lazy imports included)."""
    services_of: dict[str, set[str]] = {}
    for p in (f["Properties"] for f in resources(template, "AWS::Serverless::Function").values()):
        services_of.setdefault(p["CodeUri"].rstrip("/"), set()).add(p["Environment"]["Variables"]
                                                                     ["POWERTOOLS_SERVICE_NAME"])
    loaders: dict[str, set[str]] = {}  # layer module path -> services that may load it
    for code, services in services_of.items():
        if "PowertoolsMetrics(" in _read(ROOT / code / "app.py"):
            for module in _layer_closure(ROOT / code / "app.py"):
                loaders.setdefault(module, set()).update(services)
    emitted: dict[str, set[tuple[str, frozenset[str]]]] = {}
    unresolved: list[str] = []
    for folder in METRIC_SOURCES:
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            scan = scan_metrics(path.relative_to(ROOT), path.read_text(encoding="utf-8"))
            unresolved += scan.unresolved
            code = "/".join(relative.split("/")[:2])
            services = services_of.get(code, set()) if relative.startswith("functions/") else \
                loaders.get(relative, set())
            for emission in scan.emitted:
                emitted.setdefault(emission.name, set()).update((s, emission.dimensions) for s in services)
    return emitted, unresolved


LAYER = ROOT / "layers" / "healthbook"


def _module_file(name: str) -> Path | None:
    base = LAYER.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _layer_closure(start: Path) -> set[str]:
    """The layer modules (paths relative to the repository) that ``start`` imports, directly or not, anywhere
    in its code (a function-level import may run): what its function may load."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        tree = ast.parse(todo.pop().read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for name in names:
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):  # a package's __init__ runs before its modules
                    found = _module_file(".".join(parts[:depth])) if parts[0] == "healthbook" else None
                    if found is not None and found.relative_to(ROOT).as_posix() not in seen:
                        seen.add(found.relative_to(ROOT).as_posix())
                        todo.append(found)
    return seen


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def metric_problems(refs: list[MetricRef], emitted: dict[str, set[tuple[str, frozenset[str]]]]) -> list[str]:
    """Why each Healthbook metric the console names would show nothing: a name nobody emits, a dimension set it
    is never emitted with (CloudWatch matches the set exactly), or a service that does not emit it."""
    problems = []
    for ref in refs:
        if ref.namespace != "Healthbook":
            continue
        if ref.name not in emitted:
            problems.append(f"{ref.where}: {ref.name} is not emitted by any function")
            continue
        names = frozenset(name for name, _ in ref.dimensions)
        shapes = {dims for _, dims in emitted[ref.name]}
        if names not in shapes:
            problems.append(f"{ref.where}: {ref.name} with dimensions {sorted(names)}; it is emitted with "
                            f"{sorted(sorted(s) for s in shapes)}")
            continue
        service = dict(ref.dimensions).get("service")
        services = {s for s, dims in emitted[ref.name] if dims == names}
        if service is not None and service not in services:
            problems.append(f"{ref.where}: {ref.name} with service={service}; emitted by {sorted(services)}")
    return problems


def test_every_healthbook_metric_of_the_console_is_emitted_with_those_dimensions(template: dict[str, Any]) -> None:
    emitted, unresolved = emitted_metrics(template)
    assert not unresolved, "metric call sites this test cannot follow (teach scan_metrics):\n" + "\n".join(unresolved)
    refs = dashboard_refs(template) + alarm_refs(template)
    assert len([r for r in refs if r.namespace == "Healthbook"]) >= 20
    problems = metric_problems(refs, emitted)
    assert not problems, "\n".join(problems)


def test_the_metric_check_catches_misspelt_names_wrong_services_and_dimensions(template: dict[str, Any]) -> None:
    """The negative self-check: the same check fails for a console that names a metric wrongly."""
    emitted, _ = emitted_metrics(template)
    # The scan finds what the brief of each stage says it emits, including the indirect names.
    for name in ("FilesReceived", "VisitsRejected", "MessagesFailed", "DeliveryStartFailures", "DeliveryLatency",
                 "DeadlineBreached", "VisitsNeedingReconciliation", "SweepClaimed"):
        assert name in emitted, name
    assert ("ingest", frozenset({"service", "ErrorFamily"})) in emitted["FilesRejected"]  # single_metric + dimension
    assert emitted["ReconciliationNeeded"] == {("delivery", frozenset({"service", "Reason"}))}
    bad = [MetricRef("typo", "Healthbook", "DeadlineBreech", (("service", "delivery"),)),
           MetricRef("service", "Healthbook", "DeadlineBreached", (("service", "ingest"),)),
           MetricRef("no reason", "Healthbook", "ReconciliationNeeded", (("service", "delivery"),)),
           MetricRef("extra", "Healthbook", "VisitsAccepted", (("ErrorFamily", "V"), ("service", "ingest")))]
    problems = metric_problems(bad, emitted)
    assert [p.split(":")[0] for p in problems] == ["typo", "service", "no reason", "extra"], problems
    good = [MetricRef("ok", "Healthbook", "FilesRejected", (("ErrorFamily", "K"), ("service", "ingest"))),
            MetricRef("ok", "AWS/Lambda", "Whatever", ())]
    assert metric_problems(good, emitted) == []


def test_the_scan_reads_literals_and_flags_what_it_cannot_follow() -> None:
    source = '''
NAME = "FromConstant"
TABLE = {"A": "FromDict"}
counts = {}

def handler(event, metric_name):
    metrics.add_metric(name="Literal", unit="Count", value=1)
    metrics.add_metric("Positional", "Count", 1)
    metrics.add_metric(name=NAME, unit="Count", value=1)
    chosen = TABLE.get(event["x"])
    metrics.add_metric(name=chosen, unit="Count", value=1)
    metrics.add_metric(name=metric_name, unit="Count", value=1)          # pass-through: callers are scanned
    self.metrics.count("Counted", reason="r")
    counts["Keyed", "f"] += 1
    for (name, family), n in sorted(counts.items()):
        with single_metric(name=name, unit="Count", value=n, default_dimensions={"service": "x"}) as m:
            m.add_dimension(name="Family", value=family)
    metrics.add_metric(name=event["dynamic"], unit="Count", value=1)  # cannot be known
    text.count("not a metric")
'''
    scan = scan_metrics(Path("example.py"), source)
    found = {(e.name, tuple(sorted(e.dimensions))) for e in scan.emitted}
    assert found == {("Literal", ("service",)), ("Positional", ("service",)), ("FromConstant", ("service",)),
                     ("FromDict", ("service",)), ("Counted", ("Reason", "service")),
                     ("Keyed", ("Family", "service"))}
    assert len(scan.unresolved) == 1 and "dynamic" in scan.unresolved[0]


# -- the dashboard shows what the brief asks, on the stack's own resources -----------------------------------------

def test_dashboard_covers_ingest_delivery_lambda_and_reports(template: dict[str, Any]) -> None:
    refs = dashboard_refs(template)
    named = {(r.namespace, r.name, dict(r.dimensions).get("service") or next(iter(dict(r.dimensions).values()), None))
             for r in refs}
    for metric in ("FilesReceived", "VisitsAccepted", "VisitsRejected", "FilesRejected"):
        assert ("Healthbook", metric, "ingest") in named, metric
    for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"):
        assert ("AWS/SQS", metric, "<IngestQueue.QueueName>") in named, metric
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "<IngestDeadLetterQueue.QueueName>") in named
    for function in resources(template, "AWS::Serverless::Function"):
        for metric in ("Errors", "Throttles", "Duration"):
            assert ("AWS/Lambda", metric, f"<{function}>") in named, (function, metric)
    for metric in ("ExecutionsStarted", "ExecutionsFailed", "ExecutionsTimedOut"):
        assert ("AWS/States", metric, "<DeliveryStateMachine>") in named, metric
    assert [r.stat for r in refs if r.name == "DeliveryLatency"].count("p95") == 1
    assert ("Healthbook", "DeadlineBreached", "delivery") in named
    reasons = [r for r in refs if r.name == "ReconciliationNeeded"]
    assert reasons and dict(reasons[0].dimensions) == {"Reason": None, "service": "delivery"}  # a SEARCH by reason
    for metric in ("ReportsBuilt", "ReportFailures"):
        assert ("Healthbook", metric, "report") in named, metric
    alarms = [w for w in dashboard(template)["widgets"] if w["type"] == "alarm"]
    assert len(alarms) == 1
    assert set(alarms[0]["properties"]["alarms"]) == {f"<{name}.Arn>" for name in ALARMS}


def _rule_names(template: dict[str, Any]) -> list[str]:
    """The names of the EventBridge rules the stack's SAM resources declare, as CloudFormation makes them."""
    stage = template["Parameters"]["Stage"]["Default"]
    return [event["Properties"]["RuleName"]["Fn::Sub"].replace("${Stage}", stage)
            for resource in template["Resources"].values()
            for event in resource.get("Properties", {}).get("Events", {}).values()
            if event["Type"] == "EventBridgeRule" and "RuleName" in event["Properties"]]


# dimension -> the resource types its value may name
AWS_DIMENSIONS = {"FunctionName": {"AWS::Serverless::Function"}, "QueueName": {"AWS::SQS::Queue"},
                  "StateMachineArn": {"AWS::Serverless::StateMachine"},
                  "ScheduleGroup": {"AWS::Scheduler::ScheduleGroup"}}


def test_aws_metrics_of_the_console_name_the_stacks_own_resources(template: dict[str, Any]) -> None:
    for ref in dashboard_refs(template) + alarm_refs(template):
        if ref.namespace == "Healthbook":
            assert {name for name, _ in ref.dimensions} <= {"service", "Reason", "ErrorFamily"}, ref
            continue
        if ref.namespace == "AWS/ApiGateway":  # a REST API's metrics are named by its name and stage, not its id
            stage = template["Parameters"]["Stage"]["Default"]
            names = {props(template, api)["Name"]["Fn::Sub"].replace("${Stage}", stage)
                     for api in resources(template, "AWS::Serverless::Api")}
            assert dict(ref.dimensions) in [{"ApiName": name, "Stage": stage} for name in names], ref
            continue
        if ref.namespace == "AWS/Events":  # a rule's metrics are named by its name: a rule the stack declares
            assert dict(ref.dimensions) in [{"RuleName": name} for name in _rule_names(template)], ref
            continue
        assert ref.namespace in {"AWS/SQS", "AWS/Lambda", "AWS/States", "AWS/Scheduler"}, ref
        for dimension, value in ref.dimensions:
            assert value and value.startswith("<"), f"{ref.where}: {dimension}={value} is not the stack's own"
            logical = value.strip("<>").split(".")[0]
            assert template["Resources"][logical]["Type"] in AWS_DIMENSIONS[dimension], (ref.where, dimension, value)
            if dimension == "QueueName":
                assert value.endswith(".QueueName>"), value


# ---- security scan suppressions (make security, docs/security.md) --------------------------------------------
# checkov takes a suppression from the resource's Metadata (checkov: skip: - id, comment) or from a
# `# checkov:skip=<id>:<reason>` comment line inside the resource (the SAM functions' Metadata holds their build
# settings). Either way each one must say why, and docs/security.md must list it.

CHECKOV_COMMENT = re.compile(  # checkov.common.comment.enum.COMMENT_REGEX
    r"(checkov:skip=|bridgecrew:skip=|cortex:skip=) *([A-Za-z_\d-]+(?:,[A-Za-z_\d-]+)*)?(:[^\n]*)?")
CHECK_ID = re.compile(r"^CKV2?_AWS_\d+$")


@dataclass(frozen=True)
class Suppression:
    resource: str
    check: str
    reason: str
    where: str


def suppressions(template: dict[str, Any], text: str | None = None) -> list[Suppression]:
    """Every checkov suppression of template.yaml (or TEXT): Metadata entries and in-resource comment lines."""
    found = []
    for name, resource in template["Resources"].items():
        metadata = resource.get("Metadata", {})
        for tool in ("checkov", "bridgecrew"):
            skips = metadata.get(tool, {}).get("skip", []) if isinstance(metadata.get(tool), dict) else []
            assert isinstance(skips, list), f"{name}: Metadata.{tool}.skip must be a list of {{id, comment}}"
            for skip in skips:
                assert isinstance(skip, dict), f"{name}: Metadata.{tool}.skip entry {skip!r} is not {{id, comment}}"
                found.append(Suppression(name, str(skip.get("id", "")), str(skip.get("comment") or "").strip(),
                                         f"{name} Metadata.{tool}"))
    section = resource_name = None
    text = TEMPLATE.read_text(encoding="utf-8") if text is None else text
    for number, line in enumerate(text.splitlines(), start=1):
        if line[:1].isalpha():
            section, resource_name = line.split(":", 1)[0], None
        elif section == "Resources" and (key := re.match(r"^  ([A-Za-z0-9]+):\s*(#.*)?$", line)):
            resource_name = key.group(1)
        elif skip := CHECKOV_COMMENT.search(line):
            where = f"template.yaml:{number}"
            assert section == "Resources" and resource_name, f"{where}: a checkov suppression outside any resource"
            assert line.lstrip().startswith("#"), f"{where}: a checkov suppression must be a comment line of its own"
            reason = (skip.group(3) or ":")[1:].strip()
            found.append(Suppression(resource_name, skip.group(2) or "", reason, where))
    return found


def test_every_checkov_suppression_says_why(template: dict[str, Any]) -> None:
    found = suppressions(template)
    assert found, "the template suppresses nothing: then docs/security.md's table should be empty too"
    for s in found:
        assert CHECK_ID.match(s.check), f"{s.where}: {s.check!r} is not one checkov check id"
        assert s.reason and s.reason != "No comment provided", f"{s.where}: {s.check} suppressed without a reason"
        assert len(s.reason.split()) >= 5, f"{s.where}: {s.check}: say why, in a sentence ({s.reason!r})"
    pairs = [(s.resource, s.check) for s in found]
    assert len(pairs) == len(set(pairs)), "a check is suppressed twice on the same resource"


def test_the_suppression_check_finds_bare_and_misplaced_skips() -> None:
    bare = {"Resources": {"B": {"Type": "AWS::S3::Bucket", "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_18"}]}}}}}
    text = "Resources:\n  B:\n    # checkov:skip=CKV_AWS_21\n    Type: AWS::S3::Bucket\n"
    found = suppressions(bare, text)
    assert {(s.resource, s.check, s.reason) for s in found} == {("B", "CKV_AWS_18", ""), ("B", "CKV_AWS_21", "")}
    with pytest.raises(AssertionError, match="outside any resource"):
        suppressions({"Resources": {}}, "# checkov:skip=CKV_AWS_21:a reason outside of every resource is no use\n")
    with pytest.raises(AssertionError, match="comment line of its own"):
        suppressions({"Resources": {}}, "Resources:\n  B:\n    Type: AWS::S3::Bucket  # checkov:skip=CKV_AWS_21:x y\n")


def test_security_doc_lists_every_suppression(template: dict[str, Any]) -> None:
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    table = doc.split("\n## Suppressions\n", 1)[1].split("\n## ", 1)[0]
    rows = {(cells[0].strip("` "), cells[1].strip("` ")) for line in table.splitlines()
            if line.startswith("| `") and len(cells := [c.strip() for c in line.strip("|").split("|")]) >= 3}
    found = {(s.resource, s.check) for s in suppressions(template)}
    assert found - rows == set(), f"suppressed in template.yaml, missing from docs/security.md: {sorted(found - rows)}"
    assert rows - found == set(), f"listed in docs/security.md, not suppressed in template.yaml: {sorted(rows - found)}"
