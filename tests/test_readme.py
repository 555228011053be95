"""The README's commands stay true: its facility walk-through runs as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(marker):]
    start = after.index("```sh\n") + len("```sh\n")
    return after[start:after.index("```", start)]


def test_readme_starts_with_the_two_commands() -> None:
    first = _block_after("# healthbook").splitlines()
    assert [line.split("#")[0].strip() for line in first[:2]] == ["make demo", "make test"]


def test_facility_walk_through_runs(tmp_path: Path) -> None:
    script = _block_after("A facility can try")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VALID    signed.xml" in done.stdout and "ĐƯỢC TIẾP NHẬN / ACCEPTED" in done.stdout
