"""What the container runtimes are told about DNS: only the node's listener (which relays
names outside the zone to the host's servers), shoal's search domains, then the host's."""

from __future__ import annotations

from pathlib import Path

from shoal.models import TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskLaunch
from shoal.runtimes.containers import container_config, host_search


def launch(labels: dict[str, str]) -> TaskLaunch:
    template = TaskTemplate.model_validate(
        {"runtime": "docker", "image": "shoal-test/busybox:latest", "labels": labels}
    )
    return TaskLaunch(task_id="t1", service="shop-web", slot=1, template=template, env={})


def test_the_host_search_domains_are_kept(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# written by hand\n"
        "nameserver 127.0.0.53\n"
        "search corp.example lab.example.\n"
        "options edns0\n"
    )
    assert host_search(conf) == ["corp.example", "lab.example"]


def test_stack_containers_search_their_stack_first(tmp_path: Path) -> None:
    settings = RuntimeSettings(state_dir=tmp_path, node_name="n1")
    config = container_config(launch({"shoal.stack": "shop"}), settings, "172.17.0.1")
    # The listener alone: a resolver that asks every server at once (musl) must not take
    # an upstream NXDOMAIN for a shoal name.
    assert config.dns == ["172.17.0.1"]
    assert config.dns_search[:2] == ["shop.shoal", "shoal"]
    alone = container_config(launch({}), settings, "172.17.0.1")
    assert alone.dns_search[0] == "shoal" and "shop.shoal" not in alone.dns_search
    # No listener for containers (--container-dns off, or it could not bind): engine defaults.
    default = container_config(launch({"shoal.stack": "shop"}), settings)
    assert (default.dns, default.dns_search) == ([], [])
