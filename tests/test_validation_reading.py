"""Issue 17 (start-up and reading): each shortcut taken on the way to the validator answers as the path it replaced.

A file is read unbuffered, in as few reads as it takes; each data file of the standard is parsed once and shared by
the versions layered on it; the summary's root is known without loading a version; the payer split says each of its
three amounts as the loop it replaced did."""

from __future__ import annotations

import io
import json
import random
from dataclasses import astuple
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from healthbook import standard as standards
from healthbook.parsing.safe_xml import Limits
from healthbook.standard import Standard
from healthbook.validation import engine, validate_bytes, validate_path
from healthbook.validation.cross import VisitContext, _payer_split
from healthbook.validation.engine import Options
from healthbook.validation.issues import Issue
from healthbook.validation.results import FileResult
from healthbook_dev.generate import build_visit, submission


def _everything(result: FileResult) -> list[object]:
    """What a result says, to the last typed value."""
    return [result.to_dict(), [astuple(i) for i in result.issues],
            [(v.ma_lk, v.standard, {t: (rows.raw, rows.typed) for t, rows in v.tables.items()}) for v in result.visits]]


# --- reading a file ---------------------------------------------------------------------------------------

class _Trickle(io.RawIOBase):
    """A file that gives at most ``step`` bytes a read (as a pipe may) and counts what was taken from it."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.taken = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.taken : self.taken + size]
        self.taken += len(chunk)
        return chunk


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 30])
def test_a_file_is_read_whole_however_little_each_read_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             step: int) -> None:
    data = submission(build_visit(random.Random(step), scenario="outpatient", detail_rows=3))
    path = tmp_path / "visit.xml"
    path.write_bytes(data)
    expected = _everything(validate_bytes(data, path=str(path)))
    assert _everything(validate_path(str(path))) == expected  # the real file, read unbuffered

    opened: list[_Trickle] = []

    def trickling(name: str, mode: str, buffering: int = -1) -> _Trickle:
        assert (name, mode) == (str(path), "rb")
        opened.append(_Trickle(Path(name).read_bytes(), step))
        return opened[-1]

    monkeypatch.setattr(engine, "open", trickling, raising=False)  # shadows the builtin inside the engine
    assert _everything(validate_path(str(path))) == expected
    assert opened[0].taken == len(data)


def test_a_file_grown_after_its_size_was_taken_is_read_to_that_size_and_a_byte(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = submission(build_visit(random.Random(1), scenario="outpatient", detail_rows=3))
    path = tmp_path / "visit.xml"
    path.write_bytes(data)
    grown = _Trickle(data + b" " * 5000, 1000)
    monkeypatch.setattr(engine, "open", lambda *args, **kwargs: grown, raising=False)
    limit = len(data) + 10  # what was there when its size was taken fits; what it grew to does not
    result = validate_path(str(path), Options(limits=Limits(limit, limit)))
    assert grown.taken == len(data) + 1  # not a byte more, however much more the file holds
    assert result.size == len(data) + 1 and result.accepted  # one blank after the document: still the same visit


# --- the standard's data ----------------------------------------------------------------------------------

def _described(standard: Standard) -> tuple[Any, ...]:
    """A version as its users see it (Standard and TableSpec compare by identity)."""
    tables = {t.id: (t.title_vi, t.title_en, t.root, t.list, t.row, t.fields, t.standalone, t.sensitive,
                     t.no_visit_key, t.by_name) for t in standard.tables.values()}
    return (standard.id, standard.title, standard.effective_from, tables, standard.codelists,
            standard.partial_codelists)


def test_each_data_file_parsed_once_builds_every_version_as_a_fresh_read_does(monkeypatch: pytest.MonkeyPatch) -> None:
    shared_read = standards._read
    build = standards.load.__wrapped__  # a version built anew, leaving the loaded ones alone
    versions = standards.version_ids()
    newest_first = {v: _described(build(v)) for v in reversed(versions)}  # each layer before the bases under it
    oldest_first = {v: _described(build(v)) for v in versions}
    files = {entry["file"] for entry in standards._versions()}
    monkeypatch.setattr(standards, "_read", shared_read.__wrapped__)  # every file read and parsed afresh
    fresh = {v: _described(build(v)) for v in versions}
    assert newest_first == fresh and oldest_first == fresh
    for name in files:  # and no version's building changed what the others read
        assert shared_read(name) == json.loads((standards.DATA_DIR / name).read_text(encoding="utf-8")), name


def test_a_document_has_the_same_root_in_every_version() -> None:
    """The validator reads the summary's root without loading the visit's version (it may be an older one)."""
    for version in standards.version_ids():
        for table in standards.load(version).tables.values():
            assert standards.document_root(table.id) == table.root, (version, table.id)
    assert standards.document_root("XML1") == "TONG_HOP"


# --- the payer split --------------------------------------------------------------------------------------

def _split_issues(values: dict[str, Decimal]) -> list[Issue]:
    ctx = VisitContext(standard=standards.load("4750"), ma_lk="LK1", facility="01001", tables={}, issues=[])
    _payer_split(ctx, "XML2", "3", values, Decimal("0.01"))
    return ctx.issues


def _split_as_a_loop(values: dict[str, Decimal]) -> list[tuple[str, str, str]]:
    """(field, value, expected) for each amount the split puts elsewhere, as the loop it replaced said them."""
    share = (values["THANH_TIEN_BH"] * values["MUC_HUONG"] / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    out = []
    for name, expected in (("T_BHTT", share), ("T_BNCCT", values["THANH_TIEN_BH"] - share),
                           ("T_BNTT", values["THANH_TIEN_BV"] - values["THANH_TIEN_BH"])):
        if abs(values[name] - expected) > Decimal("0.01"):
            out.append((name, str(values[name]), str(expected)))
    return out


def test_the_payer_split_names_each_amount_it_finds_wrong_with_its_expected_value() -> None:
    rng = random.Random(308)
    seen: set[str] = set()
    for _ in range(300):
        total_bv = Decimal(rng.randint(1_000, 900_000))
        total_bh = total_bv - Decimal(rng.choice([0, 0, rng.randint(1, 900)]))
        level = Decimal(rng.choice([80, 95, 100]))
        insurer = (total_bh * level / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        copay, patient = total_bh - insurer, total_bv - total_bh
        values = {"THANH_TIEN_BV": total_bv, "THANH_TIEN_BH": total_bh, "MUC_HUONG": level, "T_NGUONKHAC": Decimal(0),
                  "T_BHTT": insurer, "T_BNCCT": copay, "T_BNTT": patient}
        moved = rng.choice(["T_BHTT", "T_BNCCT", "T_BNTT", None])
        if moved is not None:  # an amount moved to another payer keeps the sum (R307 silent) but not the split
            other = {"T_BHTT": "T_BNCCT", "T_BNCCT": "T_BNTT", "T_BNTT": "T_BHTT"}[moved]
            shift = Decimal(rng.choice(["0.01", "0.02", "1", "150.50"]))
            values[moved] -= shift
            values[other] += shift
        got = [(i.field, i.value, i.message_en) for i in _split_issues(values)]
        expected = _split_as_a_loop(values)
        assert [(field, value) for field, value, _ in got] == [(field, value) for field, value, _ in expected]
        for (_, _, message), (_, _, amount) in zip(got, expected, strict=True):
            assert message.endswith(f"the benefit level gives {amount}."), (message, amount)
        assert all(i.code == "R308" for i in _split_issues(values))
        seen |= {field for field, _, _ in expected}
    assert seen == {"T_BHTT", "T_BNCCT", "T_BNTT"}
