"""A tiny third-party shoal runtime: the ``process`` runtime, at nice 19.

Specs use it with ``runtime: lowprio``; everything else (stop, logs, adoption
after an agent restart) is the process runtime's. See ``docs/runtimes.md``.
"""

from __future__ import annotations

import dataclasses

from shoal.runtimes.base import TaskHandle, TaskLaunch
from shoal.runtimes.process import ProcessRuntime

NICENESS = 19


class LowPriorityRuntime(ProcessRuntime):
    """Runs each task under ``nice -n 19``."""

    name = "lowprio"

    async def start(self, launch: TaskLaunch) -> TaskHandle:
        template = launch.template
        command = ["nice", "-n", str(NICENESS), *template.command]
        niced = template.model_copy(update={"command": command})
        return await super().start(dataclasses.replace(launch, template=niced))
