"""One Lambda execution environment: imports the handler once, then runs one event per request line.

Run by ``lambda_executor.ProcessRuntimeExecutor`` with a Lambda-like interpreter, never imported by LocalStack.
Standard library only: the interpreter holds just what the managed Python runtime holds (boto3).

Protocol (file descriptors in HB_WORKER_FDS = "<requests>,<responses>", one JSON document per line):
  worker -> {"ready": true}
  executor -> {"request_id", "invoked_arn", "trace_id", "payload" (JSON text), "deadline_ms", "memory_mb"}
  worker -> {"ok": true, "payload": "<JSON text>"} | {"ok": false, "error": {errorType, errorMessage, ...}}
stdout and stderr (the function's prints and logs) go to the executor's log file, not to the protocol pipe.
"""

from __future__ import annotations

import decimal
import importlib
import importlib.util
import json
import logging
import os
import resource
import sys
import time
import traceback
from typing import Any

_STARTED = time.monotonic()


def _error(error_type: str, message: str, exc: BaseException | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"errorMessage": message, "errorType": error_type, "requestId": "",
                                "stackTrace": []}
    if exc is not None:
        # the user's frames only: not this file's, nor the import machinery's (the runtime shows neither)
        frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
                  if frame.filename != __file__ and not frame.filename.startswith("<frozen")
                  and not frame.filename.endswith(os.path.join("importlib", "__init__.py"))]
        document["stackTrace"] = traceback.format_list(frames)
    return document


def _max_rss_mb() -> int:
    """Peak RSS of this process since exec (VmHWM; ru_maxrss would include LocalStack's, from before exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _load_handler(spec: str) -> tuple[Any, dict[str, Any] | None]:
    """(handler, None) or (None, the error document every invocation returns), as the Python runtime does."""
    module_name, _, function_name = spec.rpartition(".")
    if not module_name:
        return None, _error("Runtime.MalformedHandlerName", f"Bad handler '{spec}': not enough values to unpack")
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        return None, _error("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}")
    except SyntaxError as exc:
        return None, _error("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}")
    except Exception as exc:
        return None, _error(type(exc).__name__, str(exc), exc)
    handler = getattr(module, function_name, None)
    if handler is None:
        return None, _error("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'")
    return handler, None


class LambdaContext:
    """The attributes and method of the Python runtime's context object that functions and Powertools use."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.aws_request_id: str = request["request_id"]
        self.invoked_function_arn: str = request.get("invoked_arn") or ""
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = str(request.get("memory_mb") or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"))
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline_ms: int = request["deadline_ms"]

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)


class _RequestIdFilter(logging.Filter):
    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _fault_injection() -> Any:
    """faults.WorkerFaults for this function when the executor named a switchboard (HB_FAULTS_FILE), else None.

    faults.py sits next to this file and is loaded by path under a private name: the function's own modules and
    sys.path are untouched, and the function does not see the variable."""
    path = os.environ.pop("HB_FAULTS_FILE", "")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults.py")
    if not path or not os.path.isfile(source):
        return None
    spec = importlib.util.spec_from_file_location("_healthbook_localstack_faults", source)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WorkerFaults(path, os.environ.get("AWS_LAMBDA_FUNCTION_NAME", ""))


def main() -> None:
    requests_fd, responses_fd = (int(part) for part in os.environ.pop("HB_WORKER_FDS").split(","))
    faults = _fault_injection()
    # sys.path as in the managed runtime: the code, then the layers (/opt/python...), then the runtime's own.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if entry and os.path.abspath(entry) != here]
    front = [os.environ.pop("HB_WORKER_CODE")]
    for layer in filter(None, os.environ.pop("HB_WORKER_LAYERS", "").split(os.pathsep)):
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        front += [os.path.join(layer, "python", "lib", version, "site-packages"), os.path.join(layer, "python")]
    sys.path[:0] = front

    # The runtime installs a handler on the root logger (level WARNING unless AWS_LAMBDA_LOG_LEVEL says otherwise).
    request_filter = _RequestIdFilter()
    handler_ = logging.StreamHandler(sys.stdout)
    handler_.setFormatter(logging.Formatter("[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
                                            "%Y-%m-%dT%H:%M:%S"))
    handler_.formatter.converter = time.gmtime  # type: ignore[union-attr]
    handler_.addFilter(request_filter)
    logging.getLogger().addHandler(handler_)
    if os.environ.get("AWS_LAMBDA_LOG_LEVEL"):
        logging.getLogger().setLevel(os.environ["AWS_LAMBDA_LOG_LEVEL"].upper())

    function, init_error = _load_handler(os.environ.get("_HANDLER", ""))
    init_ms = (time.monotonic() - _STARTED) * 1000
    _send(responses_fd, {"ready": True})

    first = True
    with os.fdopen(requests_fd, "rb", buffering=0) as requests:
        for line in iter(requests.readline, b""):
            request = json.loads(line)
            request_id = request["request_id"]
            request_filter.request_id = request_id
            started = time.monotonic()
            version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            print(f"START RequestId: {request_id} Version: {version}", flush=True)
            os.environ["_X_AMZN_TRACE_ID"] = request.get("trace_id") or ""
            if init_error is not None:  # every invocation reports it, as a failed init does in Lambda
                print(f"[ERROR] {init_error['errorType']}: {init_error['errorMessage']}", flush=True)
                response: dict[str, Any] = {"ok": False, "error": dict(init_error, requestId=request_id)}
            else:
                try:
                    if faults is not None:
                        faults.before_invocation()
                    event = json.loads(request["payload"]) if request["payload"] else None
                    result = function(event, LambdaContext(request))
                    try:
                        response = {"ok": True, "payload": json.dumps(result, default=_json_default)}
                    except (TypeError, ValueError) as exc:
                        response = {"ok": False, "error": _error(
                            "Runtime.MarshalError", f"Unable to marshal response: {exc}", exc)}
                except Exception as exc:
                    error = dict(_error(type(exc).__name__, str(exc), exc), requestId=request_id)
                    response = {"ok": False, "error": error}
                    print(f"[ERROR] {error['errorType']}: {error['errorMessage']}\nTraceback (most recent call last):\n"
                          + "".join(error["stackTrace"]), end="", flush=True)
            elapsed = (time.monotonic() - started) * 1000
            memory = request.get("memory_mb") or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            rss_mb = _max_rss_mb()
            init = f"\tInit Duration: {init_ms:.2f} ms" if first else ""
            sys.stderr.flush()
            print(f"END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {elapsed:.2f} ms\t"
                  f"Billed Duration: {int(elapsed) + 1} ms\tMemory Size: {memory} MB\tMax Memory Used: {rss_mb} MB"
                  f"{init}", flush=True)
            first = False
            _send(responses_fd, response)


if __name__ == "__main__":
    main()
