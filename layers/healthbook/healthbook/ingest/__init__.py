"""Ingestion of uploaded submissions, free of AWS: one S3 object in, items, a receipt and an outcome out.

``IngestService`` orchestrates over ports (``ObjectStore``, ``RecordsRepository``, ``RegistrySource`` and a
``Signer``); healthbook.aws supplies the S3, DynamoDB and KMS adapters. See docs/ingest.md.
"""

from healthbook.ingest.model import (
    ObjectGone,
    ObjectRef,
    Outcome,
    StoredObject,
    SubmissionRecord,
    VisitRef,
    VisitVersion,
    VisitWrite,
)
from healthbook.ingest.service import (
    DeliveryStarter,
    IngestService,
    ObjectStore,
    RecordsRepository,
    RegistrySource,
)

__all__ = ["DeliveryStarter", "IngestService", "ObjectGone", "ObjectRef", "ObjectStore", "Outcome",
           "RecordsRepository", "RegistrySource", "StoredObject", "SubmissionRecord", "VisitRef", "VisitVersion",
           "VisitWrite"]
