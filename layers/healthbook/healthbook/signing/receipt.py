"""Every submitted file gets a receipt signed by the platform; accepted visits are bound to it by a Merkle proof.

The receipt is a JSON object (docs/receipt.md has the schema). Nothing a facility reads in it (which visits were
accepted, why others were rejected, for which file and facility, when) can be changed or moved to another file
without detection. Since version 3 the platform signs once per *window* of receipts (the ingest function's SQS
batch): each receipt's digest is a leaf of an RFC 6962 tree, the KMS signature is over the tree's root, and each
receipt carries its own path to that root (``platform_signature.batch``), so it still verifies alone, offline,
with the public key. Versions 1 and 2 (the signature directly over the receipt's digest) stay verifiable.

Building and signing are apart: ``receipt_body`` is the pure, unsigned receipt of one file; ``sign_receipts``
signs any number of them with one ``sign_digest`` call; ``build_receipt`` is both for a window of one. The
signer is injected (a local key, or KMS through healthbook.aws.kms_signer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError

from healthbook.kernel import iso_utc, portal_time, transaction_of
from healthbook.signing.merkle import (
    MerkleTree,
    canonical_json,
    fold_proof,
    proof_sides,
    verify_inclusion,
    visit_digest,
)
from healthbook.signing.signer import ALGORITHMS, Signer, fingerprint, load_public_key, verify_digest_signature
from healthbook.validation.issues import Issue
from healthbook.validation.results import FileResult

RECEIPT_VERSION = "3"  # 3: one signature per window of receipts (a Merkle root); 2: findings (docs/conformance.md)
READABLE_VERSIONS = ("1", "2", "3")  # receipts already issued stay verifiable
HASH = "sha256"
SCHEME = "rfc6962"
# What platform_signature.value signs, stated in the receipt itself so a reader needs no other document.
SIGNED = ("rfc6962 root (platform_signature.batch) over sha256(canonical_json(receipt without "
          "platform_signature.value and platform_signature.batch))")
SIGNED_V2 = "sha256(canonical_json(receipt without platform_signature.value))"  # versions 1 and 2
_UNSIGNED = ("value", "batch")  # what a receipt's digest leaves out of platform_signature
_ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


# --- the receipt as a model: what builds, verifies and renders it --------------------------------------------

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Part(BaseModel):
    # A field a later version adds is kept (and covered by the signature), not refused.
    model_config = ConfigDict(extra="allow", defer_build=True)


class ReceiptIssue(_Part):
    """An issue as healthbook.validation.issues.Issue.to_dict writes it (no personal data: values are masked)."""

    code: str
    severity: str | None = None
    blocks: str | None = None  # "file", "visit" or "none" (a finding); absent in version 1
    table: str | None = None
    ma_lk: str | None = None
    field: str | None = None
    value: str | None = None
    message_vi: str | None = None
    message_en: str | None = None
    basis: str | None = None


class ReceiptVisit(_Part):
    ma_lk: str | None = None
    accepted: StrictBool  # admitted to the health book
    standard: str | None = None
    errors: list[ReceiptIssue] = Field(default_factory=list)
    # Version 1 called the findings "warnings".
    findings: list[ReceiptIssue] = Field(default_factory=list, validation_alias=AliasChoices("findings", "warnings"))
    digest: Hex64 | None = None
    leaf_index: int | None = None
    proof: list[tuple[Literal["L", "R"], Hex64]] | None = None


class MerkleSummary(_Part):
    root: Hex64
    leaves: int
    hash: str
    scheme: str


class SignatureBatch(_Part):
    """Version 3: where this receipt sits in the window whose root the platform signed."""

    root: Hex64
    leaves: int
    leaf_index: int
    proof: list[tuple[Literal["L", "R"], Hex64]]


class PlatformSignature(_Part):
    key_id: str
    algorithm: str
    signed: str
    value: str | None = None  # base64; absent while the receipt is being signed
    batch: SignatureBatch | None = None  # version 3


class ReceiptBody(_Part):
    """A receipt before it is signed: everything but ``platform_signature`` (docs/receipt.md).
    ``rejected``, ``visits_not_admitted`` and ``findings_total`` are version 2's."""

    receipt_version: str
    submission_id: str
    facility: str | None = None
    object_key: str
    transaction_id: str | None = None  # maGiaoDich, for a file received by the portal API
    received_at: str
    received_at_portal: str
    standards: list[str] = Field(default_factory=list)
    accepted: StrictBool
    rejected: StrictBool | None = None
    visits_accepted: int
    visits_not_admitted: int | None = None
    findings_total: int | None = None
    errors: list[ReceiptIssue] = Field(default_factory=list)
    visits: list[ReceiptVisit]
    facility_signature: dict[str, Any] | None = None
    merkle: MerkleSummary | None = None

    def document(self) -> dict[str, Any]:
        """The JSON object: every field, nulls included."""
        return self.model_dump(mode="json")


class Receipt(ReceiptBody):
    """A signed receipt, as read back (docs/receipt.md)."""

    platform_signature: PlatformSignature


def signed_bytes(receipt: dict[str, Any]) -> bytes:
    """The receipt's own bytes: canonical JSON of it without ``platform_signature.value`` and ``.batch``.

    Versions 1 and 2 sign their SHA-256 directly (they have no ``batch``); in version 3 that SHA-256 is the
    receipt's leaf in its window's tree, whose root is signed."""
    body = {key: value for key, value in receipt.items() if key != "platform_signature"}
    signature = receipt.get("platform_signature")
    if isinstance(signature, dict):
        body["platform_signature"] = {k: v for k, v in signature.items() if k not in _UNSIGNED}
    return canonical_json(body)


def signed_digest(receipt: dict[str, Any]) -> bytes:
    """SHA-256 of ``signed_bytes``: what versions 1 and 2 sign, and version 3's leaf digest."""
    return hashlib.sha256(signed_bytes(receipt)).digest()


def _issues(issues: list[Issue]) -> list[ReceiptIssue]:
    return [ReceiptIssue.model_validate(issue.to_dict()) for issue in issues]


def receipt_body(result: FileResult, *, submission_id: str, object_key: str, received_at: datetime,
                 facility_signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """The unsigned receipt (its JSON object, without ``platform_signature``) for one validated file; every file
    gets one, however badly it failed. Pure: ``sign_receipts`` signs it.

    A visit counts as accepted (admitted to the health book) only when none of its issues blocks it and the
    file is not rejected; its ``errors`` say why not, its ``findings`` are reported without blocking it
    (docs/conformance.md). Accepted visits, in document order, are the Merkle leaves; with none, ``merkle``
    is null and the rest is signed all the same.
    """
    file_ok = not result.rejected
    accepted = [file_ok and visit.accepted for visit in result.visits]
    digests = [visit_digest(v) for v, ok in zip(result.visits, accepted, strict=True) if ok]
    tree = MerkleTree(digests) if digests else None
    visits: list[ReceiptVisit] = []
    leaves = iter(range(len(digests)))  # accepted visits are the leaves, in document order
    for visit, ok in zip(result.visits, accepted, strict=True):
        entry = ReceiptVisit(ma_lk=visit.ma_lk, accepted=ok, standard=visit.standard, errors=_issues(visit.errors),
                             findings=_issues(visit.findings))
        if ok and tree is not None:
            leaf = next(leaves)
            entry.digest, entry.leaf_index = digests[leaf].hex(), leaf
            entry.proof = [(side, sibling.hex()) for side, sibling in tree.proof(leaf)]
        visits.append(entry)
    body = ReceiptBody(
        receipt_version=RECEIPT_VERSION, submission_id=submission_id, facility=result.facility,
        object_key=object_key, transaction_id=transaction_of(object_key), received_at=iso_utc(received_at),
        received_at_portal=portal_time(received_at),
        standards=sorted({v.standard for v in result.visits if v.standard}),
        accepted=file_ok and bool(result.visits) and all(accepted), rejected=not file_ok,
        visits_accepted=len(digests), visits_not_admitted=len(accepted) - len(digests),
        findings_total=sum(len(visit.findings) for visit in visits), errors=_issues(result.errors), visits=visits,
        facility_signature=facility_signature,
        merkle=None if tree is None else MerkleSummary(root=tree.root.hex(), leaves=len(digests), hash=HASH,
                                                       scheme=SCHEME))
    return body.document()


def sign_receipts(bodies: Sequence[dict[str, Any]], signer: Signer) -> list[dict[str, Any]]:
    """The signed receipts of a window of unsigned ones (``receipt_body``), in the same order, with ONE
    ``signer.sign_digest`` call (none for an empty window).

    Each receipt gets ``platform_signature`` = the signer's key and algorithm, ``signed`` (the scope in words),
    ``value`` (the signature of the window's root, the same in every receipt of the window) and ``batch``:
    the root, the number of leaves, its leaf index and its audit path. A window of one is a tree of one leaf:
    root = leaf_hash(its digest), proof []. The inputs are left as they are."""
    if not bodies:
        return []
    stamped: list[dict[str, Any]] = []
    for body in bodies:
        if "platform_signature" in body:
            raise ValueError("sign_receipts takes unsigned receipts (receipt_body), not signed ones")
        if body.get("receipt_version") != RECEIPT_VERSION:
            raise ValueError(f"only version {RECEIPT_VERSION} receipts are signed in windows")
        stamped.append({**body, "platform_signature": {"key_id": signer.key_id, "algorithm": signer.algorithm,
                                                       "signed": SIGNED}})
    tree = MerkleTree([signed_digest(receipt) for receipt in stamped])
    value = base64.b64encode(signer.sign_digest(tree.root)).decode("ascii")
    for index, receipt in enumerate(stamped):
        receipt["platform_signature"]["value"] = value
        receipt["platform_signature"]["batch"] = {
            "root": tree.root.hex(), "leaves": len(tree), "leaf_index": index,
            "proof": [[side, sibling.hex()] for side, sibling in tree.proof(index)]}
    return stamped


def build_receipt(result: FileResult, *, submission_id: str, object_key: str, received_at: datetime,
                  signer: Signer, facility_signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """The signed receipt of one file, signed alone (a window of one): for callers that sign one file at a
    time (``healthbook receipt make``, ``healthbook.pipeline.process_submission``)."""
    body = receipt_body(result, submission_id=submission_id, object_key=object_key, received_at=received_at,
                        facility_signature=facility_signature)
    (receipt,) = sign_receipts([body], signer)
    return receipt


# --- verification ---------------------------------------------------------------------------------------

def parse_receipt(receipt: object) -> tuple[Receipt | None, list[str]]:
    """The receipt as a model, or the reasons it is not one (each naming where)."""
    try:
        return Receipt.model_validate(receipt), []
    except ValidationError as exc:
        return None, [f"{'.'.join(str(p) for p in error['loc']) or 'receipt'}: {error['msg']}"
                      for error in exc.errors()]


def verify_receipt(receipt: dict[str, Any], public_key_pem: bytes) -> list[str]:
    """Problems found, in plain English; an empty list means the receipt is genuine and consistent.

    Checks the platform signature first (over the JSON object as received; in version 3 over the root its batch
    proof leads to from the receipt's digest), then everything a signature alone cannot show: the receipt's shape
    (the model), that each visit's proof leads to the root, that the root is the tree of the listed digests, and
    that the flags add up.
    """
    if not isinstance(receipt, dict):
        return ["a receipt must be a JSON object"]
    version = receipt.get("receipt_version")
    if version not in READABLE_VERSIONS:
        return [f"unknown receipt version {version!r} (this tool reads versions {', '.join(READABLE_VERSIONS)})"]
    problems = _check_signature(receipt, public_key_pem, str(version))
    parsed, malformed = parse_receipt(receipt)
    if parsed is None:
        return problems + malformed
    return problems + _check_time(parsed) + _check_visits(parsed)


def _check_signature(receipt: dict[str, Any], public_key_pem: bytes, version: str) -> list[str]:
    signature = receipt.get("platform_signature")
    if not isinstance(signature, dict):
        return ["platform_signature is missing"]
    algorithm, signed, key_id = signature.get("algorithm"), signature.get("signed"), signature.get("key_id")
    expected = SIGNED if version == RECEIPT_VERSION else SIGNED_V2
    if algorithm not in ALGORITHMS:
        return [f"unknown signature algorithm {algorithm!r}"]
    if signed != expected:
        return [f"unknown signature scope {signed!r} (expected {expected!r})"]
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
        load_public_key(public_key_pem)
    except binascii.Error:
        return ["platform signature value is not base64"]
    except ValueError as exc:
        return [f"public key: {exc}"]
    problems = []
    if isinstance(key_id, str) and key_id.startswith("local:") and key_id != f"local:{fingerprint(public_key_pem)}":
        problems.append(f"receipt names key {key_id}, but the given public key is local:{fingerprint(public_key_pem)}")
    try:
        digest = signed_digest(receipt)
    except (TypeError, ValueError) as exc:
        return [*problems, f"receipt cannot be put in canonical form: {exc}"]
    if version == RECEIPT_VERSION:
        signed_root, trouble = _batch_root(digest, signature.get("batch"))
        if signed_root is None:
            return problems + trouble
        problems += trouble
    elif "batch" in signature:
        return [*problems, f"platform_signature.batch has no place in a version {version} receipt"]
    else:
        signed_root = digest  # versions 1 and 2: the receipt's digest itself is signed
    if not verify_digest_signature(public_key_pem, str(algorithm), signed_root, value):
        problems.append("platform signature does not verify: the receipt was changed or signed by another key")
    return problems


def _batch_root(digest: bytes, batch: object) -> tuple[bytes | None, list[str]]:
    """Version 3: the root that the receipt's batch proof leads to from its digest (the signed message), and
    what is wrong with the batch. The proof must have the shape its ``leaf_index`` in a tree of ``leaves``
    gives (so that neither can be changed alone), and ``root`` must be where it leads."""
    if batch is None:
        return None, ["platform_signature.batch is missing (a version 3 receipt is signed through it)"]
    try:
        parsed = SignatureBatch.model_validate(batch)
    except ValidationError:
        return None, []  # not checked: the receipt's model names what is wrong with it (parse_receipt)
    proof = [(side, bytes.fromhex(sibling)) for side, sibling in parsed.proof]
    problems = []
    if not 0 <= parsed.leaf_index < parsed.leaves:
        problems.append(f"platform_signature.batch: leaf {parsed.leaf_index} is not in a window of {parsed.leaves}")
    elif [side for side, _ in proof] != proof_sides(parsed.leaf_index, parsed.leaves):
        problems.append(f"platform_signature.batch: the proof is not the path of leaf {parsed.leaf_index} in a "
                        f"window of {parsed.leaves}")
    root = fold_proof(digest, proof)
    if root is None:  # pragma: no cover - the model admits only "L" and "R"
        return None, [*problems, "platform_signature.batch: a proof step is neither L nor R"]
    if root.hex() != parsed.root:
        problems.append("platform_signature.batch: the proof does not lead from this receipt to the batch root "
                        "(the receipt was changed, or the proof is another receipt's)")
    return root, problems


def _check_time(receipt: Receipt) -> list[str]:
    received = receipt.received_at
    if not _ISO_UTC.match(received):
        return [f"received_at {received!r} is not yyyy-mm-ddThh:mm:ssZ"]
    try:
        moment = datetime.fromisoformat(received)
    except ValueError:
        return [f"received_at {received!r} is not a valid time"]
    expected = portal_time(moment)
    if receipt.received_at_portal != expected:
        return [f"received_at_portal {receipt.received_at_portal!r} does not match received_at (expected {expected})"]
    return []


def _check_visits(receipt: Receipt) -> list[str]:
    problems: list[str] = []
    digests: list[bytes] = []
    merkle = receipt.merkle
    root = bytes.fromhex(merkle.root) if merkle is not None else None
    for number, visit in enumerate(receipt.visits, start=1):
        name = f"visit {number} (MA_LK {visit.ma_lk!r})"
        if visit.accepted and (visit.errors or receipt.errors):
            problems.append(f"{name}: marked accepted although it has errors")
        if not visit.accepted:
            if any(x is not None for x in (visit.digest, visit.leaf_index, visit.proof)):
                problems.append(f"{name}: rejected, yet it has a digest, leaf index or proof")
            continue
        if visit.digest is None:
            problems.append(f"{name}: accepted but its digest is missing")
            continue
        digest = bytes.fromhex(visit.digest)
        if visit.leaf_index != len(digests):
            problems.append(f"{name}: leaf_index {visit.leaf_index!r}, expected {len(digests)}")
        digests.append(digest)
        if visit.proof is None:
            problems.append(f"{name}: accepted but its proof is missing")
        elif root is not None and not verify_inclusion(
                digest, [(side, bytes.fromhex(sibling)) for side, sibling in visit.proof], root):
            problems.append(f"{name}: Merkle proof does not lead to the root")
    if receipt.visits_accepted != len(digests):
        problems.append(f"visits_accepted is {receipt.visits_accepted!r} but {len(digests)} visit(s) are marked "
                        "accepted")
    whole = not receipt.errors and bool(receipt.visits) and len(digests) == len(receipt.visits)
    if receipt.accepted is not whole:
        problems.append(f"accepted is {receipt.accepted!r} but the visits and errors say {whole}")
    if receipt.receipt_version != "1":
        problems += _check_counts(receipt, len(digests))
    if not digests:
        if merkle is not None:
            problems.append("merkle must be null when no visit is accepted")
        return problems
    if merkle is None or root is None:
        problems.append("merkle root is missing")
        return problems
    if merkle.hash != HASH or merkle.scheme != SCHEME:
        problems.append(f"unknown Merkle hash/scheme {merkle.hash!r}/{merkle.scheme!r}")
    if merkle.leaves != len(digests):
        problems.append(f"merkle leaves count is {merkle.leaves!r} but {len(digests)} visit(s) are accepted")
    if MerkleTree(digests).root != root:
        problems.append("merkle root is not the root of the accepted visits' digests in order")
    return problems


def _check_counts(receipt: Receipt, accepted: int) -> list[str]:
    """Version 2: the file verdict and the counts of visits kept out and of findings."""
    problems = []
    rejected = any(i.blocks == "file" for i in [*receipt.errors, *(i for v in receipt.visits for i in v.errors)])
    if receipt.rejected is not rejected:
        problems.append(f"rejected is {receipt.rejected!r} but the errors say {rejected}")
    if rejected and accepted:
        problems.append("the file is rejected, yet visits are marked accepted")
    if receipt.visits_not_admitted != len(receipt.visits) - accepted:
        problems.append(f"visits_not_admitted is {receipt.visits_not_admitted!r}, expected "
                        f"{len(receipt.visits) - accepted}")
    findings = sum(len(v.findings) for v in receipt.visits)
    if receipt.findings_total != findings:
        problems.append(f"findings_total is {receipt.findings_total!r} but the visits list {findings}")
    return problems


class ReceiptCodes(_Part):
    """The part of a receipt that lists what it reports: all a tally of codes needs."""

    errors: list[ReceiptIssue] = Field(default_factory=list)
    visits: list[ReceiptVisit] = Field(default_factory=list)


def receipt_codes(receipt: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The codes a receipt reports, one entry per issue: (what rejected the file or kept a visit out, findings)."""
    listed = ReceiptCodes.model_validate(receipt)
    blocking = [*listed.errors, *(i for v in listed.visits for i in v.errors)]
    return [i.code for i in blocking], [i.code for v in listed.visits for i in v.findings]


def compare_with_submission(receipt: dict[str, Any], result: FileResult) -> list[str]:
    """Does this (already verified) receipt describe this submission? Re-validate the file and compare.

    Lets a facility show that a receipt belongs to the file it kept, visit by visit, digest by digest.
    """
    parsed, malformed = parse_receipt(receipt)
    if parsed is None:
        return malformed
    problems: list[str] = []
    if parsed.facility != result.facility:
        problems.append(f"receipt is for facility {parsed.facility!r}, the file is from {result.facility!r}")
    if len(parsed.visits) != len(result.visits):
        problems.append(f"receipt lists {len(parsed.visits)} visit(s), the file holds {len(result.visits)}")
        return problems
    for number, (entry, visit) in enumerate(zip(parsed.visits, result.visits, strict=True), start=1):
        if entry.ma_lk != visit.ma_lk:
            problems.append(f"visit {number}: receipt has MA_LK {entry.ma_lk!r}, the file {visit.ma_lk!r}")
        elif entry.accepted and entry.digest != visit_digest(visit).hex():
            problems.append(f"visit {number} (MA_LK {visit.ma_lk!r}): the file's records differ from the ones "
                            "accepted (digest mismatch)")
    return problems


# --- for people -----------------------------------------------------------------------------------------

def render_receipt(receipt: dict[str, Any]) -> str:
    """A bilingual text rendering; it shows, it does not verify (use verify_receipt for that)."""
    parsed, malformed = parse_receipt(receipt)
    if parsed is None:
        return "KHÔNG PHẢI BIÊN NHẬN / NOT A RECEIPT:\n" + "".join(f"  {problem}\n" for problem in malformed)
    visits = parsed.visits
    taken = sum(1 for v in visits if v.accepted)
    if parsed.accepted:
        verdict = "ĐƯỢC TIẾP NHẬN / ACCEPTED"
    elif taken:
        verdict = f"TIẾP NHẬN MỘT PHẦN / PARTLY ACCEPTED: {taken}/{len(visits)} hồ sơ / visits"
    else:
        verdict = "BỊ TỪ CHỐI / REJECTED"
    lines = [
        f"BIÊN NHẬN HỒ SƠ / SUBMISSION RECEIPT (v{parsed.receipt_version})",
        f"Mã tiếp nhận / Submission ID:      {parsed.submission_id}",
        f"Cơ sở KBCB / Facility:             {parsed.facility or '?'}",
        f"Tệp / File:                        {parsed.object_key}",
        f"Thời gian tiếp nhận / Received at: {parsed.received_at_portal} (giờ Việt Nam / Vietnam time), "
        f"{parsed.received_at}",
        f"Chuẩn dữ liệu / Standard:          {', '.join(f'QĐ {s}' for s in parsed.standards) or '-'}",
        f"Kết quả / Result:                  {verdict}",
    ]
    if parsed.errors:
        lines.append("\nLỗi của tệp / File errors:")
        lines += _issue_lines(parsed.errors, "  ")
    lines.append(f"\nHồ sơ (lượt khám) / Visits: {len(visits)}")
    for number, visit in enumerate(visits, start=1):
        state = "vào Sổ sức khỏe / in the health book" if visit.accepted else "không đưa vào Sổ sức khỏe / not admitted"
        if visit.findings:
            state += f"; {len(visit.findings)} phát hiện cần sửa / finding(s) to fix"
        lines.append(f"  {number}. MA_LK {visit.ma_lk or '?'} [QĐ {visit.standard or '?'}]: {state}")
        if visit.digest:
            lines.append(f"     mã băm / digest: {visit.digest}")
        if not visit.accepted and not visit.errors and parsed.errors:
            lines.append("     bị từ chối cùng cả tệp / rejected with the whole file")
        lines += _issue_lines([*visit.errors, *visit.findings], "     ")
    lines += _facility_signature_lines(parsed.facility_signature)
    merkle = parsed.merkle
    if merkle is not None:
        lines.append(f"Gốc Merkle / Merkle root: {merkle.root} ({merkle.leaves} lá / leaves, {merkle.hash}, "
                     f"{merkle.scheme})")
    else:
        lines.append("Gốc Merkle / Merkle root: không có (không hồ sơ nào được tiếp nhận) / none (no visit accepted)")
    signature = parsed.platform_signature
    lines.append(f"Chữ ký của hệ thống / Platform signature: {signature.algorithm}, khóa / key {signature.key_id}")
    if signature.batch is not None:
        batch = signature.batch
        lines.append(f"  ký chung một lô / signed in one batch: biên nhận / receipt {batch.leaf_index + 1}/"
                     f"{batch.leaves}, gốc / root {batch.root}")
    return "\n".join(lines) + "\n"


def _issue_lines(issues: list[Any], indent: str) -> list[str]:
    out = []
    for item in issues:
        issue = item.model_dump() if isinstance(item, ReceiptIssue) else item
        if not isinstance(issue, dict):
            continue
        where = ".".join(str(x) for x in (issue.get("table"), issue.get("field")) if x)
        value = f" = {issue['value']!r}" if issue.get("value") is not None else ""
        place = f" {where}{value}" if where or value else ""
        blocks = str(issue.get("blocks"))
        kind = {"none": "finding", "visit": "visit", "file": "file"}.get(blocks, issue.get("severity"))
        out.append(f"{indent}{kind or '?':<7} {issue.get('code')}{place}: {issue.get('message_vi')}")
        out.append(f"{indent}{'':<7} {'':<4} {issue.get('message_en')}")
    return out


def _facility_signature_lines(check: Any) -> list[str]:
    """The XML-DSig check result as healthbook.signing.xmldsig reports it ({valid, issues, subject, ...})."""
    heading = "\nChữ ký số của cơ sở / Facility signature: "
    if check is None:
        return [heading + "không kiểm tra / not checked"]
    if not isinstance(check, dict):
        return [heading + str(check)]
    valid = check.get("valid")
    state = "hợp lệ / valid" if valid is True else "không hợp lệ / invalid" if valid is False else repr(valid)
    lines = [heading + state]
    for key, label in (("subject", "chủ thể / subject"), ("certificate_sha256", "chứng thư / certificate SHA-256")):
        if check.get(key):
            lines.append(f"  {label}: {check[key]}")
    form = check.get("form")
    if isinstance(form, dict):
        lines.append(f"  dạng chữ ký / signature form: {signature_form_line(form)}")
    issues = check.get("issues")
    if isinstance(issues, list):
        lines += _issue_lines(issues, "  ")
    return lines


def signature_form_line(form: dict[str, Any]) -> str:
    """A signature form (``SignatureForm.to_dict``, as in a receipt) on one line: 'default namespace, c14n,
    rsa-sha256, URI="" enveloped-signature sha256, RSA 2048, KeyInfo X509Certificate'."""
    namespace = str(form.get("namespace"))
    references = "; ".join(
        f'URI="{r.get("uri")}" {" + ".join(str(t) for t in r.get("transforms") or []) or "no transform"} '
        f'{r.get("digest")}' for r in form.get("references") or [] if isinstance(r, dict))
    parts = [namespace + (" namespace" if namespace == "default" else ""), form.get("canonicalization"),
             form.get("signature_method"), references, form.get("key"),
             "KeyInfo " + ", ".join(str(k) for k in form.get("key_info") or []) if form.get("key_info") else None]
    return ", ".join(str(p) for p in parts if p)
