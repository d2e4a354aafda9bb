"""``shoal down``'s clean-up, on its own: it releases only what belonged to the tasks it removed."""

from __future__ import annotations

from pathlib import Path

from shoal.agent.ports import PortAllocator
from shoal.cli.down import release_task_files
from shoal.models.container import PortMapping


async def test_down_keeps_the_port_records_of_tasks_it_did_not_remove(tmp_path: Path) -> None:
    # A task of a runtime ``down`` could not reach (a Podman API that timed out while
    # conmon keeps the container running) may still run: its published port stays taken.
    ports = PortAllocator(tmp_path / "agent" / "ports")
    ports.load()
    ports.allocate("removed", [PortMapping.model_validate({"name": "http"})])
    ports.allocate("unreachable", [PortMapping.model_validate({"name": "http"})])

    await release_task_files(tmp_path, "n1", {"removed"})

    assert set(PortAllocator(tmp_path / "agent" / "ports").load()) == {"unreachable"}
