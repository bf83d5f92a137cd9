"""The few pieces of the protobuf wire format the backend calls need, by hand.

LocalAI's backends speak gRPC with ``backend/backend.proto``. Generating code for the whole
service would add a build step and a protobuf runtime for five messages whose fields are
strings, integers, bools and floats; the encoding of those is small and fixed (varints,
length-delimited bytes, little-endian 32-bit floats). Decoding refuses truncated input
instead of guessing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    """A base-128 varint; negative numbers as their 64-bit two's complement (proto3 int32)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, LENGTH) + varint(len(payload)) + payload


def fixed32_float(number: int, value: float) -> bytes:
    return key(number, FIXED32) + struct.pack("<f", value)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ValueError when truncated."""
    result = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("truncated or overlong varint")


def as_int32(value: int) -> int:
    """A decoded varint read as a signed 32-bit integer (int32 and enums)."""
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    return max(min(value, 2**31 - 1), -(2**31))


def fields(message: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Every field of a message as (number, wire type, value): an int for varints and fixed
    numbers, the bytes for length-delimited fields. ValueError on anything malformed."""
    pos = 0
    while pos < len(message):
        tag, pos = read_varint(message, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(message, pos)
            yield number, wire_type, value
        elif wire_type == LENGTH:
            length, pos = read_varint(message, pos)
            if pos + length > len(message):
                raise ValueError("truncated length-delimited field")
            yield number, wire_type, message[pos : pos + length]
            pos += length
        elif wire_type in (FIXED32, FIXED64):
            size = 4 if wire_type == FIXED32 else 8
            if pos + size > len(message):
                raise ValueError("truncated fixed-size field")
            yield number, wire_type, int.from_bytes(message[pos : pos + size], "little")
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def read_bytes_field(message: bytes, wanted: int) -> bytes | None:
    """The first length-delimited field number ``wanted``, if any; None when malformed."""
    try:
        for number, wire_type, value in fields(message):
            if number == wanted and wire_type == LENGTH and isinstance(value, bytes):
                return value
    except ValueError:
        return None
    return None
