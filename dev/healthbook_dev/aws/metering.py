"""Read LocalStack's request meter (infra/localstack/healthbook_localstack/metering.py) and gather what a benchmark
run used: the input of the whole bill (healthbook_dev.bill, docs/cost.md)."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from typing import Any

from healthbook_dev.aws.lambda_logs import log_events, report_fields, seconds

PATH = "/_healthbook/requests"
OBSERVER_HEADER = "x-hb-observer"
# The functions on a visit's path, by their name's suffix; the template's logical id is <Name>Function.
TASK_FUNCTIONS = ("deliver", "settle")  # the delivery workflow's task states (Summarise runs on settle)
PATH_FUNCTIONS = ("ingest", *TASK_FUNCTIONS, "sweep")


def observer(client: Any) -> Any:
    """Mark a benchmark's own client: its requests are metered as ``observer`` and left out of the bill."""

    def mark(request: Any, **_: Any) -> None:
        request.headers[OBSERVER_HEADER] = "1"

    client.meta.events.register_first("before-sign.*.*", mark)
    return client


def _call(endpoint: str, method: str) -> bytes:
    request = urllib.request.Request(endpoint.rstrip("/") + PATH, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def reset(endpoint: str) -> None:
    _call(endpoint, "DELETE")


def snapshot(endpoint: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_call(endpoint, "GET"))
    return document


def function_logs(logs: Any, stage: str, since_ms: int
                  ) -> tuple[Counter[str], dict[str, float], int, dict[str, Counter[str]]]:
    """From the path's functions' logs since ``since_ms``: invocations (REPORT lines) and the emulator's billed
    seconds by function, the number of distinct EMF metric series (name and dimension set), and the EMF metrics'
    sums by function."""
    invocations: Counter[str] = Counter()
    billed: dict[str, float] = {}
    series: set[str] = set()
    sums: dict[str, Counter[str]] = {}
    for function in PATH_FUNCTIONS:
        for event in log_events(logs, f"/aws/lambda/healthbook-{stage}-{function}", since_ms):
            message = event["message"]
            fields = report_fields(message)
            if fields is not None:
                invocations[function] += 1
                billed[function] = billed.get(function, 0.0) + seconds(fields, "Billed Duration")
                continue
            if '"_aws"' in message:
                try:
                    document = json.loads(message[message.index("{"):])
                except ValueError:
                    continue
                series |= metric_series(document)
                sums.setdefault(function, Counter()).update(metric_sums(document))
    return invocations, billed, len(series), sums


def metric_sums(document: Any) -> Counter[str]:
    """What one EMF document adds to each of its metrics (a value, or the sum of a list of values)."""
    found: Counter[str] = Counter()
    try:
        directives = document["_aws"]["CloudWatchMetrics"]
    except (KeyError, TypeError):
        return found
    for directive in directives:
        for metric in directive.get("Metrics", []):
            value = document.get(metric.get("Name"))
            values = value if isinstance(value, list) else [value]
            found[metric["Name"]] += int(sum(v for v in values if isinstance(v, (int, float))))
    return found


def metric_series(document: Any) -> set[str]:
    """The metric series one EMF document reports: each metric under each of its dimension sets' values."""
    try:
        directives = document["_aws"]["CloudWatchMetrics"]
    except (KeyError, TypeError):
        return set()
    found = set()
    for directive in directives:
        dimensions = [tuple(sorted(d)) for d in directive.get("Dimensions", [[]])]
        for metric in directive.get("Metrics", []):
            for dimension_set in dimensions:
                values = tuple(str(document.get(d, "")) for d in dimension_set)
                found.add(f"{directive.get('Namespace')}/{metric.get('Name')}/{dimension_set}={values}")
    return found


def express_executions(meter: dict[str, Any]) -> int:
    return sum(r["requests"] for r in meter["requests"]
               if r["service"] == "stepfunctions" and r["operation"] == "StartExecution"
               and r["origin"] != "observer")
