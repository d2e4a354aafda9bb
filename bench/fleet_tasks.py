"""The sim fleet's CPU per task, without a manager: assignments in, ``running`` out.

Builds N real ``Agent``s with the ``sim`` runtime (no sessions), hands them
the assignment messages a manager would send for T tasks (encoded to JSON
beforehand, decoded here as the transport does), spread as the scheduler
spreads them (each round one task per node), and collects every status batch
through a sender that encodes it as the session stream would. Prints the
process's CPU seconds (``time.process_time``) and wall seconds from the first
message until every task has been reported ``running``, and the CPU per task.

    .venv/bin/python bench/fleet_tasks.py [--nodes 900] [--tasks 9000] [--per-message 1]

It measures the fleet's part of ``bench/scale.py``'s apply (decode, task
runners, sim runtime, reporter) apart from gRPC and the manager, so a change
to that path can be tried in seconds and without the heavy lock; the figure
that counts stays ``bench/scale.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from shoal import gcpolicy
from shoal.agent.agent import Agent, AgentSettings
from shoal.agent.discovery import DnsSettings
from shoal.agent.reporter import Updates
from shoal.models import Task, TaskState, TaskStatus
from shoal.models.service import Service
from shoal.runtimes.base import RuntimeSettings
from shoal.runtimes.sim import SimRuntime


def template() -> Any:
    spec = {
        "replicas": 1000,
        "template": {"runtime": "sim", "command": ["sim"]},
        "restartPolicy": {"delay": "0s"},
    }
    return Service.model_validate({"metadata": {"name": "s0", "generation": 1}, "spec": spec})


def assignment(service: Service, node: str, slot: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    task = Task(
        id=uuid.uuid4().hex,
        service=service.metadata.name,
        slot=slot,
        node_id=node,
        template=service.spec.template,
        service_generation=1,
        created_at=now,
        status=TaskStatus(state=TaskState.ASSIGNED, timestamp=now, message="assigned"),
    )
    return task.to_wire()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-tasks-") as tmp:  # 900 journals
        await measure(args, Path(tmp))


async def measure(args: argparse.Namespace, root: Path) -> None:
    agents = []
    running = 0
    done = asyncio.Event()

    async def send(updates: Updates) -> None:
        nonlocal running
        orjson.dumps({"type": "status", "batch": 1, "updates": updates})
        for update in updates:
            status: Any = update["status"]
            if status["state"] == "running":
                running += 1
        if running >= args.tasks:
            done.set()

    for index in range(args.nodes):
        name = f"sim-{index:03d}"
        settings = AgentSettings(
            managers=["127.0.0.1:1"],
            token="",
            state_dir=root / name,
            name=name,
            runtimes=frozenset({"sim"}),
            dns=DnsSettings(listen=None, containers="off"),
            catalog=False,
        )
        agent = Agent(settings)
        runtime = SimRuntime(
            RuntimeSettings(state_dir=root / name / "runtimes" / "sim", node_name=name)
        )
        await runtime.recover()  # as the agent's start does
        agent.runtimes["sim"] = runtime
        agents.append(agent)
    service = template()
    messages: list[tuple[Agent, bytes]] = []
    slot = 0
    per = args.per_message
    while slot < args.tasks:
        for agent in agents:
            tasks = []
            for _ in range(per):
                if slot >= args.tasks:
                    break
                slot += 1
                tasks.append(assignment(service, agent.settings.name, slot))
            if tasks:
                message = {"type": "assignments", "full": False, "tasks": tasks, "removed": []}
                messages.append((agent, orjson.dumps(message)))
    reporters = [asyncio.create_task(a.reporter.run(send)) for a in agents]
    gcpolicy.long_lived_heap()  # as shoal agent --sim-nodes does
    gcpolicy.started()  # as the fleet does once its agents run
    cpu, wall = time.process_time(), time.perf_counter()
    for number, (agent, data) in enumerate(messages):
        await agent._assign(orjson.loads(data))
        if number % 50 == 49:
            await asyncio.sleep(0)  # let runners and reporters go, as a session would
    await asyncio.wait_for(done.wait(), 120)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"fleet-tasks: nodes={args.nodes} tasks={args.tasks} messages={len(messages)} "
        f"cpu_s={cpu:.2f} wall_s={wall:.2f} cpu_ms_per_task={1000 * cpu / args.tasks:.3f}"
    )
    for job in reporters:
        job.cancel()
    await asyncio.gather(*reporters, return_exceptions=True)
    for agent in agents:
        for runner in agent.runners.values():
            await runner.aclose()
        for runtime in agent.runtimes.values():
            await runtime.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=900)
    parser.add_argument("--tasks", type=int, default=9000)
    parser.add_argument("--per-message", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
