"""validate -> verify the facility's signature -> sign -> receipt, as ingestion will run it (no AWS)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from healthbook.pipeline import process_submission
from healthbook.signing.receipt import render_receipt, verify_receipt
from healthbook.signing.signer import LocalKeySigner
from healthbook.signing.xml_signer import sign_submission
from healthbook.signing.xmldsig import Trust
from healthbook_dev.cli import main
from healthbook_dev.generate import build_visit, submission
from healthbook_dev.pki import dev_pki

RECEIVED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
HANOI = ("01001", "Bệnh viện Đa khoa Thành phố Hà Nội", "01")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return dev_pki(tmp_path_factory.mktemp("pki"), now=RECEIVED)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalKeySigner, bytes, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path = tmp_path_factory.mktemp("platform") / "platform-key.pem"
    path.write_bytes(pem)
    signer = LocalKeySigner.from_pem(pem)
    return signer, signer.public_key_pem(), path


def _signed(pki: dict[str, Path], facility: str = "01001", seed: int = 1) -> bytes:
    key = serialization.load_pem_private_key(pki[f"{facility}-key"].read_bytes(), password=None)
    cert, *chain = x509.load_pem_x509_certificates(pki[facility].read_bytes())  # 79001 comes with its intermediate
    data = submission(build_visit(random.Random(seed), scenario="inpatient", facility=HANOI))
    return sign_submission(data, key, cert, chain=chain)  # type: ignore[arg-type]


def test_signed_valid_file_is_accepted_with_a_verifiable_receipt(pki: dict[str, Path], platform) -> None:  # type: ignore[no-untyped-def]
    signer, public, _ = platform
    done = process_submission(_signed(pki), object_key="inbox/01001/a.xml", received_at=RECEIVED, signer=signer,
                              trust=Trust.from_files(pki["ca"], registry=pki["registry"]))
    assert done.result.accepted and done.signature is not None and done.signature.valid
    receipt = done.receipt
    assert receipt["accepted"] and receipt["facility_signature"]["valid"]
    assert "subject" not in receipt["facility_signature"]
    assert receipt["facility_signature"]["form"]["namespace"] == "prefix ds"  # what healthbook sign writes
    assert all(v["digest"] and v["proof"] is not None for v in receipt["visits"])
    assert verify_receipt(receipt, public) == []
    assert ("dạng chữ ký / signature form: prefix ds, c14n, rsa-sha256, "
            'URI="" enveloped-signature + c14n sha256, RSA 2048, KeyInfo X509Certificate') in render_receipt(receipt)


@pytest.mark.parametrize(("case", "code"), [("tampered", "K404"), ("unsigned", "K401"), ("other-facility", "K411")])
def test_signature_failure_rejects_the_whole_file(pki: dict[str, Path], platform, case: str, code: str) -> None:  # type: ignore[no-untyped-def]
    signer, public, _ = platform
    if case == "unsigned":
        data = submission(build_visit(random.Random(2), scenario="outpatient", facility=HANOI))
    elif case == "tampered":
        data = _signed(pki).replace(b"<SOLUONGHOSO>1<", b"<SOLUONGHOSO>1 <", 1)
    else:  # signed by the 79001 certificate, submitted as 01001
        data = _signed(pki, facility="79001")
    done = process_submission(data, object_key="inbox/01001/x.xml", received_at=RECEIVED, signer=signer,
                              trust=Trust.from_files(pki["ca"], registry=pki["registry"]))
    assert not done.result.accepted
    assert code in {i.code for i in done.result.errors}
    receipt = done.receipt
    assert not receipt["accepted"] and receipt["visits_accepted"] == 0
    assert code in {e["code"] for e in receipt["facility_signature"]["issues"]}
    assert verify_receipt(receipt, public) == []  # a rejected file still gets a verifiable receipt


def test_a_file_whose_signature_does_not_hold_is_refused_before_its_visits_are_read(  # type: ignore[no-untyped-def]
        pki: dict[str, Path], platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forged or unsigned file costs a fraction of a good one: its visits are never read, and its receipt
    names the file, its facility and the signature's problem only (not the visit-level problems it also has)."""
    import healthbook.pipeline as pipeline

    signer, public, _ = platform
    visit = build_visit(random.Random(3), scenario="outpatient", facility=HANOI)
    visit.tables["XML1"][0]["MA_BENH_CHINH"] = ""  # a visit-level error the validator would report
    unsigned = submission(visit)
    read: list[str] = []
    monkeypatch.setattr(pipeline, "validate_bytes", lambda data, **kw: read.append(kw["path"]))  # never called
    done = process_submission(unsigned, object_key="inbox/01001/u.xml", received_at=RECEIVED, signer=signer,
                              trust=Trust.from_files(pki["ca"], registry=pki["registry"]), uploaded_by="79001")
    assert read == []
    assert (done.result.kind, done.result.facility, done.result.visits) == ("claim", "01001", [])
    assert [i.code for i in done.result.errors] == ["I501", "K401"]  # the wrong folder too: it needs no visit
    assert not done.receipt["accepted"] and done.receipt["visits"] == []
    assert verify_receipt(done.receipt, public) == []


def test_not_xml_gets_a_receipt_without_a_signature_check(pki: dict[str, Path], platform) -> None:  # type: ignore[no-untyped-def]
    signer, public, _ = platform
    done = process_submission(b"\x00\x01garbage", object_key="inbox/01001/b.xml", received_at=RECEIVED,
                              signer=signer, trust=Trust.from_files(pki["ca"]))
    assert done.signature is None and [i.code for i in done.result.errors] == ["E003"]
    assert verify_receipt(done.receipt, public) == []


def test_receipt_make_with_trust(pki: dict[str, Path], platform, tmp_path: Path,  # type: ignore[no-untyped-def]
                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, public, key_path = platform
    signed = tmp_path / "signed.xml"
    signed.write_bytes(_signed(pki))
    out = tmp_path / "receipt.json"
    args = ["receipt", "make", str(signed), "--key", str(key_path), "--out", str(out), "--trust", str(pki["ca"]),
            "--registry", str(pki["registry"]), "--received-at", RECEIVED.isoformat()]
    assert main(args) == 0
    receipt = json.loads(out.read_text(encoding="utf-8"))
    assert receipt["facility_signature"]["valid"] is True
    (tmp_path / "platform.pub").write_bytes(public)
    assert main(["receipt", "verify", str(out), "--public-key", str(tmp_path / "platform.pub")]) == 0
    assert main(["receipt", "make", str(signed), "--key", str(key_path), "--registry", str(pki["registry"])]) == 2
