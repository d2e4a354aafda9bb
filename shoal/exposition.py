"""The HTTP listener of ``--metrics-listen``: ``/metrics`` and, on managers, service discovery.

Managers and agents serve the same listener: Prometheus' text format at
``/metrics`` (the process's registry plus the standard ``process_*`` metrics
of this process), and whatever extra JSON documents the owner routes in. A
manager routes ``/prometheus/sd``, the targets of Prometheus' HTTP service
discovery (``shoal.manager.discovery``). The listener runs on threads of its own
(prometheus-client's threading WSGI server), so a scrape never waits for the
event loop; whatever a route reads must be safe to read from another thread
(the informer's dicts, copied with ``list()`` first).

The listener stays plain HTTP: it carries no secret and changes nothing, and
Prometheus scrapes it without a client certificate.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shoal.api.address import split_host_port

# A route answers a GET with a JSON document built when it is asked for.
Route = Callable[[], object]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RegistryBridge(Collector):
    """Exposes another registry's metrics through the registry it is registered in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


def metrics_app(registry: CollectorRegistry, routes: Mapping[str, Route]) -> WsgiApp:
    """``/metrics`` from ``registry`` plus this process's ``process_*``; JSON ``routes``."""
    served = CollectorRegistry()
    served.register(RegistryBridge(registry))
    ProcessCollector(registry=served)
    metrics = make_wsgi_app(served)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            served: Iterable[bytes] = metrics(environ, start_response)
            return served
        body = orjson.dumps(route())
        start_response(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


class _ThreadingWSGIServer6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsListener:
    """A running listener; see ``serve_metrics``. ``close()`` stops it."""

    def __init__(self, server: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host, self.port = str(server.server_address[0]), int(server.server_address[1])

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(
    listen: str, registry: CollectorRegistry, routes: Mapping[str, Route] | None = None
) -> MetricsListener:
    """Serve ``/metrics`` (and ``routes``) at ``listen`` (``HOST:PORT``; port 0: any free one).

    Raises ``OSError`` naming the address when it cannot be bound.
    """
    host, port = split_host_port(listen)
    server_class: type[ThreadingWSGIServer] = ThreadingWSGIServer
    if ":" in host:
        server_class = _ThreadingWSGIServer6
    try:
        server = make_server(
            host,
            port,
            metrics_app(registry, routes or {}),
            server_class,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsListener(server, thread)


def reachable_address(bound: str, fallback_host: str) -> str:
    """``bound`` (``HOST:PORT``) with a wildcard host replaced by ``fallback_host``.

    A listener bound to every interface is reached at the address its owner is
    known by (an agent's session peer, a manager's advertised address).
    """
    host, port = split_host_port(bound)
    if host in ("0.0.0.0", "::", "") and fallback_host:
        host = fallback_host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
