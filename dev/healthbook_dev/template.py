"""template.yaml's resources, as deployed code would see them: for the benchmarks that compare a measurement
with a function's MemorySize or Timeout. Read once per process with cfn-lint's decoder, the one
tests/test_template.py reads the template with (it takes !Ref, !Sub, !If ...)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from healthbook_dev.aws.sandbox import template_path


@cache
def template_document() -> dict[str, Any]:
    """The whole template as plain dicts, lists and strings (cfn-lint's nodes carry line numbers)."""
    from cfnlint.decode import decode  # type: ignore[import-untyped]

    path = template_path()
    if path is None:
        raise FileNotFoundError("template.yaml not found: run this from a checkout of the project")
    decoded, problems = decode(str(path))
    if decoded is None or problems:
        raise ValueError(f"{path} does not parse: {problems}")
    document: dict[str, Any] = json.loads(json.dumps(decoded))
    return document


def template_resources() -> dict[str, Any]:
    """The Resources section."""
    resources: dict[str, Any] = template_document()["Resources"]
    return resources


_NO_VALUE = object()


def as_deployed(node: Any, parameters: Mapping[str, str] | None = None) -> Any:
    """``node`` of the template as a stack with these parameters (the defaults for the others) would see it:
    each ``Fn::If`` resolved by its condition, each ``Fn::FindInMap`` of literal keys looked up, ``AWS::NoValue``
    left out. Other intrinsics stay as written."""
    document = template_document()
    values = {name: str(p.get("Default", "")) for name, p in document.get("Parameters", {}).items()}
    values.update(parameters or {})
    conditions = document.get("Conditions", {})

    def holds(condition: Any) -> bool:
        if isinstance(condition, str):
            return holds(conditions[condition])
        (function, arguments), = condition.items()
        if function == "Condition":
            return holds(arguments)
        if function == "Fn::Equals":
            left, right = (values[a["Ref"]] if isinstance(a, dict) else str(a) for a in arguments)
            return left == right
        if function == "Fn::Not":
            return not holds(arguments[0])
        if function in ("Fn::And", "Fn::Or"):
            return (all if function == "Fn::And" else any)(holds(a) for a in arguments)
        raise ValueError(f"a condition this reader does not evaluate: {function}")

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            if value == {"Ref": "AWS::NoValue"}:
                return _NO_VALUE
            if set(value) == {"Fn::If"}:
                condition, when_true, when_false = value["Fn::If"]
                return resolve(when_true if holds(condition) else when_false)
            if set(value) == {"Fn::FindInMap"} and all(isinstance(key, str) for key in value["Fn::FindInMap"]):
                mapping, first, second = value["Fn::FindInMap"]
                return document["Mappings"][mapping][first][second]
            resolved = {key: resolve(item) for key, item in value.items()}
            return {key: item for key, item in resolved.items() if item is not _NO_VALUE}
        if isinstance(value, list):
            return [item for item in map(resolve, value) if item is not _NO_VALUE]
        return value

    return resolve(node)


def deployed_resources(parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resources a stack with these parameters creates (a resource's Condition holding), as it sees them."""
    document = template_document()
    return {name: as_deployed(resource, parameters) for name, resource in document["Resources"].items()
            if "Condition" not in resource
            or as_deployed({"Fn::If": [resource["Condition"], True, False]}, parameters)}


def function_variables(logical_id: str) -> dict[str, Any]:
    """The environment variables one function of the template sets itself (its own, not the globals')."""
    properties = template_resources()[logical_id]["Properties"]
    return dict(properties.get("Environment", {}).get("Variables", {}))


def function_limits(logical_id: str) -> tuple[int, int]:
    """(MemorySize in MB, Timeout in seconds) of one function of the template."""
    properties = template_resources()[logical_id]["Properties"]
    return int(properties["MemorySize"]), int(properties["Timeout"])


def provisioned_tables() -> frozenset[str]:
    """The tables (by the name's last word: ``visits``) that TablesCapacity PROVISIONED puts in provisioned capacity;
    the others stay on demand."""
    deployed = deployed_resources({"TablesCapacity": "PROVISIONED"})
    return frozenset(r["Properties"]["TableName"]["Fn::Sub"].rsplit("-", 1)[-1] for r in deployed.values()
                     if r["Type"] == "AWS::DynamoDB::Table" and r["Properties"]["BillingMode"] == "PROVISIONED")


def alarm_metrics() -> int:
    """The metrics the template's alarms watch, as CloudWatch prices alarms: one a metric of each alarm (a metric
    math alarm's ``MetricStat`` entries, not its expressions)."""
    alarms = [r["Properties"] for r in deployed_resources().values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    return sum(sum("MetricStat" in m for m in a["Metrics"]) if "Metrics" in a else 1 for a in alarms)
