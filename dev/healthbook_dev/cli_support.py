"""What every `healthbook` subcommand shares: the usage error and the PATH... expansion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class UsageError(Exception):
    """A mistake in the command line or a missing input: the commands exit with status 2."""


def xml_files(paths: Sequence[str], *, verb: str) -> list[Path]:
    """Each PATH is a file, or a folder whose *.xml files (recursively, sorted) are taken."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.xml") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {raw}")
    if not found:
        raise UsageError(f"no XML files to {verb}")
    return found
