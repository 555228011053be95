"""Fault injection for the end-to-end tests: a switchboard file that the tests write and the emulator re-reads.

Nothing here touches the production code: the faults are injected where the emulator stands in for AWS.

* **DynamoDB throttling** (in the LocalStack process): ``dynamodb.py`` wraps moto's dispatch table with
  :func:`with_dynamodb_faults`; while the switchboard says so, a fraction of the data-plane requests made by Lambda
  functions (their User-Agent carries ``exec-env/AWS_Lambda``) is answered ``ProvisionedThroughputExceededException``
  (HTTP 400), the error shape botocore's retry handler retries.
* **DynamoDB transaction conflicts** (in the LocalStack process): ``hooks.py`` puts ``moto_transactions``'s
  ``ConflictModel`` in front of moto's TransactWriteItems with :class:`DynamoConflicts` as its rule: while the
  switchboard says so, a transaction naming an item that another one admitted less than ``hold_ms`` ago holds is
  cancelled with the reason ``TransactionConflict``, as DynamoDB cancels overlapping transactions.
* **A Lambda crash** (in the worker, ``_worker.py``): the worker of a named function kills itself with SIGKILL
  right after its k-th successful AWS call of a given operation within one invocation, as a runtime that died
  (out of memory, a segfault) would; the executor reports ``Runtime.ExitError`` and starts a fresh worker.

The switchboard: ``$HB_FAULTS_FILE``, else ``healthbook-faults.json`` in LocalStack's TMPDIR (with ``up.sh``:
``infra/localstack/.work/state-<port>/tmp/``). The executor hands its path to every worker. It is re-read when it
changes (one ``stat`` per request); no file, an empty object or a malformed file means no faults. Write it
atomically (a temporary file, then ``rename``)::

    {"id": "any-run-id",
     "dynamodb": {"throttle": {"rate": 0.25, "until": 1767225600.0, "max": 300, "seed": 7,
                               "operations": ["PutItem", ...], "tables_prefix": "healthbook-local-",
                               "user_agent": "exec-env/AWS_Lambda",
                               "error": "ProvisionedThroughputExceededException"},
                  "conflicts": {"hold_ms": 20, "until": 1767225600.0, "tables_prefix": "healthbook-local-"}},
     "lambda": {"crash": [{"function": "healthbook-local-ingest", "after_operation": "PutObject",
                           "after_calls": 2, "times": 1, "until": 1767225600.0}]}}

What fired is recorded next to the switchboard, per ``id``: ``healthbook-faults.counters.json`` (throttles, by
operation; written by LocalStack), ``healthbook-faults.conflicts.json`` (transactions considered and cancelled by
a conflict, by table; written by LocalStack) and one file per crash in ``healthbook-faults.d/``
(``<id>.crash.<rule>.<n>``, created exclusively: a rule never fires more than ``times`` times, however many workers
run it). docs/faults.md
describes the faults and the test that uses them (tests/e2e/test_faults.py).

Standard library only at import time: ``_worker.py`` loads this file by path into the Lambda interpreter, which
has no LocalStack; the LocalStack-side helpers import LocalStack lazily.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

LOG = logging.getLogger(__name__)

ENV = "HB_FAULTS_FILE"
FILE_NAME = "healthbook-faults.json"
COUNTERS_SUFFIX = ".counters.json"
CONFLICTS_SUFFIX = ".conflicts.json"
TOKENS_SUFFIX = ".d"
LAMBDA_USER_AGENT = "exec-env/AWS_Lambda"  # botocore adds it when AWS_EXECUTION_ENV is set, as in every worker
# Item reads and writes; never the control plane (CloudFormation creating and describing tables is left alone).
DATA_PLANE = frozenset({
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem",
    "TransactGetItems", "TransactWriteItems", "ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction",
})
THROTTLE_MESSAGES = {
    "ProvisionedThroughputExceededException":
        "The level of configured provisioned throughput for the table was exceeded. Consider increasing your "
        "provisioning level with the UpdateTable API.",
    "ThrottlingException": "Throughput exceeds the current capacity of your table or index. DynamoDB is "
                           "automatically scaling your table or index so please try again shortly.",
}


def switchboard_path() -> str:
    """Where the switchboard is: $HB_FAULTS_FILE, else healthbook-faults.json in this process's TMPDIR."""
    return os.environ.get(ENV) or os.path.join(tempfile.gettempdir(), FILE_NAME)


def counters_path(path: str) -> str:
    return path.removesuffix(".json") + COUNTERS_SUFFIX


def conflicts_path(path: str) -> str:
    return path.removesuffix(".json") + CONFLICTS_SUFFIX


def tokens_dir(path: str) -> str:
    return path.removesuffix(".json") + TOKENS_SUFFIX


def _write_atomically(path: str, document: Mapping[str, Any]) -> None:
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(document, out, sort_keys=True)
    os.replace(temporary, path)


class Switchboard:
    """The switchboard file, parsed again only when it changed (inode, mtime or size)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or switchboard_path()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._config: dict[str, Any] = {}

    def current(self) -> dict[str, Any]:
        try:
            stat = os.stat(self.path)
        except OSError:
            with self._lock:
                self._stamp, self._config = None, {}
            return {}
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._stamp, self._config = stamp, self._read()
            return self._config

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as source:
                config = json.load(source)
        except (OSError, ValueError) as exc:
            LOG.warning("fault switchboard %s unreadable, no faults: %s", self.path, exc)
            return {}
        if not isinstance(config, dict):
            LOG.warning("fault switchboard %s is not a JSON object, no faults", self.path)
            return {}
        if config:
            LOG.info("fault switchboard %s: %s", self.path, json.dumps(config, sort_keys=True))
        return config


def _active(rule: Mapping[str, Any], now: float) -> bool:
    return float(rule.get("from", 0)) <= now < float(rule.get("until", float("inf")))


# --- DynamoDB throttling (LocalStack process) -------------------------------------------------------------------

def _tables_of(request: Mapping[str, Any] | None) -> list[str]:
    """The tables a DynamoDB request names (single-item calls, batches and transactions)."""
    if not request:
        return []
    tables = [str(request["TableName"])] if request.get("TableName") else []
    tables += [str(name) for name in request.get("RequestItems") or {}]
    for item in request.get("TransactItems") or []:
        for action in (item or {}).values():
            if isinstance(action, dict) and action.get("TableName"):
                tables.append(str(action["TableName"]))
    return tables


class DynamoThrottle:
    """Decides, request by request, whether to answer a throttling error; counts what it did per switchboard id."""

    def __init__(self, board: Switchboard) -> None:
        self.board = board
        self._lock = threading.Lock()
        self._id: object = None
        self._rng = random.Random()
        self._seen = 0
        self._throttled: dict[str, int] = {}

    def decide(self, operation: str, user_agent: str, request: Mapping[str, Any] | None) -> str | None:
        """The error code to answer with, or None to let the request through."""
        config = self.board.current()
        rule = (config.get("dynamodb") or {}).get("throttle")
        if not isinstance(rule, dict) or not _active(rule, time.time()):
            return None
        if operation not in set(rule.get("operations") or DATA_PLANE):
            return None
        if str(rule.get("user_agent", LAMBDA_USER_AGENT)) not in user_agent:
            return None
        prefix = rule.get("tables_prefix")
        if prefix and not any(table.startswith(str(prefix)) for table in _tables_of(request)):
            return None
        with self._lock:
            if config.get("id") != self._id:
                self._id, self._seen, self._throttled = config.get("id"), 0, {}
                self._rng = random.Random(rule.get("seed"))
            self._seen += 1
            budget = rule.get("max")
            if budget is not None and sum(self._throttled.values()) >= int(budget):
                return None
            if self._rng.random() >= float(rule.get("rate", 0.0)):
                return None
            self._throttled[operation] = self._throttled.get(operation, 0) + 1
            self._save()
        return str(rule.get("error") or "ProvisionedThroughputExceededException")

    def _save(self) -> None:
        document = {"id": self._id, "dynamodb_requests_considered": self._seen,
                    "dynamodb_throttled": sum(self._throttled.values()),
                    "dynamodb_throttled_by_operation": dict(sorted(self._throttled.items()))}
        try:
            _write_atomically(counters_path(self.board.path), document)
        except OSError as exc:
            LOG.warning("fault counters not written: %s", exc)


_THROTTLE: DynamoThrottle | None = None


def dynamodb_throttle() -> DynamoThrottle:
    global _THROTTLE
    if _THROTTLE is None:
        _THROTTLE = DynamoThrottle(Switchboard())
    return _THROTTLE


class DynamoConflicts:
    """The switchboard's side of the transaction conflict model (``moto_transactions.ConflictModel``): its rule,
    ``dynamodb.conflicts`` with the configuration's id, and where its counts are written."""

    def __init__(self, board: Switchboard) -> None:
        self.board = board

    def rule(self) -> dict[str, Any] | None:
        config = self.board.current()
        rule = (config.get("dynamodb") or {}).get("conflicts")
        return {**rule, "id": config.get("id")} if isinstance(rule, dict) else None

    def save(self, counts: Mapping[str, Any]) -> None:
        try:
            _write_atomically(conflicts_path(self.board.path), dict(counts))
        except OSError as exc:
            LOG.warning("conflict counters not written: %s", exc)


def with_dynamodb_faults(factory: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """Wraps a dispatch-table factory (MotoFallbackDispatcher): every operation asks the switchboard first."""

    def make(provider: Any) -> dict[str, Any]:
        from localstack.aws.api import CommonServiceException
        from localstack.aws.api.dynamodb import ProvisionedThroughputExceededException

        throttle = dynamodb_throttle()
        LOG.info("DynamoDB fault injection ready (switchboard %s)", throttle.board.path)

        def wrap(operation: str, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            def call(context: Any, request: Any) -> Any:
                user_agent = str(context.request.headers.get("User-Agent", "")) if context.request else ""
                code = throttle.decide(operation, user_agent, request)
                if code == "ProvisionedThroughputExceededException":
                    raise ProvisionedThroughputExceededException(THROTTLE_MESSAGES[code])
                if code is not None:
                    raise CommonServiceException(code=code, message=THROTTLE_MESSAGES.get(code, code),
                                                 status_code=400)
                return handler(context, request)

            return call

        return {operation: wrap(operation, handler) for operation, handler in factory(provider).items()}

    return make


# --- Lambda crashes (worker process) --------------------------------------------------------------------------

class WorkerFaults:
    """In a Lambda worker: arms the crash rules of this function before each invocation and, once the armed
    rule's k-th matching AWS call has returned, kills the worker (SIGKILL, like the OOM killer)."""

    def __init__(self, path: str, function_name: str) -> None:
        self.board = Switchboard(path)
        self.function_name = function_name
        self._armed: tuple[str, int, dict[str, Any]] | None = None  # (config id, rule index, rule)
        self._calls = 0
        self._hooked = False

    def before_invocation(self) -> None:
        self._armed, self._calls = None, 0
        try:
            self._arm()
        except Exception as exc:  # a malformed rule must not fail the function: report it, inject nothing
            self._armed = None
            print(f"[healthbook-faults] crash rules ignored: {type(exc).__name__}: {exc}", flush=True)

    def _arm(self) -> None:
        config = self.board.current()
        rules = (config.get("lambda") or {}).get("crash") or []
        now = time.time()
        for index, rule in enumerate(rules):
            if (isinstance(rule, dict) and rule.get("function") == self.function_name and _active(rule, now)
                    and self._fired(str(config.get("id")), index) < int(rule.get("times", 1))):
                self._armed = (str(config.get("id")), index, rule)
                self._hook()
                return

    def _fired(self, config_id: str, index: int) -> int:
        try:
            names = os.listdir(tokens_dir(self.board.path))
        except OSError:
            return 0
        return sum(1 for name in names if name.startswith(f"{config_id}.crash.{index}."))

    def _hook(self) -> None:
        """Counts the AWS calls of the function's boto3 clients (botocore is the runtime's, always present)."""
        if self._hooked:
            return
        import botocore.client

        original = botocore.client.BaseClient._make_api_call
        faults = self

        def _make_api_call(client: Any, operation_name: str, api_params: Any) -> Any:
            result = original(client, operation_name, api_params)
            faults.after_call(operation_name)
            return result

        botocore.client.BaseClient._make_api_call = _make_api_call  # type: ignore[method-assign,unused-ignore]
        self._hooked = True

    def after_call(self, operation: str) -> None:
        if self._armed is None:
            return
        config_id, index, rule = self._armed
        wanted = rule.get("after_operation") or "*"
        if wanted not in ("*", operation):
            return
        self._calls += 1
        if self._calls < int(rule.get("after_calls", 1)):
            return
        self._armed = None
        if not self._claim(config_id, index, int(rule.get("times", 1))):
            return
        print(f"[healthbook-faults] crashing this worker on purpose (SIGKILL) after {operation} "
              f"#{self._calls} of this invocation", flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def _claim(self, config_id: str, index: int, times: int) -> bool:
        """One token per crash, created exclusively, so concurrent workers fire a rule at most ``times`` times."""
        folder = tokens_dir(self.board.path)
        os.makedirs(folder, exist_ok=True)
        for number in range(times):
            try:
                descriptor = os.open(os.path.join(folder, f"{config_id}.crash.{index}.{number}"),
                                     os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as token:
                json.dump({"function": self.function_name, "pid": os.getpid(), "at": time.time()}, token)
            return True
        return False


# --- what fired (for the tests) -----------------------------------------------------------------------------

def fired(path: str | None = None, config_id: str | None = None) -> dict[str, Any]:
    """The counters of one switchboard id: throttles (by operation), transaction conflicts (by table) and crashes
    (by function)."""
    path = path or switchboard_path()
    try:
        with open(counters_path(path), encoding="utf-8") as source:
            counters = json.load(source)
    except (OSError, ValueError):
        counters = {}
    if config_id is not None and counters.get("id") != config_id:
        counters = {}
    crashes: dict[str, int] = {}
    try:
        names = os.listdir(tokens_dir(path))
    except OSError:
        names = []
    for name in names:
        if config_id is not None and not name.startswith(f"{config_id}.crash."):
            continue
        try:
            with open(os.path.join(tokens_dir(path), name), encoding="utf-8") as token:
                function = str(json.load(token).get("function"))
        except (OSError, ValueError):
            function = "?"
        crashes[function] = crashes.get(function, 0) + 1
    try:
        with open(conflicts_path(path), encoding="utf-8") as source:
            conflicts = json.load(source)
    except (OSError, ValueError):
        conflicts = {}
    if config_id is not None and conflicts.get("id") != config_id:
        conflicts = {}
    return {"dynamodb_throttled": int(counters.get("dynamodb_throttled", 0)),
            "dynamodb_transactions_considered": int(conflicts.get("transactions", 0)),
            "dynamodb_conflicts": int(conflicts.get("conflicts", 0)),
            "dynamodb_conflicts_by_table": conflicts.get("conflicts_by_table", {}),
            "dynamodb_throttled_by_operation": counters.get("dynamodb_throttled_by_operation", {}),
            "dynamodb_requests_considered": int(counters.get("dynamodb_requests_considered", 0)),
            "lambda_crashes": crashes}
