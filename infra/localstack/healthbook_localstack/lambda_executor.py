"""A LocalStack Lambda runtime executor that runs Python functions in local worker processes, not containers.

LocalStack's only built-in executor starts each execution environment as a Docker container running the
Lambda runtime interface emulator. Here each execution environment is one warm subprocess instead:

* ``prepare_version`` unzips the function's code and layers (LocalStack's own ``S3Code.prepare_for_execution``);
* ``start`` launches ``_worker.py`` with a Lambda-like interpreter (``HB_LAMBDA_PYTHON``: a venv holding only what
  the managed runtime holds, boto3), the function's environment as LocalStack computes it (role credentials,
  ``AWS_ENDPOINT_URL`` pointing back at LocalStack, the function's own variables), ``sys.path`` = code, then the
  layers' ``python/`` folders, and waits until the handler module is imported;
* ``invoke`` sends one event down a pipe, waits at most the function's timeout, and maps the outcome onto
  ``InvocationResult``: the JSON result, or an AWS-shaped error document (``errorType`` = the exception class,
  ``Runtime.ImportModuleError``, ``Runtime.HandlerNotFound``, ``Runtime.ExitError``, ``Sandbox.Timedout``), which
  LocalStack reports as ``FunctionError: Unhandled``. A worker that timed out or died is replaced before the next
  invoke, as Lambda resets a sandbox;
* the worker's stdout and stderr go to a log file; each invocation's slice of it (with Lambda's START, END and
  REPORT lines) becomes the invocation's logs, which LocalStack stores in CloudWatch Logs.

Select it with ``LAMBDA_RUNTIME_EXECUTOR=healthbook-process``. Only Zip-packaged ``python3.*`` functions run;
others fail at creation with a clear message. Nothing is isolated: the function runs as the LocalStack user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from localstack import config
from localstack.services.lambda_.invocation.lambda_models import FunctionVersion, InvocationResult
from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin
from localstack.services.lambda_.invocation.runtime_executor import LambdaRuntimeException, RuntimeExecutor

from healthbook_localstack import faults

LOG = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("_worker.py")
NAME = "healthbook-process"
# How long a worker may take to import the handler module (Lambda's init phase allows 10 s; a cold import of a
# large layer on a busy 2-core machine takes longer, and LocalStack's own startup timer still applies).
INIT_TIMEOUT_S = float(os.environ.get("HB_LAMBDA_INIT_TIMEOUT", "60"))
STOP_GRACE_S = 2.0
# Variables of the LocalStack process a worker keeps; everything else comes from the function's environment.
PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "HOME", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def lambda_python(runtime: str | None) -> str:
    """The interpreter for a ``python3.X`` runtime: HB_LAMBDA_PYTHON_3_X, then HB_LAMBDA_PYTHON, then this one."""
    version = (runtime or "").removeprefix("python").replace(".", "_")
    for variable in (f"HB_LAMBDA_PYTHON_{version}", "HB_LAMBDA_PYTHON"):
        if os.environ.get(variable):
            return os.environ[variable]
    return sys.executable


def _check_supported(function_version: FunctionVersion) -> None:
    runtime = function_version.config.runtime
    if function_version.config.code is None or not runtime:
        raise LambdaRuntimeException(f"{NAME}: container-image functions are not supported "
                                     f"({function_version.qualified_arn}); use a Zip package")
    if not str(runtime).startswith("python3"):
        raise LambdaRuntimeException(f"{NAME}: runtime {runtime} is not supported, only python3.x "
                                     f"({function_version.qualified_arn})")


class ProcessRuntimeExecutor(RuntimeExecutor):
    """One execution environment = one warm ``_worker.py`` subprocess."""

    def __init__(self, id: str, function_version: FunctionVersion) -> None:
        super().__init__(id=id, function_version=function_version)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._to_worker: int | None = None
        self._from_worker: int | None = None
        self._buffer = b""
        self._env: dict[str, str] = {}
        self._stopped = False
        self._dir = Path(tempfile.gettempdir()) / "lambda-workers" / id
        self._log_path = self._dir / "worker.log"

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self, env_vars: dict[str, str]) -> None:
        self._env = {key: str(value) for key, value in env_vars.items()}
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        version = self.function_version
        code = Path(version.config.code.get_unzipped_code_location())
        layers = [Path(layer.code.get_unzipped_code_location()) for layer in version.config.layers
                  if layer.code is not None]
        (self._dir / "tmp").mkdir(parents=True, exist_ok=True)
        env = {key: os.environ[key] for key in PASSTHROUGH if key in os.environ}
        env.update(self._env)
        env.update({
            "LAMBDA_TASK_ROOT": str(code),
            "TMPDIR": str(self._dir / "tmp"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            # A worker killed by a fatal signal (a segfault in an extension) leaves its threads' stacks in its log.
            "PYTHONFAULTHANDLER": "1",
            "HB_WORKER_CODE": str(code),
            # A layer unpacks into /opt; later layers override earlier ones, so they come first on sys.path.
            "HB_WORKER_LAYERS": os.pathsep.join(str(path) for path in reversed(layers)),
            # The fault switchboard (faults.py): the worker reads its crash rules; the function never sees it.
            faults.ENV: faults.switchboard_path(),
        })
        request_read, request_write = os.pipe()
        response_read, response_write = os.pipe()
        env["HB_WORKER_FDS"] = f"{request_read},{response_write}"
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                [lambda_python(version.config.runtime), "-s", "-u", str(WORKER)],
                env=env, cwd=str(code), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(request_read, response_write), start_new_session=True, close_fds=True)
        os.close(request_read)
        os.close(response_write)
        (self._dir / "worker.pid").write_text(str(self._process.pid))  # for down.sh, should LocalStack be killed
        self._to_worker, self._from_worker, self._buffer = request_write, response_read, b""
        LOG.debug("%s: worker %s (pid %s) for %s", NAME, self.id, self._process.pid, version.qualified_arn)
        ready = self._read_message(INIT_TIMEOUT_S)
        if ready is None or not ready.get("ready"):
            self._kill()
            raise LambdaRuntimeException(f"{NAME}: worker for {version.qualified_arn} did not start; "
                                         f"log tail:\n{self._log_tail()}")

    def stop(self) -> None:
        self._stopped = True
        self._kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _kill(self) -> None:
        process, self._process = self._process, None
        for fd in (self._to_worker, self._from_worker):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to_worker = self._from_worker = None
        (self._dir / "worker.pid").unlink(missing_ok=True)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(STOP_GRACE_S)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # --- addresses LocalStack asks for ----------------------------------------------------------------------

    def get_address(self) -> str:
        return "127.0.0.1"

    def get_endpoint_from_executor(self) -> str:
        host = config.GATEWAY_LISTEN[0].host
        return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host

    def get_runtime_endpoint(self) -> str:
        return f"http://{self.get_endpoint_from_executor()}:{config.GATEWAY_LISTEN[0].port}/_localstack_lambda/{self.id}"

    # --- invocations ----------------------------------------------------------------------------------------

    def invoke(self, payload: dict[str, str]) -> InvocationResult:
        request_id = payload["invoke-id"]
        timeout = float(self.function_version.config.timeout or 3)
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                if self._stopped:
                    raise LambdaRuntimeException(f"{NAME}: invoke on a stopped environment {self.id}")
                self._kill()
                self._spawn()  # the sandbox is reset after a timeout or a crash, like Lambda's
            offset = self._log_path.stat().st_size if self._log_path.exists() else 0
            started = time.monotonic()
            message = {
                "request_id": request_id,
                "invoked_arn": payload.get("invoked-function-arn"),
                "trace_id": payload.get("trace-id"),
                "payload": payload.get("payload") or "",
                "deadline_ms": int((time.time() + timeout) * 1000),
                "memory_mb": int(self.function_version.config.memory_size or 128),
            }
            try:
                os.write(self._to_worker, (json.dumps(message) + "\n").encode())
                answer = self._read_message(timeout)
            except OSError:
                answer = None
            elapsed_ms = (time.monotonic() - started) * 1000
            if answer is None:
                exited = self._process.poll() if self._process else None
                if exited is None and self._process is not None and elapsed_ms < timeout * 1000:
                    # the pipe closed before the time was up: the worker died, and may not be reaped yet
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        exited = self._process.wait(STOP_GRACE_S)
                self._kill()
                if exited is None:
                    error = {"errorType": "Sandbox.Timedout",
                             "errorMessage": f"RequestId: {request_id} Error: Task timed out after "
                                             f"{timeout:.2f} seconds"}
                    tail = f"{self._timestamp()} {request_id} Task timed out after {timeout:.2f} seconds\n"
                else:
                    error = {"errorType": "Runtime.ExitError",
                             "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: "
                                             f"exit status {exited}"}
                    tail = f"RequestId: {request_id} Error: Runtime exited with error: exit status {exited}\n"
                logs = self._logs_since(offset) + tail + self._end_lines(request_id, elapsed_ms, None)
                self._log_outcome(tail, request_id, elapsed_ms)
                return InvocationResult(request_id, json.dumps(error).encode(), is_error=True, logs=logs)
            logs = self._logs_since(offset)
            if answer.get("ok"):
                return InvocationResult(request_id, answer["payload"].encode(), is_error=False, logs=logs)
            return InvocationResult(request_id, json.dumps(answer["error"]).encode(), is_error=True, logs=logs)

    def _read_message(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line from the worker, or None on timeout, EOF or a dead worker. Waits with ``poll``, not
        ``select``: LocalStack under load holds more than 1,024 descriptors, and ``select`` refuses any numbered
        past FD_SETSIZE (a worker started then "did not start" with an empty log)."""
        deadline = time.monotonic() + timeout
        fd = self._from_worker
        poller = select.poll()
        if fd is not None:
            poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            if fd is None or fd != self._from_worker:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                readable = poller.poll(min(remaining, 0.5) * 1000)
            except (OSError, ValueError):
                return None
            if not readable:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    # --- logs -----------------------------------------------------------------------------------------------

    @staticmethod
    def _timestamp() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"

    def _end_lines(self, request_id: str, elapsed_ms: float, max_rss_mb: int | None) -> str:
        memory = int(self.function_version.config.memory_size or 128)
        used = f"\tMax Memory Used: {max_rss_mb} MB" if max_rss_mb else ""
        return (f"END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {elapsed_ms:.2f} ms\t"
                f"Billed Duration: {int(elapsed_ms) + 1} ms\tMemory Size: {memory} MB{used}\n")

    def _log_outcome(self, tail: str, request_id: str, elapsed_ms: float) -> None:
        """A worker that timed out or died writes no END or REPORT itself: the executor's verdict goes into its
        log file too (which bench-load keeps) and into LocalStack's log, so that the failure can be told apart."""
        with contextlib.suppress(OSError), open(self._log_path, "a", encoding="utf-8") as log:
            log.write(tail + self._end_lines(request_id, elapsed_ms, None))
        LOG.warning("%s: %s, request %s after %.0f ms: %s", NAME, self.function_version.qualified_arn, request_id,
                    elapsed_ms, tail.strip())

    def _logs_since(self, offset: int) -> str:
        try:
            with open(self._log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _log_tail(self, size: int = 8192) -> str:
        try:
            data = self._log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    def get_logs(self) -> str:
        return self._log_tail(65536)

    # --- versions -------------------------------------------------------------------------------------------

    @classmethod
    def prepare_version(cls, function_version: FunctionVersion) -> None:
        _check_supported(function_version)
        function_version.config.code.prepare_for_execution()
        for layer in function_version.config.layers:
            if layer.code is not None:
                layer.code.prepare_for_execution()

    @classmethod
    def cleanup_version(cls, function_version: FunctionVersion) -> None:
        pass  # the unzipped code belongs to LocalStack's S3Code, which removes it with the version

    @classmethod
    def validate_environment(cls) -> bool:
        python = lambda_python("python3.13")
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            LOG.warning("%s: HB_LAMBDA_PYTHON=%s is not an executable; Lambda functions will fail", NAME, python)
            return False
        return True


class ProcessRuntimeExecutorPlugin(RuntimeExecutorPlugin):
    name = NAME

    def load(self, *args: Any, **kwargs: Any) -> type[RuntimeExecutor]:
        return ProcessRuntimeExecutor
