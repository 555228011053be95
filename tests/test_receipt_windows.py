"""Receipt version 3: one platform signature per window of receipts (an RFC 6962 root), each receipt verifiable
alone, offline, with the public key; versions 1 and 2 (the signature over the receipt itself) still verify."""

from __future__ import annotations

import base64
import copy
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from healthbook.signing.merkle import MerkleTree, fold_proof, leaf_hash, proof_sides
from healthbook.signing.receipt import (
    RECEIPT_VERSION,
    SIGNED,
    SIGNED_V2,
    build_receipt,
    receipt_body,
    render_receipt,
    sign_receipts,
    signed_digest,
    verify_receipt,
)
from healthbook.signing.signer import LocalKeySigner, verify_digest_signature
from healthbook.validation import FileResult, validate_bytes
from healthbook_dev.fakes.signer import CountingSigner, change_at
from healthbook_dev.generate import build_visit, envelope
from healthbook_dev.generate.vocab import FACILITIES

DATA = Path(__file__).resolve().parent / "data"
RECEIVED = datetime(2026, 3, 1, 1, 30, 5, tzinfo=UTC)
FACILITY = FACILITIES[2]  # 79001


@pytest.fixture(scope="module")
def key() -> LocalKeySigner:
    return LocalKeySigner(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def signer(key: LocalKeySigner) -> CountingSigner:
    return CountingSigner(key)


@pytest.fixture(scope="module")
def results() -> list[FileResult]:
    """Files of every kind a window holds: accepted, partly accepted, rejected, not XML at all."""
    found = []
    for seed in range(4):
        visits = [build_visit(random.Random(100 * seed + n), scenario="outpatient", facility=FACILITY)
                  for n in range(1 + seed % 3)]
        if seed == 1:
            visits[0].tables["XML1"][0]["HO_TEN"] = ""  # kept out (H601): a partly accepted file
        found.append(validate_bytes(envelope(visits), path=f"f{seed}.xml"))
    found.append(validate_bytes(b"not XML", path="garbage.xml"))
    return found


def bodies(results: list[FileResult], n: int) -> list[dict[str, Any]]:
    """``n`` unsigned receipts of distinct files."""
    return [receipt_body(results[i % len(results)], submission_id=f"sub-{i}", object_key=f"inbox/79001/f{i}.xml",
                         received_at=RECEIVED + timedelta(seconds=i)) for i in range(n)]


def fresh(receipt: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(receipt, ensure_ascii=False))
    return loaded


@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_a_window_is_signed_once_and_every_receipt_verifies_alone(n: int, results: list[FileResult],
                                                                    signer: CountingSigner) -> None:
    unsigned = bodies(results, n)
    before = copy.deepcopy(unsigned)
    receipts = sign_receipts(unsigned, signer)
    assert unsigned == before  # the inputs are left as they are
    assert len(signer.digests) == 1  # ONE signature for the whole window
    (root,) = signer.digests
    tree = MerkleTree([signed_digest(r) for r in receipts])
    assert root == tree.root
    values = {r["platform_signature"]["value"] for r in receipts}
    assert len(values) == 1  # the same signature in every receipt of the window
    assert verify_digest_signature(signer.public_key_pem(), "ECDSA_SHA_256", root,
                                   base64.b64decode(values.pop()))
    for index, receipt in enumerate(receipts):
        signature = receipt["platform_signature"]
        assert receipt["receipt_version"] == RECEIPT_VERSION == "3"
        assert (signature["key_id"], signature["algorithm"], signature["signed"]) == (
            signer.key_id, "ECDSA_SHA_256", SIGNED)
        assert signature["batch"] == {"root": root.hex(), "leaves": n, "leaf_index": index,
                                      "proof": [[side, h.hex()] for side, h in tree.proof(index)]}
        assert [side for side, _ in signature["batch"]["proof"]] == proof_sides(index, n)
        assert {k: v for k, v in receipt.items() if k != "platform_signature"} == before[index]
        assert verify_receipt(fresh(receipt), signer.public_key_pem()) == [], index  # alone, offline
    if n == 1:
        assert root == leaf_hash(signed_digest(receipts[0])) and receipts[0]["platform_signature"]["batch"][
            "proof"] == []


def test_an_empty_window_costs_nothing(signer: CountingSigner) -> None:
    assert sign_receipts([], signer) == [] and signer.digests == []


def test_only_unsigned_receipts_of_this_version_are_signed(results: list[FileResult], signer: CountingSigner) -> None:
    (receipt,) = sign_receipts(bodies(results, 1), signer)
    with pytest.raises(ValueError, match="unsigned"):
        sign_receipts([receipt], signer)
    with pytest.raises(ValueError, match="version 3"):
        sign_receipts([{**bodies(results, 1)[0], "receipt_version": "2"}], signer)
    assert len(signer.digests) == 1


# Any field of a receipt: each of these must make that receipt, and only it, fail.
FIELDS = {
    "submission_id": change_at("submission_id", "sub-99"),
    "object_key": change_at("object_key", "inbox/79001/other.xml"),
    "facility": change_at("facility", "01001"),
    "received_at": change_at("received_at", "2026-03-02T01:30:05Z"),
    "accepted": change_at("accepted", True),
    "rejected": change_at("rejected", True),
    "standards": change_at("standards", ["130"]),
    "errors": change_at("errors", [{"code": "E001"}]),
    "visits": change_at("visits", []),
    "facility_signature": change_at("facility_signature", {"valid": True}),
    "transaction_id": change_at("transaction_id", "79001-20260301083005-0123456789ab"),
    "key_id": change_at("platform_signature.key_id", "arn:aws:kms:ap-southeast-1:111122223333:key/x"),
    "an added field": change_at("note", "accepted after all"),
}


@pytest.mark.parametrize("name", FIELDS)
def test_tampering_with_one_receipt_fails_it_and_leaves_its_window_verifiable(
        name: str, results: list[FileResult], signer: CountingSigner) -> None:
    receipts = [fresh(r) for r in sign_receipts(bodies(results, 3), signer)]
    FIELDS[name](receipts[1])
    problems = verify_receipt(receipts[1], signer.public_key_pem())
    assert any("signature does not verify" in p for p in problems), problems
    assert verify_receipt(receipts[0], signer.public_key_pem()) == []  # its siblings stand
    assert verify_receipt(receipts[2], signer.public_key_pem()) == []


@pytest.mark.parametrize("n", [2, 3, 10])
def test_another_receipts_batch_proof_does_not_fit(n: int, results: list[FileResult],
                                                   signer: CountingSigner) -> None:
    receipts = [fresh(r) for r in sign_receipts(bodies(results, n), signer)]
    for index in range(n):
        other = (index + 1) % n
        moved = copy.deepcopy(receipts[index])
        moved["platform_signature"]["batch"] = copy.deepcopy(receipts[other]["platform_signature"]["batch"])
        problems = verify_receipt(moved, signer.public_key_pem())
        assert any("signature does not verify" in p for p in problems), problems
        assert any("does not lead from this receipt" in p for p in problems), problems
        # only the path, with this receipt's own leaf index: still not this receipt's way to the root
        path = copy.deepcopy(receipts[index])
        path["platform_signature"]["batch"]["proof"] = receipts[other]["platform_signature"]["batch"]["proof"]
        assert verify_receipt(path, signer.public_key_pem())


def test_the_batch_position_is_checked_against_the_proof(results: list[FileResult], signer: CountingSigner) -> None:
    receipts = [fresh(r) for r in sign_receipts(bodies(results, 3), signer)]
    public = signer.public_key_pem()
    for path, value, expected in (("leaf_index", 1, "not the path of leaf 1 in a window of 3"),
                                  ("leaf_index", 3, "leaf 3 is not in a window of 3"),
                                  ("leaves", 1, "not the path of leaf 0 in a window of 1"),
                                  ("root", "ab" * 32, "does not lead from this receipt to the batch root")):
        changed = copy.deepcopy(receipts[0])
        changed["platform_signature"]["batch"][path] = value
        problems = verify_receipt(changed, public)
        assert problems and all("platform_signature.batch" in p for p in problems), (path, problems)
        assert any(expected in p for p in problems), (path, problems)
    for broken, where in (({"root": "ab" * 32}, "platform_signature.batch.leaves"),
                          ("a batch", "platform_signature.batch"),
                          ({**receipts[0]["platform_signature"]["batch"], "proof": [["X", "ab" * 32]]},
                           "platform_signature.batch.proof.0.0")):
        changed = copy.deepcopy(receipts[0])
        changed["platform_signature"]["batch"] = broken
        problems = verify_receipt(changed, public)
        assert problems and any(p.startswith(where) for p in problems), problems
    missing = copy.deepcopy(receipts[0])
    del missing["platform_signature"]["batch"]
    assert verify_receipt(missing, public) == [
        "platform_signature.batch is missing (a version 3 receipt is signed through it)"]


def test_a_signature_of_the_root_is_no_signature_of_a_version_2_receipt(results: list[FileResult],
                                                                        signer: CountingSigner) -> None:
    """Relabelled as version 2 (the signature then read as over the receipt's own digest) a version 3 receipt
    fails: the scope it states no longer matches, and the root is never the digest of a receipt (leaf and node
    hashes are prefixed with 0x00 and 0x01, canonical JSON starts with "{")."""
    (receipt,) = [fresh(r) for r in sign_receipts(bodies(results, 1), signer)]
    public = signer.public_key_pem()
    downgraded = copy.deepcopy(receipt)
    downgraded["receipt_version"] = "2"
    assert verify_receipt(downgraded, public)
    downgraded["platform_signature"]["signed"] = SIGNED_V2
    del downgraded["platform_signature"]["batch"]
    assert any("signature does not verify" in p for p in verify_receipt(downgraded, public))


def test_issued_version_2_receipts_still_verify() -> None:
    """The example docs/receipt.md published for version 2, exactly as issued: still valid, still tamper-evident,
    and no batch may be slipped into it."""
    example = json.loads((DATA / "receipt-v2-example.json").read_text(encoding="utf-8"))
    public = (DATA / "receipt-v2-example.pub.pem").read_bytes()
    assert example["receipt_version"] == "2" and "batch" not in example["platform_signature"]
    assert verify_receipt(example, public) == []
    assert "v2" in render_receipt(example)
    changed = copy.deepcopy(example)
    changed["visits"][0]["accepted"] = False
    assert any("signature does not verify" in p for p in verify_receipt(changed, public))
    batched = copy.deepcopy(example)
    batched["platform_signature"]["batch"] = {"root": "ab" * 32, "leaves": 1, "leaf_index": 0, "proof": []}
    assert verify_receipt(batched, public) == [
        "platform_signature.batch has no place in a version 2 receipt"]


def test_build_receipt_is_a_window_of_one(results: list[FileResult], signer: CountingSigner) -> None:
    receipt = build_receipt(results[1], submission_id="sub-1", object_key="inbox/79001/f1.xml",
                            received_at=RECEIVED, signer=signer)
    assert len(signer.digests) == 1
    (alone,) = sign_receipts([receipt_body(results[1], submission_id="sub-1", object_key="inbox/79001/f1.xml",
                                           received_at=RECEIVED)], signer)
    assert {k: v for k, v in receipt.items() if k != "platform_signature"} == {
        k: v for k, v in alone.items() if k != "platform_signature"}
    assert receipt["platform_signature"]["batch"] == alone["platform_signature"]["batch"]
    assert "signed in one batch: biên nhận / receipt 1/1, gốc / root " in render_receipt(receipt)


def test_rsa_windows(results: list[FileResult]) -> None:
    signer = CountingSigner(LocalKeySigner(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    receipts = sign_receipts(bodies(results, 5), signer)
    assert len(signer.digests) == 1
    assert all(verify_receipt(fresh(r), signer.public_key_pem()) == [] for r in receipts)
    assert {r["platform_signature"]["algorithm"] for r in receipts} == {"RSASSA_PSS_SHA_256"}


def test_fold_proof_and_proof_sides() -> None:
    leaves = [bytes([i]) * 32 for i in range(7)]
    tree = MerkleTree(leaves)
    for index, leaf in enumerate(leaves):
        proof = tree.proof(index)
        assert fold_proof(leaf, proof) == tree.root
        assert [side for side, _ in proof] == proof_sides(index, 7)
    assert fold_proof(leaves[0], [("X", leaves[1])]) is None
    assert proof_sides(0, 1) == [] and proof_sides(6, 7) == ["L", "L"]  # promoted once, then the left sibling
    with pytest.raises(IndexError):
        proof_sides(7, 7)
