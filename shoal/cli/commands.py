"""The client commands: each talks to the Control service of one manager.

Every command is a ``func(args) -> int`` set on its subparser (the convention
the daemon commands in ``shoal.cli.daemons`` share). Its calls are coroutines of
one ``ControlClient``: plain unary work runs with ``remote.unary`` on the CLI's
own blocking client (``shoal.api.unary``: no grpc, no event loop, a fast start);
work that streams, sleeps or waits runs with ``remote.on_loop`` on grpc.aio in
``asyncio.run``. Commands raise ``ShoalError`` (or ``UsageError``) for
expected failures and let ``shoal.cli.main`` turn them into one ``error:`` line
and an exit code, so no command prints its own error format.

Anything that can be checked locally is checked before a connection is
opened: a spec with problems is never sent, and a malformed argument is a usage
error (exit 2) whether or not a manager is reachable.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from shoal.cli import output, remote
from shoal.cli.options import (
    UsageError,
    add_subcommand,
    command,
    completes,
    key_value,
    named_subcommand,
    output_option,
    positive_number,
    selector_option,
    server_option,
    since_time,
    subcommands,
    wait_options,
    whole_number,
)
from shoal.errors import ApiError, NotFoundError, ShoalError, SpecError

TYPE_CHECKING = False  # not from typing: see shoal.cli.main
if TYPE_CHECKING:
    from typing import Any

    from shoal.api.client import ControlClient
    from shoal.manifest import Document
    from shoal.models import Service
    from shoal.specfiles import Located

# What users may type for each kind, mapped to the Control service's kind.
KINDS = {
    "services": "services",
    "service": "services",
    "svc": "services",
    "tasks": "tasks",
    "task": "tasks",
    "nodes": "nodes",
    "node": "nodes",
    "syncs": "syncs",
    "sync": "syncs",
}
SERVICE_KINDS = ("service", "services", "svc")


def _out(text: str) -> None:
    if text:
        print(text, flush=True)


# --------------------------------------------------------------------- apply


@functools.cache
def _stdin() -> str:
    """Standard input's text, read once (``-f -``): a second look at the spec reads it too."""
    return sys.stdin.read()


def load_documents(filenames: list[str], allow_empty_dir: bool = False) -> list[Document]:
    from shoal.manifest import load_paths, load_text

    if "-" in filenames:
        if len(filenames) > 1:
            raise UsageError("-f - (standard input) cannot be combined with other files")
        return load_text(_stdin(), "<stdin>")
    return load_paths([Path(name) for name in filenames], allow_empty_dir=allow_empty_dir)


def _load(filenames: list[str]) -> list[Service]:
    from shoal.models import Service

    return [d for d in load_documents(filenames) if isinstance(d, Service)]


def compose_documents(
    filenames: list[str], allow_empty_dir: bool = False
) -> tuple[list[Located], list[str]]:
    """The documents of the files, composed and checked as far as the YAML goes (no
    models: the manager validates them), in dependency order; and the files' names."""
    from shoal.specfiles import Checks, describe_data, read_paths, read_text

    checks: Checks[Located] = Checks(lambda located: describe_data(located.data))
    if "-" in filenames:
        if len(filenames) > 1:
            raise UsageError("-f - (standard input) cannot be combined with other files")
        files = [read_text(_stdin(), "<stdin>")]
    else:
        paths = [Path(name) for name in filenames]
        files = read_paths(paths, checks.problems, None, allow_empty_dir)
    composed = [d for f in files for d in checks.file(f, [(d, d) for d in f.documents])]
    checks.raise_problems()
    return checks.in_dependency_order(composed), [f.filename for f in files]


def cmd_apply(args: argparse.Namespace) -> int:
    from shoal.cli.applysets import set_request
    from shoal.specfiles import place

    apply_set = set_request(args)
    # Every problem the YAML shows is raised before connecting; the manager validates
    # the rest and says where its problems are, which are then named by file and line.
    # A pruning apply may be empty: the manager refuses to empty a set unless --allow-empty.
    documents, files = compose_documents(args.filename, allow_empty_dir=bool(args.prune))
    if not documents and not args.prune:
        raise ShoalError(f"nothing to apply: no documents in {', '.join(args.filename)}")
    cause = args.annotation or f"apply -f {' '.join(args.filename)}"
    specs = [d for d in documents if d.kind != "Config"]
    configs = [d for d in documents if d.kind == "Config"]
    try:
        response = remote.unary(
            args,
            lambda control: control.apply_data(
                [d.data for d in specs],
                [d.data for d in configs],
                dry_run=args.dry_run,
                apply_set=apply_set,
                cause=cause,
                locate=True,
            ),
        )
    except ApiError as exc:
        if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT"):
            # No manager to validate (or an older one, which does not locate its
            # problems): the spec's own problems, by file and line, come first.
            load_documents(args.filename, allow_empty_dir=bool(args.prune))
        raise
    if response.get("problems"):
        raise SpecError(place(response["problems"], specs, configs, files))
    suffix = " (dry run)" if response.get("dryRun") else ""
    for result in response.get("results", []):
        kind = str(result.get("kind", "Service")).lower()
        revision = ""
        if result.get("revision") and result["action"] != "unchanged" and not suffix:
            revision = f" (revision {result['revision']})"
        _out(f"{kind}/{result['name']} {result['action']}{revision}{suffix}")
        for warning in result.get("warnings") or []:
            print(f"warning: {kind}/{result['name']}: {warning}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------- get


async def _node_task_counts(control: ControlClient, answer: dict[str, Any]) -> dict[str, int]:
    """How many live tasks each node has: from the nodes' answer (``taskCounts``), or
    from a manager older than that, by listing the tasks."""
    counts = answer.get("taskCounts")
    if isinstance(counts, dict):
        return {str(node): int(count) for node, count in counts.items()}
    from shoal.cli.tasklist import all_tasks

    tasks = await all_tasks(control)
    live = (t["nodeId"] for t in tasks if t.get("nodeId") and not output.is_terminal(t))
    return dict(Counter(live))


def _print_items(
    kind: str,
    name: str | None,
    items: list[dict[str, Any]],
    fmt: str,
    counts: dict[str, int] | None = None,
) -> None:
    if fmt in ("json", "yaml"):
        _out(output.dump(items[0] if name else {"items": items}, fmt))
        return
    if not items:
        print(f"No {kind} found.", file=sys.stderr)
        return
    _out(_table(kind, items, fmt == "wide", counts))


def _table(
    kind: str, items: list[dict[str, Any]], wide: bool, counts: dict[str, int] | None
) -> str:
    if kind == "services":
        return output.services_table(items, wide)
    if kind == "tasks":
        return output.tasks_table(items, wide)
    if kind == "syncs":
        from shoal.cli.sync import sync_table

        return sync_table(items)
    return output.nodes_table(items, counts, wide)


def show(args: argparse.Namespace, kind: str) -> int:
    name: str | None = getattr(args, "name", None)
    service: str | None = getattr(args, "service", None)
    all_tasks: bool = getattr(args, "all", False)
    if kind != "tasks" and (service or all_tasks):
        raise UsageError("--service and --all only apply to tasks")
    selector: str | None = getattr(args, "selector", None)
    paging = (getattr(args, "limit", None), getattr(args, "chunk_size", None))
    if kind != "tasks" and paging != (None, None):
        raise UsageError("--limit and --chunk-size only apply to tasks")
    watching = bool(getattr(args, "watch", False))
    # A task that ends leaves the default list; -w still prints how it ended.
    history = all_tasks or (watching and kind == "tasks")
    if kind == "tasks" and not name and not watching:
        from shoal.cli.tasklist import list_tasks

        return list_tasks(args, service, history)

    async def fetch(control: ControlClient) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        if kind == "tasks" and not name:  # -w: every page, each time
            from shoal.cli.tasklist import task_pages

            items = []
            async for page, _ in task_pages(control, service, history, selector):
                items += page
            answer: dict[str, Any] = {}
        else:
            answer = await control.get_page(
                kind, name=name, service=service, all_tasks=history or bool(name), selector=selector
            )
            items = answer.get("items", [])
        if service and not items:
            # Like `get services nope`: a service that does not exist is an error
            # (NOT_FOUND, exit 1), not an empty list.
            await control.get("services", name=service)
        counts = None
        if kind == "nodes" and args.output in ("table", "wide"):
            counts = await _node_task_counts(control, answer)
        return items, counts

    if watching:
        return _watch(args, kind, fetch, everything=all_tasks or bool(name))
    items, counts = remote.unary(args, fetch)
    if name and not items and not selector:
        raise NotFoundError(f"{kind[:-1]} {name!r} not found")
    _print_items(kind, name, items, args.output, counts)
    return 0


# How often `get -w` asks again.
WATCH_PERIOD = 1.0


def _key(kind: str, item: dict[str, Any]) -> str:
    if kind in ("services", "syncs"):
        return str(item["metadata"]["name"])
    return str(item.get("id"))


def _row(kind: str, item: dict[str, Any], fmt: str, counts: dict[str, int] | None) -> str:
    """One object as `get -w` prints a change: a table row, or one JSON/YAML document."""
    if fmt == "json":
        import json

        return json.dumps(item)
    if fmt == "yaml":
        return "---\n" + output.dump(item, "yaml")
    return _table(kind, [item], fmt == "wide", counts).splitlines()[-1]


def _watch(
    args: argparse.Namespace,
    kind: str,
    fetch: Callable[[ControlClient], Awaitable[tuple[list[dict[str, Any]], dict[str, int] | None]]],
    everything: bool,
) -> int:
    """``get -w``: the list, then every object again each time it changes, until Ctrl-C.

    Tasks are fetched with their history, so a task shown once is shown again when
    it ends; finished tasks never shown (without ``-a``) stay out, as in the list.
    """
    import asyncio

    def listed(item: dict[str, Any]) -> bool:
        if kind != "tasks" or everything:
            return True
        return item.get("desiredState") == "running" or not output.is_terminal(item)

    async def watch(control: ControlClient) -> None:
        shown: dict[str, dict[str, Any]] = {}
        first = True
        while True:
            items, counts = await fetch(control)
            items = [i for i in items if listed(i) or _key(kind, i) in shown]
            if first:
                if args.output in ("table", "wide"):
                    _print_items(kind, None, items, args.output, counts)
                else:
                    for item in items:
                        _out(_row(kind, item, args.output, counts))
                shown = {_key(kind, i): i for i in items}
                first = False
            else:
                for item in items:
                    key = _key(kind, item)
                    if shown.get(key) != item:
                        _out(_row(kind, item, args.output, counts))
                    shown[key] = item
            await asyncio.sleep(WATCH_PERIOD)

    try:
        remote.on_loop(args, watch)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    return show(args, KINDS[args.resource])


# ------------------------------------------------------------------ describe


def cmd_describe(args: argparse.Namespace) -> int:
    from shoal.cli.describe import describe_node, describe_service

    kind = KINDS[args.resource]
    payload = remote.unary(args, lambda control: control.describe(kind, args.name))
    _out(describe_node(payload) if kind == "nodes" else describe_service(payload))
    return 0


# -------------------------------------------------------------------- delete


def cmd_delete(args: argparse.Namespace) -> int:
    if args.selector:
        alone = [[], *([kind] for kind in SERVICE_KINDS)]  # `delete -l` or `delete service -l`
        if args.filename or args.targets not in alone:
            raise UsageError("-l selects the services to delete: give no names and no -f")
        names: list[str] = []
    elif args.filename:
        if args.targets:
            raise UsageError("give either -f PATH or service NAME..., not both")
        names = [doc.name for doc in _load(args.filename) if doc.kind == "Service"]
    else:
        if not args.targets or args.targets[0] not in SERVICE_KINDS:
            raise UsageError("expected `delete service NAME [NAME...]` or `delete -f PATH`")
        names = args.targets[1:]
        if not names:
            raise UsageError("name at least one service to delete")

    async def delete(control: ControlClient) -> None:
        response = await control.delete(
            names, ignore_not_found=args.ignore_not_found, selector=args.selector
        )
        deleted: list[str] = response.get("deleted", [])
        if args.selector and not deleted:
            print(f"No services match {args.selector}.", file=sys.stderr)
        for name in deleted:
            _out(f"service/{name} deleted")
        if args.wait and deleted:
            from shoal.cli.waiting import wait_tasks_gone

            await wait_tasks_gone(control, deleted, args.timeout, output.Progress())

    (remote.on_loop if args.wait else remote.unary)(args, delete)
    return 0


# --------------------------------------------------------------------- scale


def cmd_scale(args: argparse.Namespace) -> int:
    targets: dict[str, int] = dict(args.targets)
    scaled = remote.unary(args, lambda control: control.scale(targets))
    for name, replicas in scaled.items():
        _out(f"service/{name} scaled to {replicas}")
    return 0


# ---------------------------------------------------------------------- logs


def cmd_logs(args: argparse.Namespace) -> int:
    target: str | None = args.target
    if bool(target) == bool(args.selector):
        raise UsageError("name a service or a task, or give -l SELECTOR (not both)")

    async def lines(control: ControlClient, **scope: str | None) -> None:
        items = control.logs(follow=args.follow, tail=args.tail, since=args.since, **scope)
        async for item in items:
            line = str(item.get("line", ""))
            task = item.get("task")
            if task and args.prefix:
                line = f"{task} | {line}"
            if args.timestamps:
                line = f"{item.get('time') or '-'} {line}"
            print(line, flush=True)

    async def stream(control: ControlClient) -> None:
        from shoal.errors import ApiError

        if args.selector:
            return await lines(control, selector=args.selector)
        assert target is not None
        if "." in target:  # service names are DNS labels: a dot names a task
            return await lines(control, task=target)
        try:
            await lines(control, service=target)
        except ApiError as exc:
            if exc.code != "NOT_FOUND":
                raise
            try:  # a task id, or the start of one
                await lines(control, task=target)
            except ApiError as again:
                if again.code != "NOT_FOUND":
                    raise
                raise NotFoundError(f"service or task {target!r} not found") from None

    try:
        remote.on_loop(args, stream)
    except KeyboardInterrupt:
        return 0  # the way to stop `logs -f`
    return 0


# ---------------------------------------------------------------------- node


def cmd_node_ls(args: argparse.Namespace) -> int:
    return show(args, "nodes")


def cmd_node_update(args: argparse.Namespace) -> int:
    if not (args.availability or args.label_add or args.label_rm):
        raise UsageError("nothing to update: give --availability, --label-add or --label-rm")
    node = remote.unary(
        args,
        lambda control: control.update_node(
            args.name, args.availability, dict(args.label_add), args.label_rm
        ),
    )
    _out(f"node/{node.get('id', args.name)} updated")
    return 0


# ------------------------------------------------------ the verbs' arguments
#
# ``shoal.cli.main`` lists the verbs and calls one of these with the parser of
# the verb being run (see its docstring).


def _resource_kind(parsed_args: argparse.Namespace) -> str | None:
    """Completion: which names ``get|describe RESOURCE NAME`` completes."""
    return KINDS.get(getattr(parsed_args, "resource", None) or "")


def _delete_targets(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completion of ``delete service NAME...``: the word ``service``, then services."""
    if not parsed_args.targets:
        return [kind for kind in SERVICE_KINDS if kind.startswith(prefix)]
    from shoal.cli.completion import live_names

    return live_names("services", prefix, parsed_args)


def configure_apply(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_apply)
    parser.epilog = "Every file is validated first; if any has a problem nothing is sent."
    server_option(parser)
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="a YAML file, a directory of them, or - for standard input (repeatable)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would change without changing it"
    )
    parser.add_argument(
        "-m",
        "--annotation",
        metavar="TEXT",
        help="why: recorded with a new revision (default: the command and its files)",
    )
    from shoal.cli.applysets import add_set_options

    add_set_options(parser)


def configure_get(parser: argparse.ArgumentParser) -> None:
    from shoal.cli.tasklist import CHUNK

    command(parser, cmd_get)
    parser.epilog = (
        "examples:\n  shoal get services\n  shoal get tasks --service web -a\n"
        "  shoal get svc web -o yaml\n\n"
        '-o json|yaml prints {"items": [...]} for a list, the object itself with NAME.\n'
        "An unknown resource type (e.g. pods) is a usage error: exit code 2."
    )
    server_option(parser)
    parser.add_argument(
        "resource",
        metavar="RESOURCE",
        choices=list(KINDS),
        help="services (service, svc), tasks (task), nodes (node) or syncs (sync)",
    )
    completes(
        parser.add_argument("name", metavar="NAME", nargs="?", help="only this object"),
        _resource_kind,
    )
    output_option(parser)
    completes(
        parser.add_argument(
            "--service", metavar="NAME", help="tasks: only the tasks of this service"
        ),
        "services",
    )
    parser.add_argument(
        "-a", "--all", action="store_true", help="tasks: include finished tasks kept as history"
    )
    selector_option(parser, "objects (tasks: of services)")
    parser.add_argument(
        "--limit",
        type=positive_number,
        metavar="N",
        help="tasks: print at most N tasks (how many more match goes to stderr)",
    )
    parser.add_argument(
        "--chunk-size",
        type=whole_number,
        metavar="N",
        help=f"tasks: fetch N tasks per call, printing each page as it comes (default {CHUNK}; "
        "0 fetches all in one call, which a manager refuses past 10,000 tasks)",
    )
    parser.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="after the list, print each object again whenever it changes (Ctrl-C stops)",
    )


def configure_describe(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_describe)
    server_option(parser)
    parser.add_argument(
        "resource",
        metavar="RESOURCE",
        choices=[*SERVICE_KINDS, "node", "nodes"],
        help="service (svc) or node",
    )
    completes(parser.add_argument("name", metavar="NAME"), _resource_kind)


def configure_delete(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_delete)
    parser.usage = (
        "shoal delete (service NAME [NAME ...] | -f PATH [-f PATH ...] | -l SELECTOR) [options]"
    )
    parser.epilog = (
        "By default waits until the services' tasks have stopped; --no-wait returns\n"
        "as soon as the services are deleted."
    )
    server_option(parser)
    targets = parser.add_argument(
        "targets", nargs="*", metavar="service NAME", help=argparse.SUPPRESS
    )
    targets.completer = _delete_targets  # type: ignore[attr-defined]
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="PATH",
        help="delete the services defined in these files or directories",
    )
    parser.add_argument(
        "--ignore-not-found",
        action="store_true",
        help="a service that does not exist is not an error",
    )
    selector_option(parser, "the services")
    wait_options(parser, "until the tasks of the deleted services have stopped")


def _scale_target(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    if not sep or not name or not count.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected NAME=REPLICAS with REPLICAS a whole number >= 0, got {text!r}"
        )
    return name, int(count)


def configure_scale(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_scale)
    parser.epilog = "example:\n  shoal scale web=3 worker=0"
    server_option(parser)
    completes(
        parser.add_argument("targets", nargs="+", type=_scale_target, metavar="NAME=REPLICAS"),
        "services",
        suffix="=",
    )


def configure_logs(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_logs)
    server_option(parser)
    parser.epilog = (
        "examples:\n  shoal logs web -f\n"
        "  shoal logs web.2.3f9c1a0b    (one task, as `get tasks` names it)\n"
        "  shoal logs 3f9c1a            (a task by the start of its id)\n"
        "  shoal logs -l app=web --tail 20\n"
        "  shoal logs web --since 10m --timestamps\n"
        "lines of several tasks come in the order they were written"
    )
    completes(
        parser.add_argument(
            "target",
            metavar="SERVICE|TASK",
            nargs="?",
            help="a service, or one task: its name, its id or the start of its id",
        ),
        "services",
    )
    selector_option(parser, "the tasks of the services")
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines, of tasks that start later too, until Ctrl-C",
    )
    parser.add_argument(
        "--tail", type=whole_number, metavar="N", help="start with the last N lines of each task"
    )
    parser.add_argument(
        "--prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prefix each line with `TASKNAME | ` (default on)",
    )
    parser.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="prefix each line with the time it was written (RFC 3339)",
    )
    parser.add_argument(
        "--since",
        type=since_time,
        metavar="DURATION|TIME",
        help="only lines written at or after then: a duration back from now (10m, 1h30m) "
        "or an RFC 3339 time (2026-12-01T16:30:00Z)",
    )


def configure_node(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "node_command")
    ls = add_subcommand(group, "ls", cmd_node_ls, "list nodes (as `get nodes`)")
    server_option(ls)
    completes(ls.add_argument("name", metavar="NAME", nargs="?", help="only this node"), "nodes")
    output_option(ls)
    from shoal.cli.identity import add_node_rm

    add_node_rm(group)
    update = named_subcommand(
        group,
        "update",
        cmd_node_update,
        "change a node's availability or labels",
        epilog="availability: active (takes tasks), pause (keeps its tasks, takes no\n"
        "new ones), drain (its tasks move elsewhere)",
        names="nodes",
    )
    update.add_argument("--availability", choices=["active", "pause", "drain"])
    update.add_argument(
        "--label-add",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="add or change a label (repeatable)",
    )
    update.add_argument(
        "--label-rm",
        action="append",
        default=[],
        metavar="KEY",
        help="remove a label an operator added (repeatable)",
    )
