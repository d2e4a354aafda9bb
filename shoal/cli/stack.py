"""``shoal stack …``: Compose files deployed as stacks (``docker stack`` habits).

``deploy -c FILE [-c FILE…] STACK`` loads the files (``shoal.compose``),
creates the stack's secrets, then applies its services and configs as the
apply set ``stack.STACK`` with prune: a redeploy deletes the services the
files no longer hold, and nothing outside the stack is touched. ``convert``
prints the documents deploy would apply and never connects. ``ls``,
``services STACK`` and ``rm STACK`` read and remove what the set owns.

Every key shoal does not apply is reported on stderr, one
``FILE:LINE: key: ignored|not applied: why`` per line; a refused key or any
other problem is an error, and nothing is deployed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.cli import remote
from shoal.cli.options import (
    add_subcommand,
    output_option,
    server_option,
    subcommands,
    wait_options,
)
from shoal.errors import ApiError, ConflictError, NotFoundError

if TYPE_CHECKING:
    from shoal.api.client import ControlClient
    from shoal.compose import Stack

# The label every service, config and secret of a stack carries: the same as
# ``shoal.compose.convert.STACK_LABEL``, not imported from there so that ``ls``,
# ``services`` and ``rm`` load no Compose machinery.
STACK_LABEL = "shoal.stack"


def _load(args: argparse.Namespace) -> Stack:
    from shoal.compose import load_stack

    files = [Path(name) for name in args.compose_file]
    stack = load_stack(files, args.stack, dict(os.environ), shown=list(args.compose_file))
    for note in stack.notes:
        print(str(note), file=sys.stderr)
    return stack


def _set(stack: str) -> str:
    from shoal.compose import stack_set_name

    return stack_set_name(stack)


# ----------------------------------------------------------------- convert


def cmd_convert(args: argparse.Namespace) -> int:
    import yaml

    stack = _load(args)
    lines = [f"# stack {stack.name}: apply set {_set(stack.name)}"]
    for secret in stack.secrets:
        lines.append(f"# secret {secret.name}: created by deploy from {secret.origin}")
    for name in stack.external_secrets:
        lines.append(f"# secret {name}: external, must exist")
    for name in stack.external_configs:
        lines.append(f"# config {name}: external, must exist")
    print("\n".join(lines))
    documents = [
        d.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
        for d in [*stack.configs, *stack.services]
    ]
    print(yaml.safe_dump_all(documents, explicit_start=True, sort_keys=False), end="")
    return 0


# ------------------------------------------------------------------ deploy


def cmd_deploy(args: argparse.Namespace) -> int:
    stack = _load(args)
    source = ", ".join(str(Path(f).resolve()) for f in args.compose_file)
    cause = f"stack deploy {' '.join('-c ' + f for f in args.compose_file)} {stack.name}"

    async def deploy(control: ControlClient) -> dict[str, Any]:
        created: list[str] = []
        try:
            await create_secrets(control, created)
            result: dict[str, Any] = await control.apply(
                [*stack.configs, *stack.services],
                apply_set={
                    "set": _set(stack.name),
                    "prune": True,
                    "allowEmpty": False,
                    "source": source,
                },
                cause=cause,
            )
        except BaseException:
            # A refused deploy changes nothing: the secrets it just created go again.
            if created:
                with contextlib.suppress(ApiError):
                    await control.remove_files("secret", created)
            raise
        for name in created:
            print(f"secret/{name} created")
        return result

    async def create_secrets(control: ControlClient, created: list[str]) -> None:
        for secret in stack.secrets:
            try:
                reply = await control.create_file(
                    "secret", secret.name, secret.data, {STACK_LABEL: stack.name}, if_same=True
                )
            except ApiError as exc:
                if exc.code != "ABORTED":
                    raise
                raise ConflictError(
                    f"secret {secret.name} (from {secret.origin}) exists with other bytes, "
                    "and secrets never change: give the changed secret a new name "
                    "(its name: key in the file's top-level secrets)"
                ) from exc
            if not reply.get("unchanged"):
                created.append(secret.name)

    response = remote.unary(args, deploy)
    for result in response.get("results", []):
        kind = str(result.get("kind", "Service")).lower()
        revision = ""
        if result.get("revision") and result["action"] != "unchanged":
            revision = f" (revision {result['revision']})"
        print(f"{kind}/{result['name']} {result['action']}{revision}")
        for warning in result.get("warnings") or []:
            print(f"warning: {kind}/{result['name']}: {warning}", file=sys.stderr)
    return 0


# -------------------------------------------------------------- ls, services


async def _stack_services(control: ControlClient, stack: str) -> list[dict[str, Any]]:
    """The services of ``stack`` (every one carries its label); NotFound when none."""
    services: list[dict[str, Any]] = await control.get("services")
    mine = [
        s for s in services if s.get("metadata", {}).get("labels", {}).get(STACK_LABEL) == stack
    ]
    if not mine:
        raise NotFoundError(f"stack {stack!r} not found")
    return mine


def cmd_ls(args: argparse.Namespace) -> int:
    from shoal.cli.output import dump, render_table

    services: list[dict[str, Any]] = remote.unary(args, lambda c: c.get("services"))
    stacks: dict[str, list[dict[str, Any]]] = {}
    for view in services:
        name = view.get("metadata", {}).get("labels", {}).get(STACK_LABEL)
        if name:
            stacks.setdefault(str(name), []).append(view)
    if args.output in ("json", "yaml"):
        items = [{"name": n, "services": len(v)} for n, v in sorted(stacks.items())]
        print(dump({"items": items}, args.output))
        return 0
    if not stacks:
        print("No stacks found.", file=sys.stderr)
        return 0
    print(render_table(["NAME", "SERVICES"], [[n, str(len(v))] for n, v in sorted(stacks.items())]))
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from shoal.cli.output import dump, services_table

    items = remote.unary(args, lambda c: _stack_services(c, args.stack))
    if args.output in ("json", "yaml"):
        print(dump({"items": items}, args.output))
        return 0
    print(services_table(items, args.output == "wide"))
    return 0


# ---------------------------------------------------------------------- rm


def cmd_rm(args: argparse.Namespace) -> int:
    async def remove(control: ControlClient) -> None:
        files = {
            kind: [
                str(item["metadata"]["name"])
                for item in await control.get_files(kind)
                if item.get("metadata", {}).get("labels", {}).get(STACK_LABEL) == args.stack
            ]
            for kind in ("config", "secret")
        }
        if await control.apply_set(_set(args.stack)) is None and not any(files.values()):
            await _stack_services(control, args.stack)  # NotFound for a stack that never was
        response = await control.apply(
            [],
            apply_set={"set": _set(args.stack), "prune": True, "allowEmpty": True},
            cause=f"stack rm {args.stack}",
        )
        pruned = [str(r["name"]) for r in response.get("results", []) if r["action"] == "pruned"]
        for name in pruned:
            print(f"service/{name} removed")
        for kind, owned in files.items():
            if owned:
                await control.remove_files(kind, owned)
                for name in owned:
                    print(f"{kind}/{name} removed")
        if args.wait and pruned:
            from shoal.cli import output
            from shoal.cli.waiting import wait_tasks_gone

            await wait_tasks_gone(control, pruned, args.timeout, output.Progress())

    (remote.on_loop if args.wait else remote.unary)(args, remove)
    return 0


# --------------------------------------------------------------- arguments


def _compose_files(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "-c",
        "--compose-file",
        action="append",
        required=required,
        default=None,
        metavar="FILE",
        help="a Compose file (repeatable: later files override earlier ones)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "stack_command")
    deploy = add_subcommand(
        group,
        "deploy",
        cmd_deploy,
        "deploy or update a stack from Compose files",
        epilog="The stack is the apply set stack.STACK: a redeploy removes the services\n"
        "the files no longer hold. Keys shoal does not apply are listed on stderr;\n"
        "a refused key or any problem deploys nothing. See docs/compose.md.",
    )
    server_option(deploy)
    _compose_files(deploy, required=True)
    deploy.add_argument("stack", metavar="STACK", help="the stack's name")
    convert = add_subcommand(
        group,
        "convert",
        cmd_convert,
        "print the shoal documents a deploy would apply (connects to nothing)",
    )
    _compose_files(convert, required=True)
    convert.add_argument(
        "stack",
        metavar="STACK",
        nargs="?",
        help="the stack's name (default: the file's name: key, else its directory's name)",
    )
    ls = add_subcommand(group, "ls", cmd_ls, "list stacks")
    server_option(ls)
    output_option(ls)
    services = add_subcommand(group, "services", cmd_services, "list a stack's services")
    server_option(services)
    services.add_argument("stack", metavar="STACK")
    output_option(services)
    rm = add_subcommand(group, "rm", cmd_rm, "remove a stack: its services, configs and secrets")
    server_option(rm)
    rm.add_argument("stack", metavar="STACK")
    wait_options(rm, "until the stack's tasks have stopped")
