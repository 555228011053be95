"""The delivery workflow's contracts against the state machine itself: every path delivery.asl.json reads or
writes names a field of the model the step receives or returns, and every outcome it branches on exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from healthbook.aws.delivery import execution_input
from healthbook.delivery.contracts import (
    TASK_BATCH,
    BatchInput,
    BatchResult,
    DeliverResult,
    ExecutionInput,
    SettleInput,
    StepInput,
    SummariseInput,
    Summary,
)
from healthbook.ingest.model import VisitRef
from healthbook.kernel import Outcome
from pydantic import BaseModel, ValidationError

ROOT = Path(__file__).resolve().parents[1]
ASL = json.loads((ROOT / "infra/statemachine/delivery.asl.json").read_text(encoding="utf-8"))

# Each Lambda task of the machine: (input contract, output contract), by the function it invokes.
TASKS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "${DeliverFunctionArn}": (BatchInput, BatchResult),
    "${SettleFunctionArn}": (SettleInput, BatchResult),
}


def _states(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = dict(states)
    for state in states.values():
        if "ItemProcessor" in state:
            found.update(_states(state["ItemProcessor"]["States"]))
    return found


STATES = _states(ASL["States"])
ITEM_STATES = _states(ASL["States"]["Visits"]["ItemProcessor"]["States"])


def _lambda_tasks(states: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in states.items() if s.get("Resource") == "arn:aws:states:::lambda:invoke"}


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_every_lambda_task_has_its_contracts() -> None:
    functions = {state["Parameters"]["FunctionName"] for state in _lambda_tasks(STATES).values()}
    assert functions == set(TASKS)


def test_the_map_iterates_batches_of_the_execution_inputs_visits_and_items_carry_the_batch_input() -> None:
    assert "visits" in _fields(ExecutionInput)
    assert ASL["StartAt"] == "Batches"
    assert ASL["States"]["Batches"]["Parameters"] == {
        "batches.$": f"States.ArrayPartition($.visits, {TASK_BATCH})"}  # the contract's TASK_BATCH
    assert ASL["States"]["Visits"]["ItemsPath"] == "$.batches"
    assert ASL["States"]["Visits"]["ItemSelector"] == {"visits.$": "$$.Map.Item.Value"}
    for name, state in _lambda_tasks(ITEM_STATES).items():
        model = TASKS[state["Parameters"]["FunctionName"]][0]
        payload = state["Parameters"]["Payload"]
        given = {key.removesuffix(".$") for key in payload}
        assert given <= _fields(model), (name, given - _fields(model))
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        assert required <= given, (name, required - given)
        assert payload["visits.$"] == "$.visits", name


def test_paths_into_earlier_results_name_fields_of_those_results() -> None:
    results = {state["ResultPath"]: TASKS[state["Parameters"]["FunctionName"]][1]
               for state in _lambda_tasks(ITEM_STATES).values()}
    used = []
    for name, state in ITEM_STATES.items():
        for path in re.findall(r"\$\.(\w+)\.(?:detail\.)?(\w+)", json.dumps(state.get("Parameters", {}))):
            result, field = path
            if f"$.{result}" in results:
                assert field in _fields(results[f"$.{result}"]), (name, result, field)
                used.append(f"{result}.{field}")
    assert sorted(used) == ["deliver.results", "settle.results"]  # what the Pass states read
    for state in _lambda_tasks(STATES).values():
        for key, path in state.get("ResultSelector", {}).items():
            if path.startswith("$.Payload."):
                model = TASKS.get(state["Parameters"]["FunctionName"], (None, Summary))[1]
                if "results.$" in state["Parameters"]["Payload"]:
                    model = Summary
                assert path.removeprefix("$.Payload.") in _fields(model), (key, path)


def test_branches_name_outcomes_that_exist() -> None:
    for state in STATES.values():
        for choice in state.get("Choices", []):
            if "StringEquals" in choice:
                assert choice["StringEquals"] in set(Outcome), choice
    assert {s["Parameters"].get("outcome") for s in ITEM_STATES.values() if s["Type"] == "Pass"} - {None} \
        <= set(Outcome)


def test_the_summary_task_reads_the_summarise_contract() -> None:
    (summary,) = [s for s in STATES.values() if "results.$" in s.get("Parameters", {}).get("Payload", {})]
    assert {k.removesuffix(".$") for k in summary["Parameters"]["Payload"]} == _fields(SummariseInput)
    assert {k.removesuffix(".$") for k in summary["ResultSelector"]} == _fields(Summary)


def test_an_execution_input_is_what_the_contract_accepts() -> None:
    refs = [VisitRef("01001#ABC", "2026-12-06T05:00:00Z#1"), VisitRef("01001#DEF", "2026-12-06T05:00:01Z#2")]
    document = json.loads(execution_input(refs))
    assert ExecutionInput.model_validate(document).visits[1].ref == refs[1]


@pytest.mark.parametrize(("model", "event"), [
    (StepInput, {"visit_id": "01001#A"}),  # no version
    (StepInput, {"visit_id": "no-facility", "version": "v"}),
    (StepInput, {"visit_id": "01001#A", "version": "v", "name": "Nguyễn Văn A"}),  # nothing personal slips in
    # the hand-off through S3 is gone: a payload still naming an object key is refused, not silently ignored
    (StepInput, {"visit_id": "01001#A", "version": "v", "projection_key": "k"}),
    # the citizen is matched inside the step: workflow state never carries the key
    (StepInput, {"visit_id": "01001#A", "version": "v", "citizen_key": "ab" * 32}),
])
def test_malformed_step_inputs_are_refused(model: type[BaseModel], event: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(event)


def test_each_batch_is_one_deliver_task_that_reads_only_the_item() -> None:
    assert ASL["States"]["Visits"]["ItemProcessor"]["StartAt"] == "Deliver"
    payload = ITEM_STATES["Deliver"]["Parameters"]["Payload"]
    assert payload == {"visits.$": "$.visits"}
    # the visits in flight an execution: two batches of ten at once (docs/capacity.md counts environments by it)
    assert ASL["States"]["Visits"]["MaxConcurrency"] * TASK_BATCH == 20
    # it retries both services it calls: the population's outage and VNeID's
    assert ITEM_STATES["Deliver"]["Retry"][0]["ErrorEquals"] == ["PopulationUnavailable", "RetryableDeliveryError"]
    # the tasks of a visit: deliver and, on the Catch path, settle (no step in between any more)
    assert sorted(s["ResultPath"] for s in _lambda_tasks(ITEM_STATES).values()) == ["$.deliver", "$.settle"]


def test_results_leave_out_what_does_not_apply() -> None:
    assert DeliverResult(visit_id="01001#A", outcome=Outcome.NEEDS_RECONCILIATION, reasons=["UNKNOWN_ID"]
                         ).to_event() == {"visit_id": "01001#A", "outcome": "NEEDS_RECONCILIATION",
                                          "reasons": ["UNKNOWN_ID"]}
    assert SettleInput.model_validate({"visits": [{"visit_id": "01001#A", "version": "v"}]}).error is None
