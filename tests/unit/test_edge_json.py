"""The edge's REST responses: its proto-JSON printer gives exactly betterproto2's `to_dict`
for every message of the contract, filled and empty."""

from __future__ import annotations

import datetime
import importlib
import pkgutil
from typing import Any

import betterproto2
import pytest

import gen.medmesh
from medmesh.edge.transcode import message_dict

_INTS = {"int32": -3, "sint32": -5, "sfixed32": -7, "int64": -9, "sint64": -11, "sfixed64": 13}
_WHEN = datetime.datetime(2026, 12, 4, 13, 0, 7, 123456, tzinfo=datetime.UTC)


def _contract_messages() -> list[type[betterproto2.Message]]:
    found = []
    for info in pkgutil.walk_packages(gen.medmesh.__path__, "gen.medmesh."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            is_message = isinstance(value, type) and issubclass(value, betterproto2.Message)
            if is_message and value.__module__ == module.__name__:
                found.append(value)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__name__}")


def _scalar(meta: Any, field_cls: Any, index: int) -> Any:
    kind = meta.proto_type
    if kind == "string":
        return f"v{index} caf\u00e9"
    if kind == "bool":
        return True
    if kind == "bytes":
        return b"\x00\xffab"
    if kind in ("float", "double"):
        return 0.73 + index
    if kind == "enum":
        members = [m for m in field_cls if m.value]
        return members[index % len(members)] if members else field_cls(0)
    return _INTS.get(kind, 7 + index)


def _filled(cls: type[betterproto2.Message], depth: int = 0) -> betterproto2.Message:
    """An instance with every field set (the first member of each oneof), nested 3 deep."""
    values: dict[str, Any] = {}
    groups: set[str] = set()
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.group and meta.group in groups:
            continue
        field_cls = cls._betterproto.cls_by_field.get(name)
        if meta.proto_type == "message":
            if meta.unwrap is not None:
                value: Any = _WHEN
            elif depth >= 3:
                continue
            else:
                value = _filled(field_cls, depth + 1)
        elif meta.proto_type == "map":
            value_meta = meta.map_meta[1]
            value_cls = cls._betterproto.cls_by_field.get(f"{name}.value")
            item = (
                _filled(value_cls, depth + 1)
                if value_meta.proto_type == "message"
                else _scalar(value_meta, value_cls, 1)
            )
            value = {"k1": item, "k2": item} if value_meta.proto_type != "message" else {"k": item}
        else:
            value = _scalar(meta, field_cls, 0)
        if meta.repeated:
            value = [value, value if meta.proto_type == "message" else _scalar(meta, field_cls, 1)]
        values[name] = value
        if meta.group:
            groups.add(meta.group)
    return cls(**values)


MESSAGES = _contract_messages()


@pytest.mark.parametrize(
    "cls", MESSAGES, ids=[f"{c.__module__[12:]}.{c.__name__}" for c in MESSAGES]
)
def test_the_edge_prints_every_contract_message_as_betterproto2_does(cls: Any) -> None:
    filled = _filled(cls)
    assert message_dict(filled) == filled.to_dict()
    received = cls.FromString(bytes(filled))  # as the edge gets it: floats are float32 now
    assert message_dict(received) == received.to_dict()
    assert message_dict(cls()) == cls().to_dict()
