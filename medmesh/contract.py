"""The compiled contract at run time: the descriptor image that buf builds into `gen/`, and the
betterproto2 message classes generated beside it.

Servers bind servicers from it, reflection serves it, clients build stubs from it, and the edge
reads its `google.api.http` options, so every interface comes from the one proto contract.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from betterproto2 import Message
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "gen" / "medmesh.binpb"
_TYPE_URL = "type.googleapis.com/"


def snake_case(name: str) -> str:
    """`GetStudy` → `get_study`: the Python name of an RPC (betterproto2's convention too)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])", r"_\1\2", name).lower()


@dataclass(frozen=True)
class Method:
    """One RPC of a service, with the classes that (de)serialise its messages."""

    service: str
    name: str
    client_streaming: bool
    server_streaming: bool
    request_type: type[Message]
    response_type: type[Message]

    @property
    def path(self) -> str:
        """The HTTP/2 path gRPC routes on: `/medmesh.ingest.v1.IngestService/GetStudy`."""
        return f"/{self.service}/{self.name}"


class DescriptorImage:
    """A `FileDescriptorSet` loaded into a pool of its own.

    A private pool (not the process default) avoids clashing with descriptors that other
    packages register on import (googleapis-common-protos, opentelemetry); reflection is given
    this pool explicitly.
    """

    def __init__(self, path: Path = DEFAULT_IMAGE, *, generated_package: str = "gen") -> None:
        self.path = path
        self.generated_package = generated_package
        self.files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
        self.pool = descriptor_pool.DescriptorPool()
        for file in self.files.file:  # buf writes files in dependency order
            self.pool.Add(file)

    def service_names(self, package_prefix: str = "") -> list[str]:
        """Full names of every service in the image (optionally under a package prefix)."""
        return [
            f"{file.package}.{service.name}"
            for file in self.files.file
            for service in file.service
            if file.package.startswith(package_prefix)
        ]

    def service(self, full_name: str) -> descriptor.ServiceDescriptor:
        """The descriptor of one service; KeyError names it when it is not in the contract."""
        return self.pool.FindServiceByName(full_name)

    def methods(self, service_name: str) -> list[Method]:
        """Every RPC of `service_name` with its request/response classes resolved."""
        return [
            Method(
                service=service_name,
                name=m.name,
                client_streaming=m.client_streaming,
                server_streaming=m.server_streaming,
                request_type=self.message_class(m.input_type.full_name),
                response_type=self.message_class(m.output_type.full_name),
            )
            for m in self.service(service_name).methods
        ]

    def message_class(self, full_name: str) -> type:
        """The betterproto2 class generated for a message (`medmesh.ingest.v1.Study`)."""
        return _message_class(self.generated_package, self.pool, full_name)


@functools.cache
def _message_class(generated_package: str, pool: Any, full_name: str) -> type:
    message = pool.FindMessageTypeByName(full_name)
    # Importing the generated module registers its classes in betterproto2's message pool.
    importlib.import_module(f"{generated_package}.{message.file.package}")
    message_pool = importlib.import_module(f"{generated_package}.message_pool")
    return message_pool.default_message_pool.url_to_type[_TYPE_URL + full_name]
