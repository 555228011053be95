"""Summarise checkov's JSON results and decide whether the build passes (docs/security.md, "Policy").

Usage: report.py RESULTS_JSON [CHECKOV_EXIT_CODE]

The build fails on:
  - any failed check that is not suppressed. Offline (no Prisma Cloud API key) checkov reports no severity,
    so a "HIGH and above" threshold cannot be applied: every failed check counts. Were severities present,
    they would be printed, and the rule would stay the same;
  - a suppression without a comment (checkov fills in "No comment provided"): each one must say why;
  - a parsing error, or a scan that saw no resource (a scan of nothing passes vacuously);
  - checkov's own verdict disagreeing with the counts (exit code 1 with no failed check, or 0 with some).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

BARE_COMMENTS = {"", "No comment provided"}


def load(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else [data]


def comment_of(check: dict[str, Any]) -> str:
    """The suppression's comment: checkov puts it in check_result (older versions beside it)."""
    comment = (check.get("check_result") or {}).get("suppress_comment") or check.get("suppress_comment") or ""
    return str(comment).strip()


def line(check: dict[str, Any], extra: str = "") -> str:
    severity = check.get("severity")
    where = check.get("resource", "?")
    text = f"  {check['check_id']:<12} {where:<52} {check.get('check_name', '')}"
    if severity:
        text += f" [severity {severity}]"
    if extra:
        text += f"\n  {'':<12} -> {extra}"
    return text


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    reports = load(Path(argv[1]))
    exit_code = int(argv[2]) if len(argv) == 3 else None

    passed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    parsing_errors: list[str] = []
    resources = 0
    version = "?"
    for report in reports:
        results = report.get("results", {})
        passed += results.get("passed_checks", [])
        failed += results.get("failed_checks", [])
        skipped += results.get("skipped_checks", [])
        parsing_errors += results.get("parsing_errors", [])
        summary = report.get("summary", {})
        resources += int(summary.get("resource_count", 0))
        version = summary.get("checkov_version", version)

    frameworks = ", ".join(sorted({str(r.get("check_type")) for r in reports}))
    print(f"checkov {version} ({frameworks}): {resources} resources, {len(passed)} checks passed")

    if skipped:
        print(f"suppressed in template.yaml, each with its reason (docs/security.md lists them): {len(skipped)}")
        by_check: dict[str, list[dict[str, Any]]] = {}
        for check in skipped:
            by_check.setdefault(check["check_id"], []).append(check)
        for check_id, checks in sorted(by_check.items()):
            names = sorted(str(c.get("resource", "?")).split(".", 1)[-1] for c in checks)
            print(f"  {check_id:<12} {checks[0].get('check_name', '')}: {', '.join(names)}")
    if failed:
        print(f"FAILED ({len(failed)}):")
        for check in sorted(failed, key=lambda c: (c["check_id"], c.get("resource", ""))):
            print(line(check, str(check.get("guideline") or "")))

    problems: list[str] = []
    if failed:
        by_id = Counter(c["check_id"] for c in failed)
        problems.append(f"{len(failed)} failed check(s): " + ", ".join(f"{k} x{v}" for k, v in sorted(by_id.items())))
    bare = [c for c in skipped if comment_of(c) in BARE_COMMENTS]
    if bare:
        problems.append("suppression(s) without a comment: "
                        + ", ".join(f"{c['check_id']} on {c.get('resource')}" for c in bare))
    if parsing_errors:
        problems.append(f"parsing errors: {parsing_errors}")
    if resources == 0:
        problems.append("checkov saw no resource: the scan proves nothing")
    if exit_code is not None and (exit_code == 1) != bool(failed):
        problems.append(f"checkov exited {exit_code} with {len(failed)} failed check(s)")

    print(f"checkov summary: passed={len(passed)} failed={len(failed)} skipped={len(skipped)} "
          f"parsing_errors={len(parsing_errors)}")
    if problems:
        for problem in problems:
            print(f"security check FAILED: {problem}", file=sys.stderr)
        print("Fix the template, or suppress a check that does not apply on its resource with a comment "
              "saying why (Metadata: checkov: skip: - id, comment; or a `# checkov:skip=<id>:<reason>` line in it) "
              "and list it in docs/security.md.",
              file=sys.stderr)
        return 1
    print("security check passed: no failed checkov check, every suppression justified")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
