"""Reading a function's CloudWatch log group back, for the benchmarks: its events, and the fields of the
runtime's REPORT lines (Duration, Billed Duration, Memory Size, Init Duration on a cold start)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def log_events(logs: Any, group: str, since_ms: int) -> Iterator[dict[str, Any]]:
    """Every event of ``group`` since ``since_ms`` (epoch milliseconds), page after page; none when the group
    does not exist (the function never ran)."""
    kwargs: dict[str, Any] = {"logGroupName": group, "startTime": since_ms}
    while True:
        try:
            page = logs.filter_log_events(**kwargs)
        except logs.exceptions.ResourceNotFoundException:
            return
        yield from page["events"]
        if "nextToken" not in page:
            return
        kwargs["nextToken"] = page["nextToken"]


def report_fields(message: str) -> dict[str, str] | None:
    """The fields of a REPORT line ({"Duration": "12.3 ms", ...}); None for any other line."""
    if not message.startswith("REPORT"):
        return None
    return dict(part.split(": ", 1) for part in message.strip().split("\t")[1:] if ": " in part)


def seconds(fields: dict[str, str], name: str) -> float:
    """A REPORT duration field in seconds ("Billed Duration": "13 ms" -> 0.013); 0 when absent."""
    return float(fields.get(name, "0 ms").split()[0]) / 1000
