"""Where each service listens, and the gRPC channels to it.

In production one gateway address serves every service (Envoy routes native gRPC by its
`/package.Service/` path). Locally `medmesh up` starts each service on its own port, so an
address can also be given per service area, or as the JSON its `--status-file` writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc

AREAS = ("auth", "ingest", "infer", "report")

# Calls of the SDK carry files of up to 1 MiB a message (UploadFile, DownloadReport chunks)
# and results lists; gRPC's 4 MiB default receive limit is kept for anything else.
_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 16 * 1024 * 1024),)


def area_of(service: str) -> str:
    """`medmesh.ingest.v1.IngestService` → `ingest`."""
    parts = service.split(".")
    if len(parts) < 4 or parts[0] != "medmesh":
        raise ValueError(f"{service!r} is not a medmesh service")
    return parts[1]


@dataclass(frozen=True)
class Endpoints:
    """`Endpoints.parse("gateway:443")`, `Endpoints.parse("auth=h:1,ingest=h:2,...")` or
    `Endpoints.parse("status.json")` (written by `medmesh up --status-file`)."""

    default: str = ""
    """The address of every service without one of its own (a gateway)."""
    by_area: dict[str, str] = field(default_factory=dict)
    """Addresses per service area: `auth`, `ingest`, `infer`, `report`."""

    @classmethod
    def parse(cls, spec: str) -> Endpoints:
        """One of the three forms in the class docstring; ValueError names what is wrong."""
        spec = spec.strip()
        if not spec:
            raise ValueError("no server address given")
        if spec.endswith(".json") or Path(spec).is_file():
            try:
                document = json.loads(Path(spec).read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{spec}: not a readable status file ({exc})") from exc
            return cls(by_area={k: v for k, v in document.items() if k in AREAS})
        if "=" not in spec:
            return cls(default=spec)
        by_area = {}
        for item in spec.split(","):
            area, sep, address = item.partition("=")
            if not sep or area.strip() not in AREAS or not address.strip():
                raise ValueError(f"{item!r}: expected AREA=HOST:PORT with AREA one of {AREAS}")
            by_area[area.strip()] = address.strip()
        return cls(by_area=by_area)

    def address_for(self, service: str) -> str:
        """The address that serves `service` (a full name); ValueError if none does."""
        address = self.by_area.get(area_of(service)) or self.default
        if not address:
            raise ValueError(f"no address for {area_of(service)} ({service})")
        return address

    def describe(self) -> str:
        """The spec back as text (what the CLI stores next to the tokens)."""
        if self.by_area:
            return ",".join(f"{a}={addr}" for a, addr in self.by_area.items())
        return self.default


class Channels:
    """One grpc.aio channel per distinct address, plaintext or TLS, closed together."""

    def __init__(self, *, tls: bool = False, root_certificates: bytes | None = None) -> None:
        self._credentials = (
            grpc.ssl_channel_credentials(root_certificates=root_certificates) if tls else None
        )
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        """The channel to `address`, opened on first use."""
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(
                    address, self._credentials, options=_CHANNEL_OPTIONS
                )
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        """Close every channel (in-flight calls are cancelled)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
