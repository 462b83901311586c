"""Protobuf's wire format by hand, so the fuzzer can send what protobuf itself refuses
to serialize (NUL and non-UTF-8 bytes in string fields, unknown enum numbers, wrong wire
types, lying length prefixes) and still build well-formed messages of any type."""

from __future__ import annotations

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    """`value` as a varint; negative numbers as their 64-bit two's complement (10 bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


def struct_nested(levels: int, leaf: bytes = b"") -> bytes:
    """A google.protobuf.Struct nested `levels` deep: {"a": {"a": ... {}}}, as bytes."""
    struct = leaf
    for _ in range(levels - 1):
        value = length_delimited(5, struct)  # Value.struct_value
        entry = length_delimited(1, b"a") + length_delimited(2, value)  # FieldsEntry key, value
        struct = length_delimited(1, entry)  # Struct.fields
    return struct


def list_nested(levels: int) -> bytes:
    """A Struct {"a": [[[...]]]} whose list values nest `levels` deep, as bytes."""
    inner = b""
    for _ in range(levels - 1):
        inner = length_delimited(1, length_delimited(6, inner))  # ListValue.values[0].list_value
    value = length_delimited(6, inner)
    return length_delimited(1, length_delimited(1, b"a") + length_delimited(2, value))
