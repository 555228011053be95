"""The LocalStack demo's offline parts: the uploads it makes and the summary it prints (the run itself is
`make demo`, which needs LocalStack)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from healthbook.signing.xmldsig import Trust, verify_submission
from healthbook_dev.demos.stack import FACILITIES, VISITS_PER_FILE, Progress, Upload, make_uploads, summary
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
    text = summary(uploads, progress, tmp_path, [], None, 12.0)
    assert "receipts                          2  (1 files wholly accepted, 1 not)" in text
    assert "visits accepted / rejected        10 / 1" in text
    assert "rejected by reason                K404 1, V212 1" in text
    assert "delivered to VNeID                9" in text and "p50 2.0 s, p95 30.0 s" in text
