"""How the `gatehouse` admin commands print what the server answered: a table (default),
JSON or YAML (`-o json|yaml`), and errors.

Messages become plain data first (`plain`): every field, defaults included; a Subject is
`type:id`, an enum value its name without the enum's prefix (`ACTIVE`, `NO_GRANT`), a
Timestamp an RFC 3339 string ("" when unset), a Struct a dict, int64 a number.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence, TextIO

import yaml
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from gatehouse.display_text import escape_unprintable
from gatehouse_client import GatehouseError
from gatehouse_client.v1 import common_pb2

FORMATS = ("table", "json", "yaml")
# Unset, these print as "" (as they do set: as text), other messages as null.
_EMPTY_AS_TEXT = ("google.protobuf.Timestamp", "gatehouse.v1.Subject")


def _enum_name(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = "".join(f"{word}_" for word in _words(enum.name)).upper()
    return str(value.name).removeprefix(prefix)


def _words(camel: str) -> list[str]:
    words, current = [], ""
    for char in camel:
        if char.isupper() and current:
            words.append(current)
            current = ""
        current += char
    return [*words, current]


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_name(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return plain(value)
    return value


def plain(message: Message) -> Any:
    """`message` as plain data (see the module docstring)."""
    if isinstance(message, common_pb2.Subject):
        return f"{message.type}:{message.id}" if message.type or message.id else ""
    if isinstance(message, timestamp_pb2.Timestamp):
        return message.ToJsonString() if message.seconds or message.nanos else ""
    if isinstance(message, struct_pb2.Struct):
        return MessageToDict(message)
    data: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            data[field.name] = {key: _value(value_field, item) for key, item in sorted(value.items())}
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            data[field.name] = [_value(field, item) for item in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            data[field.name] = "" if field.message_type.full_name in _EMPTY_AS_TEXT else None
        else:
            data[field.name] = _value(field, value)
    return data


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return ",".join(f"{key}={_cell(item) if not isinstance(item, dict) else json.dumps(item)}"
                        for key, item in value.items())
    # A string from the data (a condition) may hold a newline (a forged row) or a
    # terminal control sequence: printed escaped.
    return escape_unprintable(str(value))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Aligned columns, upper-case headers; `(none)` for no rows."""
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(width) for column, width in zip(columns, widths)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines)


def fields(data: dict[str, Any], only: Iterable[str] | None = None) -> str:
    """One `name: value` line per field (a dict or list value as JSON)."""
    names = list(only) if only is not None else list(data)
    width = max((len(name) for name in names), default=0)
    lines = []
    for name in names:
        value = data.get(name)
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) and value else _cell(value)
        lines.append(f"{name + ':':<{width + 1}} {text}".rstrip())
    return "\n".join(lines)


def emit(data: Any, output: str, text: str, out: TextIO = sys.stdout) -> None:
    """Print `data` as JSON or YAML, or `text` (its table) for `table`."""
    if output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    elif output == "yaml":
        out.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        out.write(text + "\n")


def error_data(error: GatehouseError) -> dict[str, Any]:
    return {
        "code": error.code.name,
        "reason": error.reason,
        "field": error.field,
        "message": error.message,
        "violations": [{"field": field, "description": text} for field, text in error.violations],
        "metadata": error.metadata,
    }


def emit_error(error: GatehouseError, output: str, err: TextIO = sys.stderr) -> None:
    """The error on stderr: `gatehouse: error: CODE REASON: message` and one line per bad
    field; a JSON or YAML `{"error": {...}}` with `-o json|yaml`."""
    if output in ("json", "yaml"):
        emit({"error": error_data(error)}, output, "", err)
        return
    err.write(f"gatehouse: error: {error.code.name}{' ' + error.reason if error.reason else ''}: {error.message}\n")
    for field, description in error.violations:
        err.write(f"  field {field}: {description}\n")
    for key, value in sorted(error.metadata.items()):
        err.write(f"  {key}: {value}\n")
