"""One submitted file, end to end and free of AWS: verify the facility's signature, validate, sign, receipt.

The ingest function (issue 4) calls ``process_submission`` with an S3 object's bytes and a KMS signer; the
``healthbook receipt make`` command calls it with a local key. A facility signature that fails verification
is a file-level error: nothing in that file is accepted, and the receipt says why.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from healthbook.signing.receipt import build_receipt
from healthbook.signing.signer import Signer
from healthbook.signing.xmldsig import SignatureCheck, Trust, verify_submission
from healthbook.validation import FileResult, Options, validate_bytes
from healthbook.validation.engine import DEFAULT_OPTIONS, identify
from healthbook.validation.issues import Issue, make_issue


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


def process_submission(data: bytes, *, object_key: str, received_at: datetime, signer: Signer,
                       trust: Trust | None, submission_id: str | None = None,
                       options: Options = DEFAULT_OPTIONS, uploaded_by: str | None = None) -> Processed:
    """``uploaded_by``: the facility whose folder the file arrived in. IAM lets a facility write only to its
    own folder, so a file whose envelope names another facility is refused whole (I501).

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
    receipt = build_receipt(result, submission_id=submission_id or str(uuid.uuid4()), object_key=object_key,
                            received_at=received_at, signer=signer,
                            facility_signature=receipt_view(check) if check is not None else None)
    return Processed(result=result, signature=check, receipt=receipt)


def _signature_issues(check: SignatureCheck) -> list[Issue]:
    return [issue for issue in check.issues if issue.code.startswith("K")]
