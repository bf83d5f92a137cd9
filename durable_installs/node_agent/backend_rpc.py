"""The two gRPC calls the agent makes to a backend process: ``Health`` and ``Free`` (§17).

No generated code: both requests are the empty ``HealthMessage`` (zero bytes on the wire) and
the replies are decoded by hand — ``Reply`` has ``message`` (bytes) as field 1, ``Result`` has
``message`` (string) as field 1 and ``success`` (bool) as field 2. A fresh channel per call
avoids gRPC's reconnect backoff hiding a backend that has just started listening.

``grpc`` ships no type information, so it is imported dynamically and kept inside this module.
"""

from __future__ import annotations

import importlib
from typing import Any

grpc: Any = importlib.import_module("grpc")
grpc_aio: Any = importlib.import_module("grpc.aio")

HEALTH = "/backend.Backend/Health"
FREE = "/backend.Backend/Free"
HEALTH_OK = b"\x0a\x02OK"


def _identity(data: bytes) -> bytes:
    return data


def read_bytes_field(message: bytes, wanted: int) -> bytes | None:
    """The first length-delimited field number ``wanted`` of a protobuf message, if any."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type == 2:
            length, pos = _varint(message, pos)
            if number == wanted:
                return message[pos : pos + length]
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            return None
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("truncated varint")


async def _call(address: str, method: str, call_timeout: float, token: str) -> bytes:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc_aio.insecure_channel(address) as channel:
        stub = channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        reply: bytes = await stub(b"", timeout=call_timeout, metadata=metadata)
        return reply


async def health(address: str, call_timeout: float = 2.0, token: str = "") -> bool:
    """Whether the backend at ``address`` answers ``Health`` with the message ``OK``."""
    try:
        reply = await _call(address, HEALTH, call_timeout, token)
        return read_bytes_field(reply, 1) == b"OK"
    except (grpc.RpcError, ValueError):
        return False


async def free(address: str, call_timeout: float = 5.0, token: str = "") -> bool:
    """Ask the backend to release its model before it is stopped; best effort."""
    try:
        await _call(address, FREE, call_timeout, token)
        return True
    except grpc.RpcError:
        return False
