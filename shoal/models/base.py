"""The pydantic base every shoal model derives from.

Models are frozen (reads are immutable snapshots; change one with
``model_copy(update=...)``), refuse unknown fields, and use camelCase names on
the wire (YAML, JSON in the store and in gRPC payloads) while Python code uses
snake_case.
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
        if isinstance(data, bytes | str):
            return cls.model_validate_json(data)
        return cls.model_validate(data)
