"""Property-based tests: no input makes shoal fail in a way a user cannot act on.

* the spec loader: every text either loads or is refused with ``FILE:LINE:``
  problems (``SpecError``), never another exception;
* every Control and Dispatcher method of a real manager (real gRPC, mutual TLS):
  any request bytes get a definite answer, never ``UNKNOWN`` or ``INTERNAL``.

Seeded (``derandomize``) and bounded, so CI runs the same cases in seconds;
``bench/fuzz_api.py`` runs many more.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.api.transport import CONTROL_SERVICE, DISPATCHER_SERVICE
from shoal.errors import SpecError
from shoal.manifest import load_text
from tests.fuzzing import (
    CLIENT_STREAMS,
    CONTROL_METHODS,
    DISPATCHER_METHODS,
    PAYLOADS,
    RAW,
    TOKENS,
    Served,
    call_raw,
    json_values,
    secure_channel,
    serve_manager,
    spec_texts,
)
from tests.reconciler.world import node

BOUNDED = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CONTROL_UNARY = [m for m, stream in CONTROL_METHODS if not stream]
DISPATCHER_UNARY = [m for m, stream in DISPATCHER_METHODS if not stream]
NEVER = {"UNKNOWN", "INTERNAL"}


@settings(max_examples=300, derandomize=True, deadline=None)
@given(spec_texts)
def test_spec_loader_loads_or_names_file_and_line(text: str) -> None:
    try:
        load_text(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.problems
        assert all(p.startswith("fuzz.yaml:") for p in exc.problems), exc.problems


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_manager(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def test_the_suites_cover_every_method_a_manager_serves(served: Served) -> None:
    """A method added to the API without fuzz coverage fails here."""
    assert served.methods[CONTROL_SERVICE] == dict(CONTROL_METHODS)
    dispatcher = {m: s for m, s in served.methods[DISPATCHER_SERVICE].items()}
    for name in CLIENT_STREAMS:
        dispatcher.pop(name)
    assert dispatcher == dict(DISPATCHER_METHODS)


@pytest.mark.parametrize("method", CONTROL_UNARY)
def test_control_answers_every_payload_definitely(
    served: Served, method: str, tmp_path: Path
) -> None:
    channel = secure_channel(served.address, served.admin)

    @BOUNDED
    @given(RAW)
    def check(body: bytes) -> None:
        code = call_raw(channel, f"/{CONTROL_SERVICE}/{method}", body)
        assert code not in NEVER, (method, body)

    try:
        check()
    finally:
        channel.close()


@pytest.mark.parametrize("method", DISPATCHER_UNARY)
def test_dispatcher_answers_every_payload_definitely(served: Served, method: str) -> None:
    channel = secure_channel(served.address, served.node)

    @BOUNDED
    @given(RAW)
    def check(body: bytes) -> None:
        code = call_raw(channel, f"/{DISPATCHER_SERVICE}/{method}", body)
        assert code not in NEVER, (method, body)

    try:
        check()
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("service", "method", "as_node"),
    [
        *(pytest.param(CONTROL_SERVICE, m, False, id=m) for m, stream in CONTROL_METHODS if stream),
        *(
            pytest.param(DISPATCHER_SERVICE, m, True, id=m)
            for m, stream in DISPATCHER_METHODS
            if stream
        ),
    ],
)
def test_streams_answer_every_payload_definitely(
    served: Served, service: str, method: str, as_node: bool
) -> None:
    channel = secure_channel(served.address, served.node if as_node else served.admin)

    @BOUNDED
    @given(RAW)
    def check(body: bytes) -> None:
        code = call_raw(channel, f"/{service}/{method}", body, stream=True)
        assert code not in NEVER, (method, body)

    try:
        check()
    finally:
        channel.close()


# ``Get`` of tasks in pages: limits and ``continue`` tokens of every shape.
TASK_PAGES = st.fixed_dictionaries(
    {"kind": st.just("tasks")},
    optional={
        "limit": st.integers(min_value=-5, max_value=2**40) | json_values,
        "continue": st.sampled_from(TOKENS) | st.text(max_size=80) | json_values,
        "service": st.sampled_from(["web", ""]) | json_values,
        "all": st.booleans(),
    },
).map(lambda p: orjson.dumps(p, option=orjson.OPT_NON_STR_KEYS))


def test_task_pages_answer_every_limit_and_token_definitely(served: Served) -> None:
    channel = secure_channel(served.address, served.admin)

    @BOUNDED
    @given(TASK_PAGES)
    def check(body: bytes) -> None:
        code = call_raw(channel, f"/{CONTROL_SERVICE}/Get", body)
        assert code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND"), (code, body)

    try:
        check()
    finally:
        channel.close()


def test_a_missing_field_is_named(served: Served) -> None:
    channel = secure_channel(served.address, served.admin)
    try:
        import grpc

        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(f"/{CONTROL_SERVICE}/UpdateNode")(b"{}", timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name" in (caught.value.details() or "")
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(f"/{CONTROL_SERVICE}/Get")(b"x" * (2 * 1024 * 1024), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        channel.close()


# What an agent may send on its session after registering: the kinds the manager reads,
# with fuzzed fields, besides anything at all.
SESSION_MESSAGES = st.one_of(
    RAW,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["status", "heartbeat", "other"])}, optional={"batch": json_values}
    )
    .flatmap(lambda head: PAYLOADS.map(lambda body: {**body, **head}))
    .map(lambda p: orjson.dumps(p, option=orjson.OPT_NON_STR_KEYS)),
)


def test_session_messages_after_registering_are_answered_definitely(served: Served) -> None:
    """A session's later messages (heartbeats, status batches, anything) never get
    UNKNOWN or INTERNAL: a message the manager cannot take ends the session with a
    named reason; while the session lives, a status batch is answered (with a named
    error if it could not be written) and a heartbeat sent after it is answered."""
    channel = secure_channel(served.address, served.node)
    register = orjson.dumps(
        {
            "nodeId": served.node_name,
            "description": node(served.node_name).description.to_wire(),
            "catalog": False,
        }
    )

    @BOUNDED
    @given(SESSION_MESSAGES)
    def check(body: bytes) -> None:
        sent: queue.Queue[bytes | None] = queue.Queue()
        for message in (register, body, orjson.dumps({"type": "heartbeat"})):
            sent.put(message)
        call = channel.stream_stream(f"/{DISPATCHER_SERVICE}/Session")(
            iter(sent.get, None), timeout=5
        )
        try:
            parsed = orjson.loads(body) if body[:1] == b"{" else None
        except orjson.JSONDecodeError:
            parsed = None
        awaited = {"heartbeat"} | ({"status"} if (parsed or {}).get("type") == "status" else set())
        try:
            kinds = []
            for raw in call:
                answer = orjson.loads(raw)
                kinds.append(answer["type"])
                error = answer.get("error") or {}
                assert error.get("code") not in NEVER, (body, answer)
                if answer["type"] == "status":
                    assert not error or error.get("message"), (body, answer)
                awaited.discard(answer["type"])
                if not awaited:
                    break
            assert kinds[:2] == ["session", "assignments"], (body, kinds)
        except grpc.RpcError as exc:
            code = exc.code()
            assert code.name not in NEVER | {"DEADLINE_EXCEEDED"}, (body, code, exc.details())
            assert exc.details(), (body, code)
        finally:
            sent.put(None)
            call.cancel()

    try:
        check()
    finally:
        channel.close()
