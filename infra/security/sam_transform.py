"""Expand template.yaml with the SAM transform, offline, so that checkov sees what CloudFormation deploys.

checkov reads AWS::Serverless::* resources, but not what the transform makes of them: the functions' IAM
roles and their inline policies, the state machine's role, the event source mapping, the schedule rule.
This runs aws-sam-translator (the library behind `sam validate` and CloudFormation's transform) without AWS:
managed policy ARNs come from the map bundled with the translator, local CodeUri/ContentUri become
placeholder S3 URIs (as `sam validate` does), DefinitionUri is inlined.

Suppressions follow their resource. checkov takes them from a resource's Metadata (checkov: skip: - id,
comment) or from `checkov:skip=<id>:<reason>` comment lines inside the resource; the JSON written here has
no comments, so the comment lines are moved into Metadata first, and each SAM resource's Metadata is passed
through to the resources generated from it (its role, its event source mapping, ...).

Usage (with the checkov venv's interpreter): sam_transform.py TEMPLATE OUTPUT.json
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from checkov.common.comment.enum import COMMENT_REGEX
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

REGION = "ap-southeast-1"
PLACEHOLDER_S3 = "s3://healthbook-security-scan/placeholder.zip"
RESOURCE_KEY = re.compile(r"^  ([A-Za-z0-9]+):\s*(#.*)?$")  # a logical id under Resources (two-space indent)


class BundledPoliciesOnly:
    """The managed policy loader: the translator asks it only for names its bundled map lacks."""

    def load(self) -> dict[str, str]:
        return {}


def inline_skips(text: str) -> dict[str, list[dict[str, str]]]:
    """Logical id -> the `checkov:skip=` comment lines inside that resource, as Metadata skip entries."""
    found: dict[str, list[dict[str, str]]] = {}
    section, resource = None, None
    for line in text.splitlines():
        if line[:1].isalpha():
            section, resource = line.split(":", 1)[0], None
            continue
        if section != "Resources":
            continue
        if match := RESOURCE_KEY.match(line):
            resource = match.group(1)
            continue
        skip = COMMENT_REGEX.search(line)
        if skip and resource and line.lstrip().startswith("#"):
            entry = {"id": skip.group(2) or ""}
            if skip.group(3) and skip.group(3)[1:].strip():
                entry["comment"] = skip.group(3)[1:].strip()
            found.setdefault(resource, []).append(entry)
    return found


def prepare(template: dict[str, Any], text: str, root: Path) -> dict[str, Any]:
    for name, skips in inline_skips(text).items():
        metadata = template["Resources"][name].setdefault("Metadata", {})
        metadata.setdefault("checkov", {}).setdefault("skip", []).extend(skips)
    for resource in template.get("Resources", {}).values():
        kind, props = resource.get("Type"), resource.setdefault("Properties", {})
        if kind == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            props["CodeUri"] = PLACEHOLDER_S3
        elif kind == "AWS::Serverless::LayerVersion" and isinstance(props.get("ContentUri"), str):
            props["ContentUri"] = PLACEHOLDER_S3
        elif kind == "AWS::Serverless::StateMachine" and isinstance(props.get("DefinitionUri"), str):
            props["Definition"] = json.loads((root / props.pop("DefinitionUri")).read_text(encoding="utf-8"))
    return template


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, output = Path(argv[1]), Path(argv[2])
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    text = source.read_text(encoding="utf-8")
    template = prepare(yaml_parse(text), text, source.resolve().parent)
    transformed = transform(template, {}, BundledPoliciesOnly(), passthrough_metadata=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(transformed, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
