"""The largest file a province may upload, against the memory and time of the enrolment functions.

A file is read whole by Prepare (the canonical CSV and every row's problem in memory) and its outcome is built
whole by Summarise (one outcome per row). Limits.max_rows and Limits.max_bytes bound both; this measures, each in
a child process, the peak RSS and the time at those limits, against a child that only imports the same modules
(the baseline, 1.0), and prints each peak as a share of the function's MemorySize and each time as a share of its
Timeout (template.yaml). Inputs, at Limits().max_rows rows unless said:

* Prepare, a participant CSV of generated rows (the common case);
* Prepare, a CSV whose every row is refused (a control character): one problem per row;
* Prepare, NDJSON whose every line is an invalid Immunization: one problem per line, the validator's worst;
* Prepare, NDJSON of valid Immunization lines: FHIR validation is the slowest per line, so it is timed on
  --ndjson-rows lines and scaled to max_rows (labelled as such; within max_bytes a realistic line of ~800 bytes
  allows ~250,000 lines);
* Summarise, max_rows outcomes from result files shaped as the ResultWriter writes them.

Usage: python bench/enrol_limits.py [--rows N] [--ndjson-rows 50000]   (`make bench` runs it)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any


def _rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would keep the parent's from before the exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def _enrolment_rows(n: int) -> bytes:
    from healthbook_dev.generate.enrolment import enrolment_csv, enrolment_list

    head, *rows = enrolment_csv(enrolment_list(2000, seed=7).rows).splitlines()
    return head + b"\n" + b"\n".join(rows[i % len(rows)] for i in range(n)) + b"\n"


def _refused_rows(n: int) -> bytes:
    from healthbook_dev.generate.enrolment import enrolment_csv, enrolment_list

    head = enrolment_csv(enrolment_list(1, seed=7).rows).splitlines()[0]
    return head + b"\n" + b"a\x01\n" * n


def _invalid_lines(n: int) -> bytes:
    return b'{"resourceType":"Immunization"}\n' * n


def _valid_lines(n: int) -> bytes:
    from healthbook_dev.generate.enrolment import enrolment_list, vaccination_ndjson, vaccination_rows

    lines = vaccination_ndjson(vaccination_rows(enrolment_list(500, seed=7).registered, seed=7)).splitlines()
    return b"\n".join(lines[i % len(lines)] for i in range(n)) + b"\n"


INPUTS = {"csv": (_enrolment_rows, "list.csv", "enrolment"), "csv-refused": (_refused_rows, "list.csv", "enrolment"),
          "ndjson-invalid": (_invalid_lines, "v.ndjson", "vaccination"),
          "ndjson-valid": (_valid_lines, "v.ndjson", "vaccination")}


class _Results:
    """The result files of a Map run held as bytes, read one at a time as Summarise reads them from S3."""

    def __init__(self, rows: int, per_file: int = 1000, batch: int = 100) -> None:
        self.files: dict[str, bytes] = {}
        children = [range(start, min(start + batch, rows)) for start in range(0, rows, batch)]
        for first in range(0, len(children), per_file):
            executions = [{"Status": "SUCCEEDED", "Output": json.dumps({"list_id": "bench", "counts": {}, "outcomes": [
                {"row": r + 2, "outcome": "not_matched" if r % 10 == 0 else "created",
                 "code": "R001" if r % 10 == 0 else None, "masked_id": "001******789"} for r in child]})}
                for child in children[first:first + per_file]]
            self.files[f"results/{first}.json"] = json.dumps(executions).encode()

    def read(self, key: str) -> bytes:
        return self.files[key]


def child(case: str, rows: int) -> dict[str, Any]:
    """Run one case in this process and return its peak RSS and time (the input built before the clock)."""
    from healthbook.aws.enrolment_runtime import outcomes_of
    from healthbook.enrolment.outcome import outcome_csv, summarise
    from healthbook.enrolment.reader import Limits, prepare
    from healthbook.enrolment.schema import Kind

    limits = Limits(max_rows=max(rows, Limits().max_rows))
    if case == "baseline":
        return {"peak_mb": _rss_mb(), "seconds": 0.0}
    if case == "summarise":
        results = _Results(rows)
        manifest = {"ResultFiles": {"SUCCEEDED": [{"Key": key} for key in results.files]}}
        start = time.perf_counter()
        outcomes, _ = outcomes_of(results, manifest)
        outcomes.sort(key=lambda o: int(o.row))
        summary = summarise(outcomes)
        size = len(outcome_csv(outcomes))
        return {"peak_mb": _rss_mb(), "seconds": time.perf_counter() - start, "rows": summary["rows"],
                "input_mb": sum(map(len, results.files.values())) / 1e6, "output_mb": size / 1e6}
    build, name, kind = INPUTS[case]
    data = build(rows)
    start = time.perf_counter()
    prepared = prepare(data, name=name, kind=Kind(kind), limits=limits)
    return {"peak_mb": _rss_mb(), "seconds": time.perf_counter() - start, "rows": prepared.rows,
            "kept": prepared.kept, "problems": len(prepared.problems), "input_mb": len(data) / 1e6,
            "over_max_bytes": len(data) > Limits().max_bytes}


def run(case: str, rows: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", case, "--rows", str(rows)], check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    from healthbook.enrolment.reader import Limits
    from healthbook_dev.template import function_limits  # the parent only: a child's baseline stays its own

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=Limits().max_rows)
    parser.add_argument("--ndjson-rows", type=int, default=50_000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows)))
        return
    functions = {"prepare": function_limits("EnrolmentPrepareFunction"),
                 "summarise": function_limits("EnrolmentSummariseFunction")}
    baseline = run("baseline", 0)["peak_mb"]
    print(f"Limits: max_rows {Limits().max_rows:,}, max_bytes {Limits().max_bytes / 2**20:.0f} MiB; "
          f"baseline child (imports only): {baseline:.0f} MB = 1.0")
    print(f"{'case':<32}{'rows':>11}{'input MB':>10}{'peak MB':>9}{'x base':>8}{'of memory':>11}"
          f"{'seconds':>9}{'of timeout':>12}")
    worst = 0.0
    cases = [("prepare", "csv", args.rows), ("prepare", "csv-refused", args.rows),
             ("prepare", "ndjson-invalid", args.rows), ("prepare", "ndjson-valid", args.ndjson_rows),
             ("summarise", "summarise", args.rows)]
    for step, case, rows in cases:
        result = run(case, rows)
        memory, timeout = functions[step]
        seconds, note = result["seconds"], ""
        if rows < args.rows:  # timed on fewer lines: the time scales with the lines, the memory is not scaled
            seconds, note = seconds * args.rows / rows, f"  (timed on {rows:,} lines, scaled to {args.rows:,})"
        if result.get("over_max_bytes"):
            note += "  (larger than max_bytes: refused unread on AWS)"
        share = result["peak_mb"] / memory
        worst = max(worst, share, seconds / timeout)
        print(f"{step + ' ' + case:<32}{rows:>11,}{result.get('input_mb', 0):>10.0f}{result['peak_mb']:>9.0f}"
              f"{result['peak_mb'] / baseline:>8.1f}{share:>10.0%}{seconds:>9.0f}{seconds / timeout:>11.0%}{note}")
    print(f"largest share of a function's memory or time: {worst:.0%} (target: below 70 %)")


if __name__ == "__main__":
    main()
