"""One submitted file, end to end and free of AWS: verify the facility's signature, validate, receipt.

``check_submission`` does everything but sign: the ingest function calls it for each file of its SQS batch and
then signs the whole window's receipts at once (healthbook.signing.receipt.sign_receipts, one KMS Sign).
``process_submission`` also signs, the file alone (a window of one): ``healthbook receipt make`` calls it with
a local key. A facility signature that fails verification is a file-level error: nothing in that file is
accepted, and the receipt says why.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from healthbook.signing.receipt import receipt_body, sign_receipts
from healthbook.signing.signer import Signer
from healthbook.signing.xmldsig import SignatureCheck, Trust, verify_submission
from healthbook.validation import FileResult, Options, validate_bytes
from healthbook.validation.engine import DEFAULT_OPTIONS, identify
from healthbook.validation.issues import Issue, make_issue


@dataclass(frozen=True)
class Checked:
    result: FileResult
    signature: SignatureCheck | None  # None when no trust anchors were configured (development)
    body: dict[str, Any]  # the receipt, unsigned (healthbook.signing.receipt.receipt_body)


@dataclass(frozen=True)
class Processed:
    result: FileResult
    signature: SignatureCheck | None  # None when no trust anchors were configured (development)
    receipt: dict[str, Any]


def receipt_view(check: SignatureCheck) -> dict[str, Any]:
    """What a receipt says about the facility's signature, including the form the signer wrote (namespace,
    canonicalisation, algorithms, KeyInfo). The certificate subject is left out: on a personal certificate it
    is a person's name, and the fingerprint identifies the certificate anyway."""
    return {"valid": check.valid, "certificate_sha256": check.certificate_sha256,
            "registered_facilities": check.registered_facilities, "issues": [i.to_dict() for i in check.issues],
            "form": check.form.to_dict() if check.form is not None else None}


def check_submission(data: bytes, *, object_key: str, received_at: datetime, trust: Trust | None,
                     submission_id: str | None = None, options: Options = DEFAULT_OPTIONS,
                     uploaded_by: str | None = None) -> Checked:
    """The file checked and its receipt built, not signed. ``uploaded_by``: the facility whose folder the file
    arrived in. IAM lets a facility write only to its own folder, so a file whose envelope names another facility
    is refused whole (I501).

    The signature is checked first: a file whose signature does not hold (unsigned, forged, an unknown or
    revoked certificate) is refused without reading its visits, so it costs a fraction of a good one; its
    receipt names the file and the signature's problem only. Then the file is validated, and the certificate
    must be registered for the facility it names (K411)."""
    check = verify_submission(data, trust=trust, facility=None, at=received_at,
                              limit=options.limits.max_file_bytes) if trust is not None else None
    untrusted = check is not None and _signature_issues(check)
    result = (identify if untrusted else validate_bytes)(data, path=object_key, options=options)
    if uploaded_by is not None and result.facility is not None and result.facility != uploaded_by:
        result.errors.append(make_issue("I501", prefix=uploaded_by, facility=result.facility))
    if result.kind == "unknown":  # not even XML: the validator has said so, there is no signature to speak of
        check = None
    if check is not None:
        check.require_facility(result.facility)
        # Only the signature's own findings: parse problems are already among the validator's.
        result.errors.extend(_signature_issues(check))
    body = receipt_body(result, submission_id=submission_id or str(uuid.uuid4()), object_key=object_key,
                        received_at=received_at, facility_signature=receipt_view(check) if check is not None else None)
    return Checked(result=result, signature=check, body=body)


def process_submission(data: bytes, *, object_key: str, received_at: datetime, signer: Signer,
                       trust: Trust | None, submission_id: str | None = None,
                       options: Options = DEFAULT_OPTIONS, uploaded_by: str | None = None) -> Processed:
    """``check_submission``, and the receipt signed alone (a window of one)."""
    checked = check_submission(data, object_key=object_key, received_at=received_at, trust=trust,
                               submission_id=submission_id, options=options, uploaded_by=uploaded_by)
    (receipt,) = sign_receipts([checked.body], signer)
    return Processed(result=checked.result, signature=checked.signature, receipt=receipt)


def _signature_issues(check: SignatureCheck) -> list[Issue]:
    return [issue for issue in check.issues if issue.code.startswith("K")]
