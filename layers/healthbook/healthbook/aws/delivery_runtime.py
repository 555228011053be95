"""The delivery functions' runtime: each of the three builds its use case from its own settings, on first use.

Deliver needs the population service, the pepper and the VNeID credentials, Settle the deadline rules, the sweep
the state machine: each reads only its settings model (healthbook.aws.settings), so a function missing
a variable says which at its first invocation. Clients and secrets are kept between invocations; secrets are
re-read after ``SECRETS_TTL_SECONDS``, so a rotated VNeID credential takes effect without a deployment.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from healthbook.aws.delivery import DynamoSweepLease, DynamoVisitStatus, SnsNotifier, StepFunctionsStarter
from healthbook.aws.outbox import SqsOutbox
from healthbook.aws.runtime_cache import CachedRuntime
from healthbook.aws.settings import (
    DeliverSettings,
    SettleSettings,
    StepSettings,
    SweepSettings,
    client,
    load_pepper,
)
from healthbook.delivery.contracts import BatchInput, BatchResult, StepInput, StepResult
from healthbook.delivery.service import Deliver, Settle, Sweeper
from healthbook.kernel import Metrics, Outcome
from healthbook.reconcile import PopulationUnavailable
from healthbook.vneid.client import RetryableDeliveryError


@dataclass
class DeliveryRuntime(CachedRuntime):
    """The delivery functions' settings and clients, cached per container (CachedRuntime)."""

    # --- the use cases, one per function ---------------------------------------------------------------

    def deliver(self) -> Deliver:
        settings = self.settings(DeliverSettings)
        return Deliver(store=self._store(settings), population=self._population(settings),
                       pepper=self._pepper(settings), vneid=self._vneid(settings), metrics=self.metrics)

    def settle(self) -> Settle:
        settings = self.settings(SettleSettings)
        return Settle(store=self._store(settings), timing=settings.timing(), metrics=self.metrics)

    def sweeper(self) -> Sweeper:
        settings = self.settings(SweepSettings)
        topic, outbox = settings.deadline_topic_arn, settings.outbox_queue_url
        return self._cached("sweeper", lambda: Sweeper(
            store=self._store(settings), timing=settings.timing(),
            starter=StepFunctionsStarter(client("stepfunctions"),
                                         state_machine_arn=settings.delivery_state_machine_arn),
            lease=DynamoSweepLease(client("dynamodb"), visits_table=settings.visits_table),
            notifier=SnsNotifier(client("sns"), topic_arn=topic) if topic else None, metrics=self.metrics,
            outbox=SqsOutbox(client("sqs"), queue_url=outbox) if outbox else None))

    # --- what they are built from ----------------------------------------------------------------------

    def _store(self, settings: StepSettings) -> DynamoVisitStatus:
        return self._cached("store", lambda: DynamoVisitStatus(client("dynamodb"), visits_table=settings.visits_table,
                                                               aggregates_table=settings.aggregates_table,
                                                               conflicts=self._conflicts()))

    def _pepper(self, settings: DeliverSettings) -> bytes:
        return self._cached("pepper", lambda: load_pepper(client("secretsmanager"), settings.citizen_pepper_secret))

    def _population(self, settings: DeliverSettings) -> Any:
        def build() -> Any:
            from healthbook.reconcile.http import PopulationClient

            key = None
            if settings.population_api_key_secret:
                key = str(client("secretsmanager").get_secret_value(
                    SecretId=settings.population_api_key_secret)["SecretString"]).strip() or None
            return PopulationClient(settings.population_url, api_key=key)

        return self._cached("population", build, settings.secrets_ttl_seconds)

    def _vneid(self, settings: DeliverSettings) -> Any:
        def build() -> Any:
            from healthbook.vneid import VneidClient, credentials_from_secret

            secret = client("secretsmanager").get_secret_value(SecretId=settings.vneid_secret)
            return VneidClient(settings.vneid_url, auth=credentials_from_secret(secret["SecretString"]),
                               timeout=(3.05, settings.vneid_timeout_seconds))

        return self._cached("vneid", build, settings.secrets_ttl_seconds)


# --- running a task: parse its batch, run the visits together, count and log each outcome --------------------

# Outcomes the domain does not count itself (it counts deliveries, deferrals, breaches, reconciliations).
STEP_METRICS = {Outcome.SKIPPED: "DeliveryStepsSkipped",
                Outcome.SUPERSEDED: "VisitsSupersededAtVneid",
                Outcome.NEEDS_RECONCILIATION: "VisitsNeedingReconciliation"}
Batch = TypeVar("Batch", bound=BatchInput)
# What the delivery workflow's Retry matches by name (infra/statemachine/delivery.asl.json): outages, not bugs.
RETRIED = (RetryableDeliveryError, PopulationUnavailable)


def run_batch(contract: type[Batch], event: Mapping[str, Any], step: Callable[[Batch, StepInput], StepResult], *,
              logger: Any, metrics: Metrics) -> dict[str, Any]:
    """Validate the task's input against its contract, run ``step`` for each visit of the batch, all at once (each
    waits on DynamoDB and HTTP most of its time: one invocation pays for the waits once, not once a visit), and log
    and count what each did. Returns ``BatchResult`` when every visit has its result.

    A visit that raised fails the batch, once all its visits have run: the error is raised again with its class as
    the Lambda errorType, which the state machine's Retry and Catch match. The failures are logged one line per
    error name, with the visits it failed (``steps failed``; an outage fails a batch's ten visits alike). A retried
    batch runs every visit again: a visit an earlier attempt delivered is then SKIPPED (it is no longer PENDING),
    and one that raised runs again.
    An outage the workflow retries (``RETRIED``) is raised first, whatever else failed, so that the whole batch is
    retried; it is raised without the traceback of where it was found, and without the error it was made from: the
    Lambda runtime logs the traceback of every error raised, and during a VNeID outage those tracebacks, a few
    kilobytes for each failed attempt, were most of the bill's log bytes (``make bench-load``: CloudWatch $6.50 of
    $28.42 per million visits). Their name and message say what happened. Logs name the visit and codes; the
    citizen key stays out of them."""
    try:
        given = contract.model_validate(dict(event))
    except Exception as exc:
        metrics.count("DeliveryStepFailures")
        logger.warning("task input refused", extra={"error": type(exc).__name__})
        raise

    def run(visit: StepInput) -> StepResult | Exception:
        try:
            return step(given, visit)
        except Exception as exc:  # raised below, once every visit of the batch has run
            return exc

    if len(given.visits) == 1:
        done = [run(given.visits[0])]
    else:  # clients are thread-safe (boto3's, VneidClient, PopulationClient); the Metrics port locks
        with ThreadPoolExecutor(max_workers=len(given.visits)) as pool:
            done = list(pool.map(run, given.visits))
    results: list[dict[str, Any]] = []
    failures: list[Exception] = []
    failed: dict[str, list[dict[str, str]]] = {}  # error name -> its visits, in the batch's order
    for visit, result in zip(given.visits, done, strict=True):
        if isinstance(result, Exception):
            failed.setdefault(type(result).__name__, []).append({"visit_id": visit.visit_id, "version": visit.version})
            failures.append(result)
            continue
        name = STEP_METRICS.get(result.outcome)
        if name:
            metrics.count(name)
        output = result.to_event()
        logger.info(f"visit {result.outcome.lower()}", extra={"version": visit.version, **{
            k: v for k, v in output.items() if k != "citizen_key"}})
        results.append(output)
    for error, visits in failed.items():
        metrics.count("DeliveryStepFailures", len(visits))
        logger.warning("steps failed", extra={"error": error, "failed": len(visits), "visits": visits})
    if failures:
        retried = [failure for failure in failures if isinstance(failure, RETRIED)]
        if retried:
            raise retried[0].with_traceback(None) from None
        raise failures[0]
    return BatchResult(results=results).to_event()


def retried_without_frames(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A delivery task's outermost wrapper. The runtime logs the traceback of the error a handler raises, and an
    outage ``run_batch`` raised again had gathered the frames of the decorators it passed through (Powertools'
    metrics, logger and tracer, about 1 KB a failed attempt); it leaves with this frame only. A bug keeps all."""
    @functools.wraps(handler)
    def outermost(event: Any, context: Any) -> Any:
        try:
            return handler(event, context)
        except RETRIED as exc:
            raise exc.with_traceback(None) from None

    return outermost
