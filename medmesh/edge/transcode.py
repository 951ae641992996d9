"""REST ↔ gRPC transcoding by the google.api.http rules: path variables, query parameters and
the body become one proto-JSON object, parsed into the RPC's betterproto2 request; responses
go back as proto-JSON (lowerCamel names, enums by name, 64-bit integers as strings, defaults
omitted: the same print options as envoy/envoy.yaml gives Envoy's transcoder).

Bad input is a domain `InvalidArgument` with one field violation per bad field, so the edge
answers 400 with a google.rpc.BadRequest exactly like a service would.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from betterproto2 import TYPE_MAP, TYPE_MESSAGE, Casing, Message, OutputFormat, _value_to_dict
from google.protobuf import descriptor
from google.protobuf.descriptor import FieldDescriptor

from medmesh.edge.routes import RestMatch
from medmesh.errors import FieldViolation, InvalidArgument

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# The values each integer type can hold: a larger one would reach the service as a varint it
# cannot decode (found by the schemathesis run: a 500 instead of a 400).
_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_INTEGERS = frozenset(_INTEGER_RANGES)
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
# Well-known types whose proto-JSON form is a single string, so a query value can carry them.
_STRING_VALUED_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
    }
)
# Message types whose JSON is free-form: their members are not fields to check.
_OPAQUE_MESSAGES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.Any"}
)


def _field(message: descriptor.Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its proto name (`page_size`) or its JSON name (`pageSize`)."""
    found = message.fields_by_name.get(name)
    if found is not None:
        return found
    return next((f for f in message.fields if f.json_name == name), None)


def _resolve(message: descriptor.Descriptor, path: str) -> list[FieldDescriptor] | None:
    fields: list[FieldDescriptor] = []
    current: descriptor.Descriptor | None = message
    for name in path.split("."):
        field = _field(current, name) if current is not None else None
        if field is None:
            return None
        fields.append(field)
        current = field.message_type
    return fields


def _number(field: FieldDescriptor, raw: str, path: str) -> int | float:
    try:
        value = int(raw, 10) if field.type in _INTEGERS else float(raw)
    except ValueError:
        raise InvalidArgument.for_field(path, f"{raw!r} is not a number") from None
    low, high = _INTEGER_RANGES.get(field.type, (value, value))
    if not low <= value <= high:
        raise InvalidArgument.for_field(path, f"{raw} is out of range [{low}, {high}]")
    return value


def _bool(raw: str, path: str) -> bool:
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise InvalidArgument.for_field(path, f"{raw!r} is not true or false")


def _enum(field: FieldDescriptor, raw: str, path: str) -> str:
    enum = field.enum_type
    if raw in enum.values_by_name:
        return raw
    if raw.lstrip("-").isdigit() and int(raw) in enum.values_by_number:
        return enum.values_by_number[int(raw)].name
    raise InvalidArgument.for_field(path, f"{raw!r} is not a value of {enum.name}")


def _scalar(field: FieldDescriptor, raw: str, path: str) -> Any:
    """A path or query value converted to the field's proto-JSON value."""
    if field.type in _INTEGERS or field.type in _FLOATS:
        return _number(field, raw, path)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return _bool(raw, path)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum(field, raw, path)
    if (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.full_name not in _STRING_VALUED_MESSAGES
    ):
        raise InvalidArgument.for_field(path, "a message field cannot be set from a string")
    return raw


def _set(
    target: dict[str, Any], fields: list[FieldDescriptor], value: Any, *, append: bool
) -> None:
    """Set a (nested) field in a proto-JSON dict, reusing whichever key spelling is there."""
    for field in fields[:-1]:
        key = field.name if field.name in target else field.json_name
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    leaf = fields[-1]
    key = leaf.name if leaf.name in target else leaf.json_name
    if append:
        target.setdefault(key, []).append(value)
    else:
        target[key] = value


def _unknown_body_fields(message: descriptor.Descriptor, value: Any, prefix: str) -> list[str]:
    """Field paths in a JSON body that the message does not have (proto-JSON rejects them)."""
    if not isinstance(value, dict) or message.full_name in _OPAQUE_MESSAGES:
        return []
    unknown: list[str] = []
    for key, item in value.items():
        field = _field(message, key)
        if field is None:
            unknown.append(f"{prefix}{key}")
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            # Violations name fields by their proto path (`delivery_target.colour`).
            items = item if isinstance(item, list) else [item]
            for index, element in enumerate(items):
                suffix = f"[{index}]" if isinstance(item, list) else ""
                nested = f"{prefix}{field.name}{suffix}."
                unknown += _unknown_body_fields(field.message_type, element, nested)
    return unknown


def _parse_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from None


def request_json(match: RestMatch, query: Sequence[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The proto-JSON request object: body first, then path variables, then query values."""
    route, message = match.route, match.route.rpc.input
    data: dict[str, Any] = {}
    if route.body == "*":
        parsed = _parse_body(body) if body.strip() else {}
        if not isinstance(parsed, dict):
            raise InvalidArgument("the request body must be a JSON object")
        data = parsed
    elif route.body:
        fields = _resolve(message, route.body)
        if fields is None:  # pragma: no cover - buf checks the contract's body fields
            raise InvalidArgument(f"unknown body field {route.body}")
        if body.strip():
            _set(data, fields, _parse_body(body), append=False)
    violations = [
        FieldViolation(path, f"is not a field of {message.full_name}")
        for path in _unknown_body_fields(message, data, "")
    ]
    if violations:
        raise InvalidArgument("the request body has unknown fields", violations)
    for path, raw in match.bindings.items():
        fields = _resolve(message, path)
        if fields is None:  # pragma: no cover - buf checks the contract's path fields
            raise InvalidArgument(f"unknown path field {path}")
        _set(data, fields, _scalar(fields[-1], raw, path), append=False)
    _apply_query(match, query, data)
    return data


def _apply_query(match: RestMatch, query: Sequence[tuple[str, str]], data: dict[str, Any]) -> None:
    route, message = match.route, match.route.rpc.input
    bound = {*match.bindings, route.body} if route.body else set(match.bindings)
    violations: list[FieldViolation] = []
    for name, raw in query:
        fields = _resolve(message, name)
        if route.body == "*":
            violations.append(FieldViolation(name, "the body carries the whole request"))
        elif fields is None:
            violations.append(FieldViolation(name, f"is not a field of {message.full_name}"))
        elif any(".".join(f.name for f in fields[: i + 1]) in bound for i in range(len(fields))):
            violations.append(FieldViolation(name, "is already set by the path or the body"))
        else:
            try:
                value = _scalar(fields[-1], raw, name)
            except InvalidArgument as exc:
                violations.extend(exc.violations)
                continue
            _set(data, fields, value, append=fields[-1].is_repeated)
    if violations:
        raise InvalidArgument("invalid query parameters", violations)


def build_request(match: RestMatch, query: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """The serialized request an HTTP request maps to; InvalidArgument when it can't."""
    data = request_json(match, query, body)
    request_type = match.route.rpc.method.request_type
    try:
        # from_dict takes a value of the wrong JSON shape (an object for a string, a list for
        # a message) or an integer too large for its field as is; only serializing finds the
        # first (grpcio would log it and send no request at all), only parsing the bytes the
        # second (the service would answer UNKNOWN). So the edge does both here: a 400. The
        # bytes go upstream as they are (the typed callable's serializer is `bytes`).
        serialized = bytes(request_type.from_dict(data))
        request_type.FromString(serialized)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidArgument(
            f"the request does not fit {match.route.rpc.input.name}: {exc}"
        ) from None
    return serialized


def response_json(message: Any, response_body: str = "") -> bytes:
    """A response message (or its `response_body` field) as compact proto-JSON bytes."""
    data: Any = message_dict(message)
    if response_body:
        for name in response_body.split("."):
            data = data.get(_camel(name), data.get(name)) if isinstance(data, Mapping) else None
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# betterproto2's `Message.to_dict` resolves the class's type hints (typing.get_type_hints) and
# re-cases every field name with regular expressions on every call: ~0.2-0.3 ms for a small
# response, most of the edge's transcoding cost. `message_dict` is the same walk with both
# done once per class; values are still converted by betterproto2 itself, and messages that
# print themselves (Timestamp, Duration, wrappers, Struct, ...) still do.
_FieldRow = tuple[str, str, Any, Any]


@functools.cache
def _fields_of(cls: type) -> tuple[_FieldRow, ...]:
    hints = cls._type_hints()  # type: ignore[attr-defined]
    rows = []
    for name, meta in cls._betterproto.meta_by_field_name.items():  # type: ignore[attr-defined]
        hint = hints[name]
        rows.append((name, Casing.CAMEL(name).rstrip("_"), meta, hint))  # type: ignore[operator]
    return tuple(rows)


def _leaf(value: Any, meta: Any, field_type: Any, unwrap: Any) -> tuple[Any, bool]:
    if meta.proto_type == TYPE_MESSAGE and unwrap is None:
        return message_dict(value), False
    return _value_to_dict(
        value, meta.proto_type, field_type, unwrap, OutputFormat.PROTO_JSON, Casing.CAMEL, False
    )


def message_dict(message: Any) -> dict[str, Any]:
    """`message.to_dict()` (proto-JSON: lowerCamel names, defaults omitted), faster."""
    cls: type[Message] = type(message)
    if cls.to_dict is not Message.to_dict:  # a well-known type with its own JSON form
        return message.to_dict()
    if message._is_pydantic():
        message._validate()
    output: dict[str, Any] = {}
    for name, cased, meta, hint in _fields_of(cls):
        value = getattr(message, name)
        if meta.repeated:
            items = [_leaf(item, meta, hint.__args__[0], meta.unwrap)[0] for item in value]
            if items:
                output[cased] = items
        elif meta.proto_type == TYPE_MAP:
            key_type, value_type = hint.__args__
            key_meta, value_meta = meta.map_meta
            entries = {
                _leaf(k, key_meta, key_type, None)[0]: _leaf(
                    v, value_meta, value_type, value_meta.unwrap
                )[0]
                for k, v in value.items()
            }
            if entries:
                output[cased] = entries
        elif value is not None:
            field_type = hint.__args__[0] if meta.optional else hint
            converted, is_default = _leaf(value, meta, field_type, meta.unwrap)
            if meta.optional or not is_default:
                output[cased] = converted
    return output
