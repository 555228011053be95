"""The delivery functions' wiring: secrets re-read after their TTL, missing configuration named."""

from __future__ import annotations

import json
import threading
import traceback
from typing import Any

import pytest
from healthbook.aws.delivery_runtime import DeliveryRuntime, retried_without_frames, run_batch
from healthbook.delivery.contracts import TASK_BATCH, BatchInput, DeliverResult, SettleInput, StepInput, StepResult
from healthbook.kernel import Outcome
from healthbook.vneid.client import RetryableDeliveryError
from pydantic import ValidationError

moto = pytest.importorskip("moto")


def _oauth2(client_id: str) -> str:
    return json.dumps({"type": "oauth2", "token_url": "http://127.0.0.1:9/token", "client_id": client_id,
                       "client_secret": "s"})


def test_rotated_vneid_credentials_are_used_after_the_ttl_and_the_old_client_is_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        secrets = boto3.client("secretsmanager")
        arn = secrets.create_secret(Name="vneid", SecretString=_oauth2("first"))["ARN"]
        pepper = secrets.create_secret(Name="pepper", SecretString="a-pepper-of-24-characters")["ARN"]
        now = [0.0]
        runtime = DeliveryRuntime(env={"VNEID_URL": "http://127.0.0.1:9", "VNEID_SECRET": arn,
                                       "CITIZEN_PEPPER_SECRET": pepper, "POPULATION_URL": "http://127.0.0.1:9",
                                       "VISITS_TABLE": "visits", "SECRETS_TTL_SECONDS": "60"}, clock=lambda: now[0])
        first = runtime.deliver().vneid
        closed: list[bool] = []
        monkeypatch.setattr(first, "close", lambda: closed.append(True))
        secrets.put_secret_value(SecretId=arn, SecretString=_oauth2("rotated"))
        now[0] = 59
        assert runtime.deliver().vneid is first and not closed  # within the TTL: the cached client
        now[0] = 61
        second = runtime.deliver().vneid
        assert second is not first and second.auth.client_id == "rotated" and closed == [True]


def test_each_step_names_the_variables_it_is_missing() -> None:
    with pytest.raises(ValueError, match=r"^missing environment variable\(s\): VISITS_TABLE$"):
        DeliveryRuntime(env={}).settle()
    with pytest.raises(ValueError, match=r"^missing environment variable\(s\): CITIZEN_PEPPER_SECRET, POPULATION_URL, "
                                         r"VISITS_TABLE, VNEID_SECRET, VNEID_URL$"):
        DeliveryRuntime(env={}).deliver()
    with pytest.raises(ValueError, match="DELIVERY_STATE_MACHINE_ARN"):
        DeliveryRuntime(env={"VISITS_TABLE": "v"}).sweeper()
    with pytest.raises(ValueError, match="safety margin"):  # the default 1 h margin exceeds 60 s
        DeliveryRuntime(env={"VISITS_TABLE": "v", "DEADLINE_SECONDS": "60"}).settle()


class _Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []
        self.infos: list[tuple[str, dict[str, Any]]] = []

    def warning(self, message: str, *, extra: dict[str, Any]) -> None:
        self.warnings.append((message, extra))

    def info(self, message: str, *, extra: dict[str, Any]) -> None:
        self.infos.append((message, extra))


class _Count:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.values: list[int] = []

    def count(self, name: str, value: int = 1, **dimensions: str) -> None:
        self.names.append(name)
        self.values.append(value)


def _vneid_down(_: BatchInput, visit: StepInput) -> StepResult:
    try:
        raise ConnectionError("reset by peer")
    except ConnectionError as exc:
        raise RetryableDeliveryError("VNeID unreachable") from exc


def _a_bug(_: BatchInput, visit: StepInput) -> StepResult:
    raise KeyError("records")


def _batch(*visits: str) -> dict[str, Any]:
    return {"visits": [{"visit_id": f"01001#{visit}", "version": "v"} for visit in visits]}


def test_an_outage_the_workflow_retries_is_raised_without_its_traceback_and_a_bug_with_all_of_it() -> None:
    """The Lambda runtime logs the traceback of every error raised: during a VNeID outage those were most of the
    log bytes. An outage keeps its class (the Retry matches it) and its message, not where it was found."""
    log, count = _Log(), _Count()
    with pytest.raises(RetryableDeliveryError, match="VNeID unreachable") as caught:
        run_batch(BatchInput, _batch("A"), _vneid_down, logger=log, metrics=count)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "run_batch" and "_vneid_down" not in frames  # from where run_batch raised it again
    assert "ConnectionError" not in "".join(traceback.format_exception(caught.value))  # nor the error it came from
    with pytest.raises(KeyError) as bug:
        run_batch(BatchInput, _batch("A"), _a_bug, logger=log, metrics=count)
    assert [frame.name for frame in traceback.extract_tb(bug.value.__traceback__)][-1] == "_a_bug"  # a bug keeps it
    assert count.names == ["DeliveryStepFailures"] * 2
    assert [extra["error"] for _, extra in log.warnings] == ["RetryableDeliveryError", "KeyError"]


def test_a_batch_runs_its_visits_at_once_and_answers_for_each_in_order() -> None:
    """One invocation, ten visits: their waits overlap (docs/cost.md, row 22). The barrier lets no step return
    until every visit of the batch is running: visits run one after the other would break it."""
    names = [chr(ord("A") + n) for n in range(TASK_BATCH)]
    together = threading.Barrier(TASK_BATCH, timeout=10)

    def deliver(_: BatchInput, visit: StepInput) -> StepResult:
        together.wait()
        outcome = Outcome.SKIPPED if visit.visit_id.endswith("C") else Outcome.DELIVERED
        return DeliverResult(visit_id=visit.visit_id, outcome=outcome, latency_ms=5 if outcome == "DELIVERED" else None)

    log, count = _Log(), _Count()
    answer = run_batch(BatchInput, _batch(*names), deliver, logger=log, metrics=count)
    assert [result["visit_id"] for result in answer["results"]] == [f"01001#{name}" for name in names]
    assert [result["outcome"] for result in answer["results"]].count(Outcome.DELIVERED) == TASK_BATCH - 1
    assert count.names == ["DeliveryStepsSkipped"] and not log.warnings
    assert len(log.infos) == TASK_BATCH and all("citizen_key" not in extra for _, extra in log.infos)
    with pytest.raises(ValidationError):  # more than a batch: the ASL partitions the execution's visits
        run_batch(BatchInput, _batch(*names, "K"), deliver, logger=log, metrics=count)


def test_a_batch_fails_when_a_visit_fails_once_all_have_run_and_an_outage_comes_first() -> None:
    """The Retry must see the outage, so that the whole batch is tried again (a delivered visit is then SKIPPED);
    every visit was attempted first, each failure logged with its visit."""
    ran: list[str] = []
    lock = threading.Lock()

    def step(_: BatchInput, visit: StepInput) -> StepResult:
        with lock:
            ran.append(visit.visit_id)
        if visit.visit_id.endswith("A"):
            raise KeyError("records")  # a bug, first in the batch
        if visit.visit_id.endswith("C"):
            raise RetryableDeliveryError("VNeID unreachable")
        return DeliverResult(visit_id=visit.visit_id, outcome=Outcome.DELIVERED, latency_ms=1)

    log, count = _Log(), _Count()
    with pytest.raises(RetryableDeliveryError):
        run_batch(BatchInput, _batch("A", "B", "C", "D"), step, logger=log, metrics=count)
    assert sorted(ran) == ["01001#A", "01001#B", "01001#C", "01001#D"]
    assert [(extra["error"], extra["visits"]) for _, extra in log.warnings] == [
        ("KeyError", [{"visit_id": "01001#A", "version": "v"}]),
        ("RetryableDeliveryError", [{"visit_id": "01001#C", "version": "v"}])]
    assert count.names == ["DeliveryStepFailures"] * 2


def test_an_outage_that_fails_a_whole_batch_is_one_line_naming_its_visits() -> None:
    """During bench-load's VNeID outage a line a failed visit was half the run's log bytes (6,334 lines of 586
    bytes): the ten visits of a batch fail alike, and are one line now, each visit named in it."""
    names = [chr(ord("A") + n) for n in range(TASK_BATCH)]
    log, count = _Log(), _Count()
    with pytest.raises(RetryableDeliveryError):
        run_batch(BatchInput, _batch(*names), _vneid_down, logger=log, metrics=count)
    (message, extra), = log.warnings
    assert message == "steps failed" and extra["error"] == "RetryableDeliveryError" and extra["failed"] == TASK_BATCH
    assert [visit["visit_id"] for visit in extra["visits"]] == [f"01001#{name}" for name in names]
    assert (count.names, count.values) == (["DeliveryStepFailures"], [TASK_BATCH])  # the metric still counts visits


def test_the_outermost_wrapper_leaves_an_outage_with_its_own_frame_only_and_a_bug_with_all() -> None:
    def decorated(step: Any) -> Any:  # stands in for Powertools' decorators, each a frame on the way out
        def metrics_layer(event: Any, context: Any) -> Any:
            return step(event, context)
        return metrics_layer

    def outage(event: Any, context: Any) -> Any:
        raise RetryableDeliveryError("VNeID token endpoint answered 503")

    def bug(event: Any, context: Any) -> Any:
        raise KeyError("records")

    with pytest.raises(RetryableDeliveryError, match="503") as caught:
        retried_without_frames(decorated(outage))({}, None)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "outermost" and "metrics_layer" not in frames and "outage" not in frames  # the caller's only
    with pytest.raises(KeyError) as kept:
        retried_without_frames(decorated(bug))({}, None)
    assert [frame.name for frame in traceback.extract_tb(kept.value.__traceback__)][-2:] == ["metrics_layer", "bug"]


def test_settle_takes_the_batchs_error_for_each_of_its_visits() -> None:
    given = SettleInput.model_validate({**_batch("A", "B"), "error": "RetryableDeliveryError"})
    seen: list[tuple[str, str | None]] = []

    def settle(batch: SettleInput, visit: StepInput) -> StepResult:
        seen.append((visit.visit_id, batch.error))
        return StepResult(visit_id=visit.visit_id, outcome=Outcome.DEFERRED)

    answer = run_batch(SettleInput, given.to_event(), settle, logger=_Log(), metrics=_Count())
    assert sorted(seen) == [("01001#A", "RetryableDeliveryError"), ("01001#B", "RetryableDeliveryError")]
    assert answer == {"results": [{"visit_id": "01001#A", "outcome": "DEFERRED"},
                                  {"visit_id": "01001#B", "outcome": "DEFERRED"}]}
