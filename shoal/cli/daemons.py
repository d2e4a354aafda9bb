"""``shoal up``, ``shoal manager`` and ``shoal agent``: the long-running commands.

``up`` is a manager plus one local agent in one process, still speaking gRPC
to each other, with the embedded SQLite store in ``--state-dir``. ``manager``
and ``agent`` run apart, so several agents (distinct ``--name``s) can join one
manager, on one machine or many. Each runs until SIGINT or SIGTERM; stopping
an agent or manager never stops the tasks it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal import gcpolicy
from shoal.cli.options import command, duration, whole_number
from shoal.errors import AuthError, ShoalError
from shoal.paths import default_state_dir

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from shoal.agent.discovery import DnsSettings


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {value!r}")
    return key, val


def _resource(value: str) -> tuple[str, list[str]]:
    from shoal.agent.resources import resource_flag

    return resource_flag(value)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


def _runtime_opt(value: str) -> tuple[str, str, str]:
    target, sep, val = value.partition("=")
    runtime, dot, key = target.partition(".")
    if not sep or not dot or not runtime or not key:
        raise argparse.ArgumentTypeError(f"expected RUNTIME.KEY=VALUE, got {value!r}")
    return runtime, key, val


def _common(parser: argparse.ArgumentParser, listen: bool = True) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where state lives (default: $SHOAL_STATE_DIR, else ~/.local/state/shoal)",
    )
    if listen:
        parser.add_argument(
            "--listen",
            default="127.0.0.1:7420",
            help="gRPC address HOST:PORT (default %(default)s)",
        )
    parser.add_argument(
        "--metrics-listen", default=None, metavar="HOST:PORT", help="serve Prometheus /metrics here"
    )
    if listen:
        parser.add_argument(
            "--http-listen",
            default=None,
            metavar="HOST:PORT",
            help="serve the HTTP API and web UI here (plain HTTP: keep it on loopback; "
            "docs/ui.md); `shoal up` defaults to --listen's host and port + 3, "
            "`off` turns it off",
        )


def _port_range(value: str) -> tuple[int, int]:
    from shoal.agent.ports import parse_range

    try:
        return parse_range(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_identity(parser: argparse.ArgumentParser, name_help: str) -> None:
    parser.add_argument("--name", default=None, help=name_help)
    parser.add_argument(
        "--advertise-address",
        default=None,
        metavar="ADDRESS",
        help="the address other nodes reach this node's tasks at (default: the address "
        "the manager sees the agent connect from)",
    )
    parser.add_argument(
        "--port-range",
        type=_port_range,
        default=None,
        metavar="LOW-HIGH",
        help="where ports that tasks leave to the agent (published: 0) come from "
        "(default 20000-32767)",
    )
    parser.add_argument(
        "--max-tasks",
        type=_positive,
        default=None,
        metavar="N",
        help="the most tasks this node takes; the rest wait pending (default 256)",
    )
    parser.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="K=V",
        help="node label (repeatable)",
    )
    parser.add_argument(
        "--resource",
        type=_resource,
        action="append",
        default=[],
        metavar="NAME=N|NAME=ID,ID…",
        help="generic resource units this node has, e.g. gpu=2 (repeatable; "
        "NVIDIA GPUs are found by nvidia-smi unless given; see docs/scheduling.md)",
    )


def _listen_address(value: str) -> str:
    from shoal.api.address import split_host_port

    if value.lower() == "off":
        return "off"
    try:
        split_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or off") from None
    return value


def _dns_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dns-listen",
        type=_listen_address,
        default=None,
        metavar="HOST:PORT|off",
        help="answer DNS for the shoal. zone here (default 127.0.0.1:8653; see "
        "docs/discovery.md for systemd-resolved and dnsmasq)",
    )
    parser.add_argument(
        "--container-dns",
        type=_container_dns,
        default="auto",
        metavar="auto|off|ADDRESS",
        help="auto (default): also answer on port 53 of each container engine's bridge "
        "gateway and make it the containers' name server; ADDRESS: a host address "
        "containers reach, instead (two agents on one machine: give each its own)",
    )


def _container_dns(value: str) -> str:
    import ipaddress

    if value.lower() in ("auto", "off"):
        return value.lower()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        message = f"expected auto, off or an IP address, got {value!r}"
        raise argparse.ArgumentTypeError(message) from None


def _dns_settings(args: argparse.Namespace) -> DnsSettings:
    from shoal.agent.discovery import DEFAULT_DNS_LISTEN, DnsSettings

    listen = args.dns_listen
    return DnsSettings(
        listen=None if listen == "off" else listen or DEFAULT_DNS_LISTEN,
        required=listen not in (None, "off"),
        containers=args.container_dns,
    )


def _identity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--join-listen",
        default=None,
        metavar="HOST:PORT",
        help="where agents without a certificate join (default: --listen's port + 2)",
    )
    parser.add_argument(
        "--cert-expiry",
        type=duration,
        default=90 * 24 * 3600.0,
        metavar="DURATION",
        help="validity of node certificates (default 90 days, i.e. 2160h); nodes renew "
        "theirs at a random 50-80%% of it",
    )


def _read_token(args: argparse.Namespace) -> str:
    """--token, else --token-file, else $SHOAL_TOKEN (so it need not show in ps)."""
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            return Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise AuthError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from exc
    return os.environ.get("SHOAL_TOKEN", "").strip()


def configure_up(up: argparse.ArgumentParser) -> None:
    up.description = (
        "Run a manager and one local agent in one process, with the embedded "
        "SQLite store in --state-dir. Client commands find it without --server."
    )
    _common(up)
    _node_identity(up, "node name of the local agent (default: hostname)")
    up.add_argument("--heartbeat-period", type=duration, default=2.0, help=argparse.SUPPRESS)
    _identity_options(up)
    _dns_options(up)
    command(up, lambda args: _run(_up(args)))


def configure_manager(manager: argparse.ArgumentParser) -> None:
    manager.description = (
        "Run a manager. Agents join it with the worker token (shoal token worker)."
    )
    manager.add_argument(
        "--store",
        required=True,
        metavar="URL",
        help="sqlite:///path/state.db (durable, one manager), "
        "etcd://HOST:PORT[,HOST:PORT...]/PREFIX (several managers) or memory://",
    )
    _common(manager)
    manager.add_argument(
        "--heartbeat-period",
        type=duration,
        default=2.0,
        metavar="DURATION",
        help="how often agents heartbeat (default 2s); a node is down after three missed periods",
    )
    manager.add_argument(
        "--lease-ttl",
        type=duration,
        default=5.0,
        metavar="DURATION",
        help="etcd: the leader's lease (default 5s); a dead leader is replaced within about this",
    )
    manager.add_argument(
        "--heartbeat-listen",
        default=None,
        metavar="HOST:PORT",
        help=argparse.SUPPRESS,  # ignored: heartbeats travel on the agents' sessions now
    )
    manager.add_argument(
        "--disruption-threshold",
        type=float,
        default=0.55,
        metavar="SHARE",
        help="when more than this share of the nodes is silent at once, orphan none of "
        "their tasks (default 0.55; 1 turns the guard off)",
    )
    manager.add_argument(
        "--event-limit",
        type=whole_number,
        default=10_000,
        metavar="N",
        help="events kept in the store, newest first (default 10000)",
    )
    manager.add_argument(
        "--event-ttl",
        type=duration,
        default=3600.0,
        metavar="DURATION",
        help="how long events are kept (default 1h)",
    )
    manager.add_argument(
        "--advertise",
        default=None,
        metavar="HOST:PORT",
        help="the address agents and other managers reach this manager at (default: --listen)",
    )
    manager.add_argument(
        "--data-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the key secrets and configs are encrypted with (created if missing, mode 0600); "
        "required with etcd: give every manager the same file (default with SQLite: "
        "STATE_DIR/datakey)",
    )
    _identity_options(manager)
    command(manager, lambda args: _run(_manager(args)))


def configure_agent(agent: argparse.ArgumentParser) -> None:
    agent.description = "Run an agent: join a manager and run the tasks it assigns to this node."
    agent.add_argument("--manager", required=True, metavar="HOST:PORT[,HOST:PORT...]")
    agent.add_argument(
        "--token",
        default=None,
        help="join token (shoal token worker), used once when the agent has no certificate "
        "yet; prefer --token-file or SHOAL_TOKEN, which do not show in ps",
    )
    agent.add_argument("--token-file", default=None, metavar="FILE", help="read the token here")
    agent.add_argument(
        "--join",
        default=None,
        metavar="HOST:PORT",
        help="the manager's join listener (default: the first --manager's port + 2)",
    )
    _node_identity(agent, "node name (default: hostname)")
    agent.add_argument(
        "--sim-nodes",
        type=int,
        default=0,
        metavar="N",
        help="run N simulated nodes (NAME-0 … NAME-N-1) with the sim runtime in this process",
    )
    agent.add_argument(
        "--runtime-opt",
        type=_runtime_opt,
        action="append",
        default=[],
        metavar="RUNTIME.KEY=VALUE",
        help="a runtime option, e.g. docker.host=unix:///var/run/docker.sock, "
        "podman.socket=unix:///run/podman/podman.sock (repeatable)",
    )
    agent.add_argument(
        "--process-user",
        default=None,
        metavar="USER[:GROUP]",
        help="who process tasks run as when their spec names no user "
        "(default: the agent's own user); same as --runtime-opt process.user=USER",
    )
    agent.add_argument(
        "--probe-period",
        type=duration,
        default=5.0,
        metavar="DURATION",
        help="how often the agent re-checks which runtimes work here (default 5s)",
    )
    _dns_options(agent)
    _common(agent, listen=False)
    command(agent, lambda args: _run(_agent(args)))


def _run(main: Coroutine[Any, Any, int]) -> int:
    from shoal.logging import configure_logging

    configure_logging()
    try:
        return asyncio.run(_until_signal(main))
    except (ShoalError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _until_signal(main: Coroutine[Any, Any, int]) -> int:
    loop = asyncio.get_running_loop()
    job = asyncio.ensure_future(main)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, job.cancel)
    try:
        return await job
    except asyncio.CancelledError:
        return 0


async def _up(args: argparse.Namespace) -> int:
    from shoal.manager.server import ManagerSettings

    state_dir = (args.state_dir or default_state_dir()).resolve()
    settings = ManagerSettings(
        store_url=f"sqlite:///{state_dir / 'state.db'}",
        state_dir=state_dir,
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        heartbeat_period=args.heartbeat_period,
        join_listen=args.join_listen,
        cert_expiry=args.cert_expiry,
        http_listen=_http_listen(args.http_listen, args.listen, default_on=True),
    )
    name = args.name or socket.gethostname()
    try:
        return await _up_until_stopped(args, settings, name)
    except asyncio.CancelledError:  # Ctrl-C or SIGTERM: say what is left running
        from shoal.cli.down import stopping_message

        print(await stopping_message(state_dir, name), file=sys.stderr, flush=True)
        return 0


async def _up_until_stopped(args: argparse.Namespace, settings: Any, name: str) -> int:
    from shoal.agent.agent import AgentSettings, open_agent
    from shoal.agent.resources import node_resources
    from shoal.manager.server import open_manager

    state_dir = settings.state_dir
    gcpolicy.long_lived_heap()
    async with open_manager(settings) as manager:
        agent_settings = AgentSettings(
            managers=[manager.address],
            token="",
            identity=await manager.security.local_node(name),
            state_dir=state_dir / "agent",
            name=name,
            labels=dict(args.label),
            max_tasks=args.max_tasks,
            resources=node_resources(args.resource),
            dns=_dns_settings(args),
            **_address_options(args),
        )
        async with open_agent(agent_settings) as agent:
            gcpolicy.started()  # the store as listed, the agent as started
            # One process, one /metrics: the agent's metrics join the manager's.
            manager.registry.register(_registry_bridge(agent.registry))
            print(
                f"shoal is up: manager on {manager.address}, node {agent_settings.name}, "
                f"state in {state_dir}",
                file=sys.stderr,
                flush=True,
            )
            if manager.web.url:
                print(
                    f"web UI on {manager.web.url} (sign in: shoal ui)", file=sys.stderr, flush=True
                )
            await agent.wait()
            return _agent_exit(agent.fatal)


async def _manager(args: argparse.Namespace) -> int:
    from shoal.manager.server import ManagerSettings, open_manager
    from shoal.reconciler.events import EventSettings

    settings = ManagerSettings(
        store_url=args.store,
        state_dir=(args.state_dir or default_state_dir()).resolve(),
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        heartbeat_period=args.heartbeat_period,
        lease_ttl=args.lease_ttl,
        advertise=args.advertise,
        data_key_file=args.data_key_file.resolve() if args.data_key_file else None,
        join_listen=args.join_listen,
        cert_expiry=args.cert_expiry,
        disruption_threshold=args.disruption_threshold,
        events=EventSettings(limit=args.event_limit, ttl=args.event_ttl),
        http_listen=_http_listen(args.http_listen, args.listen, default_on=False),
    )
    if args.heartbeat_listen:
        print(
            "shoal manager: --heartbeat-listen is ignored: agents send their heartbeats on "
            "their session's connection",
            file=sys.stderr,
        )
    gcpolicy.long_lived_heap()
    async with open_manager(settings) as manager:
        gcpolicy.started()  # the modules, and the store as the informer listed it
        web = f", web UI on {manager.web.url}" if manager.web.url else ""
        print(
            f"shoal manager listening on {manager.address} (join on {manager.join_address}), "
            f"admin credentials in {manager.admin_bundle}{web}",
            file=sys.stderr,
            flush=True,
        )
        await asyncio.Event().wait()
    return 0


async def _agent(args: argparse.Namespace) -> int:
    from shoal.agent.agent import AgentSettings, open_agent
    from shoal.agent.resources import node_resources
    from shoal.agent.simfleet import open_sim_fleet

    name = args.name or socket.gethostname()
    managers = [m.strip() for m in args.manager.split(",") if m.strip()]
    state_dir = (args.state_dir or default_state_dir() / "agents" / name).resolve()
    settings = AgentSettings(
        managers=managers,
        token=_read_token(args),
        join=args.join,
        state_dir=state_dir,
        name=name,
        labels=dict(args.label),
        metrics_listen=args.metrics_listen,
        runtime_options=_runtime_options(
            args.runtime_opt
            + ([("process", "user", args.process_user)] if args.process_user else [])
        ),
        probe_period=args.probe_period,
        max_tasks=args.max_tasks,
        resources=node_resources(args.resource, discover=not args.sim_nodes),
        dns=_dns_settings(args),
        **_address_options(args),
    )
    if args.sim_nodes:
        # A fleet's heap is a manager's: thousands of agents and their tasks, long-lived.
        # With Python's default policy, 9,000 tasks arriving cost it about 1 s of CPU in
        # full collections that freed nothing (bench/fleet_tasks.py).
        gcpolicy.long_lived_heap()
        async with open_sim_fleet(settings, args.sim_nodes) as fleet:
            # A thousand agents are a lot of long-lived objects; without this every
            # full collection would walk all of them again, and that shows up as
            # latency on every node at once.
            gcpolicy.started()
            return _agent_exit(await fleet.wait())
    async with open_agent(settings) as agent:
        await agent.wait()
        return _agent_exit(agent.fatal)


def _http_listen(value: str | None, listen: str, default_on: bool) -> str | None:
    """--http-listen: ``off``, an address, or (``shoal up``) --listen's host and port + 3."""
    from shoal.api.address import split_host_port

    if value is not None:
        return None if value in ("off", "") else value
    if not default_on:
        return None
    host, port = split_host_port(listen)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + 3 if port else 0}"


def _address_options(args: argparse.Namespace) -> dict[str, Any]:
    """``AgentSettings`` fields of --advertise-address and --port-range, where given."""
    options: dict[str, Any] = {"advertise_address": args.advertise_address}
    if args.port_range is not None:
        options["port_range"] = args.port_range
    return options


def _runtime_options(items: list[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    options: dict[str, dict[str, str]] = {}
    for runtime, key, value in items:
        options.setdefault(runtime, {})[key] = value
    return options


def _agent_exit(fatal: BaseException | None) -> int:
    if isinstance(fatal, AuthError):
        print(f"error: {fatal}", file=sys.stderr)
        return 1
    return 0


def _registry_bridge(registry: CollectorRegistry) -> Any:
    """A collector exposing another registry's metrics through the one it joins."""
    from prometheus_client.registry import Collector

    class RegistryBridge(Collector):
        def collect(self) -> Iterable[Any]:
            return registry.collect()

    return RegistryBridge()
