"""The facility side: upload signed files to the inbox and wait for their receipts."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Destination:
    inbox_bucket: str
    receipts_bucket: str
    kms_key_id: str | None = None  # the stack's data key; S3 would otherwise fall back to aws/s3


def inbox_key(facility: str, path: Path) -> str:
    return f"inbox/{facility}/{path.name}"


def receipt_key(facility: str, path: Path) -> str:
    return f"receipts/{facility}/{path.name}.receipt.json"


def upload_file(s3: Any, destination: Destination, facility: str, path: Path) -> str:
    """Put one file with SSE-KMS and a SHA-256 checksum S3 verifies on arrival; returns the object key."""
    body = path.read_bytes()
    extra: dict[str, str] = {"ServerSideEncryption": "aws:kms"}
    if destination.kms_key_id:
        extra["SSEKMSKeyId"] = destination.kms_key_id
    key = inbox_key(facility, path)
    s3.put_object(Bucket=destination.inbox_bucket, Key=key, Body=body, ContentType="application/xml",
                  ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode("ascii"), **extra)
    return key


def wait_for_receipt(s3: Any, destination: Destination, facility: str, path: Path, *, timeout: float,
                     poll: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any] | None:
    """Poll the facility's receipts folder until the receipt for ``path`` appears, or give up."""
    deadline = time.monotonic() + timeout
    key = receipt_key(facility, path)
    while True:
        try:
            body = s3.get_object(Bucket=destination.receipts_bucket, Key=key)["Body"].read()
            receipt: dict[str, Any] = json.loads(body)
            return receipt
        except s3.exceptions.ClientError as error:
            # A facility may read its receipts but not list them, so S3 answers 403, not 404, until it exists.
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "AccessDenied", "403", "404"):
                raise
        if time.monotonic() >= deadline:
            return None
        sleep(poll)


def stack_destination(cloudformation: Any, stack: str) -> Destination:
    """Bucket names and the data key from the deployed stack's outputs."""
    outputs = {o["OutputKey"]: o["OutputValue"]
               for o in cloudformation.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])}
    try:
        return Destination(inbox_bucket=outputs["InboxBucketName"], receipts_bucket=outputs["ReceiptsBucketName"],
                           kms_key_id=outputs.get("DataKeyArn"))
    except KeyError as missing:
        raise ValueError(f"stack {stack} has no output {missing}") from None
