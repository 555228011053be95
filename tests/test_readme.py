"""The README's commands stay true: its facility walk-through runs as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(marker):]
    start = after.index("```sh\n") + len("```sh\n")
    return after[start:after.index("```", start)]


def test_readme_starts_with_the_two_commands() -> None:
    first = _block_after("# healthbook").splitlines()
    assert [line.split("#")[0].strip() for line in first[:2]] == ["make demo", "make test"]


@pytest.mark.slow  # runs the README's walk-through as a script
def test_facility_walk_through_runs(tmp_path: Path) -> None:
    script = _block_after("A facility can try")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VALID    signed.xml" in done.stdout and "ĐƯỢC TIẾP NHẬN / ACCEPTED" in done.stdout


def test_the_layout_section_matches_the_tree() -> None:
    """Every path the layout names exists, and every subpackage of both packages is named."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    block = section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]
    named: list[str] = []
    parent = ""
    for line in block.splitlines():
        entry = line.split("  ")[0].strip() if not line.startswith(" ") else line.strip().split("  ")[0]
        for part in entry.split(", "):
            if not line.startswith(" "):
                parent = part if part.endswith("/") else ""
                named.append(part)
            else:
                named.append(parent + part)
    missing = [path for path in named if not (ROOT / path.rstrip("/")).exists()]
    assert not missing, f"the README's layout names what does not exist: {missing}"
    for package in ("layers/healthbook/healthbook", "dev/healthbook_dev"):
        subpackages = sorted(f"{package}/{p.parent.name}/" for p in (ROOT / package).glob("*/__init__.py"))
        unnamed = [s for s in subpackages if s not in named]
        assert not unnamed, f"the README's layout does not name {unnamed}"
