"""Ingestion of uploaded submissions, free of AWS: one S3 object in, items, a receipt and an outcome out.

``IngestService`` orchestrates over ports (``ObjectStore``, ``RecordsRepository``, ``RegistrySource`` and a
``Signer``); healthbook.aws supplies the S3, DynamoDB and KMS adapters. See docs/ingest.md.
"""
