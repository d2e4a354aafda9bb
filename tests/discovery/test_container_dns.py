"""What the container runtimes are told about DNS: the node's listener first, then the host's."""

from __future__ import annotations

from pathlib import Path

from shoal.models import TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskLaunch
from shoal.runtimes.containers import container_config, host_resolvers


def launch(labels: dict[str, str]) -> TaskLaunch:
    template = TaskTemplate.model_validate(
        {"runtime": "docker", "image": "shoal-test/busybox:latest", "labels": labels}
    )
    return TaskLaunch(task_id="t1", service="shop-web", slot=1, template=template, env={})


def test_host_resolvers_skip_what_containers_cannot_reach(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# written by hand\n"
        "nameserver 127.0.0.53\n"
        "nameserver 192.0.2.53\n"
        "nameserver ::1\n"
        "nameserver 2001:db8::53\n"
        "search corp.example lab.example.\n"
        "options edns0\n"
    )
    assert host_resolvers(conf) == (["192.0.2.53", "2001:db8::53"], ["corp.example", "lab.example"])


def test_stack_containers_search_their_stack_first(tmp_path: Path) -> None:
    settings = RuntimeSettings(state_dir=tmp_path, node_name="n1")
    config = container_config(launch({"shoal.stack": "shop"}), settings, "172.17.0.1")
    assert config.dns[0] == "172.17.0.1"
    assert config.dns_search[:2] == ["shop.shoal", "shoal"]
    alone = container_config(launch({}), settings, "172.17.0.1")
    assert alone.dns_search[0] == "shoal" and "shop.shoal" not in alone.dns_search
    # No listener for containers (--container-dns off, or it could not bind): engine defaults.
    default = container_config(launch({"shoal.stack": "shop"}), settings)
    assert (default.dns, default.dns_search) == ([], [])
