"""Cold import time of each Lambda handler, as ratios to a bare Powertools + boto3 handler measured in the same run.

    python bench/cold_start.py [--runs 7] [--layer DIR]

Builds the layer for x86_64 (infra/layer/build.py; or takes a built one with --layer), then imports each
function's module in fresh CPython 3.13 processes the way Lambda does on a cold start: the function's folder and
the layer's python/ on the path, boto3 from the runtime (installed once into a cache folder and byte-compiled,
as the runtime's is), nothing written next to the layer (it is read-only on Lambda, so whatever the layer does
not ship as bytecode is compiled again on every cold start). The baseline is a handler that imports only
Powertools (Logger, Metrics, Tracer) and boto3. Rounds interleave the baseline and the handlers; prints, per
handler: median import seconds, the median of its ratios to the baseline within a round, the modules it loads,
and whether lxml, signxml or the validator are among them. Target (issue 14): every handler at most 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".bench-cache"
FUNCTIONS = {"ingest": "app", "delivery": "app", "report": "app", "portal": "app"}
HEAVY = ("lxml", "signxml", "healthbook.validation")
BASELINE = """
from aws_lambda_powertools import Logger, Metrics, Tracer
import boto3
logger, metrics, tracer = Logger(service="x"), Metrics(service="x", namespace="x"), Tracer(service="x")
def lambda_handler(event, context):
    return {}
"""
# What the template gives every function at import time (values need not be real: nothing is called).
ENVIRONMENT = {"AWS_REGION": "ap-southeast-1", "AWS_DEFAULT_REGION": "ap-southeast-1",
               "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_NAMESPACE": "Healthbook",
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
PROBE = """
import sys, time, json
sys.dont_write_bytecode = True
before = set(sys.modules)
started = time.perf_counter()
import {module}
elapsed = time.perf_counter() - started
loaded = sorted(set(sys.modules) - before)
print(json.dumps({{"seconds": elapsed, "modules": loaded}}))
"""


def python313() -> str:
    candidates = [*sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13")), shutil.which("python3.13")]
    for candidate in candidates:
        if candidate and subprocess.run([str(candidate), "-c", ""], capture_output=True).returncode == 0:
            return str(candidate)
    raise SystemExit("CPython 3.13 (the Lambda runtime) is needed: pyenv install 3.13")


def runtime_boto3(python: str) -> Path:
    """boto3 as the Lambda runtime has it: installed once, byte-compiled."""
    target = CACHE / "runtime"
    if not (target / "boto3").exists():
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--target", str(target), "boto3"], check=True)
        subprocess.run([python, "-m", "compileall", "-q", str(target)], check=True)
    return target


def build_layer(python: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix="layer-")) / "layer"
    subprocess.run([python, str(ROOT / "infra/layer/build.py"), "--arch", "x86_64", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out / "python"


def probe(python: str, path: list[Path], module: str) -> tuple[float, list[str]]:
    """One cold import in a fresh process: seconds and the modules it loaded."""
    env = {**os.environ, **ENVIRONMENT, "PYTHONPATH": os.pathsep.join(map(str, path)), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    done = subprocess.run([python, "-S", "-c", PROBE.format(module=module)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"importing {module} from {path[0]} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["modules"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--layer", type=Path, help="a built layer's python/ folder (default: build one)")
    args = parser.parse_args()
    python = python313()
    boto = runtime_boto3(python)
    layer = args.layer or build_layer(python)
    shipped = sum(1 for _ in layer.rglob("healthbook/**/*.pyc"))
    print(f"layer {layer} ({'ships' if shipped else 'no'} healthbook bytecode), CPython 3.13, {args.runs} runs each")
    with tempfile.TemporaryDirectory() as bare:
        Path(bare, "bare.py").write_text(BASELINE, encoding="utf-8")
        subjects = {"baseline": ([Path(bare), layer, boto], "bare"),
                    **{name: ([ROOT / "functions" / name, layer, boto], module) for name, module in FUNCTIONS.items()}}
        # Rounds interleave the subjects and each handler's ratio is taken within its round, so a slow spell of
        # the machine slows the baseline too instead of landing on whichever handler happened to run then.
        seconds: dict[str, list[float]] = {name: [] for name in subjects}
        modules: dict[str, list[str]] = {}
        for _ in range(args.runs):
            for name, (path, module) in subjects.items():
                elapsed, modules[name] = probe(python, path, module)
                seconds[name].append(elapsed)
    print(f"{'handler':<10} {'import s':>9} {'ratio':>6} {'modules':>8}  heavy modules loaded")
    print(f"{'baseline':<10} {statistics.median(seconds['baseline']):>9.3f} {1.0:>6.2f}")
    worst = 0.0
    for name in FUNCTIONS:
        ratio = statistics.median(own / base for own, base in zip(seconds[name], seconds["baseline"], strict=True))
        heavy = [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules[name])]
        worst = max(worst, ratio)
        print(f"{name:<10} {statistics.median(seconds[name]):>9.3f} {ratio:>6.2f} {len(modules[name]):>8}  "
              f"{', '.join(heavy) or '-'}")
    print(f"worst ratio {worst:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
