"""The outbox on SQS: healthbook.ingest.model.Outbox for ingest, OutboxReader for the delivery sweep
(docs/delivery.md, *The outbox*).

Ingest sends a window's visit versions as one message (a few for a window of very many visits), delayed by the
visits' lease, or by what is left of the invocation storing them when that is longer (``back_after``; the queue's
own ``DelaySeconds`` is the lease too), so a list comes back to the sweep only once the fast path has had its chance
and its visits are stored. The sweep takes the lists and deletes those it has looked after; one it has not comes
back after the queue's visibility timeout, and after a few times goes to the dead-letter queue. A message names
visits by key only (facility code, MA_LK, version), never a person.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from healthbook.ingest.model import HeldVisits, VisitRef

# About 75 bytes a visit in the message: 1,000 make 75 KB, well inside SQS's 256 KB.
VISITS_PER_MESSAGE = 1000
LONGEST_DELAY_SECONDS = 900  # SQS's longest delivery delay, and Lambda's longest invocation
_DELETE_BATCH = 10  # SQS's limit of entries per DeleteMessageBatch


class SqsOutbox:
    def __init__(self, sqs: Any, *, queue_url: str) -> None:
        self._sqs = sqs
        self.queue_url = queue_url

    def hold(self, visits: Sequence[VisitRef], *, back_after: timedelta) -> None:
        delay = min(LONGEST_DELAY_SECONDS, math.ceil(back_after.total_seconds()))
        for start in range(0, len(visits), VISITS_PER_MESSAGE):
            body = {"visits": [[visit.visit_id, visit.version] for visit in visits[start:start + VISITS_PER_MESSAGE]]}
            self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body, separators=(",", ":")),
                                   DelaySeconds=delay)

    def due(self, limit: int) -> list[HeldVisits]:
        response = self._sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(10, limit)),
                                             WaitTimeSeconds=0)
        return [HeldVisits(message["ReceiptHandle"],
                           tuple(VisitRef(visit_id, version)
                                 for visit_id, version in json.loads(message["Body"])["visits"]))
                for message in response.get("Messages", [])]

    def let_go(self, held: Sequence[HeldVisits]) -> None:
        # A delete that fails brings its list back later: looking after it again changes nothing.
        for start in range(0, len(held), _DELETE_BATCH):
            self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(number), "ReceiptHandle": listed.handle}
                for number, listed in enumerate(held[start:start + _DELETE_BATCH])])
