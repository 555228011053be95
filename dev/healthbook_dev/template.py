"""template.yaml's resources, as deployed code would see them: for the benchmarks that compare a measurement
with a function's MemorySize or Timeout. Read once per process with cfn-lint's decoder, the one
tests/test_template.py reads the template with (it takes !Ref, !Sub, !If ...)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from healthbook_dev.aws.sandbox import template_path


@cache
def template_resources() -> dict[str, Any]:
    """The Resources section as plain dicts, lists and strings (cfn-lint's nodes carry line numbers)."""
    from cfnlint.decode import decode  # type: ignore[import-untyped]

    path = template_path()
    if path is None:
        raise FileNotFoundError("template.yaml not found: run this from a checkout of the project")
    decoded, problems = decode(str(path))
    if decoded is None or problems:
        raise ValueError(f"{path} does not parse: {problems}")
    resources: dict[str, Any] = json.loads(json.dumps(decoded["Resources"]))
    return resources


def function_variables(logical_id: str) -> dict[str, Any]:
    """The environment variables one function of the template sets itself (its own, not the globals')."""
    properties = template_resources()[logical_id]["Properties"]
    return dict(properties.get("Environment", {}).get("Variables", {}))


def function_limits(logical_id: str) -> tuple[int, int]:
    """(MemorySize in MB, Timeout in seconds) of one function of the template."""
    properties = template_resources()[logical_id]["Properties"]
    return int(properties["MemorySize"]), int(properties["Timeout"])
