"""Apply sets on the command line: ``--set``, ``--prune``, ``--allow-empty``.

``shoal apply -f PATH --prune`` records what it applied under an apply set
name and deletes what an earlier apply of the same set created and the files
no longer contain (``shoal.reconciler.applyset`` does the work, on the
manager, in the same transaction as the apply). The set is named by
``--set NAME``; without it the name is derived from the one path given: the
directory's name, or a file's name without its ``.yaml`` suffix, lower-cased
with anything but letters, digits and ``-`` turned into ``-``. So
``shoal apply -f ./prod/ --prune`` (or ``-f .`` inside ``prod``) is set
``prod`` wherever the checkout lives. Several paths or ``-f -`` need
``--set``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from shoal.cli.options import UsageError


def add_set_options(parser: argparse.ArgumentParser, for_diff: bool = False) -> None:
    verb = "diff" if for_diff else "apply"
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also delete the services an earlier apply of this set created that the files "
        "no longer contain (never any other service)"
        + (": shown as deletions" if for_diff else ""),
    )
    parser.add_argument(
        "--set",
        dest="set_name",
        metavar="NAME",
        help="the apply set (default: the name of the one directory or file given)",
    )
    if not for_diff:
        parser.add_argument(
            "--allow-empty",
            action="store_true",
            help="with --prune: allow deleting every service of the set",
        )
    del verb


def default_set_name(filenames: list[str]) -> str:
    """The set name derived from the one path given (see the module docstring)."""
    if "-" in filenames:
        raise UsageError("an apply set from standard input needs a name: give --set NAME")
    if len(filenames) != 1:
        raise UsageError("several -f paths make one apply set: name it with --set NAME")
    path = Path(filenames[0]).resolve()
    base = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:63].strip("-")
    if not name:
        raise UsageError(f"cannot derive an apply set name from {filenames[0]!r}: give --set NAME")
    return name


def set_request(args: argparse.Namespace) -> dict[str, Any]:
    """The apply-set fields of an Apply request for these arguments ({} without a set)."""
    allow_empty = bool(getattr(args, "allow_empty", False))
    if allow_empty and not args.prune:
        raise UsageError("--allow-empty only applies with --prune")
    if not (args.prune or args.set_name):
        return {}
    name = args.set_name or default_set_name(args.filename)
    source = ", ".join("<stdin>" if f == "-" else str(Path(f).resolve()) for f in args.filename)
    return {"set": name, "prune": bool(args.prune), "allowEmpty": allow_empty, "source": source}
