"""The identity verbs: ``token``, ``user``, ``context`` and ``node rm``.

``token`` and ``user`` and ``node rm`` talk to a manager (role admin);
``context`` only edits the local config file (``shoal.security.contexts``), so
it works with no manager reachable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.cli import remote
from shoal.cli.options import (
    add_subcommand,
    command,
    completes,
    output_option,
    server_option,
    subcommands,
)
from shoal.errors import ShoalError

if TYPE_CHECKING:
    from shoal.security.contexts import Config


# -------------------------------------------------------------------- token


def cmd_token(args: argparse.Namespace) -> int:
    reply = remote.call(args, "Token", {"role": args.role, "rotate": args.rotate})
    if args.rotate:
        print(f"{args.role} token rotated: the old one no longer joins", file=sys.stderr)
    print(reply["token"])
    return 0


# --------------------------------------------------------------------- user


def _write_bundle(bundle: dict[str, Any], output: str | None) -> None:
    import yaml

    text = yaml.safe_dump(bundle, sort_keys=False)
    if output in (None, "-"):
        sys.stdout.write(text)
        return
    from shoal.security.credentials import write_private

    write_private(Path(str(output)), text.encode())
    print(
        f"wrote credentials of {bundle['role']} {bundle['user']} to {output} "
        f"(import them with `shoal context import {output}`)",
        file=sys.stderr,
    )


def cmd_user_add(args: argparse.Namespace) -> int:
    bundle = remote.call(args, "UserAdd", {"name": args.name, "role": args.role})
    _write_bundle(bundle, args.output_file)
    return 0


def cmd_user_ls(args: argparse.Namespace) -> int:
    from shoal.cli.output import dump, render_table

    reply = remote.call(args, "UserList", {})
    if args.output in ("json", "yaml"):
        print(dump(reply, args.output))
        return 0
    rows = [[str(u["name"]), str(u["role"]), str(u.get("createdAt", ""))] for u in reply["items"]]
    print(render_table(["NAME", "ROLE", "CREATED"], rows))
    return 0


def cmd_user_rm(args: argparse.Namespace) -> int:
    for name in args.names:
        remote.call(args, "UserRemove", {"name": name})
        print(f"user/{name} removed; its certificates are refused from now on")
    return 0


def cmd_node_rm(args: argparse.Namespace) -> int:
    for name in args.names:
        remote.call(args, "NodeRemove", {"name": name, "force": args.force})
        print(f"node/{name} removed; its certificate is revoked and its tasks move elsewhere")
    return 0


# ------------------------------------------------------------------ context


def _config() -> Config:
    from shoal.security.contexts import Config, config_path

    return Config.load(config_path())


def cmd_context_ls(args: argparse.Namespace) -> int:
    from shoal.cli.output import render_table

    config = _config()
    rows = [
        [
            ("* " if name == config.current else "  ") + name,
            ",".join(c.servers),
            c.user,
            c.role,
        ]
        for name, c in sorted(config.contexts.items())
    ]
    print(render_table(["NAME", "SERVERS", "USER", "ROLE"], rows))
    return 0


def cmd_context_use(args: argparse.Namespace) -> int:
    config = _config()
    if args.name not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise ShoalError(f"no context named {args.name!r} (known: {known})")
    config.current = args.name
    config.save()
    print(f"now using context {args.name}")
    return 0


def cmd_context_show(args: argparse.Namespace) -> int:
    config = _config()
    name = args.name or config.current
    if not name or name not in config.contexts:
        raise ShoalError(
            "no current context: `shoal context use NAME` or `shoal context import FILE`"
            if not args.name
            else f"no context named {args.name!r}"
        )
    context = config.contexts[name]
    from shoal.cli.output import dump

    shown = {k: v for k, v in context.to_bundle().items() if k not in ("key", "ca", "cert")}
    shown["current"] = name == config.current
    print(dump(shown, "yaml"))
    return 0


def cmd_context_import(args: argparse.Namespace) -> int:
    from shoal.security.contexts import load_bundle

    imported = load_bundle(Path(args.file))
    name = args.name or imported.name
    context = imported._replace(name=name)
    config = _config()
    config.contexts[name] = context
    if config.current is None or args.use:
        config.current = name
    config.save()
    current = " (current)" if config.current == name else ""
    print(f"context {name} imported into {config.path}{current}")
    return 0


# ------------------------------------------------------------------- parser


def configure_token(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_token)
    server_option(parser)
    parser.add_argument("role", choices=["worker", "manager"], nargs="?", default="worker")
    parser.add_argument(
        "--rotate",
        action="store_true",
        help="replace the token: the old one stops new joins, joined nodes are not affected",
    )


def configure_user(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "user_command")
    add = add_subcommand(group, "add", cmd_user_add, "issue a credential bundle for a user")
    server_option(add)
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=["admin", "viewer"])
    add.add_argument(
        "-o", "--output-file", metavar="FILE", help="write the bundle here (0600), not stdout"
    )
    ls = add_subcommand(group, "ls", cmd_user_ls, "list users")
    server_option(ls)
    output_option(ls, choices=("table", "json", "yaml"), help="table (default), yaml or json")
    rm = add_subcommand(group, "rm", cmd_user_rm, "remove users, revoking their certificates")
    server_option(rm)
    rm.add_argument("names", metavar="NAME", nargs="+")


def configure_context(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "context_command")
    add_subcommand(group, "ls", cmd_context_ls, "list contexts (* marks the current one)")
    use = add_subcommand(group, "use", cmd_context_use, "make a context the current one")
    completes(use.add_argument("name", metavar="NAME"), "contexts")
    show = add_subcommand(group, "show", cmd_context_show, "show a context (no key material)")
    completes(show.add_argument("name", metavar="NAME", nargs="?"), "contexts")
    imp = add_subcommand(group, "import", cmd_context_import, "add a credential bundle")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--name", default=None, help="context name (default: the bundle's)")
    imp.add_argument("--use", action="store_true", help="make it the current context")


def add_node_rm(group: Any) -> None:
    rm = add_subcommand(
        group, "rm", cmd_node_rm, "remove nodes: revoke their certificates, move their tasks"
    )
    server_option(rm)
    completes(rm.add_argument("names", metavar="NAME", nargs="+"), "nodes")
    rm.add_argument("--force", action="store_true", help="remove a node that is still ready")
