"""Step Functions task clients, kept instead of made per task.

LocalStack's interpreter calls ``boto_client_for`` for every task state it runs: an ``sts:AssumeRole`` of the
state machine's role through LocalStack's own STS, then a new boto3 client (endpoint resolution, service model,
event hooks). Under ``make bench-load`` that was about a quarter of the emulator's busy CPU (py-spy, 2026-12-06:
23.6 % of the samples that were not waiting, 12 % in ``Session.create_client`` alone), on the one core that binds
the benchmark. AWS does neither per task. A client is kept per service, region and role for ``TTL_S``, far inside
the assumed credentials' hour; botocore clients are thread-safe, and its pool holds as many connections as a Map
runs tasks at once. LocalStack's own configuration (no retries, its timeouts, no parameter validation) is kept.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

TTL_S = 600.0  # LocalStack's assumed-role credentials last an hour, as AWS's do by default
POOL = 64  # connections a kept client holds: each delivery execution runs up to 10 tasks at once, several at a time


def caching(make: Callable[..., Any], *, ttl_s: float = TTL_S,
            clock: Callable[[], float] = time.monotonic) -> Callable[..., Any]:
    """``make(service, region, state_credentials)``, its client kept per service, region and role for ``ttl_s``."""
    kept: dict[tuple[str, str, str | None], tuple[float, Any]] = {}
    lock = threading.Lock()

    def client_for(service: str, region: str, state_credentials: Any) -> Any:
        key = (service, region, getattr(state_credentials, "role_arn", None))
        now = clock()
        with lock:
            hit = kept.get(key)
        if hit is not None and now - hit[0] < ttl_s:
            return hit[1]
        client = make(service=service, region=region, state_credentials=state_credentials)
        with lock:
            kept[key] = (now, client)
        return client

    return client_for


def install() -> None:
    from botocore.config import Config
    from localstack.services.stepfunctions.asl.utils import boto_client

    original = boto_client.boto_client_for
    boto_client._BOTO_CLIENT_CONFIG = boto_client._BOTO_CLIENT_CONFIG.merge(Config(max_pool_connections=POOL))
    kept = caching(original)
    boto_client.boto_client_for = kept
    # modules that imported the name before this ran keep their own reference
    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "boto_client_for", None) is original:
            module.boto_client_for = kept
