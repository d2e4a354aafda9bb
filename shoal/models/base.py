"""The pydantic base every shoal model derives from.

Models are frozen (reads are immutable snapshots; change one with
``model_copy(update=...)``) and use camelCase names on the wire (YAML, JSON in
the store and in gRPC payloads) while Python code uses snake_case.

Unknown fields: what a *user* writes is validated with ``model_validate`` and
refuses them (a typo in a spec is an error with its file, line and field).
What shoal *reads back* from the store or a peer goes through ``from_wire``,
which ignores them: a manager or agent one version newer may add a field, and
the older ones must keep reading everything it writes, so managers and agents
can be upgraded one at a time. An older manager that rewrites such an object
drops the fields it does not know, so a new field takes effect once every
manager knows it.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, camelCase, as stored and sent."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_wire(cls, data: dict[str, Any] | bytes | str) -> Self:
        """Read an object stored or sent by any shoal version: unknown fields are ignored."""
        if isinstance(data, bytes | str):
            return cls.model_validate_json(data, extra="ignore")
        return cls.model_validate(data, extra="ignore")
