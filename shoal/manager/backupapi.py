"""The Control API's ``Backup``: a consistent snapshot of the store, streamed to the CLI.

Any manager answers (it reads its store directly, at one revision: see
``shoal.store.backup``), so a backup never waits for, or loads, the leader's
reconcilers. The stream is the backup file itself, ``{"lines": [...]}`` in
batches, so the client writes what it receives and checks it with the same
reader a restore uses. Its values are as stored: secrets stay sealed. It is
not a read in the roles' sense (it copies every object of the cluster):
admins only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio

from shoal.api.transport import Method, Payload, ServerStream
from shoal.store.backup import lines, snapshot
from shoal.store.base import Store

# Lines per message: a few hundred KiB, far below the message size limit.
BATCH = 500


class BackupApi:
    """``Backup`` over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def methods(self) -> dict[str, Method]:
        return {"Backup": ServerStream(self.backup)}

    async def backup(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload]:
        batch: list[str] = []
        for line in lines(await snapshot(self.store)):
            batch.append(line)
            if len(batch) >= BATCH:
                yield {"lines": batch}
                batch = []
        if batch:
            yield {"lines": batch}
