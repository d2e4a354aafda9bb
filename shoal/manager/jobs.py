"""The ``RunJob`` Control method: ``shoal job run NAME`` starts a run of a job now.

It records the request in ``status.job.requestedAt``; the job reconciler
(``shoal.reconciler.jobs``) starts the run in its next pass, applying the
job's ``concurrencyPolicy`` (a request under ``Forbid`` while a run is active
is refused here, with the run's number). A request is ``{"name"}``; the answer
``{"name", "requestedAt"}``.
"""

from __future__ import annotations

import grpc.aio

from shoal.api.transport import Payload
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import ConflictError, NotFoundError
from shoal.models.job import JobStatus
from shoal.models.service import ServiceStatus
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.store.typed import Change


class JobControl:
    """Handler behind ``RunJob``."""

    def __init__(self, informer: Informer, events: EventRecorder, clock: Clock = SYSTEM_CLOCK):
        self.informer = informer
        self.events = events
        self.clock = clock

    async def run_job(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = str(request.get("name", ""))
        for _ in range(5):
            entry = self.informer.service(name)
            if entry is None:
                raise NotFoundError(f"service {name!r} not found")
            service = entry.obj
            if not service.spec.is_job:
                raise ValueError(f"service {name!r} is not a job (mode {service.spec.mode})")
            status = service.status or ServiceStatus()
            job = status.job or JobStatus()
            active = job.active_runs()
            if active and service.spec.job_config.concurrency_policy == "Forbid":
                raise ValueError(
                    f"job {name!r}: run {active[-1].number} is active and concurrencyPolicy "
                    "is Forbid; wait for it to end"
                )
            now = self.clock.now()
            changed = service.model_copy(
                update={
                    "status": status.model_copy(
                        update={"job": job.model_copy(update={"requested_at": now})}
                    )
                }
            )
            try:
                await self.informer.commit([Change.put(changed, entry.revision)])
            except ConflictError:
                continue
            self.events.record(f"service/{name}", "Job", "run requested (shoal job run)")
            return {"name": name, "requestedAt": now.isoformat()}
        raise ConflictError(f"service {name!r} kept changing; try again")
