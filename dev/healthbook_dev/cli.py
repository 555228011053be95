"""The ``healthbook`` command.

``validate`` is a contract other parts depend on (docs/conformance.md): ``--json`` prints exactly
``{"files": [{"path", "accepted", "rejected", "facility", "errors",
"visits": [{"ma_lk", "accepted", "health_book", "errors", "findings"}]}]}``, every issue with its ``blocks``
("file", "visit" or "none") and ``basis``; a file's ``errors`` and a visit's ``errors`` are what keep them out,
``findings`` do not. Exit status 0 when every visit of every file is admitted to the health book (findings
allowed), 1 when a file is rejected or a visit is not admitted (with ``--strict``, also when there is any
finding), 2 on a usage or I/O error.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from healthbook import standard as standards
from healthbook.kernel import MAX_FILE_BYTES
from healthbook.parsing.safe_xml import Limits
from healthbook.validation import FileResult, Options, validate_path

from healthbook_dev.cli_support import UsageError, xml_files

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def _options(args: argparse.Namespace) -> Options:
    limit = int(args.max_mb * 1024 * 1024)
    return Options(standard=args.standard, limits=Limits(max_file_bytes=limit, max_inner_bytes=limit))


_CLASS = {"file": "FILE   ", "visit": "VISIT  ", "none": "finding"}


def _print_report(result: FileResult, rejected: bool, accepted: bool, admitted: int, findings: int) -> None:
    write = sys.stdout.write
    mark = "REJECTED" if rejected else "OK " if accepted else "PARTIAL" if admitted else "NOT ADMITTED"
    write(f"{mark}  {result.path}  (facility {result.facility or '?'}, {len(result.visits)} visit(s), "
          f"{findings} finding(s))\n")
    for issue in result.errors:
        write(f"    {_CLASS[issue.blocks]} {issue.code} {issue.message_vi}\n            {issue.message_en}\n")
    for visit in result.visits:
        if visit.issues:
            state = "in the health book" if not rejected and visit.accepted else "NOT admitted"
            write(f"  visit MA_LK={visit.ma_lk or '?'} [QĐ {visit.standard}] {state}\n")
        for issue in visit.errors + visit.findings:
            where = ".".join(x for x in (issue.table, issue.field) if x)
            value = f" = {issue.value!r}" if issue.value is not None else ""
            write(f"    {_CLASS[issue.blocks]} {issue.code} {where}{value}: {issue.message_vi}\n"
                  f"            {issue.message_en}\n")


def cmd_validate(args: argparse.Namespace) -> int:
    """Each file is reported as soon as it is read, and dropped: 2,000 files cost one file's memory, and the
    collector never walks the rows of the files already done (a tenth of the time on small files)."""
    options = _options(args)
    paths = xml_files(args.paths, verb="validate")
    files = accepted = rejected = visits = admitted = findings = 0
    strict_failed = False
    if args.json:
        sys.stdout.write('{"files": [')
    for path in paths:
        result = validate_path(str(path), options)
        if not files and getattr(args, "process_ends", False):
            # What the first file loaded (the standard, the code lists, the memos) lasts as long as the process:
            # frozen, the collector neither walks it again nor tears it down at exit (as each app.py does).
            gc.freeze()
        # What the report and the counts need, read once (FileResult's properties walk every issue each time).
        file_rejected = result.rejected
        visits_accepted = [visit.accepted for visit in result.visits]
        file_admitted = 0 if file_rejected else sum(visits_accepted)
        file_accepted = not file_rejected and bool(visits_accepted) and all(visits_accepted)
        file_findings = sum(len(visit.findings) for visit in result.visits)
        if args.json:
            sys.stdout.write((", " if files else "") + json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            _print_report(result, file_rejected, file_accepted, file_admitted, file_findings)
        files += 1
        accepted += file_accepted
        rejected += file_rejected
        visits += len(result.visits)
        admitted += file_admitted
        findings += file_findings
        strict_failed |= bool(file_findings)
    if args.json:
        sys.stdout.write("]}\n")
    else:
        sys.stdout.write(f"\n{accepted}/{files} file(s) accepted, {rejected} rejected; {admitted}/{visits} visit(s) "
                         f"in the health book; {findings} finding(s)\n")
    ok = accepted == files and not (args.strict and strict_failed)
    return EXIT_OK if ok else EXIT_REJECTED


def cmd_generate(args: argparse.Namespace) -> int:
    from healthbook_dev.generate import generate_batch, generate_his_export

    if args.his_export and (args.defect_rate or args.rows is not None or args.standard_version is not None):
        raise UsageError("--his-export plants its own defects and follows each visit's date: "
                         "no --defect-rate, --rows or --standard with it")
    try:
        if args.his_export:
            manifest = generate_his_export(Path(args.out), visits=args.visits, seed=args.seed, facility=args.facility)
        else:
            manifest = generate_batch(Path(args.out), visits=args.visits, seed=args.seed,
                                      defect_rate=args.defect_rate, standard=args.standard_version or "4750",
                                      detail_rows=args.rows, facility=args.facility)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    defects = sum(1 for f in manifest["files"] if f.get("defect") or f.get("defects"))
    print(f"wrote {args.visits} file(s) to {args.out} ({defects} with a labelled defect; see manifest.json)")
    return EXIT_OK


def summary_table(results: list[FileResult], manifest: dict[str, object] | None, seconds: float) -> str:
    by_file = {Path(str(f["file"])).name: f for f in (manifest or {}).get("files", [])}  # type: ignore[attr-defined]
    rows: Counter[tuple[str, str]] = Counter()
    codes: Counter[str] = Counter()
    for result in results:
        scenario = str(by_file.get(Path(result.path).name, {}).get("scenario", "-"))
        rows[(scenario, "accepted" if result.accepted else "rejected")] += 1
        for issue in result.issues:
            codes[f"{issue.code} {'finding' if issue.blocks == 'none' else 'blocks ' + issue.blocks}"] += 1
    scenarios = sorted({s for s, _ in rows})
    lines = [f"{'scenario':<22}{'files':>7}{'accepted':>10}{'rejected':>10}", "-" * 49]
    for scenario in scenarios:
        ok, bad = rows[(scenario, "accepted")], rows[(scenario, "rejected")]
        lines.append(f"{scenario:<22}{ok + bad:>7}{ok:>10}{bad:>10}")
    total_ok = sum(n for (_, state), n in rows.items() if state == "accepted")
    lines += ["-" * 49, f"{'total':<22}{len(results):>7}{total_ok:>10}{len(results) - total_ok:>10}", ""]
    if codes:
        lines.append("issues by code:")
        lines += [f"  {code:<16}{n:>6}" for code, n in codes.most_common()]
    rate = len(results) / seconds if seconds else 0.0
    lines.append(f"\nvalidated {len(results)} file(s) in {seconds:.2f} s ({rate:.0f} files/s)")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    if not args.validate_only:
        from healthbook_dev.demos.local import run

        return run(Path(args.out), visits=args.visits, seed=args.seed, defect_rate=args.defect_rate)
    from healthbook_dev.generate import MANIFEST, generate_batch

    out = Path(args.out)
    manifest = generate_batch(out, visits=args.visits, seed=args.seed, defect_rate=args.defect_rate)
    options = Options()
    started = time.perf_counter()
    results = [validate_path(str(out / f["file"]), options) for f in manifest["files"]]
    elapsed = time.perf_counter() - started
    print(f"generated {args.visits} submissions in {out}/ (labels in {out / MANIFEST})\n")
    print(summary_table(results, manifest, elapsed))
    pairs = list(zip(manifest["files"], results, strict=True))
    # A labelled defect is caught when its code is reported, as a finding or as what keeps the visit out.
    missed = [f["file"] for f, r in pairs if f["defect"] and f["defect"]["code"] not in _codes(r)]
    false_alarms = [f["file"] for f, r in pairs if not f["defect"] and _codes(r)]
    print(f"labelled defects missed: {len(missed)}; clean files with an issue: {len(false_alarms)}")
    return EXIT_OK if not missed and not false_alarms else EXIT_REJECTED


def _codes(result: FileResult) -> set[str]:
    return {i.code for i in result.issues}


def cmd_standard(args: argparse.Namespace) -> int:
    if args.action == "derive":
        from healthbook_dev import derive

        for path in derive.write(Path(args.spec)):
            print(f"wrote {path}")
    else:
        for version in standards.version_ids():
            std = standards.load(version)
            fields = sum(len(t.fields) for t in std.tables.values())
            print(f"QĐ {version}: {std.title}; from {std.effective_from}; {len(std.tables)} tables, {fields} fields")
    return EXIT_OK


def cmd_docs(args: argparse.Namespace) -> int:
    from healthbook_dev.docs import errors_markdown

    Path(args.out).write_text(errors_markdown(), encoding="utf-8")
    print(f"wrote {args.out}")
    return EXIT_OK


def build_parser(*, every_command: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without ``every_command``, ``validate`` alone (see :func:`main`)."""
    parser = argparse.ArgumentParser(prog="healthbook", description="Electronic health-book pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="validate claim files against QĐ 130/4750")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="a file, or a folder (all *.xml inside)")
    validate.add_argument("--json", action="store_true", help="one JSON document on stdout")
    validate.add_argument("--strict", action="store_true",
                          help="exit 1 on any finding too, as a facility's own pre-submission check may want")
    validate.add_argument("--standard", choices=("auto", *standards.version_ids()), default="auto",
                          help="force a version of the standard (default: by each visit's date)")
    validate.add_argument("--max-mb", type=float, default=MAX_FILE_BYTES / 1024 / 1024,
                          help="size limit per file and per decoded table (default 20)")
    validate.set_defaults(func=cmd_validate)
    if not every_command:
        return parser

    generate = sub.add_parser("generate", help="write realistic synthetic submissions, one visit per file")
    generate.add_argument("--visits", type=int, required=True)
    generate.add_argument("--out", required=True)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--defect-rate", type=float, default=0.0, help="share of files with one labelled defect")
    generate.add_argument("--standard", dest="standard_version", choices=standards.version_ids(),
                          help="standard version (default: 4750)")
    generate.add_argument("--rows", type=int, default=None, help="detail rows per visit (default: realistic mix)")
    generate.add_argument("--facility", metavar="MACSKCB", help="every file from this facility (default: a mix)")
    generate.add_argument("--his-export", action="store_true",
                          help="files shaped like real HIS exports of 2026 (healthbook_dev.generate.his_export), "
                               "their shapes and planted defects labelled in manifest.json")
    generate.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="the pipeline locally on moto: sign, upload, ingest, receipts, records")
    demo.add_argument("--validate-only", action="store_true", help="only generate and validate (no AWS at all)")
    demo.add_argument("--visits", type=int, default=200)
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--seed", type=int, default=2024)
    demo.add_argument("--defect-rate", type=float, default=0.2)
    demo.set_defaults(func=cmd_demo)

    std = sub.add_parser("standard", help="show versions, or re-derive the data from the annex")
    std.add_argument("action", choices=("show", "derive"))
    std.add_argument("--spec", default="../shared/spec", help="folder holding tables/pl_NN.tsv and chk_NN.tsv")
    std.set_defaults(func=cmd_standard)

    docs = sub.add_parser("docs", help="regenerate docs/errors.md from the rule catalogue")
    docs.add_argument("--out", default="docs/errors.md")
    docs.set_defaults(func=cmd_docs)

    from healthbook_dev.commands.enrol import register as register_enrolment
    from healthbook_dev.commands.ops import register as register_operations
    from healthbook_dev.commands.receipt import register as register_receipt
    from healthbook_dev.commands.signing import register as register_signatures

    register_signatures(sub)
    register_receipt(sub)
    register_operations(sub)
    register_enrolment(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["validate"]:
        # A facility's scripts run `healthbook validate` on every batch: it does not import the other commands'
        # modules. Arguments it does not know are left to the whole parser, which says so as it always has.
        args, unknown = build_parser(every_command=False).parse_known_args(arguments)
        if unknown:
            args = build_parser().parse_args(arguments)
    else:
        args = build_parser().parse_args(arguments)
    args.process_ends = argv is None  # the command line of this process, which ends with the command
    try:
        code: int = args.func(args)
        return code
    except UsageError as exc:
        print(f"healthbook: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"healthbook: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
