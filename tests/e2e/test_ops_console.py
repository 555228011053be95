"""End-to-end: the ops console of template.yaml on LocalStack (docs/operations.md, docs/localstack.md).

The stack is deployed from the current template, keeping the parameter values of a stack already there (the
pipeline tests' fakes and timings: LocalStack cannot update an alarm, a schedule or an EventBridge rule in
place). Then: the alarms exist with their actions; the report schedules exist as written (LocalStack stores them
but never fires them), and their inputs, given to their target as the scheduler would, build reports and emit
the metrics the alarm watches; the dashboard's body, rendered with the deployed stack's names, names resources
that exist; and the dashboard itself (LocalStack 2026.3 has no CloudFormation provider for it; the project's
LocalStack plugin provides one).

Run: ``make e2e`` (or ``make localstack-up`` then ``HEALTHBOOK_E2E=1 .venv/bin/pytest -m localstack tests/e2e``).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.localstack

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = Path(os.environ.get("HB_E2E_TEMPLATE") or REPO / "template.yaml")
STACK = os.environ.get("HB_E2E_STACK") or "healthbook-local"
STAGE = os.environ.get("HB_E2E_STAGE") or "local"
# As tests/e2e/test_localstack.py deploys it, for a stack this module creates: a later deploy by those tests then
# changes no schedule rule (LocalStack cannot update one).
DELIVERY_TIMING = {"DeadlineSeconds": "90", "SafetyMarginSeconds": "30", "LeaseSeconds": "10",
                   "RetryBaseSeconds": "2", "RetryMaxSeconds": "5", "SweepEveryMinutes": "2"}


def _template() -> dict[str, Any]:
    from cfnlint.decode import decode

    decoded, problems = decode(str(TEMPLATE))
    assert decoded is not None and not problems, problems
    return decoded


@pytest.fixture(scope="module")
def stack(aws: Callable[..., Any], deploy: Callable[..., dict[str, str]]) -> dict[str, Any]:
    cfn = aws("cloudformation")
    try:
        existing = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
        keep = {p["ParameterKey"]: p["ParameterValue"] for p in existing.get("Parameters", [])
                if p["ParameterKey"] not in ("Stage", "Architecture")}
    except cfn.exceptions.ClientError:
        keep = dict(DELIVERY_TIMING)
    outputs = deploy(TEMPLATE, STACK, STAGE, **keep)
    described = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    resources = {r["LogicalResourceId"]: r for r in cfn.describe_stack_resources(StackName=STACK)["StackResources"]}
    template = _template()
    parameters = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
    parameters.update({p["ParameterKey"]: p["ParameterValue"] for p in described.get("Parameters", [])})
    return {"outputs": outputs, "resources": resources, "parameters": parameters, "template": template,
            "account": described["StackId"].split(":")[4], "region": described["StackId"].split(":")[3]}


def _of_type(stack: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in stack["template"]["Resources"].items() if r["Type"] == kind}


def _name(stack: dict[str, Any], sub: dict[str, str] | str) -> str:
    text = sub["Fn::Sub"] if isinstance(sub, dict) else sub
    return text.replace("${Stage}", stack["parameters"]["Stage"])


# ---- alarms and the ops topic ----------------------------------------------------------------------------

def test_every_alarm_exists_and_notifies_the_ops_topic(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    topic = stack["outputs"]["OpsAlarmTopicArn"]
    wanted = {_name(stack, a["Properties"]["AlarmName"]): name
              for name, a in _of_type(stack, "AWS::CloudWatch::Alarm").items()}
    assert len(wanted) >= 8
    pages = aws("cloudwatch").get_paginator("describe_alarms").paginate(AlarmNamePrefix=f"healthbook-{STAGE}-")
    found = {a["AlarmName"]: a for page in pages for a in page["MetricAlarms"]}
    assert set(wanted) <= set(found), set(wanted) - set(found)
    for alarm_name, logical in wanted.items():
        alarm = found[alarm_name]
        assert topic in alarm["AlarmActions"] and topic in alarm["OKActions"], alarm_name
        assert alarm["TreatMissingData"] == "notBreaching", alarm_name
        declared = stack["template"]["Resources"][logical]["Properties"]
        threshold = declared["Threshold"]
        if isinstance(threshold, dict):
            threshold = stack["parameters"][threshold["Ref"]]
        assert alarm["Threshold"] == float(threshold), alarm_name
        if "Metrics" in declared:  # metric math: the same queries, the expression returned
            assert [m["Id"] for m in alarm["Metrics"]] == [m["Id"] for m in declared["Metrics"]], alarm_name
            assert [m["Id"] for m in alarm["Metrics"] if m.get("ReturnData", True)] == [
                m["Id"] for m in declared["Metrics"] if m.get("ReturnData", True)], alarm_name
        else:
            assert (alarm["Namespace"], alarm["MetricName"]) == (declared["Namespace"], declared["MetricName"])
    deadline = found[f"healthbook-{STAGE}-deadline-breached"]
    assert stack["outputs"]["DeadlineTopicArn"] in deadline["AlarmActions"]


def test_the_ops_topic_is_encrypted_with_the_data_key(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    attributes = aws("sns").get_topic_attributes(TopicArn=stack["outputs"]["OpsAlarmTopicArn"])["Attributes"]
    assert attributes["KmsMasterKeyId"] == stack["outputs"]["DataKeyArn"]


# ---- the report schedules and what they start ------------------------------------------------------------

def _schedules(aws: Callable[..., Any], stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    scheduler = aws("scheduler")
    group = stack["resources"]["ReportScheduleGroup"]["PhysicalResourceId"]
    listed = scheduler.list_schedules(GroupName=group)["Schedules"]
    return {s["Name"]: scheduler.get_schedule(GroupName=group, Name=s["Name"]) for s in listed}


def test_report_schedules_exist_in_vietnam_time(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    declared = {p["Properties"]["Name"]: p["Properties"]
                for p in _of_type(stack, "AWS::Scheduler::Schedule").values()}
    found = _schedules(aws, stack)
    assert set(found) == set(declared) == {"report-day", "report-month", "report-half"}
    function_arn = aws("lambda").get_function(
        FunctionName=stack["outputs"]["ReportFunctionName"])["Configuration"]["FunctionArn"]
    role = stack["resources"]["ReportSchedulerRole"]["PhysicalResourceId"]
    for name, schedule in found.items():
        assert schedule["ScheduleExpression"] == declared[name]["ScheduleExpression"], name
        assert schedule["ScheduleExpressionTimezone"] == "Asia/Ho_Chi_Minh", name
        assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}, name
        assert schedule["State"] == stack["parameters"]["ReportSchedulesState"], name
        target = schedule["Target"]
        assert target["Arn"] == function_arn and target["RoleArn"].endswith(f"/{role}"), name
        assert json.loads(target["Input"]) == {"kind": name.removeprefix("report-")}, name
        assert target["RetryPolicy"] == {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600}, name


def _emf(logs: str) -> list[dict[str, Any]]:
    """The EMF documents (Powertools metrics) among an invocation's log lines."""
    documents = []
    for line in logs.splitlines():
        start = line.find('{"_aws"')
        if start >= 0:
            documents.append(json.loads(line[start:]))
    return documents


def _metrics(documents: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(namespace, metric, dimension names, service) of each metric in the documents."""
    found = set()
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for dimensions in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    found.add((directive["Namespace"], metric["Name"], ",".join(sorted(dimensions)),
                               str(document.get("service"))))
    return found


def _invoke(aws: Callable[..., Any], function: str, payload: dict[str, Any]) -> tuple[str | None, Any, str]:
    response = aws("lambda").invoke(FunctionName=function, Payload=json.dumps(payload), LogType="Tail")
    logs = base64.b64decode(response.get("LogResult", "")).decode("utf-8", "replace")
    return response.get("FunctionError"), json.loads(response["Payload"].read() or b"null"), logs


def test_each_schedules_input_builds_its_report_and_counts_it(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    """What the scheduler would do (LocalStack never fires it): invoke the target with the schedule's input."""
    bucket = stack["outputs"]["ReportsBucketName"]
    s3 = aws("s3")
    for name, schedule in sorted(_schedules(aws, stack).items()):
        error, result, logs = _invoke(aws, schedule["Target"]["Arn"], json.loads(schedule["Target"]["Input"]))
        assert error is None, f"{name}: {result}\n{logs[-3000:]}"
        assert result["kind"] == name.removeprefix("report-")
        assert result["objects"] and all(key.startswith(f"reports/{result['kind']}/{result['period']}/")
                                         for key in result["objects"])
        for key in result["objects"]:
            s3.head_object(Bucket=bucket, Key=key)
        assert ("Healthbook", "ReportsBuilt", "service", "report") in _metrics(_emf(logs)), logs[-3000:]


def test_a_rerun_replaces_the_periods_files(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    function, bucket = stack["outputs"]["ReportFunctionName"], stack["outputs"]["ReportsBucketName"]
    s3 = aws("s3")
    _, first, _ = _invoke(aws, function, {"period": "2025-03"})
    versions = {key: s3.head_object(Bucket=bucket, Key=key).get("VersionId") for key in first["objects"]}
    error, again, _ = _invoke(aws, function, {"period": "2025-03"})
    assert error is None and again["objects"] == first["objects"] and again["period"] == "2025-03"
    for key in again["objects"]:
        assert s3.head_object(Bucket=bucket, Key=key).get("VersionId") != versions[key], key


def test_a_failed_run_raises_and_counts_report_failures(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    """The report-failed alarm watches Lambda Errors and ReportFailures (service=report): a bad input gives both."""
    error, result, logs = _invoke(aws, stack["outputs"]["ReportFunctionName"], {"kind": "fortnight"})
    assert error == "Unhandled", result
    assert ("Healthbook", "ReportFailures", "service", "report") in _metrics(_emf(logs)), logs[-3000:]


# ---- the dashboard -----------------------------------------------------------------------------------------

def _rendered_dashboard(aws: Callable[..., Any], stack: dict[str, Any]) -> dict[str, Any]:
    """DashboardBody as CloudFormation renders it for this stack: parameters, pseudo parameters, each resource's
    Ref (its physical id) and the attributes the body uses (Arn of an alarm, QueueName of a queue)."""
    body = stack["template"]["Resources"]["OpsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    pseudo = {"AWS::Region": stack["region"], "AWS::AccountId": stack["account"], "AWS::Partition": "aws"}

    def value(match: re.Match[str]) -> str:
        name, _, attribute = match.group(1).partition(".")
        if not attribute:
            if name in pseudo:
                return pseudo[name]
            if name in stack["parameters"]:
                return stack["parameters"][name]
            return str(stack["resources"][name]["PhysicalResourceId"])
        physical = str(stack["resources"][name]["PhysicalResourceId"])
        if attribute == "QueueName":
            return physical.rstrip("/").rsplit("/", 1)[-1]  # the physical id of a queue is its URL
        if attribute == "Arn" and stack["resources"][name]["ResourceType"] == "AWS::CloudWatch::Alarm":
            (alarm,) = aws("cloudwatch").describe_alarms(AlarmNames=[physical])["MetricAlarms"]
            return str(alarm["AlarmArn"])
        raise AssertionError(f"the test does not render ${{{match.group(1)}}} yet")

    rendered: dict[str, Any] = json.loads(re.sub(r"\$\{(?!!)([^}]+)\}", value, body))
    return rendered


def _dimensions(widget: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(namespace, metric, dimension, value) of every plain metric row of a widget."""
    found = []
    for row in widget["properties"].get("metrics", []):
        fields = [f for f in row if not isinstance(f, dict)]
        if len(fields) >= 4:
            namespace, metric, *pairs = fields
            found += [(namespace, metric, d, v) for d, v in zip(pairs[::2], pairs[1::2], strict=True)]
    return found


def test_the_dashboard_names_the_deployed_resources(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    body = _rendered_dashboard(aws, stack)
    checked: set[str] = set()
    api_id = ""
    for widget in body["widgets"]:
        if widget["type"] == "alarm":
            names = [arn.rsplit(":", 1)[-1] for arn in widget["properties"]["alarms"]]
            found = aws("cloudwatch").describe_alarms(AlarmNames=names)["MetricAlarms"]
            assert {a["AlarmArn"] for a in found} == set(widget["properties"]["alarms"])
            checked.add("alarms")
        for namespace, _, dimension, value in _dimensions(widget):
            if namespace == "Healthbook":
                continue
            if dimension == "FunctionName":
                aws("lambda").get_function(FunctionName=value)
            elif dimension == "QueueName":
                aws("sqs").get_queue_url(QueueName=value)
            elif dimension == "StateMachineArn":
                kind = "STANDARD" if value.endswith("-enrolment") else "EXPRESS"  # a list's workflow; a visit's
                assert aws("stepfunctions").describe_state_machine(stateMachineArn=value)["type"] == kind
            elif dimension == "ScheduleGroup":
                aws("scheduler").get_schedule_group(Name=value)
            elif dimension == "ApiName":  # a REST API's metrics name it, then its stage (the next pair)
                apis = {api["name"]: api["id"] for api in aws("apigateway").get_rest_apis()["items"]}
                assert value in apis, f"no REST API named {value}"
                api_id = apis[value]
            elif dimension == "Stage":
                stages = aws("apigateway").get_stages(restApiId=api_id)["item"]
                assert value in {stage["stageName"] for stage in stages}, f"no stage {value}"
            else:
                raise AssertionError(f"{namespace} dimension {dimension} is not checked yet")
            checked.add(dimension)
    assert checked == {"alarms", "FunctionName", "QueueName", "StateMachineArn", "ScheduleGroup", "ApiName", "Stage"}
    functions = {v for w in body["widgets"] for n, m, d, v in _dimensions(w) if (n, m) == ("AWS/Lambda", "Errors")}
    deployed = {r["PhysicalResourceId"] for r in stack["resources"].values()
                if r["ResourceType"] == "AWS::Lambda::Function"}
    assert functions == deployed


def test_the_dashboard_is_deployed(aws: Callable[..., Any], stack: dict[str, Any]) -> None:
    resource = stack["resources"]["OpsDashboard"]
    assert resource["ResourceStatus"].endswith("_COMPLETE")
    name = _name(stack, stack["template"]["Resources"]["OpsDashboard"]["Properties"]["DashboardName"])
    # LocalStack has no provider of its own for dashboards; the project's plugin creates it (docs/localstack.md).
    assert resource.get("PhysicalResourceId") == name, "is the healthbook_localstack dashboard provider installed?"
    deployed = aws("cloudwatch").get_dashboard(DashboardName=name)
    assert json.loads(deployed["DashboardBody"]) == _rendered_dashboard(aws, stack)
    assert stack["outputs"]["OpsDashboardName"] == name
