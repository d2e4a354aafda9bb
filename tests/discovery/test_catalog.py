"""The agent's copy of the endpoint catalog, fed the messages the managers send."""

from __future__ import annotations

from shoal.discovery.catalog import Catalog, Endpoint, EndpointPort, message


def endpoint(service: str, slot: int, port: int, node: str = "n1") -> Endpoint:
    return Endpoint(
        service=service,
        task_id=f"{service}.{slot}",
        slot=slot,
        node_id=node,
        address="127.0.0.2",
        ports=[EndpointPort(name="http", port=port)],
    )


def test_unknown_and_empty_services_differ() -> None:
    catalog = Catalog()
    assert not catalog.received and catalog.endpoints("web") is None
    catalog.apply(message({"web": [endpoint("web", 1, 20001)], "db": []}, full=True))
    assert catalog.received
    assert catalog.endpoints("db") == ()
    assert catalog.endpoints("nope") is None
    (web,) = catalog.endpoints("web") or ()
    assert web.port("http") == EndpointPort(name="http", port=20001)
    assert web.port("grpc") is None


def test_incremental_messages_replace_one_service_and_remove_others() -> None:
    catalog = Catalog()
    seen: list[frozenset[str]] = []
    catalog.subscribe(seen.append)
    catalog.apply(message({"web": [endpoint("web", 1, 20001)], "db": []}, full=True))
    two = [endpoint("web", 1, 20001), endpoint("web", 2, 20002)]
    changed = catalog.apply(message({"web": two}, full=False, removed=["db"]))
    assert changed == {"web", "db"}
    assert [e.slot for e in catalog.endpoints("web") or ()] == [1, 2]
    assert catalog.endpoints("db") is None
    assert seen == [frozenset({"web", "db"}), frozenset({"web", "db"})]


def test_repeated_lists_notify_nobody() -> None:
    catalog = Catalog()
    catalog.apply(message({"web": [endpoint("web", 1, 20001)]}, full=True))
    seen: list[frozenset[str]] = []
    catalog.subscribe(seen.append)
    version = catalog.version
    assert catalog.apply(message({"web": [endpoint("web", 1, 20001)]}, full=False)) == set()
    assert catalog.apply(message({"web": [endpoint("web", 1, 20001)]}, full=True)) == set()
    assert seen == [] and catalog.version == version


def test_a_full_catalog_drops_services_it_does_not_list() -> None:
    catalog = Catalog()
    catalog.apply(message({"web": [], "db": []}, full=True))
    assert catalog.apply(message({"web": []}, full=True)) == {"db"}
    assert catalog.services() == ["web"]


def test_a_failing_listener_does_not_stop_the_others() -> None:
    catalog = Catalog()
    seen: list[frozenset[str]] = []

    def broken(_: frozenset[str]) -> None:
        raise RuntimeError("consumer bug")

    catalog.subscribe(broken)
    unsubscribe = catalog.subscribe(seen.append)
    catalog.apply(message({"web": []}, full=True))
    unsubscribe()
    catalog.apply(message({"web": [endpoint("web", 1, 20001)]}, full=False))
    assert seen == [frozenset({"web"})]


def test_unknown_fields_from_a_newer_manager_are_ignored() -> None:
    catalog = Catalog()
    wire = endpoint("web", 1, 20001).to_wire() | {"zone": "eu-1"}
    catalog.apply({"type": "endpoints", "full": True, "services": {"web": [wire]}})
    assert [e.task_id for e in catalog.endpoints("web") or ()] == ["web.1"]
