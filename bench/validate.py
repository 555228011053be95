"""Validation speed and memory, as ratios against a floor measured in the same run.

(a) floor: lxml parse of the envelope, base64 decode, parse and walk of every inner document (reading
    each element's name and text: a walk that cannot tell which field a value belongs to does no work);
(b) full validation (all field, cross-field and cross-table rules);
(c) full validation plus typed records (what ingestion will run).
Target: b/a >= 0.4 on one core; the same for ``healthbook validate`` over --cli-files files of two sizes (about
20 KiB, most real visits, and about 86 KiB), as a whole process against the floor over the same files.
Then peak RSS while validating one ~20 MB file (target < 400 MB),
measured in a child process against a child that only imports the package; and the two floods of bounded work
(issue 17: 20 MB of one-line HOSO, and one visit of 20 MB of rows missing every field), their peak RSS as a share
of the ingest function's MemorySize (template.yaml) and their time.

Usage: python bench/validate.py [--files 300] [--rows 70] [--rounds 7] [--big-mb 20] [--cli-files 2000]
       [--cli-only | --no-memory]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from healthbook.records import visit_record
from healthbook.validation import validate_bytes
from healthbook_dev.generate import build_visit, submission
from healthbook_dev.template import function_limits
from lxml import etree


def inner_documents(data: bytes) -> Iterator[etree._Element]:
    """Parse the envelope, then base64-decode and parse each inner document."""
    envelope = etree.fromstring(data)
    for content in envelope.iter("NOIDUNGFILE"):
        yield etree.fromstring(base64.b64decode(content.text or ""))


def floor(data: bytes) -> int:
    """The least any validator must do: parse everything and read every element's name and value."""
    walked = 0
    for inner in inner_documents(data):
        for element in inner.iter():
            element.tag  # noqa: B018 - reading it is the work being measured
            element.text  # noqa: B018
            walked += 1
    return walked


def floor_text_only(data: bytes) -> int:
    """A weaker floor that reads values but not names (shown for comparison)."""
    walked = 0
    for inner in inner_documents(data):
        for element in inner.iter():
            element.text  # noqa: B018
            walked += 1
    return walked


def full(data: bytes) -> int:
    return len(validate_bytes(data).visits)


def with_records(data: bytes) -> int:
    result = validate_bytes(data)
    return sum(len(visit_record(v, result.facility).tables) for v in result.visits if v.accepted)


def timed(fn, files: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for data in files:
        fn(data)
    return time.perf_counter() - started


def interleaved(fns: dict[str, object], files: list[bytes], rounds: int) -> dict[str, list[float]]:
    """files/s per round for each function, the functions taking turns so that slow spells hit them all."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(len(files) / timed(fn, files))
    return out


def big_file(path: Path, megabytes: float) -> int:
    """One visit grown until the envelope is about ``megabytes`` in size."""
    rows = 400
    while True:
        data = submission(build_visit(random.Random(1), scenario="inpatient", detail_rows=rows))
        if len(data) >= megabytes * 1024 * 1024 * 0.97 or rows > 200_000:
            path.write_bytes(data)
            return len(data)
        rows = int(rows * megabytes * 1024 * 1024 / len(data)) + 1


CHILD = """
import sys, time
from healthbook.validation import validate_path
from healthbook.validation.engine import Options
from healthbook.parsing.safe_xml import Limits
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
before, seconds, codes = hwm(), 0.0, "-"
if sys.argv[1] != "-":
    limit = 64 * 1024 * 1024 if sys.argv[2] == "big" else 20 * 1024 * 1024  # the big one is grown past 20 MB
    start = time.perf_counter()
    result = validate_path(sys.argv[1], Options(limits=Limits(limit, limit)))
    seconds = time.perf_counter() - start
    if sys.argv[2] == "big":
        assert result.visits and not result.errors, [e.code for e in result.errors]
    codes = ",".join(sorted({i.code for i in result.issues if i.blocks != "none"})) or "-"
print(before, hwm(), seconds, codes, len(result.issues) if sys.argv[1] != "-" else 0)
"""


def peak_rss_mb(path: str, kind: str = "big") -> tuple[float, float, str, int]:
    """Peak RSS (MB) of a fresh child validating ``path`` (VmHWM; ru_maxrss would include the parent), its
    time, the blocking codes and the number of issues."""
    out = subprocess.run([sys.executable, "-c", CHILD, path, kind], check=True, capture_output=True,
                         text=True).stdout
    _, peak, seconds, codes, issues = out.split()
    return int(peak) / 1024, float(seconds), codes, int(issues)


def flood_files(folder: Path, limit: int) -> dict[str, Path]:
    """The two floods of bounded work (docs/hostile-inputs.md), each about ``limit`` bytes: one-line HOSO as
    many as fit (refused whole, E019), and one visit whose XML2 holds as many rows missing every field as fit
    (each kind of issue listed 100 times, the rest counted in V299)."""
    def envelope(hoso: str, count: int) -> bytes:
        return ("<GIAMDINHHS><THONGTINDONVI><MACSKCB>01001</MACSKCB></THONGTINDONVI><THONGTINHOSO>"
                f"<NGAYLAP>20260301</NGAYLAP><SOLUONGHOSO>{count}</SOLUONGHOSO><DANHSACHHOSO>{hoso}"
                "</DANHSACHHOSO></THONGTINHOSO></GIAMDINHHS>").encode()

    def b64(text: bytes) -> str:
        return base64.b64encode(text).decode()

    xml1 = b64(b"<TONG_HOP><MA_LK>F1</MA_LK><NGAY_VAO>202603010800</NGAY_VAO></TONG_HOP>")
    one = f"<HOSO><FILEHOSO><LOAIHOSO>XML1</LOAIHOSO><NOIDUNGFILE>{xml1}</NOIDUNGFILE></FILEHOSO></HOSO>"
    visits = (limit - 400) // len(one)
    row = b"<CHI_TIET_THUOC><MA_LK>F1</MA_LK></CHI_TIET_THUOC>"
    rows = (limit - 600) * 3 // 4 // len(row)
    xml2 = b64(b"<CHITIEU_CHITIET_THUOC><DSACH_CHI_TIET_THUOC>" + row * rows
               + b"</DSACH_CHI_TIET_THUOC></CHITIEU_CHITIET_THUOC>")
    paths = {f"{visits:,} one-line HOSO": envelope(one * visits, visits),
             f"one visit, {rows:,} XML2 rows missing every field": envelope(
                 f"<HOSO><FILEHOSO><LOAIHOSO>XML1</LOAIHOSO><NOIDUNGFILE>{xml1}</NOIDUNGFILE></FILEHOSO>"
                 f"<FILEHOSO><LOAIHOSO>XML2</LOAIHOSO><NOIDUNGFILE>{xml2}</NOIDUNGFILE></FILEHOSO></HOSO>", 1)}
    out = {}
    for n, (name, data) in enumerate(paths.items()):
        assert len(data) <= limit, (name, len(data))
        out[name] = folder / f"flood-{n}.xml"
        out[name].write_bytes(data)
    return out


def cli_environment(cache: Path) -> dict[str, str]:
    """The command's environment with a bytecode cache, as a package installed by pip has (pip compiles it).
    Machines that set PYTHONDONTWRITEBYTECODE (this one does) would otherwise make every run compile the package
    again: about 90 ms of the 2 s the small files take, a cost of the machine's setting, not of the command."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    environment["PYTHONPYCACHEPREFIX"] = str(cache)
    return environment


def cli_ratio(folder: Path, files: list[bytes], rounds: int) -> tuple[float, float, float]:
    """``healthbook validate FOLDER`` (a fresh process: start-up, reading, reporting and all) against the floor
    over the same files in this process, interleaved round by round; the best of each (as timeit). One run
    first, untimed, writes the bytecode cache (``cli_environment``)."""
    for n, data in enumerate(files):
        (folder / f"{n:05d}.xml").write_bytes(data)
    command = [str(Path(sys.executable).with_name("healthbook")), "validate", str(folder)]
    environment = cli_environment(folder / "bytecode")
    subprocess.run([*command[:2], str(folder / "00000.xml")], check=False, stdout=subprocess.DEVNULL,
                   env=environment)
    best_floor = best_cli = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for data in files:
            floor(data)
        best_floor = min(best_floor, time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(command, check=False, stdout=subprocess.DEVNULL, env=environment)
        best_cli = min(best_cli, time.perf_counter() - start)
    return len(files) / best_floor, len(files) / best_cli, best_floor / best_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--rows", type=int, default=70)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--big-mb", type=float, default=20.0)
    parser.add_argument("--cli-files", type=int, default=2000, help="files per size for the CLI ratio (0: skip)")
    parser.add_argument("--cli-only", action="store_true", help="the CLI ratio alone (no in-process ratio, no memory)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak RSS and the two floods")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says

    if not args.cli_only:
        in_process(args)
    if args.cli_files:
        cli(args)
    if not (args.cli_only or args.no_memory):
        memory(args)


def in_process(args: argparse.Namespace) -> None:
    rng = random.Random(42)
    files = [submission(build_visit(rng, scenario="outpatient", detail_rows=args.rows)) for _ in range(args.files)]
    assert all(validate_bytes(f).accepted for f in files[:20])
    size = sum(len(f) for f in files) / len(files)
    print(f"{args.files} generated one-visit files, {args.rows} detail rows each, mean {size / 1024:.0f} KiB")

    runs = interleaved({"a": floor, "a_text": floor_text_only, "b": full, "c": with_records}, files, args.rounds)
    best = {name: max(rates) for name, rates in runs.items()}  # the least disturbed round of each (as timeit)
    median_b = statistics.median(b / a for a, b in zip(runs["a"], runs["b"], strict=True))
    spread = sorted(b / a for a, b in zip(runs["a"], runs["b"], strict=True))
    print(f"(a) floor: parse + base64 + parse and walk inner documents  {best['a']:8.0f} files/s")
    print(f"(b) full validation                                          {best['b']:8.0f} files/s   "
          f"b/a = {best['b'] / best['a']:.2f} (target >= 0.40)")
    print(f"    per-round b/a over {args.rounds} interleaved rounds: median {median_b:.2f}, "
          f"range {spread[0]:.2f}-{spread[-1]:.2f} (machine noise)")
    print(f"(c) full validation + typed records                          {best['c']:8.0f} files/s   "
          f"c/a = {best['c'] / best['a']:.2f}")
    print(f"    for comparison, a floor that reads values but not names: {best['a_text']:8.0f} files/s   "
          f"b/a' = {best['b'] / best['a_text']:.2f}")


def cli(args: argparse.Namespace) -> None:
    print(f"the CLI over {args.cli_files:,} files, against the floor over the same files (target >= 0.40):")
    for rows in (12, args.rows):
        cli_rng = random.Random(rows)
        batch = [submission(build_visit(cli_rng, scenario="outpatient", detail_rows=rows))
                 for _ in range(args.cli_files)]
        with tempfile.TemporaryDirectory() as tmp:
            floor_rate, cli_rate, ratio = cli_ratio(Path(tmp), batch, max(2, args.rounds // 2))
        mean = sum(map(len, batch)) / len(batch) / 1024
        print(f"  {rows:>3} detail rows, mean {mean:3.0f} KiB: floor {floor_rate:6.0f} files/s, "
              f"healthbook validate {cli_rate:6.0f} files/s, ratio {ratio:.2f}")


def memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.xml"
        written = big_file(path, args.big_mb)
        baseline, _, _, _ = peak_rss_mb("-")
        peak, _, _, _ = peak_rss_mb(str(path))
        print(f"peak RSS validating one {written / 1024 / 1024:.1f} MB file: {peak:.0f} MB "
              f"(import-only baseline {baseline:.0f} MB; +{peak - baseline:.0f} MB; target < 400 MB)")
        function_mb, _ = function_limits("IngestFunction")
        print(f"bounded work per file, each at the 20 MiB size limit, against the ingest function's {function_mb} MB:")
        for name, flood in flood_files(Path(tmp), 20 * 1024 * 1024).items():
            peak, seconds, codes, issues = peak_rss_mb(str(flood), "flood")
            print(f"  {name:<48} peak {peak:4.0f} MB = {peak / function_mb:4.0%} of the function, {seconds:5.1f} s, "
                  f"{issues:,} issues, blocking {codes}")


if __name__ == "__main__":
    main()
