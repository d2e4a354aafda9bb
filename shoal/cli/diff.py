"""``shoal diff -f PATH [--prune]``: what ``apply`` would change, as a unified diff.

The manager plans the apply without writing it (a dry run, with the same
apply-set rules, so ``--prune`` shows exactly the deletions a pruning apply
would make); for every object it would create, change or delete, the live
object and the one in the files are rendered the same way, with defaults
filled in on both sides (``shoal.specdiff``), and diffed. A spec that leaves
fields at their defaults shows no difference from the object it created.

Exit codes, as ``kubectl diff``: 0 nothing would change, 1 something would,
2 an error (a spec with problems, a path that does not exist, no manager).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from shoal.cli.applysets import add_set_options, set_request
from shoal.cli.commands import load_documents
from shoal.cli.options import UsageError, command, server_option
from shoal.errors import ShoalError, SpecError

if TYPE_CHECKING:
    from shoal.api.client import ControlClient
    from shoal.models import Service
    from shoal.models.sync import Sync

DIFF_EPILOG = (
    "Exit codes: 0 no differences, 1 differences found, 2 or more an error.\n\n"
    "examples:\n  shoal diff -f services/\n  shoal diff -f services/ --prune"
)
EXIT_SAME = 0
EXIT_DIFFERENT = 1
EXIT_ERROR = 2


def configure(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_diff)
    parser.epilog = DIFF_EPILOG
    server_option(parser)
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="a YAML file, a directory of them, or - for standard input (repeatable)",
    )
    add_set_options(parser, for_diff=True)


def cmd_diff(args: argparse.Namespace) -> int:
    try:
        text = diff_text(args)
    except UsageError:
        raise
    except ShoalError as exc:
        _report(exc)
        return EXIT_ERROR
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
        return EXIT_DIFFERENT
    return EXIT_SAME


def _report(error: ShoalError) -> None:
    if isinstance(error, SpecError):
        print(f"error: {len(error.problems)} problem(s) in the spec:", file=sys.stderr)
        for problem in error.problems:
            print(problem, file=sys.stderr)
    else:
        print(f"error: {error}", file=sys.stderr)


def diff_text(args: argparse.Namespace) -> str:
    """The unified diff of everything an apply of these arguments would change."""
    from shoal.cli import remote
    from shoal.manifest import APPLIED
    from shoal.models import Service
    from shoal.models.sync import Sync
    from shoal.specdiff import unified

    apply_set = set_request(args)
    documents = load_documents(args.filename, allow_empty_dir=bool(args.prune))
    if not documents and not args.prune:
        raise ShoalError(f"nothing to compare: no documents in {', '.join(args.filename)}")
    wanted: dict[tuple[str, str], Service | Sync] = {
        (d.kind, d.name): d for d in documents if isinstance(d, Service | Sync)
    }

    async def ask(
        control: ControlClient,
    ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Any]]:
        response = await control.apply(documents, dry_run=True, apply_set=apply_set)
        results: list[dict[str, Any]] = response.get("results", [])
        live: dict[tuple[str, str], Any] = {}
        for result in results:
            if result["action"] in ("configured", "pruned"):
                kind = str(result.get("kind", "Service"))
                items = await control.get(kind.lower() + "s", name=str(result["name"]))
                if items:
                    live[(kind, str(result["name"]))] = items[0]
        return results, live

    results, live = remote.unary(args, ask)
    parts = []
    for result in results:
        key = (str(result.get("kind", "Service")), str(result["name"]))
        if result["action"] == "unchanged":
            continue
        model = APPLIED.get(key[0])
        if model is None:  # a config: its bytes are not shown
            parts.append(f"# {key[0].lower()}/{key[1]} would be {result['action']}\n")
            continue
        before = model.from_wire(live[key]) if key in live else None
        after = wanted.get(key) if result["action"] != "pruned" else None
        parts.append(unified(before, after))
    return "".join(parts)
