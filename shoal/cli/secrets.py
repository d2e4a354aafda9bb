"""``shoal secret …`` and ``shoal config …``: create, list, inspect and remove them.

Both verbs have the same sub-verbs (Swarm's): ``create NAME -f FILE|-``,
``ls``, ``inspect NAME…`` and ``rm NAME…``. The bytes go to the manager once,
at ``create``; nothing prints them back, ``inspect -o json|yaml`` included
(names, labels, size, creation time and the services that use it). Both are
immutable: to rotate, create a new name and point the services at it (a
rolling update), then remove the old one, which is refused while in use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shoal.cli import remote
from shoal.cli.options import (
    add_subcommand,
    completes,
    key_value,
    output_option,
    server_option,
    subcommands,
)
from shoal.cli.output import age_since, dump, render_table
from shoal.errors import ShoalError


def _read(source: str, kind: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ShoalError(f"cannot read the {kind}'s file {source}: {exc.strerror}") from None


def _create(kind: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        data = _read(args.file, kind)
        labels = dict(args.label)
        reply = remote.unary(args, lambda c: c.create_file(kind, args.name, data, labels))
        view = reply.get(kind, {})
        print(f"{kind}/{view.get('metadata', {}).get('name', args.name)} created")
        return 0

    return run


def _ls(kind: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        items: list[dict[str, Any]] = remote.unary(args, lambda c: c.get_files(kind))
        if args.output in ("json", "yaml"):
            print(dump({"items": items}, args.output))
            return 0
        if not items:
            print(f"No {kind}s found.", file=sys.stderr)
            return 0
        rows = [
            [
                str(item["metadata"]["name"]),
                str(item.get("size", "-")),
                age_since(item["metadata"].get("createdAt")),
                ",".join(item.get("usedBy", [])) or "-",
            ]
            for item in items
        ]
        print(render_table(["NAME", "BYTES", "AGE", "USED BY"], rows))
        return 0

    return run


def _inspect(kind: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        async def each(control: Any) -> list[dict[str, Any]]:
            found = []
            for name in args.names:
                found += await control.get_files(kind, name)
            return found

        items = remote.unary(args, each)
        if args.output == "json" or args.output == "yaml":
            print(dump(items[0] if len(items) == 1 else {"items": items}, args.output))
            return 0
        for item in items:
            meta = item["metadata"]
            labels = ", ".join(f"{k}={v}" for k, v in sorted(meta.get("labels", {}).items()))
            print(f"Name:     {meta['name']}")
            print(f"Size:     {item.get('size')} bytes")
            print(f"Created:  {meta.get('createdAt', '-')}")
            print(f"Labels:   {labels or '-'}")
            print(f"Used by:  {', '.join(item.get('usedBy', [])) or '-'}")
        return 0

    return run


def _rm(kind: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        reply = remote.unary(args, lambda c: c.remove_files(kind, args.names))
        for name in reply.get("removed", []):
            print(f"{kind}/{name} removed")
        return 0

    return run


def _configure(parser: argparse.ArgumentParser, kind: str, limit: str) -> None:
    group = subcommands(parser, f"{kind}_command")
    create = add_subcommand(
        group,
        "create",
        _create(kind),
        f"store a {kind} (at most {limit}), encrypted at rest",
        epilog=f"examples:\n  shoal {kind} create db-pass -f ./db-pass.txt\n"
        f'  printf %s "$PASS" | shoal {kind} create db-pass -f -\n\n'
        f"A {kind} never changes: to rotate it, create a new name and update the\n"
        "services that use it.",
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "-f",
        "--file",
        required=True,
        metavar="FILE",
        help="read the bytes from FILE, or - for stdin",
    )
    create.add_argument("--label", action="append", type=key_value, default=[], metavar="KEY=VALUE")
    server_option(create)
    ls = add_subcommand(group, "ls", _ls(kind), f"list {kind}s (never their bytes)")
    output_option(ls, ("table", "yaml", "json"), "table (default), yaml or json")
    server_option(ls)
    inspect = add_subcommand(
        group, "inspect", _inspect(kind), f"show {kind}s: size, labels, users (never the bytes)"
    )
    completes(inspect.add_argument("names", nargs="+", metavar="NAME"), f"{kind}s")
    output_option(inspect, ("table", "yaml", "json"), "table (default), yaml or json")
    server_option(inspect)
    rm = add_subcommand(
        group, "rm", _rm(kind), f"remove {kind}s (refused while a service uses one)"
    )
    completes(rm.add_argument("names", nargs="+", metavar="NAME"), f"{kind}s")
    server_option(rm)


def configure_secret(parser: argparse.ArgumentParser) -> None:
    _configure(parser, "secret", "500 KiB")


def configure_config(parser: argparse.ArgumentParser) -> None:
    _configure(parser, "config", "1000 KiB")
