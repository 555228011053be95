"""Wiring of the delivery functions from their environment (template.yaml sets it; the tests set it too).

Each function builds only what its step needs, on first use: reconcile needs the population service and the
pepper, deliver the VNeID credentials, project neither. Secrets are re-read after ``SECRETS_TTL_SECONDS`` so a
rotated VNeID credential takes effect without a deployment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from healthbook.aws.delivery import DynamoVisitStatus, S3Projections, SnsNotifier, StepFunctionsStarter
from healthbook.aws.settings import client, load_pepper
from healthbook.delivery import DeliveryService, Metrics, Sweeper, Timing
from healthbook.delivery.service import NoMetrics

T = TypeVar("T")


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise ValueError(f"missing environment variable {name}")
    return value


@dataclass
class DeliveryRuntime:
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    metrics: Metrics = field(default_factory=NoMetrics)
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    @property
    def timing(self) -> Timing:
        return self._cached("timing", lambda: Timing.from_env(self.env))

    @property
    def secrets_ttl(self) -> float:
        return float(self.env.get("SECRETS_TTL_SECONDS") or 300)

    def _cached(self, name: str, build: Callable[[], T], ttl: float | None = None) -> T:
        now = self.clock()
        hit = self._cache.get(name)
        if hit is not None and (ttl is None or now - hit[0] < ttl):
            cached: T = hit[1]
            return cached
        value = build()
        self._cache[name] = (now, value)
        close = getattr(hit[1], "close", None) if hit is not None else None
        if callable(close):  # an HTTP client rebuilt after the TTL: release its connection pool
            close()
        return value

    def store(self) -> DynamoVisitStatus:
        table = _required(self.env, "VISITS_TABLE")  # before any client: a missing variable says so first
        counters = self.env.get("AGGREGATES_TABLE") or None  # report counters (docs/reports.md)
        return self._cached("store", lambda: DynamoVisitStatus(client("dynamodb"), visits_table=table,
                                                               aggregates_table=counters))

    def projections(self) -> S3Projections:
        bucket = _required(self.env, "PROJECTIONS_BUCKET")
        return self._cached("projections", lambda: S3Projections(client("s3"), bucket=bucket))

    def pepper(self) -> bytes:
        secret = _required(self.env, "CITIZEN_PEPPER_SECRET")
        return self._cached("pepper", lambda: load_pepper(client("secretsmanager"), secret))

    def population(self) -> Any:
        def build() -> Any:
            from healthbook.reconcile.http import population_from_env

            settings = {"POPULATION_URL": _required(self.env, "POPULATION_URL")}
            secret = self.env.get("POPULATION_API_KEY_SECRET")
            if secret:
                settings["POPULATION_API_KEY"] = str(
                    client("secretsmanager").get_secret_value(SecretId=secret)["SecretString"]).strip()
            return population_from_env(settings)

        return self._cached("population", build, self.secrets_ttl)

    def vneid(self) -> Any:
        def build() -> Any:
            from healthbook.vneid import VneidClient, credentials_from_secret

            secret = client("secretsmanager").get_secret_value(SecretId=_required(self.env, "VNEID_SECRET"))
            timeout = float(self.env.get("VNEID_TIMEOUT_SECONDS") or 10)
            return VneidClient(_required(self.env, "VNEID_URL"), auth=credentials_from_secret(secret["SecretString"]),
                               timeout=(3.05, timeout))

        return self._cached("vneid", build, self.secrets_ttl)

    def service(self, *, reconcile: bool = False, project: bool = False, deliver: bool = False) -> DeliveryService:
        return DeliveryService(
            store=self.store(), projections=self.projections() if project or deliver else None,
            population=self.population() if reconcile else None, pepper=self.pepper() if reconcile else None,
            vneid=self.vneid() if deliver else None, timing=self.timing, metrics=self.metrics)

    def sweeper(self) -> Sweeper:
        topic = self.env.get("DEADLINE_TOPIC_ARN")
        return self._cached("sweeper", lambda: Sweeper(
            store=self.store(), timing=self.timing,
            starter=StepFunctionsStarter(client("stepfunctions"),
                                         state_machine_arn=_required(self.env, "DELIVERY_STATE_MACHINE_ARN")),
            notifier=SnsNotifier(client("sns"), topic_arn=topic) if topic else None, metrics=self.metrics))
