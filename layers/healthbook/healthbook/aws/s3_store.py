"""The ingest ObjectStore on S3: read an inbox object within a size limit, write receipts, quarantine.

Encryption is the buckets' default (SSE-KMS), so no call names a key. Errors other than "that object is
gone" propagate: the handler fails the message and SQS retries it.
"""

from __future__ import annotations

from typing import Any

from healthbook.aws.settings import error_code
from healthbook.ingest.model import ObjectGone, ObjectRef, StoredObject

_GONE = {"404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed"}  # 405: the version is a delete marker
_COPY_OBJECT_LIMIT = 5 * 1024**3  # CopyObject copies up to 5 GiB in one call; beyond, a multipart copy


def _version(ref: ObjectRef) -> dict[str, str]:
    return {"VersionId": ref.version_id} if ref.version_id else {}


class S3Store:
    def __init__(self, s3: Any, *, receipts_bucket: str, quarantine_bucket: str) -> None:
        self._s3 = s3
        self.receipts_bucket = receipts_bucket
        self.quarantine_bucket = quarantine_bucket

    def read(self, ref: ObjectRef, limit: int) -> StoredObject:
        """One GET: an object over the limit (its ContentLength) is closed unread, anything else read up to
        limit + 1 bytes. (A HEAD first cost a second request per file for the same answer: docs/cost.md.)"""
        try:
            response = self._s3.get_object(Bucket=ref.bucket, Key=ref.key, **_version(ref))
            body = response["Body"]
            try:
                size = int(response["ContentLength"])
                if size > limit:
                    return StoredObject(size=size, data=None)
                data: bytes = body.read(limit + 1)
            finally:
                body.close()
        except Exception as exc:
            if error_code(exc) in _GONE:
                raise ObjectGone(ref.key) from exc
            raise
        # What was read is what counts (a stream shorter or longer than its header says is taken as read).
        return StoredObject(size=len(data), data=data if len(data) <= limit else None)

    def put_receipt(self, key: str, body: bytes) -> None:
        self._s3.put_object(Bucket=self.receipts_bucket, Key=key, Body=body,
                            ContentType="application/json; charset=utf-8")

    def quarantine(self, ref: ObjectRef, size: int) -> str:
        source = {"Bucket": ref.bucket, "Key": ref.key, **_version(ref)}
        if size > _COPY_OBJECT_LIMIT:
            self._s3.copy(source, self.quarantine_bucket, ref.key)  # boto3's managed multipart copy (no tags)
        else:
            # No tags: whatever an upload was tagged with stays with the original (and the function needs no
            # tagging rights on the quarantine bucket).
            self._s3.copy_object(CopySource=source, Bucket=self.quarantine_bucket, Key=ref.key,
                                 MetadataDirective="COPY", TaggingDirective="REPLACE")
        return ref.key
