"""The LocalStack demo's offline parts: the uploads it makes and the summary it prints (the run itself is
`make demo`, which needs LocalStack)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from healthbook.signing.xmldsig import Trust, verify_submission
from healthbook_dev.demos.stack import (
    API_FACILITY,
    FACILITIES,
    VISITS_PER_FILE,
    Progress,
    Upload,
    make_uploads,
    summary,
)
from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.pki import dev_pki


def test_uploads_are_signed_files_of_both_facilities_with_the_labelled_defects(tmp_path: Path) -> None:
    pki = dev_pki(tmp_path / "pki")
    people = FakePopulation()
    uploads = make_uploads(tmp_path, pki, people, visits=120, seed=3)
    assert len(uploads) == 12 and {u.facility for u in uploads} == set(FACILITIES)
    assert all(len(u.visits) == VISITS_PER_FILE for u in uploads)
    labels = {u.path.name.split("_")[1]: u.label for u in uploads if u.label}
    assert labels["0005"] == "edited after signing" and labels["0009"] == "another facility's folder"
    assert labels["0003"].startswith("a visit with a finding") and labels["0011"].startswith("a visit with a finding")
    assert labels["0006"] == "a visit without the patient's name (H601)"
    moved = next(u for u in uploads if u.label == "another facility's folder")
    assert moved.folder != moved.facility
    assert moved.receipt_key == f"receipts/{moved.folder}/{moved.path.name}.receipt.json"
    trust = Trust.from_files(pki["ca"], pki["registry"])

    def signature_holds(upload: Upload) -> bool:
        return verify_submission(upload.path.read_bytes(), trust=trust, facility=upload.facility,
                                 at=datetime.now(UTC)).valid

    assert signature_holds(next(u for u in uploads if u.label is None))
    assert not signature_holds(next(u for u in uploads if u.label == "edited after signing"))
    assert len(people) > 0  # the population service knows (most of) the citizens


def test_summary_counts_receipts_codes_and_statuses(tmp_path: Path) -> None:
    pki = dev_pki(tmp_path / "pki")
    uploads = make_uploads(tmp_path, pki, FakePopulation(), visits=20, seed=1)
    progress = Progress(receipts={
        uploads[0].path.name: {"accepted": True, "visits": [{"accepted": True}] * 10},
        uploads[1].path.name: {"accepted": False, "errors": [{"code": "K404"}],
                               "visits": [{"accepted": False, "errors": [{"code": "V212"}]}]},
    })
    progress.statuses.update({"DELIVERED": 9, "NEEDS_RECONCILIATION": 1})
    progress.latencies_ms.extend([1000, 2000, 30000])
    uploads[1].transaction_id = "79001-20261206154502-3f9a0c1b2d4e"
    progress.looked_up = 1
    rows = _rows(summary(uploads, progress, tmp_path, [], None, 12.0))
    assert rows["receipts"] == "2  (1 files wholly accepted, 1 not)"
    assert rows["visits accepted / rejected"] == "10 / 1"
    assert rows["rejected by reason"] == "K404 1, V212 1"
    assert rows["delivered to VNeID"] == "9" and rows["receipt -> VNeID latency"] == "p50 2.0 s, p95 30.0 s"
    api = sum(1 for u in uploads if u.channel == "api")
    assert rows["files sent"] == f"2: {2 - api} uploaded to S3, {api} through the portal API ({API_FACILITY}'s HIS)"
    assert rows["portal API"] == "1 maGiaoDich answered, 1 receipts returned by traCuuKetQua"


def _rows(text: str) -> dict[str, str]:
    """The summary's table: a name, two or more spaces, the value."""
    rows = [line.strip() for line in text.splitlines() if re.search(r"\S\s{2,}\S", line)]
    return dict(re.split(r"\s{2,}", row, maxsplit=1) for row in rows)


def test_one_facility_sends_through_the_portal_api_and_its_receipts_follow_the_transaction(tmp_path: Path) -> None:
    uploads = make_uploads(tmp_path, dev_pki(tmp_path / "pki"), FakePopulation(), visits=120, seed=3)
    by_api = [u for u in uploads if u.channel == "api"]
    assert by_api and {u.facility for u in by_api} == {API_FACILITY}
    assert all(u.folder == u.facility for u in by_api)  # the misplaced file goes through S3: the API cannot misplace
    assert {u.facility for u in uploads if u.channel == "s3"} == set(FACILITIES)
    by_api[0].transaction_id = f"{API_FACILITY}-20261206154502-3f9a0c1b2d4e"
    assert by_api[0].receipt_key == f"receipts/{API_FACILITY}/{by_api[0].transaction_id}.xml.receipt.json"


def test_the_province_list_holds_patients_of_both_facilities_and_validates(tmp_path: Path) -> None:
    from healthbook.enrolment.reader import prepare
    from healthbook.enrolment.schema import Kind
    from healthbook_dev.demos.stack import enrolment_people
    from healthbook_dev.generate.enrolment import enrolment_csv

    uploads = make_uploads(tmp_path, dev_pki(tmp_path / "pki"), FakePopulation(), visits=120, seed=3)
    listed = enrolment_people(uploads)
    patients = {row["SO_CCCD"] for upload in uploads for row in upload.patients}
    assert listed and {p.so_cccd for p in listed} <= patients
    prepared = prepare(enrolment_csv([p.row() for p in listed]), name="list.csv", kind=Kind.ENROLMENT)
    assert prepared.rows == len(listed) and prepared.problems == []
    progress = Progress(enrolment={"enrolment": {"created": len(listed)}, "vaccination": {"created": 40,
                                                                                          "unchanged": 2}})
    rows = _rows(summary(uploads, progress, tmp_path, [], None, 1.0))
    assert rows["initial health books"] == f"created {len(listed)}"
    assert rows["vaccination records"] == "created 40, unchanged 2"
