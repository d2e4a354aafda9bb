"""What the property-based suites and ``bench/fuzz_api.py`` share.

``serve_manager`` runs a real manager (memory store, real gRPC, mutual TLS) in a
thread of its own, so synchronous hypothesis tests can throw payloads at it from
the test thread with the blocking gRPC API. ``PAYLOADS`` are JSON objects
whose keys are mostly the fields shoal's methods read, with values of every
JSON type; ``spec_texts`` are YAML documents that look like service specs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import yaml
from hypothesis import strategies as st

from shoal.api.transport import Unary
from shoal.manager.server import ManagerSettings, open_manager
from shoal.manager.taskpages import encode_token
from shoal.security.contexts import load_bundle
from shoal.security.credentials import TlsIdentity

# Every method a manager serves, by service: (method, is a stream). The fuzz suites
# cover each; tests/security/test_fuzz.py checks that this is all a manager serves.
CONTROL_METHODS = [
    ("Get", False), ("Describe", False), ("Delete", False), ("Scale", False),
    ("UpdateNode", False), ("Apply", False), ("GetApplySet", False), ("Rollout", False),
    ("RunJob", False), ("SyncNow", False), ("SyncSuspend", False), ("SyncDelete", False),
    ("DescribeSync", False), ("Events", False), ("CreateSecret", False),
    ("GetSecrets", False), ("RemoveSecret", False), ("CreateConfig", False),
    ("GetConfigs", False), ("RemoveConfig", False), ("Token", False), ("UserAdd", False),
    ("UserList", False), ("UserRemove", False), ("NodeRemove", False), ("Version", False),
    ("ClusterStatus", False), ("Logs", True), ("WatchEvents", True), ("Backup", True),
    ("UiLogin", False),
    ("Endpoints", True), ("Exec", True),
]  # fmt: skip
DISPATCHER_METHODS = [("Heartbeat", False), ("UpdateTaskStatus", False), ("Session", True)]
# PublishLogs is client-streaming: its messages are checked one by one (transport).
CLIENT_STREAMS = ["PublishLogs", "PublishExec"]

FIELDS = [
    "kind", "name", "names", "service", "all", "services", "dryRun", "ignoreNotFound",
    "replicas", "availability", "labelAdd", "labelRemove", "follow", "tail", "role",
    "rotate", "csr", "force", "nodeId", "sessionId", "description", "updates", "taskId",
    "status", "token", "subscriptionId", "lines", "metadata", "spec", "apiVersion",
    "documents", "configs", "set", "prune", "allowEmpty", "source", "suspend", "action",
    "toRevision", "data", "since", "limit", "type", "object", "reason", "selector", "task",
    "watch", "command", "execId", "stream", "exitCode", "error", "continue",
]  # fmt: skip
# Paging tokens (``Get`` of tasks): a real one, and ones that are nearly right.
TOKENS = [
    encode_token(("web", 1, "", 1.5, "a" * 25)),
    encode_token(("web", 1, "", 1.5, "a" * 25))[:-3],
    *(
        base64.urlsafe_b64encode(text.encode()).decode()
        for text in (
            '["tasks",1,2,3,4,5]',
            '["tasks","",0,"",NaN,""]',
            '["tasks",true]',
            "[]",
            '["tasks","web",1,"",1' + "0" * 3000 + ',"x",""]',  # no float holds it
            '["tasks","web",1,"",1e999,"x",""]',
            "[" * 2900,  # nested deeper than the decoder goes
        )
    ),
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["services", "tasks", "nodes", "worker", "manager", "admin", "n1", *TOKENS])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
PAYLOADS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), json_values, max_size=6)
RAW = st.one_of(
    PAYLOADS.map(lambda p: orjson.dumps(p, option=orjson.OPT_NON_STR_KEYS)),
    st.binary(max_size=200),
    st.sampled_from([b"[]", b"1", b'"x"', b"null", b"{", b"\xff\xfe"]),
)

SPEC_KEYS = [
    "apiVersion", "kind", "metadata", "name", "labels", "spec", "mode", "replicas",
    "template", "runtime", "command", "args", "env", "workdir", "stopSignal",
    "stopGracePeriod", "resources", "reservations", "limits", "cpus", "memory",
    "restartPolicy", "condition", "delay", "maxAttempts", "window", "placement",
    "constraints", "image", "ports", "healthcheck", "test", "interval", "sim",
]  # fmt: skip
spec_values = st.recursive(
    json_scalars | st.sampled_from(["shoal/v1", "Service", "5s", "1x", "128Mi", "process"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(SPEC_KEYS), inner, max_size=5)
    ),
    max_leaves=15,
)
spec_documents = st.fixed_dictionaries(
    {},
    optional={
        "apiVersion": st.sampled_from(["shoal/v1", "v2"]) | spec_values,
        "kind": st.sampled_from(["Service", "Pod"]) | spec_values,
        "metadata": st.fixed_dictionaries({}, optional={"name": json_scalars}) | spec_values,
        "spec": st.dictionaries(st.sampled_from(SPEC_KEYS), spec_values, max_size=5),
    },
)
spec_texts = st.one_of(
    st.lists(spec_documents, min_size=1, max_size=3).map(
        lambda docs: yaml.safe_dump_all(docs, sort_keys=False)
    ),
    st.text(max_size=300),
)


@dataclass
class Served:
    address: str
    admin: Any
    node: TlsIdentity
    node_name: str
    methods: dict[str, dict[str, bool]]  # service -> method -> is a stream
    web: str | None = None  # the HTTP listener (``serve_manager(http=True)``)


@contextlib.contextmanager
def serve_manager(root: Path, http: bool = False) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    stop = threading.Event()

    async def main() -> None:
        settings = ManagerSettings(
            store_url="memory://",
            state_dir=root,
            listen="127.0.0.1:0",
            join_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0" if http else None,
        )
        async with open_manager(settings) as manager:
            ready["web"] = manager.web.address
            ready["node"] = await manager.security.local_node("fuzz-node")
            ready["methods"] = {
                service: {name: not isinstance(m, Unary) for name, m in methods.items()}
                for service, methods in manager.served.items()
            }
            ready["address"] = manager.address
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if "address" in ready or not thread.is_alive():
                break
            stop.wait(0.05)
        assert "address" in ready, "the manager did not start"
        yield Served(
            ready["address"],
            load_bundle(root / "admin.yaml"),
            ready["node"],
            "fuzz-node",
            ready["methods"],
            ready["web"],
        )
    finally:
        stop.set()
        thread.join(10)


def secure_channel(address: str, tls: Any) -> grpc.Channel:
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem),
        options=[("grpc.ssl_target_name_override", "shoal-manager")],
    )


def call_raw(channel: grpc.Channel, path: str, body: bytes, stream: bool = False) -> str:
    """The status code name of one call with ``body`` as the request bytes."""
    try:
        if stream:
            responses = channel.unary_stream(path)(body, timeout=3)
            try:
                next(iter(responses))
            finally:
                responses.cancel()
        else:
            channel.unary_unary(path)(body, timeout=5)
    except grpc.RpcError as exc:
        code = exc.code()
        return "OK" if code == grpc.StatusCode.CANCELLED else code.name
    except StopIteration:
        pass
    return "OK"
