"""What every `healthbook` subcommand shares: the usage error and the PATH... expansion."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
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


EXIT_USAGE = 2
Command = Callable[[argparse.Namespace], int]


def guarded(command: Command, *, name: str, also: tuple[type[Exception], ...] = ()) -> Command:
    """``command`` with a usage error or an unreadable file (or one of ``also``: unreadable key material, say)
    reported on stderr as ``healthbook <name>: …``, exit 2, never a traceback."""
    caught: tuple[type[Exception], ...] = (UsageError, OSError, *also)

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except caught as exc:
            print(f"healthbook {name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    run.__doc__ = command.__doc__
    return run
