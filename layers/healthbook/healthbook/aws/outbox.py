"""The outbox on SQS: healthbook.ingest.model.Outbox for ingest, OutboxReader for the delivery sweep
(docs/delivery.md, *The outbox*).

Ingest sends a window's visit versions as one message (a few for a window of very many visits), delayed by the
visits' lease (``back_after``; the queue's own ``DelaySeconds`` is the lease too), so a list comes back to the sweep
only once the fast path has had its chance; the message says when the invocation storing them ends (``stored_by``).
The sweep takes the lists and deletes those it has looked after; one read before its ``stored_by`` is made
invisible until then (``look_again``), and one it could not look after comes back after the queue's visibility
timeout; after a few receives either goes to the dead-letter queue. A message names
visits by key only (facility code, MA_LK, version), never a person.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from healthbook.ingest.model import HeldVisits, VisitRef
from healthbook.kernel import iso_utc, parse_time

# About 75 bytes a visit in the message: 1,000 make 75 KB, well inside SQS's 256 KB.
VISITS_PER_MESSAGE = 1000
LONGEST_DELAY_SECONDS = 900  # SQS's longest delivery delay
LONGEST_VISIBILITY_SECONDS = 43_200  # SQS's longest visibility timeout (12 hours)
_DELETE_BATCH = 10  # SQS's limit of entries per DeleteMessageBatch
_A_SECOND = timedelta(seconds=1)


class SqsOutbox:
    def __init__(self, sqs: Any, *, queue_url: str) -> None:
        self._sqs = sqs
        self.queue_url = queue_url

    def hold(self, visits: Sequence[VisitRef], *, back_after: timedelta, stored_by: datetime) -> None:
        delay = min(LONGEST_DELAY_SECONDS, math.ceil(back_after.total_seconds()))
        for start in range(0, len(visits), VISITS_PER_MESSAGE):
            body = {"visits": [[visit.visit_id, visit.version] for visit in visits[start:start + VISITS_PER_MESSAGE]],
                    "stored_by": iso_utc(stored_by + _A_SECOND)}  # to the second, rounded up
            self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body, separators=(",", ":")),
                                   DelaySeconds=delay)

    def due(self, limit: int) -> list[HeldVisits]:
        response = self._sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(10, limit)),
                                             WaitTimeSeconds=0)
        messages = response.get("Messages", [])
        return [_held(message["ReceiptHandle"], json.loads(message["Body"])) for message in messages]

    def let_go(self, held: Sequence[HeldVisits]) -> None:
        # A delete that fails brings its list back later: looking after it again changes nothing.
        for start in range(0, len(held), _DELETE_BATCH):
            self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(number), "ReceiptHandle": listed.handle}
                for number, listed in enumerate(held[start:start + _DELETE_BATCH])])

    def look_again(self, held: HeldVisits, after: timedelta) -> None:
        seconds = max(0, min(LONGEST_VISIBILITY_SECONDS, math.ceil(after.total_seconds())))
        self._sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=held.handle,
                                            VisibilityTimeout=seconds)


def _held(handle: str, body: dict[str, Any]) -> HeldVisits:
    stored_by = body.get("stored_by")
    return HeldVisits(handle, tuple(VisitRef(visit_id, version) for visit_id, version in body["visits"]),
                      parse_time(stored_by) if stored_by else None)
