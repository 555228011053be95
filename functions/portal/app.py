"""Portal function: BHXH's web service (CV 1245/BHXH-CNTT) in front of the inbox, behind API Gateway (REST, one
``{proxy+}`` POST resource). HIS software takes a token (``/api/token/take``), then POSTs its base64 XML as a form
(``/api/qd130/guiHoSoXmlQD4750``, ``checkInKcbQd4750``...); the file lands at
``inbox/<the token's facility>/portal/<maGiaoDich>.xml`` and the ingest function takes it from there.

Thin on purpose: this module is the Powertools decoration and keeps the runtime; healthbook.aws.portal_runtime
turns the event into a request, wires the service and logs and counts each one; healthbook.portal is the logic.
The event is never logged (it holds the file, the password's MD5 and the token), nor is the reply traced (it
holds the token). docs/portal-api.md describes the protocol, the result codes and the operations.
"""

from __future__ import annotations

import gc

gc.disable()  # while the modules load: collecting between them is a tenth of the cold start

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.observability import PowertoolsMetrics, service
from healthbook.aws.portal_runtime import PortalRuntime

SERVICE, NAMESPACE = service("healthbook-portal")
logger, tracer = Logger(service=SERVICE), Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
port = PowertoolsMetrics(metrics, namespace=NAMESPACE, service=SERVICE)
_runtime: PortalRuntime | None = None
gc.freeze()  # what the cold start built lives as long as the process: collections need not walk it
gc.enable()


def runtime() -> PortalRuntime:
    global _runtime
    _runtime = _runtime or PortalRuntime(logger=logger, metrics=port)
    return _runtime


def reset() -> None:
    """Forget the settings, clients and the token key (tests: a new moto account per test)."""
    global _runtime
    _runtime = None


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True, log_event=False, correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return runtime().handle(event)
