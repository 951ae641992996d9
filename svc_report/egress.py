"""Where svc_report may connect to on a clinic's behalf: the SSRF guard of MIS delivery.

A clinic admin chooses the MIS URL, so without a guard svc_report would POST reports (with
the clinic's bearer token) to whatever that URL names: the cloud metadata service
(169.254.169.254, fd00:ec2::254), the platform's own PostgreSQL or Redis on a private
address, another tenant's service. The rule:

- the URL's host is resolved, and every address it resolves to must be public: not private,
  loopback, link-local (metadata), multicast, carrier-grade NAT, reserved, unspecified, nor
  an IPv4 address in IPv6 clothing (mapped, 6to4, Teredo) of one of those; one refused
  address refuses the host (a DNS answer mixing public and private addresses is an attack);
- the connection goes to the address that was checked (pinned: the request is sent to the IP
  with the host name kept for TLS SNI, certificate verification and the Host header), so a
  DNS answer that changes between the check and the connect (rebinding) cannot redirect it;
- an operator may allow networks explicitly (MEDMESH_REPORT_MIS_ALLOW_NETWORKS, CIDRs: a
  hospital MIS on a private network reached over a VPN; the tests' MIS on 127.0.0.1).

SetDeliveryTarget checks the URL when it is set (INVALID_ARGUMENT naming the field), and
each delivery checks it again before connecting, since DNS answers change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
"""Cloud instance metadata endpoints (AWS, GCP, Azure, OpenStack; AWS's IPv6 one)."""
_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")


class RefusedDestination(Exception):
    """The MIS URL names a host svc_report must not connect to (the message says why)."""


class Unresolved(Exception):
    """The MIS host does not resolve now (DNS failure): a later attempt may succeed."""


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            reason = refusal_reason(embedded)
            return f"{reason} (inside {address})" if reason else None
    checks = (
        (address in METADATA_ADDRESSES, "a cloud metadata address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_reserved, "a reserved address"),
        (address in _CARRIER_GRADE_NAT, "a carrier-grade NAT address"),
        (address.is_private, "a private address"),
        (not address.is_global, "a reserved address"),  # documentation, benchmarking, ...
    )
    return next((reason for refused, reason in checks if refused), None)


@dataclass(frozen=True)
class Destination:
    """A checked MIS endpoint: connect to `address`, speak to `host` (SNI, Host header)."""

    host: str
    port: int
    address: IPAddress


class EgressPolicy:
    """Public addresses only, unless an operator allowed a network."""

    def __init__(self, allow_networks: Sequence[IPNetwork] = ()) -> None:
        self._allow = tuple(allow_networks)

    @classmethod
    def from_cidrs(cls, cidrs: Sequence[str]) -> EgressPolicy:
        """A policy allowing `cidrs` (ValueError for a malformed one)."""
        return cls([ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()])

    def check(self, address: IPAddress) -> None:
        """RefusedDestination unless `address` is public or in an allowed network."""
        if any(address in network for network in self._allow):
            return
        reason = refusal_reason(address)
        if reason is not None:
            raise RefusedDestination(f"{address} is {reason}")

    async def resolve(self, url: str) -> Destination:
        """Resolve the URL's host and check every address; the first one is pinned."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise RefusedDestination("the URL has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except (socket.gaierror, UnicodeError) as exc:
                raise Unresolved(f"{host} does not resolve: {exc}") from exc
            addresses = list(
                dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
            )
            if not addresses:
                raise Unresolved(f"{host} does not resolve")
        for address in addresses:
            try:
                self.check(address)
            except RefusedDestination as exc:
                raise RefusedDestination(f"{host} resolves to {exc}") from None
        return Destination(host, port, addresses[0])
