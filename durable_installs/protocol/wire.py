"""Base model that encodes exactly like LocalAI's Go structs.

Go's ``omitempty`` drops a field holding its zero value, and Go receivers treat a missing
field as the zero value. Nodes compare bodies field by field (``replica_index`` absent for
replica 0, ``force`` absent when false), so every wire model serialises through one rule
instead of each call site remembering ``exclude_defaults``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, SerializationInfo, model_serializer

T = TypeVar("T")


class _OmitEmptyMarker:
    """Metadata marker: drop the field from JSON when it holds its zero value."""

    def __repr__(self) -> str:
        return "OmitEmpty"


OMIT_EMPTY = _OmitEmptyMarker()

OmitEmpty = Annotated[T, OMIT_EMPTY]
"""``OmitEmpty[str]``: a field serialised only when non-zero, like Go's ``omitempty``."""


def _is_zero(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool | int | float | str | list | dict | tuple):
        return not value
    return False


class WireModel(BaseModel):
    """A NATS message body: unknown fields ignored, ``omitempty`` fields dropped when zero.

    The docstring under a field is its description (the generated wire reference)."""

    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, use_attribute_docstrings=True
    )

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, field in type(self).model_fields.items():
            key = field.alias if info.by_alias and field.alias else name
            if key in data and OMIT_EMPTY in field.metadata and _is_zero(data[key]):
                del data[key]
        return data

    def to_wire(self) -> bytes:
        """The UTF-8 JSON body to publish."""
        return self.model_dump_json().encode()
