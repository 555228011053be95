"""End-to-end tests against a running LocalStack (docs/localstack.md).

Marker ``localstack``. The tests run when LocalStack answers at ``HB_E2E_ENDPOINT``, ``AWS_ENDPOINT_URL`` or
http://127.0.0.1:4566 (its ``/_localstack/health``), and are skipped otherwise, unless ``HEALTHBOOK_E2E=1``:
then an unreachable LocalStack fails them. Stacks are deployed with ``infra/localstack/deploy.sh`` (sam build +
samlocal deploy), which works against our host-mode LocalStack (``infra/localstack/up.sh``) and the Docker image.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "infra" / "localstack" / "deploy.sh"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REGION = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "localstack: needs a running LocalStack (tests/e2e, docs/localstack.md)")


def endpoint_url() -> str:
    return (os.environ.get("HB_E2E_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or "http://127.0.0.1:4566").rstrip("/")


def _reachable(url: str) -> str | None:
    """None when LocalStack answers its health check, else why not."""
    try:
        with urllib.request.urlopen(f"{url}/_localstack/health", timeout=2) as response:
            json.load(response)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def localstack() -> str:
    """The endpoint of a healthy LocalStack; skips (or, with HEALTHBOOK_E2E=1, fails) without one."""
    url = endpoint_url()
    problem = _reachable(url)
    if problem is not None:
        message = f"no LocalStack at {url} ({problem}); start one with `make localstack-up`"
        if os.environ.get("HEALTHBOOK_E2E") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def aws(localstack: str) -> Callable[..., Any]:
    """``aws("s3")`` -> a boto3 client for LocalStack; ``aws("dynamodb", resource=True)`` -> a resource."""
    import boto3

    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)

    def make(service: str, resource: bool = False) -> Any:
        factory = session.resource if resource else session.client
        return factory(service, endpoint_url=localstack)

    return make


@pytest.fixture(scope="session")
def deploy(localstack: str) -> Callable[..., dict[str, str]]:
    """``deploy(template, stack, stage, **parameter_overrides)`` -> the stack's outputs, via
    infra/localstack/deploy.sh (values without spaces: they pass through samlocal's parameter list)."""

    def run(template: Path, stack: str, stage: str, **parameters: str) -> dict[str, str]:
        env = dict(os.environ, AWS_ENDPOINT_URL=localstack, AWS_DEFAULT_REGION=REGION)
        started = time.monotonic()
        overrides = [f"{name}={value}" for name, value in parameters.items()]
        done = subprocess.run([str(DEPLOY), "--template", str(template), "--stack-name", stack, "--stage", stage,
                               *overrides],
                              env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            hint = ""
            if "Unresolved resource dependencies [!" in done.stderr:
                hint = ("\nLocalStack's CloudFormation engine does not understand the ${!Literal} escape of Fn::Sub "
                        "(e.g. ${!aws:PrincipalTag/facility}); write such values with Fn::Join (docs/localstack.md).")
            pytest.fail(f"deploying {template.name} as {stack} failed:\n{done.stderr[-4000:]}{hint}")
        print(f"\n[e2e] deployed {stack} in {time.monotonic() - started:.1f} s")
        outputs: dict[str, str] = json.loads(done.stdout)
        return outputs

    return run


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., Any]:
    """``wait_for(what, probe, timeout=60)``: poll ``probe`` until it returns something truthy, else fail."""
    return _wait_for


class FaultSwitchboard:
    """The test side of the emulator's fault switchboard (infra/localstack/healthbook_localstack/faults.py,
    docs/faults.md): ``set`` a configuration (it gets a fresh id), read what ``fired`` for it, ``clear`` it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id: str | None = None

    def set(self, config: dict[str, Any]) -> str:
        import uuid

        self.id = f"e2e-{uuid.uuid4().hex[:12]}"
        self._write(dict(config, id=self.id))
        return self.id

    def clear(self) -> None:
        self._write({})

    def _write(self, document: dict[str, Any]) -> None:
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document), encoding="utf-8")
        os.replace(temporary, self.path)  # atomic: LocalStack and the workers never read half a file

    def fired(self) -> dict[str, Any]:
        """Throttled DynamoDB requests (total and by operation), transactions cancelled by the conflict model (total
        and by table) and Lambda crashes (by function) of the current id."""
        stem = self.path.name.removesuffix(".json")
        try:
            counters = json.loads(self.path.with_name(f"{stem}.counters.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            counters = {}
        if counters.get("id") != self.id:
            counters = {}
        crashes: dict[str, int] = {}
        tokens = self.path.with_name(f"{stem}.d")
        for token in sorted(tokens.glob(f"{self.id}.crash.*")) if tokens.is_dir() else []:
            function = str(json.loads(token.read_text(encoding="utf-8")).get("function"))
            crashes[function] = crashes.get(function, 0) + 1
        try:
            conflicts = json.loads(self.path.with_name(f"{stem}.conflicts.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            conflicts = {}
        if conflicts.get("id") != self.id:
            conflicts = {}
        return {"dynamodb_throttled": int(counters.get("dynamodb_throttled", 0)),
                "dynamodb_throttled_by_operation": counters.get("dynamodb_throttled_by_operation", {}),
                "dynamodb_conflicts": int(conflicts.get("conflicts", 0)),
                "dynamodb_conflicts_by_table": conflicts.get("conflicts_by_table", {}),
                "lambda_crashes": crashes}


@pytest.fixture(scope="session")
def faults(localstack: str) -> FaultSwitchboard:
    """The fault switchboard of the host-mode LocalStack at ``localstack``: ``$HB_FAULTS_FILE``, else
    healthbook-faults.json in its TMPDIR (``$HB_LOCALSTACK_STATE/tmp``, by default
    infra/localstack/.work/state-<port>/tmp, as infra/localstack/common.sh and up.sh set them). Skips when there is
    none (LocalStack's Docker image has no such plugin)."""
    from urllib.parse import urlsplit

    if os.environ.get("HB_FAULTS_FILE"):
        return FaultSwitchboard(Path(os.environ["HB_FAULTS_FILE"]))
    port = urlsplit(localstack).port or 4566
    home = Path(os.environ.get("HB_LOCALSTACK_HOME") or REPO / "infra" / "localstack" / ".work")
    state = Path(os.environ.get("HB_LOCALSTACK_STATE") or home / f"state-{port}")
    path = state / "tmp" / "healthbook-faults.json"
    if not (path.parent.is_dir() and (state / "localstack.pid").is_file()):
        pytest.skip(f"no fault switchboard for {localstack}: {path.parent} is not the TMPDIR of a LocalStack started "
                    f"by infra/localstack/up.sh (fault injection is a plugin of the host-mode set-up)")
    return FaultSwitchboard(path)
