"""Every submitted file gets a receipt signed by the platform; accepted visits are bound to it by a Merkle proof.

The receipt is a JSON object (docs/receipt.md has the schema). Its signature covers the whole receipt except
the signature value itself, so nothing a facility reads in it (which visits were accepted, why others were
rejected, for which file and facility, when) can be changed or moved to another file without detection.
Pure: the signer is injected (a local key, or KMS through healthbook.aws.kms_signer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError

from healthbook.kernel import iso_utc, portal_time, transaction_of
from healthbook.signing.merkle import MerkleTree, canonical_json, verify_inclusion, visit_digest
from healthbook.signing.signer import ALGORITHMS, Signer, fingerprint, load_public_key, verify_digest_signature
from healthbook.validation.issues import Issue
from healthbook.validation.results import FileResult

RECEIPT_VERSION = "2"  # 2: findings apart from what keeps a visit out (docs/conformance.md)
READABLE_VERSIONS = ("1", "2")  # receipts already issued stay verifiable
HASH = "sha256"
SCHEME = "rfc6962"
# What platform_signature.value signs, stated in the receipt itself so a reader needs no other document.
SIGNED = "sha256(canonical_json(receipt without platform_signature.value))"
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


class PlatformSignature(_Part):
    key_id: str
    algorithm: str
    signed: str
    value: str | None = None  # base64; absent while the receipt is being signed


class Receipt(_Part):
    """docs/receipt.md. ``rejected``, ``visits_not_admitted`` and ``findings_total`` are version 2's."""

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
    platform_signature: PlatformSignature

    def document(self) -> dict[str, Any]:
        """The JSON object: every field, nulls included."""
        return self.model_dump(mode="json")


def signed_bytes(receipt: dict[str, Any]) -> bytes:
    """The exact bytes whose SHA-256 the platform signs."""
    body = {key: value for key, value in receipt.items() if key != "platform_signature"}
    signature = receipt.get("platform_signature")
    if isinstance(signature, dict):
        body["platform_signature"] = {k: v for k, v in signature.items() if k != "value"}
    return canonical_json(body)


def signed_digest(receipt: dict[str, Any]) -> bytes:
    return hashlib.sha256(signed_bytes(receipt)).digest()


def _issues(issues: list[Issue]) -> list[ReceiptIssue]:
    return [ReceiptIssue.model_validate(issue.to_dict()) for issue in issues]


def build_receipt(result: FileResult, *, submission_id: str, object_key: str, received_at: datetime,
                  signer: Signer, facility_signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """The signed receipt (its JSON object) for one validated file; every file gets one, however badly it failed.

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
    receipt = Receipt(
        receipt_version=RECEIPT_VERSION, submission_id=submission_id, facility=result.facility,
        object_key=object_key, transaction_id=transaction_of(object_key), received_at=iso_utc(received_at),
        received_at_portal=portal_time(received_at),
        standards=sorted({v.standard for v in result.visits if v.standard}),
        accepted=file_ok and bool(result.visits) and all(accepted), rejected=not file_ok,
        visits_accepted=len(digests), visits_not_admitted=len(accepted) - len(digests),
        findings_total=sum(len(visit.findings) for visit in visits), errors=_issues(result.errors), visits=visits,
        facility_signature=facility_signature,
        merkle=None if tree is None else MerkleSummary(root=tree.root.hex(), leaves=len(digests), hash=HASH,
                                                       scheme=SCHEME),
        platform_signature=PlatformSignature(key_id=signer.key_id, algorithm=signer.algorithm, signed=SIGNED))
    document = receipt.document()
    value = signer.sign_digest(signed_digest(document))
    document["platform_signature"]["value"] = base64.b64encode(value).decode("ascii")
    return document


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

    Checks the platform signature first (over the JSON object as received), then everything a signature alone
    cannot show: the receipt's shape (the model), that each proof leads to the root, that the root is the tree
    of the listed digests, and that the flags add up.
    """
    if not isinstance(receipt, dict):
        return ["a receipt must be a JSON object"]
    version = receipt.get("receipt_version")
    if version not in READABLE_VERSIONS:
        return [f"unknown receipt version {version!r} (this tool reads versions {', '.join(READABLE_VERSIONS)})"]
    problems = _check_signature(receipt, public_key_pem)
    parsed, malformed = parse_receipt(receipt)
    if parsed is None:
        return problems + malformed
    return problems + _check_time(parsed) + _check_visits(parsed)


def _check_signature(receipt: dict[str, Any], public_key_pem: bytes) -> list[str]:
    signature = receipt.get("platform_signature")
    if not isinstance(signature, dict):
        return ["platform_signature is missing"]
    algorithm, signed, key_id = signature.get("algorithm"), signature.get("signed"), signature.get("key_id")
    if algorithm not in ALGORITHMS:
        return [f"unknown signature algorithm {algorithm!r}"]
    if signed != SIGNED:
        return [f"unknown signature scope {signed!r} (expected {SIGNED!r})"]
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
    if not verify_digest_signature(public_key_pem, str(algorithm), digest, value):
        problems.append("platform signature does not verify: the receipt was changed or signed by another key")
    return problems


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
