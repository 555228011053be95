"""``healthbook enrol validate FILE``: check a province's participant list or vaccination file before uploading it,
with exactly the reader and the row schema production uses (healthbook.enrolment.reader.prepare, then
healthbook.enrolment.schema.validate_row on every canonical row; docs/enrolment.md).

``--json`` prints one document: ``{"file", "kind", "rows", "usable", "problems": [{"row", "column", "code",
"reason"}]}`` (a refused file: rows 0, its one problem with row null). Findings (an unknown vaccine code) and notes
(an ignored column) are listed but do not make a row unusable. Exit status: 0 every row usable, 1 a refused file
or an unusable row, 2 a usage error (no such file, unreadable). Nothing of a value is printed: reasons name the
column, and the population database is not asked (that happens on upload).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthbook.enrolment import Kind
from healthbook.kernel import PORTAL_TZ

if TYPE_CHECKING:  # the reader and the schema load when a file is checked, not when the CLI starts
    from healthbook.enrolment.codes import RowProblem
    from healthbook.enrolment.reader import Limits

from healthbook_dev.cli_support import UsageError, guarded

EXIT_OK, EXIT_UNUSABLE, EXIT_USAGE = 0, 1, 2
NDJSON_SUFFIXES = (".ndjson", ".jsonl")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enrol = subparsers.add_parser("enrol", help="check a province's participant list or vaccination file",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = enrol.add_subparsers(dest="action", required=True)
    validate = actions.add_parser("validate", help="read and check every row as production would")
    validate.add_argument("file", metavar="FILE", help="CSV (UTF-8), XLSX, or NDJSON (FHIR Immunization)")
    validate.add_argument("--kind", choices=[k.value for k in Kind],
                          help="enrolment (participant list) or vaccination (default: vaccination for .ndjson/"
                               ".jsonl, enrolment otherwise)")
    validate.add_argument("--json", action="store_true", help="one JSON document on stdout")
    validate.set_defaults(func=guarded(cmd_validate, name="enrol"))



def check(data: bytes, *, name: str, kind: Kind, limits: Limits | None = None) -> dict[str, Any]:
    """The report of one file: what the command prints with --json (``file`` is ``name``)."""
    from healthbook.enrolment.reader import FileRefused, Limits, prepare
    from healthbook.enrolment.schema import validate_row

    limits = limits or Limits()
    try:
        prepared = prepare(data, name=name, kind=kind, limits=limits)
    except FileRefused as refused:
        return _document(name, kind, 0, 0, [refused.as_problem()])
    today = datetime.now(PORTAL_TZ).date()
    problems: list[RowProblem] = list(prepared.problems)
    usable = 0
    for row in csv.DictReader(io.StringIO(prepared.canonical_csv.decode("utf-8"), newline="")):
        checked = validate_row(row, kind, today=today)
        usable += checked.record is not None
        problems += [*checked.problems, *checked.findings]
    problems.sort(key=lambda p: (p.row is not None, p.row or 0))
    return _document(name, kind, prepared.rows, usable, problems)


def _document(name: str, kind: Kind, rows: int, usable: int, problems: list[RowProblem]) -> dict[str, Any]:
    return {"file": name, "kind": kind.value, "rows": rows, "usable": usable,
            "problems": [p.as_dict() for p in problems], "refused": rows == 0 and bool(problems)}


def cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {args.file}")
    kind = Kind(args.kind) if args.kind else (
        Kind.VACCINATION if path.suffix.lower() in NDJSON_SUFFIXES else Kind.ENROLMENT)
    from healthbook.enrolment.reader import Limits

    limits = Limits()
    with path.open("rb") as fh:  # one byte past the limit: prepare refuses it (N002) without reading the rest
        data = fh.read(limits.max_bytes + 1)
    document = check(data, name=str(path), kind=kind, limits=limits)
    refused = document.pop("refused")
    if args.json:
        json.dump(document, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_table(document, refused)
    ok = not refused and document["usable"] == document["rows"]
    return EXIT_OK if ok else EXIT_UNUSABLE


def _print_table(document: dict[str, Any], refused: bool) -> None:
    from healthbook.enrolment.codes import CODES, RECONCILIATION

    write = sys.stdout.write
    if refused:
        problem = document["problems"][0]
        write(f"REFUSED  {document['file']} ({document['kind']}): {problem['code']} {problem['reason']}\n")
        return
    mark = "OK " if document["usable"] == document["rows"] else "ROWS UNUSABLE"
    write(f"{mark}  {document['file']} ({document['kind']}): {document['usable']}/{document['rows']} row(s) "
          f"usable, {len(document['problems'])} problem(s)\n")
    if not document["problems"]:
        return
    write(f"  {'row':>8}  {'column':<14}  {'code':<5}  {'what':<8}  reason\n")
    for problem in document["problems"]:
        entry = CODES.get(problem["code"])
        what = entry.scope if entry else ("reconcile" if problem["code"] in RECONCILIATION else "")
        row = "" if problem["row"] is None else str(problem["row"])
        write(f"  {row:>8}  {problem['column'] or '':<14}  {problem['code']:<5}  {what:<8}  {problem['reason']}\n")
