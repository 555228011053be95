"""The portal API (BHXH's web service, CV 1245/BHXH-CNTT), reproduced in front of the inbox: a hospital's HIS takes
a token, then POSTs its base64 XML as a form; the file lands at ``inbox/<the token's facility>/portal/<maGiaoDich>.xml``
and the ingest pipeline takes it from there.

``protocol`` (paths, fields, result codes, replies), ``credentials`` (what the HIS sends, argon2id),
``tokens`` (HMAC-signed tokens) and ``service`` (the use cases over ports) are pure: no AWS. The adapters are
healthbook.aws.portal_store, the composition root healthbook.aws.portal_runtime.
"""
