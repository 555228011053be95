#!/usr/bin/env python3
"""Build the healthbook Lambda layer for one architecture, on any machine.

    python infra/layer/build.py --arch arm64 --out build/layer-arm64
    python infra/layer/build.py --check build/layer-arm64 --arch arm64

The layer gets `<out>/python/`: the runtime dependencies of the `healthbook` package (its
`[project].dependencies` plus the `aws` extra from pyproject.toml) as binary wheels for CPython 3.13 on
manylinux/<arch>, so that an x86_64 machine with another Python builds a layer whose lxml imports on arm64
Lambda; then the `healthbook` package itself, copied from layers/healthbook/healthbook. Two pip runs:

1. `pip install --dry-run --report` with `--platform manylinux_2_34_<arch> … --implementation cp
   --python-version 3.13 --only-binary=:all:` resolves the whole set for the target;
2. the set, less boto3/botocore/s3transfer (the Lambda runtime provides them) and less whatever only they
   need (urllib3, python-dateutil, six: aws-xray-sdk pulls botocore in), is installed with the same
   platform options and `--no-deps` into the layer.

3. every module is compiled to CPython 3.13 byte code (unchecked-hash .pyc, by a CPython 3.13 found on the
   machine: `$TARGET_PYTHON`, `python3.13` or pyenv's), so a cold start does not compile the layer; byte code
   does not depend on the architecture. `--no-bytecode` ships sources only.

`sam build` runs this through infra/layer/Makefile (`BuildMethod: makefile`). Only the standard
library and pip are needed; `python` may be any CPython >= 3.11 with pip >= 22.2 (for --report).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "healthbook" / "healthbook"
PYPROJECT = ROOT / "pyproject.toml"

ARCHITECTURES = {"arm64": "aarch64", "x86_64": "x86_64"}
# ELF e_machine of each architecture, to check the shared objects themselves and not only the tags.
ELF_MACHINE = {"aarch64": 0xB7, "x86_64": 0x3E}
# Lambda's python3.13 runs on Amazon Linux 2023 (glibc 2.34): any manylinux tag up to 2.34 loads.
MAX_GLIBC = (2, 34)
PYTHON_VERSION = "3.13"
# Provided by the Lambda runtime; must not be shipped (they would shadow the runtime's own, and are large).
EXCLUDED = {"boto3", "botocore", "s3transfer"}


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"cannot read a package name in {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The layer's requirements: the package's dependencies plus its `aws` extra, less the runtime's own."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = list(project.get("dependencies", [])) + list(project.get("optional-dependencies", {}).get("aws", []))
    return [req for req in wanted if _name(req) not in EXCLUDED and _name(req) != "healthbook"]


# Legacy manylinux names and the glibc they stand for (PEP 600).
LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def platforms(arch: str) -> list[str]:
    """Every manylinux platform tag Lambda's Amazon Linux 2023 accepts for `arch`, newest first (pip matches
    them literally and prefers the earlier ones)."""
    machine = ARCHITECTURES[arch]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(MAX_GLIBC[1], 4, -1)]
    tags += [f"{legacy}_{machine}" for legacy in LEGACY_MANYLINUX]
    return tags


def pip_command(arch: str, target: Path, reqs: Iterable[str], python_version: str = PYTHON_VERSION,
                *, report: Path | None = None) -> list[str]:
    """`pip install` of binary wheels for the Lambda platform into `target`; with `report`, a dry run that
    writes pip's installation report (what it would install, with each distribution's metadata) instead."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    cmd += ["--target", str(target), "--implementation", "cp", "--python-version", python_version]
    cmd += ["--only-binary=:all:", "--upgrade"]
    for tag in platforms(arch):
        cmd += ["--platform", tag]
    if report is not None:
        cmd += ["--dry-run", "--ignore-installed", "--report", str(report)]
    else:
        cmd += ["--no-deps"]  # the set is resolved beforehand (resolve()), runtime-provided packages left out
    return [*cmd, *reqs]


def _target_environment(arch: str, python_version: str) -> dict[str, str]:
    """PEP 508 marker values of the Lambda interpreter (not of the machine that builds)."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": ARCHITECTURES[arch],
            "platform_python_implementation": "CPython", "implementation_name": "cpython",
            "implementation_version": f"{python_version}.0", "platform_release": "", "platform_version": ""}


def closure(report: dict[str, Any], reqs: Iterable[str], arch: str, python_version: str = PYTHON_VERSION) -> list[str]:
    """The pinned distributions the requirements need on the target, walking pip's report from `reqs` and
    never through a runtime-provided package (so what only botocore needs is not shipped either)."""
    from pip._vendor.packaging.requirements import Requirement  # pip is what builds; its packaging comes along

    resolved = {_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    environment = _target_environment(arch, python_version)
    wanted: dict[str, set[str]] = {}
    queue = [Requirement(r) for r in reqs]
    while queue:
        requirement = queue.pop()
        name = _name(requirement.name)
        if name in EXCLUDED:
            continue
        if name not in resolved:
            raise SystemExit(f"pip did not resolve {requirement} for the target; cannot build the layer")
        extras = set(requirement.extras)
        if name in wanted and extras <= wanted[name]:
            continue
        wanted[name] = wanted.get(name, set()) | extras
        for text in resolved[name].get("requires_dist", []):
            dependency = Requirement(text)
            applies = dependency.marker is None or any(
                dependency.marker.evaluate({**environment, "extra": extra}) for extra in ["", *sorted(wanted[name])])
            if applies:
                queue.append(dependency)
    return [f"{resolved[name]['name']}=={resolved[name]['version']}" for name in sorted(wanted)]


def resolve(arch: str, reqs: list[str], python_version: str = PYTHON_VERSION) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="layer-resolve-") as tmp:
        report_path = Path(tmp) / "report.json"
        subprocess.run(pip_command(arch, Path(tmp) / "target", reqs, python_version, report=report_path), check=True)
        report = json.loads(report_path.read_text(encoding="utf-8"))
    return closure(report, reqs, arch, python_version)


def _version() -> str:
    return str(tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"])


def copy_package(site: Path) -> None:
    """Copy the healthbook package (sources and data) and a minimal dist-info so importlib.metadata finds it."""
    dest = site / "healthbook"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    info = site / f"healthbook-{_version()}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: healthbook\nVersion: {_version()}\n", "utf-8")
    (info / "INSTALLER").write_text("infra/layer/build.py\n", "utf-8")


def _tidy(site: Path) -> None:
    """Drop what Lambda never uses: console scripts and byte code compiled for the build machine's Python (the
    target's is compiled afterwards)."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def target_python(python_version: str = PYTHON_VERSION) -> str | None:
    """A CPython of the target version on this machine (`$TARGET_PYTHON`, `python3.13` on PATH, or pyenv's), to
    compile the layer's byte code with; None when there is none."""
    named = f"python{python_version}"
    candidates = [os.environ.get("TARGET_PYTHON"), shutil.which(named),
                  *map(str, sorted(Path.home().glob(f".pyenv/versions/{python_version}*/bin/{named}"), reverse=True))]
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == python_version:
            return candidate
    return None


def compile_bytecode(site: Path, python_version: str = PYTHON_VERSION) -> int:
    """Compile every module of the layer with the target CPython, so a cold start reads byte code instead of
    compiling the sources (the layer is read-only on Lambda: nothing compiled there is kept). Unchecked-hash
    .pyc files: valid whatever the files' times become in the zip. Byte code does not depend on the architecture.
    Returns the number of .pyc files; raises when no CPython of the target version is found."""
    python = target_python(python_version)
    if python is None:
        raise SystemExit(f"no CPython {python_version} found to compile the layer's byte code: install it (pyenv "
                         f"install {python_version}) or point TARGET_PYTHON at one")
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    str(site)], check=True)
    return sum(1 for _ in site.rglob(f"*.cpython-{python_version.replace('.', '')}.pyc"))


def build(arch: str, out: Path, python_version: str = PYTHON_VERSION, reqs: list[str] | None = None,
          *, bytecode: bool = True) -> Path:
    """Build the layer into `out` (its `python/` folder is replaced); return `out/python`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, not {arch!r}")
    out.mkdir(parents=True, exist_ok=True)
    site = out / "python"
    if site.exists():
        shutil.rmtree(site)
    # pip writes into a fresh folder beside the output, then it moves into place: a failed build leaves no half layer.
    with tempfile.TemporaryDirectory(prefix=".layer-", dir=out) as tmp:
        staging = Path(tmp) / "python"
        pins = resolve(arch, requirements() if reqs is None else reqs, python_version)
        subprocess.run(pip_command(arch, staging, pins, python_version), check=True)
        _tidy(staging)
        copy_package(staging)
        if bytecode:
            compile_bytecode(staging, python_version)
        shutil.move(str(staging), site)
    problems = check(out, arch, python_version)
    if problems:
        raise SystemExit("layer check failed:\n  " + "\n  ".join(problems))
    return site


def copy_function(source: Path, out: Path) -> list[Path]:
    """Copy a handler's sources into `out` (SAM's artifacts folder); its dependencies come from the layer."""
    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", "tests", "requirements*.txt")
    shutil.copytree(source, out, ignore=ignore, dirs_exist_ok=True)
    requirements_txt = source / "requirements.txt"
    if requirements_txt.is_file():
        wanted = [line for line in requirements_txt.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
        if wanted:
            print(f"note: {requirements_txt} is not installed; the function's dependencies come from the layer "
                  f"(pyproject.toml): {', '.join(wanted)}", file=sys.stderr)
    return sorted(out.rglob("*.py"))


# ---- checks -------------------------------------------------------------------------------------------------

_PLATFORM = re.compile(r"^(?:(?P<legacy>manylinux2014|manylinux2010|manylinux1)_(?P<legacy_machine>\w+)"
                       r"|manylinux_(?P<major>\d+)_(?P<minor>\d+)_(?P<machine>\w+))$")


def tag_ok(tag: str, arch: str, python_version: str = PYTHON_VERSION) -> bool:
    """Is a wheel tag (`py3-none-any`, `cp313-cp313-manylinux_2_28_aarch64`, …) loadable by the target?"""
    try:
        interpreter, abi, platform = tag.split("-")
    except ValueError:
        return False
    if platform == "any":
        return abi == "none" and interpreter in {"py3", "py2", f"py{python_version.replace('.', '')}"}
    match = _PLATFORM.match(platform)
    if not match:
        return False
    machine = match.group("legacy_machine") or match.group("machine")
    if machine != ARCHITECTURES[arch]:
        return False
    glibc = (LEGACY_MANYLINUX[match.group("legacy")] if match.group("legacy")
             else (int(match.group("major")), int(match.group("minor"))))
    if glibc > MAX_GLIBC:
        return False
    cp = "cp" + python_version.replace(".", "")
    if abi == cp:
        return interpreter == cp
    if abi == "abi3":
        match_cp = re.fullmatch(r"cp3(\d+)", interpreter)
        return bool(match_cp) and int(match_cp.group(1)) <= int(python_version.split(".")[1])
    return False


def wheel_tags(site: Path) -> dict[str, list[str]]:
    """dist-info folder name → the `Tag:` lines of its WHEEL file (dist-infos without WHEEL are skipped)."""
    found = {}
    for wheel in sorted(site.glob("*.dist-info/WHEEL")):
        lines = wheel.read_text(encoding="utf-8").splitlines()
        found[wheel.parent.name] = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")]
    return found


def elf_machine(path: Path) -> int | None:
    """The e_machine of an ELF file, or None if `path` is not ELF."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def check(out: Path, arch: str, python_version: str = PYTHON_VERSION) -> list[str]:
    """Everything wrong with a built layer, as messages (empty when it is fit for `arch`)."""
    site = out / "python"
    problems: list[str] = []
    if not (site / "healthbook" / "__init__.py").is_file():
        problems.append("healthbook package missing")
    if not list((site / "healthbook" / "standard" / "data").glob("*.json")):
        problems.append("healthbook standard data missing")
    tags = wheel_tags(site)
    if not tags:
        problems.append("no installed wheels found")
    for dist, lines in tags.items():
        if not lines:
            problems.append(f"{dist}: WHEEL has no Tag line")
        problems += [f"{dist}: tag {tag} does not fit {arch}/cp{python_version}" for tag in lines
                     if not tag_ok(tag, arch, python_version)]
    for dist in site.glob("*.dist-info"):
        if _name(dist.name.split("-")[0]) in EXCLUDED:
            problems.append(f"{dist.name}: provided by the Lambda runtime, must not be in the layer")
    for name in EXCLUDED:
        if (site / name).exists():
            problems.append(f"{name}/ present: provided by the Lambda runtime")
    target_tag = f".cpython-{python_version.replace('.', '')}.pyc"
    foreign = [p for p in site.rglob("*.pyc") if not p.name.endswith(target_tag)]
    problems += [f"{p.relative_to(site)}: byte code of another Python than {python_version}" for p in foreign[:5]]
    want = ELF_MACHINE[ARCHITECTURES[arch]]
    for shared in site.rglob("*.so*"):
        if shared.is_file():
            machine = elf_machine(shared)
            if machine is not None and machine != want:
                problems.append(f"{shared.relative_to(site)}: ELF machine {machine:#x}, expected {want:#x}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="Lambda architecture")
    parser.add_argument("--out", type=Path, help="layer root to build (gets python/); SAM passes $ARTIFACTS_DIR")
    parser.add_argument("--check", type=Path, metavar="DIR", help="only check an already built layer root")
    parser.add_argument("--python-version", default=PYTHON_VERSION, help="target CPython (default %(default)s)")
    parser.add_argument("--function-source", type=Path, metavar="DIR",
                        help="copy a function's sources (no dependencies) into --out instead of building the layer")
    parser.add_argument("--print-requirements", action="store_true", help="print the layer's requirements and exit")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="ship sources only (default: compile CPython byte code with the target version)")
    args = parser.parse_args(argv)
    if args.print_requirements:
        print("\n".join(requirements()))
        return 0
    if args.function_source:
        if not args.out:
            parser.error("--function-source needs --out")
        copied = copy_function(args.function_source, args.out)
        print(f"copied {len(copied)} Python file(s) from {args.function_source} to {args.out}")
        return 0
    if not args.arch:
        parser.error("--arch is required")
    if args.check:
        problems = check(args.check, args.arch, args.python_version)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    if not args.out:
        parser.error("--out or --check is required")
    site = build(args.arch, args.out, args.python_version, bytecode=not args.no_bytecode)
    print(f"built {args.arch} layer for CPython {args.python_version} in {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
