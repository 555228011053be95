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
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from healthbook.signing.merkle import MerkleTree, canonical_json, verify_inclusion, visit_digest
from healthbook.signing.signer import ALGORITHMS, Signer, fingerprint, load_public_key, verify_digest_signature
from healthbook.validation.results import FileResult

RECEIPT_VERSION = "2"  # 2: findings apart from what keeps a visit out (docs/conformance.md)
READABLE_VERSIONS = ("1", "2")  # receipts already issued stay verifiable
HASH = "sha256"
SCHEME = "rfc6962"
# What platform_signature.value signs, stated in the receipt itself so a reader needs no other document.
SIGNED = "sha256(canonical_json(receipt without platform_signature.value))"
# Vietnam has kept UTC+7 without daylight saving since 1975; a fixed offset needs no tzdata in the Lambda image.
PORTAL_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")
PORTAL_FORMAT = "%Y%m%d%H%M%S"  # the portal's thoiGianTiepNhan
_ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def iso_utc(moment: datetime) -> str:
    """Seconds precision, ``Z`` suffix: one spelling per instant, since the string itself is signed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware (a naive time is ambiguous by 7 hours)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def portal_time(moment: datetime) -> str:
    return moment.astimezone(PORTAL_TZ).strftime(PORTAL_FORMAT)


def signed_bytes(receipt: dict[str, Any]) -> bytes:
    """The exact bytes whose SHA-256 the platform signs."""
    body = {key: value for key, value in receipt.items() if key != "platform_signature"}
    signature = receipt.get("platform_signature")
    if isinstance(signature, dict):
        body["platform_signature"] = {k: v for k, v in signature.items() if k != "value"}
    return canonical_json(body)


def signed_digest(receipt: dict[str, Any]) -> bytes:
    return hashlib.sha256(signed_bytes(receipt)).digest()


def build_receipt(result: FileResult, *, submission_id: str, object_key: str, received_at: datetime,
                  signer: Signer, facility_signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """The signed receipt for one validated file; every file gets one, however badly it failed.

    A visit counts as accepted (admitted to the health book) only when none of its issues blocks it and the
    file is not rejected; its ``errors`` say why not, its ``findings`` are reported without blocking it
    (docs/conformance.md). Accepted visits, in document order, are the Merkle leaves; with none, ``merkle``
    is null and the rest is signed all the same.
    """
    received = iso_utc(received_at)
    file_ok = not result.rejected
    accepted = [file_ok and visit.accepted for visit in result.visits]
    digests = [visit_digest(v) for v, ok in zip(result.visits, accepted, strict=True) if ok]
    tree = MerkleTree(digests) if digests else None
    visits: list[dict[str, Any]] = []
    leaf = 0
    for visit, ok in zip(result.visits, accepted, strict=True):
        entry: dict[str, Any] = {
            "ma_lk": visit.ma_lk, "accepted": ok, "standard": visit.standard,
            "errors": [i.to_dict() for i in visit.errors], "findings": [i.to_dict() for i in visit.findings],
            "digest": None, "leaf_index": None, "proof": None,
        }
        if ok and tree is not None:
            entry["digest"] = digests[leaf].hex()
            entry["leaf_index"] = leaf
            entry["proof"] = [[side, sibling.hex()] for side, sibling in tree.proof(leaf)]
            leaf += 1
        visits.append(entry)
    receipt: dict[str, Any] = {
        "receipt_version": RECEIPT_VERSION,
        "submission_id": submission_id,
        "facility": result.facility,
        "object_key": object_key,
        "received_at": received,
        "received_at_portal": portal_time(received_at),
        "standards": sorted({v.standard for v in result.visits if v.standard}),
        "accepted": file_ok and bool(result.visits) and all(accepted),
        "rejected": not file_ok,
        "visits_accepted": len(digests),
        "visits_not_admitted": len(accepted) - len(digests),
        "findings_total": sum(len(visit["findings"]) for visit in visits),
        "errors": [i.to_dict() for i in result.errors],
        "visits": visits,
        "facility_signature": facility_signature,
        "merkle": None if tree is None else {"root": tree.root.hex(), "leaves": len(digests), "hash": HASH,
                                             "scheme": SCHEME},
        "platform_signature": {"key_id": signer.key_id, "algorithm": signer.algorithm, "signed": SIGNED},
    }
    value = signer.sign_digest(signed_digest(receipt))
    receipt["platform_signature"]["value"] = base64.b64encode(value).decode("ascii")
    return receipt


# --- verification ---------------------------------------------------------------------------------------

def verify_receipt(receipt: dict[str, Any], public_key_pem: bytes) -> list[str]:
    """Problems found, in plain English; an empty list means the receipt is genuine and consistent.

    Checks the platform signature first, then everything a signature alone cannot show: that each proof
    leads to the root, that the root is the tree of the listed digests, and that the flags add up.
    """
    if not isinstance(receipt, dict):
        return ["a receipt must be a JSON object"]
    version = receipt.get("receipt_version")
    if version not in READABLE_VERSIONS:
        return [f"unknown receipt version {version!r} (this tool reads versions {', '.join(READABLE_VERSIONS)})"]
    problems = _check_signature(receipt, public_key_pem)
    problems += _check_time(receipt)
    problems += _check_visits(receipt)
    return problems


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


def _check_time(receipt: dict[str, Any]) -> list[str]:
    received = receipt.get("received_at")
    if not isinstance(received, str) or not _ISO_UTC.match(received):
        return [f"received_at {received!r} is not yyyy-mm-ddThh:mm:ssZ"]
    try:
        moment = datetime.fromisoformat(received)
    except ValueError:
        return [f"received_at {received!r} is not a valid time"]
    expected = portal_time(moment)
    if receipt.get("received_at_portal") != expected:
        return [f"received_at_portal {receipt.get('received_at_portal')!r} does not match received_at "
                f"(expected {expected})"]
    return []


def _check_visits(receipt: dict[str, Any]) -> list[str]:
    visits = receipt.get("visits")
    if not isinstance(visits, list) or not all(isinstance(v, dict) for v in visits):
        return ["visits must be a list of objects"]
    problems: list[str] = []
    digests: list[bytes] = []
    merkle = receipt.get("merkle")
    root = _hex(merkle.get("root")) if isinstance(merkle, dict) else None
    file_errors = receipt.get("errors")
    for number, visit in enumerate(visits, start=1):
        name = f"visit {number} (MA_LK {visit.get('ma_lk')!r})"
        ok = visit.get("accepted")
        if ok is not True and ok is not False:
            problems.append(f"{name}: accepted must be true or false")
            continue
        if ok and (visit.get("errors") or file_errors):
            problems.append(f"{name}: marked accepted although it has errors")
        if not ok:
            if any(visit.get(k) is not None for k in ("digest", "leaf_index", "proof")):
                problems.append(f"{name}: rejected, yet it has a digest, leaf index or proof")
            continue
        digest = _hex(visit.get("digest"))
        if digest is None:
            problems.append(f"{name}: accepted but its digest is missing or not 64 hex digits")
            continue
        if visit.get("leaf_index") != len(digests):
            problems.append(f"{name}: leaf_index {visit.get('leaf_index')!r}, expected {len(digests)}")
        digests.append(digest)
        proof = _proof(visit.get("proof"))
        if proof is None:
            problems.append(f"{name}: proof is not a list of [\"L\"|\"R\", hex] pairs")
        elif root is not None and not verify_inclusion(digest, proof, root):
            problems.append(f"{name}: Merkle proof does not lead to the root")
    if receipt.get("visits_accepted") != len(digests):
        problems.append(f"visits_accepted is {receipt.get('visits_accepted')!r} but {len(digests)} visit(s) are "
                        "marked accepted")
    whole = not file_errors and bool(visits) and len(digests) == len(visits)
    if receipt.get("accepted") is not whole:
        problems.append(f"accepted is {receipt.get('accepted')!r} but the visits and errors say {whole}")
    if receipt.get("receipt_version") != "1":
        problems += _check_counts(receipt, visits, len(digests))
    if not digests:
        if merkle is not None:
            problems.append("merkle must be null when no visit is accepted")
        return problems
    if not isinstance(merkle, dict) or root is None:
        problems.append("merkle root is missing or not 64 hex digits")
        return problems
    if merkle.get("hash") != HASH or merkle.get("scheme") != SCHEME:
        problems.append(f"unknown Merkle hash/scheme {merkle.get('hash')!r}/{merkle.get('scheme')!r}")
    if merkle.get("leaves") != len(digests):
        problems.append(f"merkle leaves count is {merkle.get('leaves')!r} but {len(digests)} visit(s) are accepted")
    if MerkleTree(digests).root != root:
        problems.append("merkle root is not the root of the accepted visits' digests in order")
    return problems


def _check_counts(receipt: dict[str, Any], visits: list[dict[str, Any]], accepted: int) -> list[str]:
    """Version 2: the file verdict and the counts of visits kept out and of findings."""
    problems = []
    issues = [i for i in receipt.get("errors") or [] if isinstance(i, dict)]
    issues += [i for v in visits for i in v.get("errors") or [] if isinstance(i, dict)]
    rejected = any(i.get("blocks") == "file" for i in issues)
    if receipt.get("rejected") is not rejected:
        problems.append(f"rejected is {receipt.get('rejected')!r} but the errors say {rejected}")
    if rejected and accepted:
        problems.append("the file is rejected, yet visits are marked accepted")
    if receipt.get("visits_not_admitted") != len(visits) - accepted:
        problems.append(f"visits_not_admitted is {receipt.get('visits_not_admitted')!r}, expected "
                        f"{len(visits) - accepted}")
    findings = sum(len(v.get("findings") or []) for v in visits)
    if receipt.get("findings_total") != findings:
        problems.append(f"findings_total is {receipt.get('findings_total')!r} but the visits list {findings}")
    return problems


def _hex(value: object) -> bytes | None:
    return bytes.fromhex(value) if isinstance(value, str) and _HEX64.match(value) else None


def _proof(value: object) -> list[tuple[str, bytes]] | None:
    if not isinstance(value, list):
        return None
    steps: list[tuple[str, bytes]] = []
    for step in value:
        if not (isinstance(step, list) and len(step) == 2 and step[0] in ("L", "R")):
            return None
        sibling = _hex(step[1])
        if sibling is None:
            return None
        steps.append((step[0], sibling))
    return steps


def _findings_of(visit: dict[str, Any]) -> list[Any]:
    """A visit's findings; version 1 receipts called them warnings."""
    return list(visit.get("findings") or visit.get("warnings") or [])


def receipt_codes(receipt: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The codes a receipt reports, one entry per issue: (what rejected the file or kept a visit out, findings).
    Version 1 receipts had warnings where version 2 has findings."""
    visits = [v for v in receipt.get("visits") or [] if isinstance(v, dict)]
    blocking = [*(receipt.get("errors") or []), *(i for v in visits for i in v.get("errors") or [])]
    findings = [i for v in visits for i in _findings_of(v)]
    return ([str(i.get("code")) for i in blocking if isinstance(i, dict)],
            [str(i.get("code")) for i in findings if isinstance(i, dict)])


def compare_with_submission(receipt: dict[str, Any], result: FileResult) -> list[str]:
    """Does this (already verified) receipt describe this submission? Re-validate the file and compare.

    Lets a facility show that a receipt belongs to the file it kept, visit by visit, digest by digest.
    """
    problems: list[str] = []
    if receipt.get("facility") != result.facility:
        problems.append(f"receipt is for facility {receipt.get('facility')!r}, the file is from {result.facility!r}")
    raw = receipt.get("visits")
    listed: list[Any] = [v if isinstance(v, dict) else {} for v in raw] if isinstance(raw, list) else []
    if len(listed) != len(result.visits):
        problems.append(f"receipt lists {len(listed)} visit(s), the file holds {len(result.visits)}")
        return problems
    for number, (entry, visit) in enumerate(zip(listed, result.visits, strict=True), start=1):
        if entry.get("ma_lk") != visit.ma_lk:
            problems.append(f"visit {number}: receipt has MA_LK {entry.get('ma_lk')!r}, the file {visit.ma_lk!r}")
        elif entry.get("accepted") and entry.get("digest") != visit_digest(visit).hex():
            problems.append(f"visit {number} (MA_LK {visit.ma_lk!r}): the file's records differ from the ones "
                            "accepted (digest mismatch)")
    return problems


# --- for people -----------------------------------------------------------------------------------------

def render_receipt(receipt: dict[str, Any]) -> str:
    """A bilingual text rendering; it shows, it does not verify (use verify_receipt for that)."""
    visits = [v for v in receipt.get("visits") or [] if isinstance(v, dict)]
    taken = sum(1 for v in visits if v.get("accepted") is True)
    if receipt.get("accepted") is True:
        verdict = "ĐƯỢC TIẾP NHẬN / ACCEPTED"
    elif taken:
        verdict = f"TIẾP NHẬN MỘT PHẦN / PARTLY ACCEPTED: {taken}/{len(visits)} hồ sơ / visits"
    else:
        verdict = "BỊ TỪ CHỐI / REJECTED"
    lines = [
        f"BIÊN NHẬN HỒ SƠ / SUBMISSION RECEIPT (v{receipt.get('receipt_version')})",
        f"Mã tiếp nhận / Submission ID:      {receipt.get('submission_id')}",
        f"Cơ sở KBCB / Facility:             {receipt.get('facility') or '?'}",
        f"Tệp / File:                        {receipt.get('object_key')}",
        f"Thời gian tiếp nhận / Received at: {receipt.get('received_at_portal')} (giờ Việt Nam / Vietnam time), "
        f"{receipt.get('received_at')}",
        f"Chuẩn dữ liệu / Standard:          {', '.join(f'QĐ {s}' for s in receipt.get('standards') or []) or '-'}",
        f"Kết quả / Result:                  {verdict}",
    ]
    if receipt.get("errors"):
        lines.append("\nLỗi của tệp / File errors:")
        lines += _issue_lines(receipt["errors"], "  ")
    lines.append(f"\nHồ sơ (lượt khám) / Visits: {len(visits)}")
    for number, visit in enumerate(visits, start=1):
        state = ("vào Sổ sức khỏe / in the health book" if visit.get("accepted") is True
                 else "không đưa vào Sổ sức khỏe / not admitted")
        if findings := _findings_of(visit):
            state += f"; {len(findings)} phát hiện cần sửa / finding(s) to fix"
        lines.append(f"  {number}. MA_LK {visit.get('ma_lk') or '?'} [QĐ {visit.get('standard') or '?'}]: {state}")
        if visit.get("digest"):
            lines.append(f"     mã băm / digest: {visit['digest']}")
        if visit.get("accepted") is not True and not visit.get("errors") and receipt.get("errors"):
            lines.append("     bị từ chối cùng cả tệp / rejected with the whole file")
        lines += _issue_lines([*(visit.get("errors") or []), *_findings_of(visit)], "     ")
    lines += _facility_signature_lines(receipt.get("facility_signature"))
    merkle = receipt.get("merkle")
    if isinstance(merkle, dict):
        lines.append(f"Gốc Merkle / Merkle root: {merkle.get('root')} ({merkle.get('leaves')} lá / leaves, "
                     f"{merkle.get('hash')}, {merkle.get('scheme')})")
    else:
        lines.append("Gốc Merkle / Merkle root: không có (không hồ sơ nào được tiếp nhận) / none (no visit accepted)")
    signature = receipt.get("platform_signature") or {}
    lines.append(f"Chữ ký của hệ thống / Platform signature: {signature.get('algorithm')}, "
                 f"khóa / key {signature.get('key_id')}")
    return "\n".join(lines) + "\n"


def _issue_lines(issues: list[Any], indent: str) -> list[str]:
    out = []
    for issue in issues:
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
