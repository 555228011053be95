"""What the enrolment workflow's Distributed Map needs and LocalStack 2026.3's Step Functions lacks (docs/localstack.md,
"Distributed Map"). Installed by the ``stepfunctions_distributed_map`` start-up hook; HB_DISTRIBUTED_MAP=0 keeps
LocalStack as it is.

LocalStack parses ASL with an ANTLR grammar that knows neither ``ItemBatcher`` nor ``"ExecutionType": "EXPRESS"``
(a definition using them fails CreateStateMachine), reads an integer ``ToleratedFailurePercentage`` as a syntax
error, ignores the tolerated failures altogether, and its ResultWriter writes a manifest that lists no result
files. Here, as AWS does it:

* **Definitions** are rewritten before they are parsed: a Distributed Map's ``ItemBatcher`` (and ResultWriter's
  ``WriterConfig``) move into the state's ``Comment`` (base64 JSON), where the grammar accepts anything, and an
  EXPRESS child runs as STANDARD (LocalStack runs a Map's children in process either way: only the name
  differs). The state keeps what it moved (``StateMap._hb``).
* **ItemBatcher**: the items read are grouped into ``{"Items": [...], "BatchInput": {...}}`` of at most
  ``MaxItemsPerBatch`` (or ``MaxItemsPerBatchPath``) items and ``MaxInputBytesPerBatch`` bytes; ``BatchInput``
  is evaluated against the Map's input (``key.$`` paths, ``$$`` the context object).
* **Tolerated failures**: a Map run whose failed items exceed ``ToleratedFailureCount`` or
  ``ToleratedFailurePercentage`` (either, when both are given; none tolerated when neither is) fails with
  ``States.ExceedToleratedFailureThreshold`` after its results are written, which the Map's Catch can take.
* **ResultWriter**: its Parameters read the Map state's input (LocalStack gave them the children's outputs), and
  it writes ``<Prefix>/<map run id>/manifest.json`` and ``SUCCEEDED_0.json`` / ``FAILED_0.json``, each a
  JSON array of child executions as AWS writes them (``Input`` and ``Output`` as JSON strings; ``Error`` and
  ``Cause`` for a failed one).
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

LOG = logging.getLogger(__name__)
MARKER = "hb-distributed-map:"


# --- 1. the definition ----------------------------------------------------------------------------------------

def rewrite(definition: str) -> str:
    """The definition LocalStack's grammar accepts, with what it would refuse kept in the Map states' Comment."""
    try:
        document = json.loads(definition)
    except (TypeError, ValueError):
        return definition
    if not isinstance(document, dict) or not _rewrite_states(document.get("States")):
        return definition
    return json.dumps(document)


def _rewrite_states(states: Any) -> bool:
    changed = False
    if not isinstance(states, dict):
        return False
    for state in states.values():
        if not isinstance(state, dict):
            continue
        for branch in state.get("Branches") or []:
            if isinstance(branch, dict):
                changed |= _rewrite_states(branch.get("States"))
        if state.get("Type") != "Map":
            continue
        processor = state.get("ItemProcessor") or state.get("Iterator") or {}
        changed |= _rewrite_states(processor.get("States"))
        config = processor.get("ProcessorConfig") or {}
        if config.get("Mode") != "DISTRIBUTED":
            continue
        kept: dict[str, Any] = {"Comment": state.get("Comment"),
                                "ToleratedFailureCount": any(k in state for k in (
                                    "ToleratedFailureCount", "ToleratedFailureCountPath")),
                                "ToleratedFailurePercentage": any(k in state for k in (
                                    "ToleratedFailurePercentage", "ToleratedFailurePercentagePath"))}
        if "ItemBatcher" in state:
            kept["ItemBatcher"] = state.pop("ItemBatcher")
        writer = state.get("ResultWriter")
        if isinstance(writer, dict) and "WriterConfig" in writer:
            kept["WriterConfig"] = writer.pop("WriterConfig")
        if config.get("ExecutionType") == "EXPRESS":
            config["ExecutionType"] = "STANDARD"
            kept["ExecutionType"] = "EXPRESS"
        percentage = state.get("ToleratedFailurePercentage")
        if isinstance(percentage, int) and not isinstance(percentage, bool):
            state["ToleratedFailurePercentage"] = float(percentage)  # the grammar takes only a decimal number
        # base64: the grammar keeps a string's escapes as they are written
        state["Comment"] = MARKER + base64.b64encode(json.dumps(kept).encode()).decode("ascii")
        changed = True
    return changed


def _kept(state_map: Any) -> dict[str, Any]:
    comment = getattr(getattr(state_map, "comment", None), "comment", None)
    if isinstance(comment, str) and comment.startswith(MARKER):
        try:
            kept = json.loads(base64.b64decode(comment[len(MARKER):]))
        except ValueError:
            return {}
        return kept if isinstance(kept, dict) else {}
    return {}


# --- 2. batches -------------------------------------------------------------------------------------------------

def _evaluate(template: Any, data: Any, context: Any) -> Any:
    """A Parameters-style template: ``key.$`` values are JSONPaths into ``data`` (``$$.`` into the context)."""
    from localstack.services.stepfunctions.asl.utils.json_path import extract_json

    if isinstance(template, dict):
        result = {}
        for key, value in template.items():
            if key.endswith(".$") and isinstance(value, str):
                source = context if value.startswith("$$") else data
                result[key[:-2]] = extract_json(value[1:] if value.startswith("$$") else value, source)
            else:
                result[key] = _evaluate(value, data, context)
        return result
    if isinstance(template, list):
        return [_evaluate(value, data, context) for value in template]
    return template


def _number(batcher: dict[str, Any], name: str, data: Any) -> int | None:
    from localstack.services.stepfunctions.asl.utils.json_path import extract_json

    if name in batcher:
        return int(batcher[name])
    if f"{name}Path" in batcher:
        return int(extract_json(batcher[f"{name}Path"], data))
    return None


def batches(items: list[Any], batcher: dict[str, Any], data: Any, context: Any) -> list[dict[str, Any]]:
    most = _number(batcher, "MaxItemsPerBatch", data)
    most_bytes = _number(batcher, "MaxInputBytesPerBatch", data) or 256 * 1024
    extra = _evaluate(batcher["BatchInput"], data, context) if "BatchInput" in batcher else None
    if most is not None and most < 1:
        raise ValueError("MaxItemsPerBatch must be positive")
    chunks: list[list[Any]] = []
    current: list[Any] = []
    size = 0
    for item in items:
        length = len(json.dumps(item))
        if current and ((most is not None and len(current) >= most) or size + length > most_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += length
    if current:
        chunks.append(current)
    return [{"Items": chunk, **({"BatchInput": extra} if extra is not None else {})} for chunk in chunks]


# --- 3. the patches ---------------------------------------------------------------------------------------------

def install() -> None:
    from localstack.services.stepfunctions.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from localstack.services.stepfunctions.asl.component.common.error_name.states_error_name import StatesErrorName
    from localstack.services.stepfunctions.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from localstack.services.stepfunctions.asl.component.state.state_execution.state_map import state_map
    from localstack.services.stepfunctions.asl.component.state.state_execution.state_map.iteration import (
        distributed_iteration_component as distributed,
    )
    from localstack.services.stepfunctions.asl.component.state.state_execution.state_map.iteration.itemprocessor import (  # noqa: E501
        distributed_item_processor_worker as worker,
    )
    from localstack.services.stepfunctions.asl.component.state.state_execution.state_map.iteration.job import JobPool
    from localstack.services.stepfunctions.asl.component.state.state_execution.state_map.max_concurrency import (
        DEFAULT_MAX_CONCURRENCY_VALUE,
    )
    from localstack.services.stepfunctions.asl.component.state.state_execution.state_map.result_writer import (
        result_writer_decl,
    )
    from localstack.services.stepfunctions.asl.component.state.state_execution.state_map.result_writer.resource_eval import (  # noqa: E501
        resource_eval_s3,
    )
    from localstack.services.stepfunctions.asl.eval.event.event_detail import EventDetails
    from localstack.services.stepfunctions.asl.eval.program_state import ProgramEnded, ProgramError
    from localstack.services.stepfunctions.asl.parse.asl_parser import AmazonStateLanguageParser

    if getattr(AmazonStateLanguageParser, "_hb_distributed_map", False):
        return
    from localstack.aws.api.stepfunctions import HistoryEventType, MapRunFailedEventDetails

    parse = AmazonStateLanguageParser.parse

    def parse_rewritten(definition: str) -> Any:
        return parse(rewrite(definition))

    AmazonStateLanguageParser.parse = staticmethod(parse_rewritten)  # type: ignore[method-assign]
    AmazonStateLanguageParser._hb_distributed_map = True  # type: ignore[attr-defined]

    StateMap = state_map.StateMap
    from_state_props = StateMap.from_state_props

    def from_state_props_kept(self: Any, state_props: Any) -> None:
        from_state_props(self, state_props)
        kept = _kept(self)
        self._hb = kept
        self.iteration_component._hb = kept

    StateMap.from_state_props = from_state_props_kept

    Component = distributed.DistributedIterationComponent

    def map_run(self: Any, env: Any, eval_input: Any) -> None:
        """LocalStack's _map_run, plus batches, the failures' errors for the ResultWriter and the tolerance."""
        kept: dict[str, Any] = getattr(self, "_hb", {}) or {}
        items: list[Any] = env.stack.pop()
        if "ItemBatcher" in kept:
            items = batches(items, kept["ItemBatcher"], env.states.get_input(),
                            env.states.context_object.context_object_data)
        record = eval_input.map_run_record
        record._hb_failures = {}
        program = self._get_iteration_program()
        pool = JobPool(job_program=program, job_inputs=items)
        concurrency = record.max_concurrency
        workers = len(items) if concurrency == DEFAULT_MAX_CONCURRENCY_VALUE else min(concurrency, max(len(items), 1))
        started = datetime.now(UTC)
        for _ in range(workers):
            self._launch_worker(env=env, eval_input=eval_input, job_pool=pool)
        pool.await_jobs()
        exception = pool.get_worker_exception()
        if exception is not None:
            raise exception
        closed = pool.get_closed_jobs()
        stopped = datetime.now(UTC)
        runs = []
        failed_items = 0
        for job in closed:
            failure = record._hb_failures.get(job.job_index)
            batch = items[job.job_index]
            size = len(batch["Items"]) if "ItemBatcher" in kept and isinstance(batch, dict) else 1
            if failure is not None:
                failed_items += size
            runs.append((job.job_index, batch, job.job_output, failure))
        record._hb_runs = (runs, started, stopped)
        total_items = sum(len(b["Items"]) if "ItemBatcher" in kept and isinstance(b, dict) else 1 for b in items)
        count, percentage = eval_input.tolerated_failure_count, eval_input.tolerated_failure_percentage
        by_count = kept.get("ToleratedFailureCount", False)
        by_percentage = kept.get("ToleratedFailurePercentage", False)
        exceeded = False
        if failed_items:
            if not by_count and not by_percentage:
                exceeded = True
            if by_count and failed_items > count:
                exceeded = True
            if by_percentage and total_items and failed_items * 100.0 / total_items > percentage:
                exceeded = True
        record._hb_exceeded = (failed_items, total_items) if exceeded else None
        env.stack.append([job.job_output for job in closed])

    Component._map_run = map_run

    Worker = worker.DistributedItemProcessorWorker
    eval_job = Worker._eval_job

    def eval_job_recorded(self: Any, env: Any, job: Any) -> None:
        eval_job(self, env, job)
        state = env.program_state()
        if isinstance(state, ProgramEnded) and job.job_output is not None:
            return
        error = getattr(state, "error", None) if isinstance(state, ProgramError) else None
        failures = getattr(self._map_run_record, "_hb_failures", None)
        if failures is not None:
            failures[job.job_index] = {"Error": (error or {}).get("error") or "States.TaskFailed",
                                       "Cause": (error or {}).get("cause") or ""}

    Worker._eval_job = eval_job_recorded

    def put_object(env: Any, resource_runtime_part: Any, state_credentials: Any) -> None:
        parameters = env.stack.pop()
        env.stack.pop()  # the outputs: written below from the map run's record, with their inputs
        s3 = resource_eval_s3.ResourceEvalS3._get_s3_client(resource_runtime_part=resource_runtime_part,
                                                           state_credentials=state_credentials)
        record = env.map_run_record_pool_manager.get_all().pop()
        runs, started, stopped = getattr(record, "_hb_runs", ([], datetime.now(UTC), datetime.now(UTC)))
        prefix = parameters.get("Prefix", "")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        run_id = record.map_run_arn.split(":")[-1]
        bucket = parameters["Bucket"]
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        entries: dict[str, list[dict[str, Any]]] = {"FAILED": [], "SUCCEEDED": []}
        child_machine = record.map_run_arn.replace(":mapRun:", ":stateMachine:").rsplit(":", 1)[0]
        for index, batch, output, failure in runs:
            name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{record.map_run_arn}#{index}"))
            entry: dict[str, Any] = {
                "ExecutionArn": f"{child_machine.replace(':stateMachine:', ':express:')}:{name}",
                "Input": json.dumps(batch), "InputDetails": {"Included": True}, "Name": name,
                "RedriveCount": 0, "RedriveStatus": "NOT_REDRIVABLE",
                "StartDate": started.isoformat(), "StateMachineArn": child_machine,
                "Status": "FAILED" if failure else "SUCCEEDED", "StopDate": stopped.isoformat()}
            if failure:
                entry.update({"Error": failure["Error"], "Cause": failure["Cause"]})
                entries["FAILED"].append(entry)
            else:
                entry.update({"Output": json.dumps(output), "OutputDetails": {"Included": True}})
                entries["SUCCEEDED"].append(entry)
        for status, found in entries.items():
            if not found:
                continue
            key = f"{prefix}{run_id}/{status}_0.json"
            body = json.dumps(found).encode("utf-8")
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            files[status].append({"Key": key, "Size": len(body)})
        manifest = {"DestinationBucket": bucket, "MapRunArn": record.map_run_arn, "ResultFiles": files}
        key = f"{prefix}{run_id}/manifest.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest, indent=2).encode("utf-8"))
        env.stack.append({"MapRunArn": record.map_run_arn, "ResultWriterDetails": {"Bucket": bucket, "Key": key}})

    resource_eval_s3.ResourceEvalS3._handle_put_object = staticmethod(put_object)

    def writer_eval_body(self: Any, env: Any) -> None:
        """The writer's Parameters read the Map state's input (LocalStack gave them the children's outputs)."""
        outputs = env.stack.pop()
        env.stack.append(env.states.get_input())
        self.parargs.eval(env=env)
        parameters = env.stack.pop()
        env.stack.pop()
        env.stack.append(outputs)
        env.stack.append(parameters)
        self.resource_eval.eval_resource(env=env)

    result_writer_decl.ResultWriter._eval_body = writer_eval_body

    eval_execution = StateMap._eval_execution

    def eval_execution_tolerated(self: Any, env: Any) -> None:
        eval_execution(self, env)
        for record in env.map_run_record_pool_manager.get_all():
            exceeded = getattr(record, "_hb_exceeded", None)
            if exceeded and not getattr(record, "_hb_reported", False):
                record._hb_reported = True
                failed, total = exceeded
                cause = (f"The specified tolerated failure threshold was exceeded: {failed} of {total} items "
                         "failed")
                name = StatesErrorName(typ=StatesErrorNameType.StatesExceedToleratedFailureThreshold)
                raise FailureEventException(failure_event=FailureEvent(
                    env=env, error_name=name, event_type=HistoryEventType.MapRunFailed,
                    event_details=EventDetails(mapRunFailedEventDetails=MapRunFailedEventDetails(
                        error=name.error_name, cause=cause))))

    StateMap._eval_execution = eval_execution_tolerated
    LOG.debug("Distributed Map: ItemBatcher, EXPRESS children, tolerated failures and result files")
