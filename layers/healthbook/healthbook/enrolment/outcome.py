"""What goes back to the province: the outcome file (one line per row, opens in Excel) and its summary.

The file is UTF-8 with a byte-order mark (Excel then reads the Vietnamese right), comma-separated, with the
columns ``row, outcome, code, reason, masked_id, reason_vi``. It never holds a name, a full ID or a card
number: the ID is masked (``0012******89``). Every cell is formula-safe: a cell starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a leading apostrophe, so a hostile cell stays text in Excel
(OWASP's CSV injection advice). Rows the reader could not read come first (in row order), then the outcomes in
the order given; notes about the file itself (row empty) come before everything.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, Final

from healthbook.enrolment.codes import SEPARATOR, RowProblem, reasons

if TYPE_CHECKING:
    from healthbook.enrolment.process import RowOutcome

__all__ = ["HEADER", "mask_id", "outcome_csv", "safe_cell", "summarise", "write_outcome_csv"]

HEADER: Final = ("row", "outcome", "code", "reason", "masked_id", "reason_vi")
OUTCOMES: Final = ("created", "updated", "unchanged", "not_matched", "invalid")  # process.OUTCOMES
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    """A cell Excel and LibreOffice show as text: a leading apostrophe before a formula's first character."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def mask_id(number: str) -> str:
    """An ID or social-insurance number with its middle hidden: 12 digits keep the first 4 and the last 2
    (0012******89), other numbers of 8 or more digits the first 2 and the last 2; anything else (a malformed
    number, a formula...) shows only its length."""
    text = number.strip()
    if not text:
        return ""
    if text.isascii() and text.isdigit():
        if len(text) == 12:
            return text[:4] + "*" * 6 + text[-2:]
        if len(text) >= 8:
            return text[:2] + "*" * (len(text) - 4) + text[-2:]
    return f"*** ({len(text)})"


def write_outcome_csv(out: IO[str], outcomes: Iterable[RowOutcome], problems: Iterable[RowProblem] = ()) -> None:
    """Stream the outcome file's rows (without the byte-order mark) to a text stream opened with newline=""."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    read_problems = sorted(problems, key=lambda p: (p.row is not None, p.row or 0))
    for p in read_problems:
        outcome = "" if p.row is None else "invalid"
        writer.writerow([safe_cell(v) for v in (p.row if p.row is not None else "", outcome, p.code, p.reason,
                                                "", p.reason_vi or reasons(p.code, vietnamese=True))])
    for o in outcomes:
        reason_vi = o.reason_vi if o.reason_vi is not None else (reasons(o.code, vietnamese=True) if o.code else "")
        writer.writerow([safe_cell(v) for v in (o.row, o.outcome, o.code or "", o.reason or "", o.masked_id or "",
                                                reason_vi)])


def outcome_csv(outcomes: Iterable[RowOutcome], problems: Iterable[RowProblem] = ()) -> bytes:
    """The outcome file: UTF-8 with BOM, every cell formula-safe, no personal data beyond the masked id."""
    buffer = io.BytesIO()
    buffer.write(b"\xef\xbb\xbf")
    text = io.TextIOWrapper(buffer, encoding="utf-8", newline="", write_through=True)
    write_outcome_csv(text, outcomes, problems)
    text.flush()
    data = buffer.getvalue()
    text.detach()
    return data


def summarise(outcomes: Iterable[RowOutcome], problems: Iterable[RowProblem] = ()) -> dict[str, Any]:
    """Counts for people and dashboards: ``rows`` (every row with an outcome, the unread ones included),
    ``by_outcome`` (each outcome, 0 when none; unread rows are ``invalid``), ``by_code`` (each code of a row,
    "+"-joined codes counted one by one), and ``notes`` (the file's own problems: code and reason)."""
    by_outcome: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
    by_code: Counter[str] = Counter()
    notes: list[dict[str, str]] = []
    unread: set[int] = set()
    for p in problems:
        if p.row is None:
            notes.append({"code": p.code, "reason": p.reason})
            continue
        by_code[p.code] += 1
        if p.row not in unread:
            unread.add(p.row)
            by_outcome["invalid"] += 1
    for o in outcomes:
        by_outcome[o.outcome] += 1
        for code in (o.code or "").split(SEPARATOR):
            if code:
                by_code[code] += 1
    return {"rows": sum(by_outcome.values()), "by_outcome": dict(by_outcome), "by_code": dict(sorted(by_code.items())),
            "notes": notes}
