"""Signed receipts: Merkle proofs over accepted visits, local and KMS signers, tamper evidence, the CLI."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from healthbook.signing.merkle import (
    MerkleTree,
    canonical_visit,
    leaf_hash,
    node_hash,
    verify_inclusion,
    visit_digest,
)
from healthbook.signing.receipt import (
    SIGNED,
    SIGNED_V2,
    build_receipt,
    compare_with_submission,
    receipt_body,
    render_receipt,
    sign_receipts,
    signed_bytes,
    signed_digest,
    verify_receipt,
)
from healthbook.signing.signer import LocalKeySigner, verify_digest_signature
from healthbook.validation import FileResult, VisitResult, validate_bytes
from healthbook_dev.cli import main
from healthbook_dev.fakes.signer import change_at
from healthbook_dev.generate import Visit, build_visit, envelope, inject, submission
from healthbook_dev.generate.vocab import FACILITIES
from hypothesis import given, settings
from hypothesis import strategies as st

RECEIVED = datetime(2025, 3, 1, 1, 30, 5, tzinfo=UTC)
FACILITY = FACILITIES[2]  # 79001


# --- helpers --------------------------------------------------------------------------------------------

def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash, written straight from the definition as a reference."""
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def digests(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def three_visits() -> list[Visit]:
    """One facility, three HOSO; the second loses the patient's name (a V201 finding, and H601: no usable
    identity), so it alone is kept out of the health book."""
    visits = [build_visit(random.Random(seed), scenario=scenario, facility=FACILITY)
              for seed, scenario in ((11, "outpatient"), (12, "inpatient"), (13, "referral"))]
    visits[1].tables["XML1"][0]["HO_TEN"] = ""
    return visits


@pytest.fixture(scope="module")
def mixed() -> tuple[list[Visit], bytes, FileResult]:
    visits = three_visits()
    data = envelope(visits)
    result = validate_bytes(data, path="mixed.xml")
    assert [v.accepted for v in result.visits] == [True, False, True], [
        [i.code for i in v.errors] for v in result.visits]
    assert not result.errors
    return visits, data, result


@pytest.fixture(scope="module")
def signer() -> LocalKeySigner:
    return LocalKeySigner(ec_key())


@pytest.fixture(scope="module")
def receipt(mixed: tuple[list[Visit], bytes, FileResult], signer: LocalKeySigner) -> dict[str, Any]:
    return build_receipt(mixed[2], submission_id="sub-1", object_key="inbox/79001/mixed.xml",
                         received_at=RECEIVED, signer=signer)


def fresh(receipt: dict[str, Any]) -> dict[str, Any]:
    """As stored and read back: a JSON round trip, which also gives tests a copy they may change."""
    loaded: dict[str, Any] = json.loads(json.dumps(receipt, ensure_ascii=False))
    return loaded


def resign(receipt: dict[str, Any], signer: LocalKeySigner) -> dict[str, Any]:
    """A (changed) version 3 receipt signed again, alone: what a forger holding the key could make."""
    (signed,) = sign_receipts([{k: v for k, v in receipt.items() if k != "platform_signature"}], signer)
    return signed


def as_version_2(receipt: dict[str, Any], signer: LocalKeySigner) -> dict[str, Any]:
    """A receipt as version 2 issued it: the signature over the receipt's own digest, no batch."""
    old = fresh(receipt)
    old["receipt_version"] = "2"
    old["platform_signature"] = {k: v for k, v in old["platform_signature"].items() if k not in ("batch", "value")}
    old["platform_signature"]["signed"] = SIGNED_V2
    old["platform_signature"]["value"] = base64.b64encode(signer.sign_digest(signed_digest(old))).decode()
    return old


# --- Merkle ---------------------------------------------------------------------------------------------

# Certificate Transparency's reference vectors (RFC 6962 test data, as in trillian/merkle and CT's C++ tests).
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("n", range(1, 9))
def test_rfc6962_reference_roots(n: int) -> None:
    assert MerkleTree(CT_LEAVES[:n]).root.hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize("n", range(1, 10))
def test_every_proof_verifies_and_wrong_inputs_fail(n: int) -> None:
    leaves = digests(n, seed=n)
    tree = MerkleTree(leaves)
    assert tree.root == mth(leaves) and len(tree) == n
    other = hashlib.sha256(b"not a leaf").digest()
    for index, leaf in enumerate(leaves):
        proof = tree.proof(index)
        assert verify_inclusion(leaf, proof, tree.root)
        assert not verify_inclusion(other, proof, tree.root)
        assert not verify_inclusion(leaf, proof, other)
        if n > 1:
            assert not verify_inclusion(leaves[(index + 1) % n], proof, tree.root)
        for step in range(len(proof)):
            side, sibling = proof[step]
            flipped = [*proof[:step], ("R" if side == "L" else "L", sibling), *proof[step + 1:]]
            assert not verify_inclusion(leaf, flipped, tree.root)
            changed = [*proof[:step], (side, bytes([sibling[0] ^ 1]) + sibling[1:]), *proof[step + 1:]]
            assert not verify_inclusion(leaf, changed, tree.root)
        if proof:
            assert not verify_inclusion(leaf, proof[:-1], tree.root)
            assert not verify_inclusion(leaf, [("X", proof[0][1]), *proof[1:]], tree.root)


def test_tree_edges() -> None:
    (only,) = digests(1)
    tree = MerkleTree([only])
    assert tree.root == leaf_hash(only) == hashlib.sha256(b"\x00" + only).digest()
    assert tree.proof(0) == []
    with pytest.raises(ValueError, match="at least one leaf"):
        MerkleTree([])
    with pytest.raises(IndexError):
        tree.proof(1)
    # Domain separation: an inner node can not be presented as a leaf of a smaller tree.
    a, b = digests(2)
    assert MerkleTree([a, b]).root != MerkleTree([leaf_hash(a) + leaf_hash(b)]).root


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.data())
def test_merkle_property(n: int, data: st.DataObject) -> None:
    leaves = digests(n, seed=n)
    tree = MerkleTree(leaves)
    assert tree.root == mth(leaves)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = tree.proof(index)
    assert len(proof) <= max(1, (n - 1).bit_length())
    assert verify_inclusion(leaves[index], proof, tree.root)
    wrong = data.draw(st.integers(min_value=0, max_value=n - 1))
    if leaves[wrong] != leaves[index]:
        assert not verify_inclusion(leaves[wrong], proof, tree.root)


# --- canonical visit digests ----------------------------------------------------------------------------

def test_canonical_form(mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    visit = mixed[2].visits[0]
    text = canonical_visit(visit).decode("utf-8")
    document = json.loads(text)
    assert set(document) == {"ma_lk", "standard", "tables"}
    assert document["ma_lk"] == visit.ma_lk and document["standard"] == visit.standard
    assert document["tables"] == {t: rows.raw for t, rows in visit.tables.items()}
    assert json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == text
    assert visit_digest(visit) == hashlib.sha256(text.encode("utf-8")).digest()


def test_digest_is_stable_across_validations_and_processes(mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    _, data, result = mixed
    again = validate_bytes(data, path="elsewhere.xml")
    assert [visit_digest(v) for v in again.visits] == [visit_digest(v) for v in result.visits]
    script = ("import sys, random; from healthbook.validation import validate_bytes;"
              "from healthbook.signing.merkle import visit_digest;"
              "r = validate_bytes(sys.stdin.buffer.read()); print(visit_digest(r.visits[0]).hex())")
    outputs = {subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout.decode().strip()
               for seed in ("1", "2", "random")}
    assert outputs == {visit_digest(result.visits[0]).hex()}


def test_digest_changes_when_any_value_changes(mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    original = mixed[2].visits[2]
    before = visit_digest(original)

    def variant(tables: dict[str, list[dict[str, str]]], **changes: Any) -> VisitResult:
        copied = {t: dataclasses.replace(original.tables[t], raw=rows) for t, rows in tables.items()}
        return dataclasses.replace(original, tables=copied, **changes)

    raw = {t: [dict(row) for row in rows.raw] for t, rows in original.tables.items()}
    assert visit_digest(variant(raw)) == before
    seen = {before}
    for table, rows in raw.items():
        for index in {0, len(rows) - 1}:
            for name in rows[index]:
                changed = {t: [dict(r) for r in rs] for t, rs in raw.items()}
                changed[table][index][name] += "0"
                digest = visit_digest(variant(changed))
                assert digest not in seen, (table, index, name)
                seen.add(digest)
    assert visit_digest(variant(raw, ma_lk=original.ma_lk + "1")) != before
    assert visit_digest(variant(raw, standard="130")) != before
    rows = raw["XML3"]
    assert len(rows) > 1
    assert visit_digest(variant({**raw, "XML3": [rows[1], rows[0], *rows[2:]]})) != before  # row order counts
    assert visit_digest(variant({t: r for t, r in raw.items() if t != "XML3"})) != before


# --- signers --------------------------------------------------------------------------------------------

def test_local_ec_signer(tmp_path: Path) -> None:
    key = ec_key()
    path = tmp_path / "ec.pem"
    path.write_bytes(private_pem(key))
    signer = LocalKeySigner.from_file(path)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert signer.key_id == "local:" + hashlib.sha256(spki).hexdigest()[:16]
    assert signer.algorithm == "ECDSA_SHA_256"
    digest = hashlib.sha256(b"message").digest()
    signature = signer.sign_digest(digest)
    pem = signer.public_key_pem()
    assert verify_digest_signature(pem, "ECDSA_SHA_256", digest, signature)
    # The digest is signed as is: a plain ECDSA-SHA256 check over the message it came from agrees.
    key.public_key().verify(signature, b"message", ec.ECDSA(hashes.SHA256()))
    assert not verify_digest_signature(pem, "ECDSA_SHA_256", hashlib.sha256(b"other").digest(), signature)
    assert not verify_digest_signature(pem, "RSASSA_PSS_SHA_256", digest, signature)
    assert LocalKeySigner.from_pem(private_pem(key), "facility-test").key_id == "facility-test"


def test_local_rsa_signer() -> None:
    key = rsa_key()
    signer = LocalKeySigner.from_pem(private_pem(key))
    assert signer.algorithm == "RSASSA_PSS_SHA_256"
    digest = hashlib.sha256(b"message").digest()
    signature = signer.sign_digest(digest)
    assert verify_digest_signature(signer.public_key_pem(), "RSASSA_PSS_SHA_256", digest, signature)
    # KMS parameters exactly: MGF1-SHA256 and a 32-byte salt.
    key.public_key().verify(signature, b"message", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                            hashes.SHA256())
    assert not verify_digest_signature(signer.public_key_pem(), "RSASSA_PKCS1_V1_5_SHA_256", digest, signature)
    assert not verify_digest_signature(signer.public_key_pem(), "ECDSA_SHA_256", digest, signature)
    pkcs = LocalKeySigner(key, algorithm="RSASSA_PKCS1_V1_5_SHA_256")
    signature = pkcs.sign_digest(digest)
    assert verify_digest_signature(pkcs.public_key_pem(), "RSASSA_PKCS1_V1_5_SHA_256", digest, signature)
    key.public_key().verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())


def test_signer_refusals() -> None:
    with pytest.raises(ValueError, match="P-256"):
        LocalKeySigner(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="2048"):
        LocalKeySigner(rsa_key(1024))
    with pytest.raises(ValueError, match="signs with"):
        LocalKeySigner(ec_key(), algorithm="RSASSA_PSS_SHA_256")
    with pytest.raises(ValueError, match="PEM private key"):
        LocalKeySigner.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    signer = LocalKeySigner(ec_key())
    with pytest.raises(ValueError, match="32-byte"):
        signer.sign_digest(b"short")
    with pytest.raises(ValueError, match="unknown signing algorithm"):
        verify_digest_signature(signer.public_key_pem(), "HMAC_SHA_256", b"\0" * 32, b"")
    with pytest.raises(ValueError, match="PEM public key"):
        verify_digest_signature(b"junk", "ECDSA_SHA_256", b"\0" * 32, b"")
    assert not verify_digest_signature(signer.public_key_pem(), "ECDSA_SHA_256", b"\0" * 31, b"")


# --- KMS (moto) -----------------------------------------------------------------------------------------

@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    for name, value in (("AWS_DEFAULT_REGION", "ap-southeast-1"), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("kms", region_name="ap-southeast-1")


def record_calls(client: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    client.meta.events.register("provide-client-params.kms.Sign", lambda params, **_: calls.append(dict(params)))
    return calls


def kms_signature_verifies(pem: bytes, algorithm: str, digest: bytes, signature: bytes) -> bool:
    """Real KMS signs ``digest`` itself when MessageType=DIGEST; moto 5.x ignores MessageType and hashes the
    digest again as a RAW message, and pads PSS with the maximum salt. Accept exactly those two readings."""
    if verify_digest_signature(pem, algorithm, digest, signature):
        return True  # real KMS semantics (or a moto that has learnt them)
    key = serialization.load_pem_public_key(pem)
    try:
        if algorithm == "ECDSA_SHA_256":
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(signature, digest, ec.ECDSA(hashes.SHA256()))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            pad: padding.AsymmetricPadding = (padding.PKCS1v15() if algorithm == "RSASSA_PKCS1_V1_5_SHA_256" else
                                              padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                          salt_length=padding.PSS.AUTO))
            key.verify(signature, digest, pad, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


@pytest.mark.parametrize(("spec", "algorithm", "expected"), [
    ("ECC_NIST_P256", None, "ECDSA_SHA_256"),
    ("RSA_2048", None, "RSASSA_PSS_SHA_256"),
    ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_256"),
])
def test_kms_signer_against_moto(kms: Any, spec: str, algorithm: str | None, expected: str) -> None:
    from healthbook.aws.kms_signer import KmsSigner

    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec=spec)["KeyMetadata"]["KeyId"]
    calls = record_calls(kms)
    signer = KmsSigner(key_id, client=kms, algorithm=algorithm)
    assert signer.algorithm == expected
    assert signer.key_id.endswith(key_id)  # real KMS answers with the ARN, moto with the bare id
    der = kms.get_public_key(KeyId=key_id)["PublicKey"]
    pem = signer.public_key_pem()
    assert serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == der
    digest = hashlib.sha256(b"receipt").digest()
    signature = signer.sign_digest(digest)
    assert calls == [{"KeyId": signer.key_id, "Message": digest, "MessageType": "DIGEST", "SigningAlgorithm": expected}]
    assert kms_signature_verifies(pem, expected, digest, signature)
    assert not kms_signature_verifies(pem, expected, hashlib.sha256(b"other").digest(), signature)


def test_kms_signer_refusals(kms: Any) -> None:
    from healthbook.aws.kms_signer import KmsSigner

    rsa_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048")["KeyMetadata"]["KeyId"]
    with pytest.raises(ValueError, match="ECDSA_SHA_256"):
        _ = KmsSigner(rsa_id, client=kms, algorithm="ECDSA_SHA_256").algorithm
    with pytest.raises(ValueError, match="unknown signing algorithm"):
        KmsSigner(rsa_id, client=kms, algorithm="RSASSA_PSS_SHA_512")
    encrypting = kms.create_key(KeyUsage="ENCRYPT_DECRYPT", KeySpec="RSA_2048")["KeyMetadata"]["KeyId"]
    with pytest.raises(ValueError, match="not a signing key"):
        _ = KmsSigner(encrypting, client=kms).key_id
    with pytest.raises(ValueError, match="32-byte"):
        KmsSigner(rsa_id, client=kms).sign_digest(b"x" * 20)


@pytest.fixture
def kms_honouring_digest(kms: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Test-only: make moto sign as real KMS does for MessageType=DIGEST (no second hash, 32-byte PSS salt),
    so a whole receipt can be signed through KmsSigner and checked with the offline verifier."""
    from moto.kms import utils

    def ec_sign(self: Any, message: bytes, signing_algorithm: str) -> bytes:
        signature: bytes = self.private_key.sign(message, ec.ECDSA(Prehashed(hashes.SHA256())))
        return signature

    def rsa_sign(self: Any, message: bytes, signing_algorithm: str) -> bytes:
        pad = (padding.PKCS1v15() if signing_algorithm == "RSASSA_PKCS1_V1_5_SHA_256" else
               padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))
        signature: bytes = self.private_key.sign(message, pad, Prehashed(hashes.SHA256()))
        return signature

    monkeypatch.setattr(utils.ECDSAPrivateKey, "sign", ec_sign)
    monkeypatch.setattr(utils.RSAPrivateKey, "sign", rsa_sign)
    return kms


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "RSA_2048"])
def test_receipt_signed_with_kms(kms_honouring_digest: Any, spec: str,
                                 mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    from healthbook.aws.kms_signer import KmsSigner

    key_id = kms_honouring_digest.create_key(KeyUsage="SIGN_VERIFY", KeySpec=spec)["KeyMetadata"]["KeyId"]
    signer = KmsSigner(key_id)  # default client: boto3.client("kms"), inside mock_aws
    receipt = build_receipt(mixed[2], submission_id="s", object_key="k", received_at=RECEIVED, signer=signer)
    pem = base64.b64encode(kms_honouring_digest.get_public_key(KeyId=key_id)["PublicKey"])
    public = b"-----BEGIN PUBLIC KEY-----\n" + pem + b"\n-----END PUBLIC KEY-----\n"
    assert verify_receipt(fresh(receipt), public) == []
    assert receipt["platform_signature"]["algorithm"] == ("ECDSA_SHA_256" if spec.startswith("ECC")
                                                          else "RSASSA_PSS_SHA_256")


def test_core_does_not_import_boto3() -> None:
    script = ("import sys; import healthbook.signing.receipt, healthbook_dev.commands.receipt, "
              "healthbook.signing.merkle, healthbook.signing.signer, healthbook.aws.kms_signer, healthbook.validation;"
              "print('boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, text=True).stdout
    assert out.strip() == "False"


# --- receipts -------------------------------------------------------------------------------------------

def test_receipt_for_a_partly_accepted_file(receipt: dict[str, Any], signer: LocalKeySigner,
                                            mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    visits, _, result = mixed
    assert receipt["receipt_version"] == "3"
    assert (receipt["submission_id"], receipt["facility"], receipt["object_key"]) == (
        "sub-1", FACILITY[0], "inbox/79001/mixed.xml")
    assert receipt["received_at"] == "2025-03-01T01:30:05Z"
    assert receipt["received_at_portal"] == "20250301083005"
    assert receipt["standards"] == ["4750"]
    assert receipt["accepted"] is False and receipt["visits_accepted"] == 2 and receipt["errors"] == []
    assert receipt["rejected"] is False and receipt["visits_not_admitted"] == 1
    assert receipt["findings_total"] == sum(len(e["findings"]) for e in receipt["visits"]) == 2
    entries = receipt["visits"]
    assert [e["ma_lk"] for e in entries] == [v.ma_lk for v in visits]
    assert [e["accepted"] for e in entries] == [True, False, True]
    assert [e["leaf_index"] for e in entries] == [0, None, 1]
    assert entries[1]["digest"] is None and entries[1]["proof"] is None
    assert [(i["code"], i["blocks"]) for i in entries[1]["errors"]] == [("H601", "visit")]
    # the empty name, and its copy in the inpatient's papers that no longer matches: findings, reported
    assert [(i["code"], i["field"], i["blocks"]) for i in entries[1]["findings"]] == [
        ("V201", "HO_TEN", "none"), ("R312", "HO_TEN", "none")]
    assert all(i["basis"] for e in entries for i in e["errors"] + e["findings"])
    merkle = receipt["merkle"]
    assert merkle == {"root": merkle["root"], "leaves": 2, "hash": "sha256", "scheme": "rfc6962"}
    root = bytes.fromhex(merkle["root"])
    for entry, visit in zip(entries, result.visits, strict=True):
        if entry["accepted"]:
            assert entry["digest"] == visit_digest(visit).hex()
            proof = [(side, bytes.fromhex(h)) for side, h in entry["proof"]]
            assert verify_inclusion(bytes.fromhex(entry["digest"]), proof, root)
    signature = receipt["platform_signature"]
    assert (signature["key_id"], signature["algorithm"], signature["signed"]) == (
        signer.key_id, "ECDSA_SHA_256", SIGNED)
    # signed alone: a window of one receipt, whose root is its leaf hash
    assert signature["batch"] == {"root": leaf_hash(signed_digest(receipt)).hex(), "leaves": 1, "leaf_index": 0,
                                  "proof": []}
    assert verify_receipt(receipt, signer.public_key_pem()) == []
    assert verify_receipt(fresh(receipt), signer.public_key_pem()) == []
    assert compare_with_submission(fresh(receipt), result) == []


def test_signed_bytes_are_documented_form(receipt: dict[str, Any], signer: LocalKeySigner) -> None:
    """The recipe of docs/receipt.md, done by hand with hashlib and cryptography only: the receipt's digest
    (without the signature's value and batch), its leaf hash (a window of one: the root), the signature over it."""
    body = {k: v for k, v in receipt.items() if k != "platform_signature"}
    body["platform_signature"] = {k: v for k, v in receipt["platform_signature"].items()
                                  if k not in ("value", "batch")}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert data == signed_bytes(receipt)
    root = hashlib.sha256(b"\x00" + hashlib.sha256(data).digest()).digest()
    assert root.hex() == receipt["platform_signature"]["batch"]["root"]
    key = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(base64.b64decode(receipt["platform_signature"]["value"]), root, ec.ECDSA(Prehashed(hashes.SHA256())))


def _flip_signature(receipt: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(receipt["platform_signature"]["value"]))
    raw[-1] ^= 1
    receipt["platform_signature"]["value"] = base64.b64encode(bytes(raw)).decode()


def _swap_visits(receipt: dict[str, Any]) -> None:
    receipt["visits"][0], receipt["visits"][2] = receipt["visits"][2], receipt["visits"][0]


TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "facility": change_at("facility", "01001"),
    "object_key": change_at("object_key", "inbox/01001/other.xml"),
    "submission_id": change_at("submission_id", "sub-2"),
    "received_at": change_at("received_at", "2025-03-02T01:30:05Z"),
    "received_at_portal": change_at("received_at_portal", "20250302083005"),
    "digest": change_at("visits.0.digest", "00" * 32),
    "accepted flag off": change_at("visits.0.accepted", False),
    "accepted flag on": change_at("visits.1.accepted", True),
    "file accepted": change_at("accepted", True),
    "visit errors dropped": change_at("visits.1.errors", []),
    "ma_lk": change_at("visits.0.ma_lk", "79001250301999"),
    "root": change_at("merkle.root", "ab" * 32),
    "leaves": change_at("merkle.leaves", 3),
    "proof": change_at("visits.2.proof", [["L", "cd" * 32]]),
    "leaf_index": change_at("visits.2.leaf_index", 0),
    "visits_accepted": change_at("visits_accepted", 3),
    "facility_signature": change_at("facility_signature", {"valid": True}),
    "algorithm": change_at("platform_signature.algorithm", "RSASSA_PSS_SHA_256"),
    "key_id": change_at("platform_signature.key_id", "arn:aws:kms:ap-southeast-1:111122223333:key/x"),
    "signature": _flip_signature,
    "visit order": _swap_visits,
    "version": change_at("receipt_version", "2"),
    "scope": change_at("platform_signature.signed", SIGNED_V2),
    "batch root": change_at("platform_signature.batch.root", "ab" * 32),
    "batch leaves": change_at("platform_signature.batch.leaves", 2),
    "batch leaf_index": change_at("platform_signature.batch.leaf_index", 1),
    "batch proof": change_at("platform_signature.batch.proof", [["R", "cd" * 32]]),
    "batch dropped": change_at("platform_signature.batch", None),
}
# Outside what the signature covers: the batch (checked against the digest and the signature instead), and
# what makes the signature unreadable.
BATCH_TAMPERING = ("batch root", "batch leaves", "batch leaf_index", "batch dropped")


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_is_detected(name: str, receipt: dict[str, Any], signer: LocalKeySigner) -> None:
    changed = fresh(receipt)
    TAMPERING[name](changed)
    problems = verify_receipt(changed, signer.public_key_pem())
    assert problems, name
    if name in BATCH_TAMPERING:
        assert all("platform_signature.batch" in p for p in problems), problems
    elif name not in ("algorithm", "scope", "version"):  # refused for the scope they name
        assert any("signature does not verify" in p for p in problems), problems


def test_wrong_key_and_unknown_version(receipt: dict[str, Any]) -> None:
    other = LocalKeySigner(ec_key())
    problems = verify_receipt(fresh(receipt), other.public_key_pem())
    assert any("names key" in p for p in problems) and any("does not verify" in p for p in problems)
    assert verify_receipt({**fresh(receipt), "receipt_version": "4"}, other.public_key_pem()) == [
        "unknown receipt version '4' (this tool reads versions 1, 2, 3)"]
    assert verify_receipt([], other.public_key_pem()) == ["a receipt must be a JSON object"]  # type: ignore[arg-type]


def test_version_1_receipts_still_verify(receipt: dict[str, Any], signer: LocalKeySigner) -> None:
    """Receipts issued before findings were split off (version 1: errors and warnings) stay verifiable."""
    old = as_version_2(receipt, signer)
    old["receipt_version"] = "1"
    for key in ("rejected", "visits_not_admitted", "findings_total"):
        del old[key]
    for entry in old["visits"]:
        entry["warnings"] = entry.pop("findings")
    old["platform_signature"]["value"] = base64.b64encode(signer.sign_digest(signed_digest(old))).decode()
    assert verify_receipt(old, signer.public_key_pem()) == []
    assert "V201" in render_receipt(old)


def test_version_2_counts_are_checked(receipt: dict[str, Any], signer: LocalKeySigner) -> None:
    for key, value in (("rejected", True), ("visits_not_admitted", 0), ("findings_total", 7)):
        for forged in (resign({**fresh(receipt), key: value}, signer),
                       as_version_2({**fresh(receipt), key: value}, signer)):
            problems = verify_receipt(forged, signer.public_key_pem())
            assert problems and all(key in p for p in problems), (key, problems)


def test_rsa_signed_receipt(mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    signer = LocalKeySigner(rsa_key())
    receipt = build_receipt(mixed[2], submission_id="s", object_key="k", received_at=RECEIVED, signer=signer)
    assert receipt["platform_signature"]["algorithm"] == "RSASSA_PSS_SHA_256"
    assert verify_receipt(fresh(receipt), signer.public_key_pem()) == []
    broken = fresh(receipt)
    broken["object_key"] = "elsewhere"
    assert verify_receipt(broken, signer.public_key_pem())


@pytest.mark.parametrize("case", ["all visits invalid", "file-level error", "not XML", "empty file"])
def test_rejected_files_still_get_signed_receipts(case: str, signer: LocalKeySigner) -> None:
    visits = three_visits()
    if case == "all visits invalid":
        for visit in visits:
            visit.tables["XML1"][0]["HO_TEN"] = ""
        data = envelope(visits)
    elif case == "file-level error":
        data = envelope(visits[:1], count=4)  # SOLUONGHOSO says 4: the whole file is rejected
    else:
        data = b"this is not XML" if case == "not XML" else b""
    result = validate_bytes(data)
    receipt = build_receipt(result, submission_id="s", object_key="k", received_at=RECEIVED, signer=signer)
    assert receipt["merkle"] is None and receipt["accepted"] is False and receipt["visits_accepted"] == 0
    assert all(not v["accepted"] and v["digest"] is None for v in receipt["visits"])
    assert receipt["errors"] or all(v["errors"] for v in receipt["visits"])
    assert receipt["platform_signature"]["value"]
    assert verify_receipt(fresh(receipt), signer.public_key_pem()) == []
    forged = fresh(receipt)
    forged["facility"] = "01001"
    assert verify_receipt(forged, signer.public_key_pem())
    if case == "file-level error":
        assert result.visits and result.visits[0].accepted  # the visit alone is fine, the file is not
        assert "rejected with the whole file" in render_receipt(receipt)


def test_personal_data_never_in_receipt(signer: LocalKeySigner) -> None:
    visits = three_visits()
    rng = random.Random(5)
    defect = inject(visits[0], rng, "person_id")  # a bad CCCD: reported, with its value masked
    visits[2].tables["XML1"][0]["HO_TEN"] = "Nguyễn Thị " + "B" * 300  # too long: reported, masked
    data = envelope(visits, **defect.envelope)
    result = validate_bytes(data)
    receipt = build_receipt(result, submission_id="s", object_key="k", received_at=RECEIVED, signer=signer)
    reported = {(i["field"], i["value"]) for v in receipt["visits"] for i in v["errors"] + v["findings"]}
    assert any(field == "SO_CCCD" for field, _ in reported) and any(field == "HO_TEN" for field, _ in reported)
    for text in (json.dumps(receipt, ensure_ascii=False), json.dumps(receipt), render_receipt(receipt)):
        for visit in visits:
            summary = visit.tables["XML1"][0]
            for field in ("HO_TEN", "SO_CCCD", "MA_THE_BHYT", "DIEN_THOAI", "DIA_CHI", "MA_BN"):
                value = summary.get(field)
                if value:
                    assert value not in text, (field, value)
                    assert json.dumps(value)[1:-1] not in text, (field, value)


def test_receipt_names_a_different_file(receipt: dict[str, Any], mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    visits = three_visits()
    visits[0].tables["XML1"][0]["LY_DO_VV"] = "Đau đầu"
    changed = validate_bytes(envelope(visits))
    assert changed.visits[0].accepted
    problems = compare_with_submission(fresh(receipt), changed)
    assert problems == [f"visit 1 (MA_LK {visits[0].ma_lk!r}): the file's records differ from the ones accepted "
                        "(digest mismatch)"]


def test_received_at_must_be_aware(mixed: tuple[list[Visit], bytes, FileResult], signer: LocalKeySigner) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_receipt(mixed[2], submission_id="s", object_key="k", received_at=datetime(2025, 1, 1), signer=signer)
    local = datetime(2025, 1, 1, 6, 59, 59, tzinfo=timezone(timedelta(hours=7)))
    receipt = build_receipt(mixed[2], submission_id="s", object_key="k", received_at=local, signer=signer)
    assert (receipt["received_at"], receipt["received_at_portal"]) == ("2024-12-31T23:59:59Z", "20250101065959")


def test_render(receipt: dict[str, Any], mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    text = render_receipt(receipt)
    for expected in ("BIÊN NHẬN HỒ SƠ / SUBMISSION RECEIPT", "Cơ sở KBCB / Facility", "79001",
                     "TIẾP NHẬN MỘT PHẦN / PARTLY ACCEPTED: 2/3", "20250301083005", "V201", "H601", "finding V201",
                     "không đưa vào Sổ sức khỏe / not admitted", "vào Sổ sức khỏe / in the health book",
                     "XML1.HO_TEN is required", receipt["merkle"]["root"], "ECDSA_SHA_256"):
        assert expected in text, expected
    for visit in mixed[0]:
        assert visit.ma_lk in text


def test_facility_signature_is_passed_through_and_signed(mixed: tuple[list[Visit], bytes, FileResult],
                                                         signer: LocalKeySigner) -> None:
    from healthbook.validation.issues import make_issue

    check = {"valid": False, "issues": [make_issue("K403").to_dict()], "certificate_sha256": "ab" * 32,
             "subject": "CN=Bệnh viện Đa khoa Sài Gòn,O=BV,C=VN", "registered_facilities": ["79001"]}
    receipt = build_receipt(mixed[2], submission_id="s", object_key="k", received_at=RECEIVED, signer=signer,
                            facility_signature=check)
    assert receipt["facility_signature"] == check
    assert verify_receipt(fresh(receipt), signer.public_key_pem()) == []
    text = render_receipt(receipt)
    assert "Facility signature: không hợp lệ / invalid" in text and "K403" in text and "ab" * 32 in text
    forged = fresh(receipt)
    forged["facility_signature"]["valid"] = True
    assert verify_receipt(forged, signer.public_key_pem())


# --- docs/receipt.md ------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "receipt.md"


def doc_block(language: str) -> str:
    import re

    found = re.search(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert found, language
    return found.group(1)


def test_documented_example_verifies() -> None:
    example = json.loads(doc_block("json"))
    public = doc_block("pem").encode()
    assert verify_receipt(example, public) == []
    example["facility"] = "01001"
    assert verify_receipt(example, public)


@pytest.mark.parametrize("kind", ["example", "rsa", "rejected", "tampered", "window", "version 2"])
def test_documented_snippet(kind: str, tmp_path: Path, mixed: tuple[list[Visit], bytes, FileResult]) -> None:
    """The ~20-line offline verifier in the docs really verifies (and really refuses a forgery), version 3 receipts
    of any window and the version 2 receipts already issued."""
    data = Path(__file__).resolve().parent / "data"
    if kind == "example":
        receipt, public = json.loads(doc_block("json")), doc_block("pem").encode()
    elif kind == "version 2":
        receipt = json.loads((data / "receipt-v2-example.json").read_text(encoding="utf-8"))
        public = (data / "receipt-v2-example.pub.pem").read_bytes()
    elif kind == "window":
        signer = LocalKeySigner(ec_key())
        bodies = [receipt_body(result, submission_id=f"s{n}", object_key=f"k{n}", received_at=RECEIVED)
                  for n, result in enumerate([mixed[2], validate_bytes(b"<x/>"), mixed[2], mixed[2], mixed[2]])]
        receipt, public = fresh(sign_receipts(bodies, signer)[3]), signer.public_key_pem()
    else:
        signer = LocalKeySigner(rsa_key()) if kind == "rsa" else LocalKeySigner(ec_key())
        result = validate_bytes(b"<x/>") if kind == "rejected" else mixed[2]
        receipt = fresh(build_receipt(result, submission_id="s", object_key="k", received_at=RECEIVED,
                                      signer=signer))
        public = signer.public_key_pem()
        if kind == "tampered":
            receipt["visits"][0]["accepted"] = False
    (tmp_path / "receipt.json").write_text(json.dumps(receipt, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "platform.pub.pem").write_bytes(public)
    done = subprocess.run([sys.executable, "-c", doc_block("python")], cwd=tmp_path, capture_output=True, text=True)
    if kind == "tampered":
        assert done.returncode != 0 and "InvalidSignature" in done.stderr
    else:
        assert (done.returncode, done.stdout) == (0, "valid\n"), done.stderr


# --- CLI ------------------------------------------------------------------------------------------------

def run(*argv: str) -> int:
    return main(list(argv))  # through the real CLI wiring


@pytest.fixture
def files(tmp_path: Path, mixed: tuple[list[Visit], bytes, FileResult]) -> dict[str, Path]:
    key = ec_key()
    paths = {"key": tmp_path / "platform.pem", "public": tmp_path / "platform.pub.pem",
             "mixed": tmp_path / "mixed.xml", "clean": tmp_path / "clean.xml"}
    paths["key"].write_bytes(private_pem(key))
    paths["public"].write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    paths["mixed"].write_bytes(mixed[1])
    paths["clean"].write_bytes(submission(build_visit(random.Random(21), scenario="outpatient")))
    return paths


def test_cli_round_trip(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "receipt.json"
    assert run("receipt", "make", str(files["mixed"]), "--key", str(files["key"]), "--object-key", "inbox/m.xml",
               "--submission-id", "sub-9", "--received-at", "2025-03-01T08:30:05+07:00", "--out", str(out)) == 1
    assert "2/3 visit(s) accepted" in capsys.readouterr().err
    receipt = json.loads(out.read_text(encoding="utf-8"))
    assert (receipt["submission_id"], receipt["object_key"], receipt["received_at"]) == (
        "sub-9", "inbox/m.xml", "2025-03-01T01:30:05Z")

    assert run("receipt", "verify", str(out), "--public-key", str(files["public"])) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"VALID  {out}: submission sub-9, facility 79001, 2/3 visit(s)")
    assert "(one signature for a window of 1 receipt(s))" in printed
    assert run("receipt", "verify", str(out), "--public-key", str(files["public"]),
               "--submission", str(files["mixed"])) == 0
    assert "matches the submitted file" in capsys.readouterr().out
    assert run("receipt", "verify", str(out), "--public-key", str(files["public"]),
               "--submission", str(files["clean"])) == 1
    assert "INVALID" in capsys.readouterr().out

    assert run("receipt", "show", str(out)) == 0
    shown = capsys.readouterr().out
    assert "SUBMISSION RECEIPT" in shown and "PARTLY ACCEPTED" in shown

    receipt["visits"][1]["accepted"] = True
    out.write_text(json.dumps(receipt), encoding="utf-8")
    assert run("receipt", "verify", str(out), "--public-key", str(files["public"])) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("INVALID") and "signature does not verify" in printed

    assert run("receipt", "make", str(files["clean"]), "--key", str(files["key"])) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["accepted"] is True and made["object_key"] == "clean.xml" and made["submission_id"]


def test_cli_usage_errors(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.json")
    assert run("receipt", "verify", missing, "--public-key", str(files["public"])) == 2
    not_json = tmp_path / "bad.json"
    not_json.write_text("{", encoding="utf-8")
    assert run("receipt", "verify", str(not_json), "--public-key", str(files["public"])) == 2
    assert run("receipt", "show", str(not_json)) == 2
    receipt = tmp_path / "r.json"
    assert run("receipt", "make", str(files["mixed"]), "--key", str(files["key"]), "--out", str(receipt)) == 1
    assert run("receipt", "verify", str(receipt), "--public-key", str(files["mixed"])) == 2  # not a key
    assert run("receipt", "make", str(files["mixed"]), "--key", str(files["public"])) == 2  # public, not private
    assert run("receipt", "make", str(files["mixed"]), "--key", str(files["key"]),
               "--received-at", "2025-03-01T08:30:05") == 2  # no time zone
    assert run("receipt", "make", str(tmp_path / "none.xml"), "--key", str(files["key"])) == 2
    err = capsys.readouterr().err
    assert "time zone" in err and "not a JSON receipt" in err
    with pytest.raises(SystemExit) as usage:
        run("receipt", "verify", str(receipt))  # --public-key is required
    assert usage.value.code == 2


@pytest.mark.parametrize(("path", "value", "where"), [
    ("visits.0.accepted", "yes", "visits.0.accepted"),
    ("visits.0.digest", "not hex", "visits.0.digest"),
    ("visits.2.proof", [["X", "cd" * 32]], "visits.2.proof.0.0"),
    ("merkle.root", 7, "merkle.root"),
    ("visits", {"0": {}}, "visits"),
])
def test_a_receipt_of_the_wrong_shape_is_refused_naming_where(receipt: dict[str, Any], signer: LocalKeySigner,
                                                              path: str, value: Any, where: str) -> None:
    """The model checks the shape (a re-signed receipt, so the signature alone does not catch it)."""
    forged = fresh(receipt)
    change_at(path, value)(forged)
    forged = resign(forged, signer)
    problems = verify_receipt(forged, signer.public_key_pem())
    assert problems and all(p.startswith(where) for p in problems), problems
    assert render_receipt(forged).startswith("KHÔNG PHẢI BIÊN NHẬN / NOT A RECEIPT:\n  " + where)
