"""The metrics port on Powertools EMF, for every function: plain counts in the function's batch of metrics, a
count with a dimension (a reconciliation reason) as its own small EMF document, since one document cannot
give different metrics different dimension values."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools.metrics import MetricUnit, single_metric

# Of the Lambda context, a log line keeps the request id and cold start: the log group names the function, its ARN
# and memory (docs/cost.md, row 23). Every function's logger is built with ``location=None`` and removes these.
IMPLIED_CONTEXT_KEYS = ["function_name", "function_arn", "function_memory_size"]
Handler = TypeVar("Handler", bound=Callable[..., Any])


def lean_lines(logger: Any) -> Callable[[Handler], Handler]:
    """A handler's decorator, inside Powertools' ``inject_lambda_context``: the context keys its lines need not
    repeat (IMPLIED_CONTEXT_KEYS) removed for the invocation."""
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def lean(event: Any, context: Any) -> Any:
            logger.remove_keys(IMPLIED_CONTEXT_KEYS)
            return handler(event, context)

        return lean  # type: ignore[return-value]

    return decorate


def service(default: str) -> tuple[str, str]:
    """(service, namespace) of a function's logs, traces and metrics: template.yaml's POWERTOOLS_SERVICE_NAME and
    POWERTOOLS_METRICS_NAMESPACE, else the function's default and "Healthbook"."""
    return (os.environ.get("POWERTOOLS_SERVICE_NAME", default),
            os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Healthbook"))


class PowertoolsMetrics:
    """The metrics port (healthbook.kernel.Metrics) on a Powertools ``Metrics``."""

    def __init__(self, metrics: Any, *, namespace: str, service: str) -> None:
        self._metrics = metrics
        self._namespace = namespace
        self._service = service
        self._lock = threading.Lock()  # a delivery task's visits run on threads; Powertools' metric set is a dict

    def count(self, name: str, value: int = 1, **dimensions: str) -> None:
        if not dimensions:
            with self._lock:
                self._metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
            return
        with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace=self._namespace,
                           default_dimensions={"service": self._service}) as metric:
            for key, dimension in sorted(dimensions.items()):
                metric.add_dimension(name=key[:1].upper() + key[1:], value=dimension)

    def latency(self, name: str, milliseconds: float) -> None:
        with self._lock:
            self._metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=round(milliseconds, 1))
