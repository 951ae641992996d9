"""The gRPC-Web wire format (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md).

A body is a sequence of frames: one flag byte (0x00 message, 0x80 trailers; bit 0x01 would
mean compressed), a 4-byte big-endian length, the payload. Trailers travel as the last frame,
an HTTP/1-style header block, because browsers cannot read HTTP trailers. The `-text` content
types base64 the whole stream; a stream may be several base64 chunks, each with its padding.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterable
from urllib.parse import quote

MESSAGE_FLAG = 0x00
TRAILER_FLAG = 0x80
COMPRESSED_FLAG = 0x01
_HEADER = struct.Struct(">BI")

_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_BASE64_CHUNK = re.compile(rb"[^=]*=*")
# grpc-message is percent-encoded: everything outside printable ASCII, and '%' itself.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


class GrpcWebError(ValueError):
    """The request body is not a valid gRPC-Web stream."""


def is_grpc_web(content_type: str) -> bool:
    """True for `application/grpc-web`, `application/grpc-web+proto` and the `-text` forms."""
    return content_type.split(";", 1)[0].strip().lower().startswith("application/grpc-web")


def is_text(content_type: str) -> bool:
    """True for the base64 (`application/grpc-web-text`) forms."""
    return content_type.split(";", 1)[0].strip().lower().startswith("application/grpc-web-text")


def response_content_type(text: bool) -> str:
    """What the edge answers with: the same mode the client used, protobuf payloads."""
    return "application/grpc-web-text+proto" if text else "application/grpc-web+proto"


def decode_text(body: bytes) -> bytes:
    """Base64 → bytes, accepting concatenated padded chunks and line breaks."""
    compact = b"".join(body.split())
    try:
        return b"".join(
            base64.b64decode(chunk, validate=True)
            for chunk in _BASE64_CHUNK.findall(compact)
            if chunk
        )
    except binascii.Error as exc:
        raise GrpcWebError(f"the grpc-web-text body is not base64: {exc}") from None


def decode_messages(body: bytes) -> list[bytes]:
    """The message frames of a request body (a client sends no trailer frame)."""
    messages: list[bytes] = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < _HEADER.size:
            raise GrpcWebError("truncated gRPC-Web frame header")
        flag, length = _HEADER.unpack_from(body, offset)
        offset += _HEADER.size
        if offset + length > len(body):
            raise GrpcWebError("truncated gRPC-Web frame")
        if flag & COMPRESSED_FLAG:
            raise GrpcWebError("compressed gRPC-Web frames are not supported")
        if flag & TRAILER_FLAG:
            raise GrpcWebError("a request carries no trailer frame")
        messages.append(body[offset : offset + length])
        offset += length
    return messages


def message_frame(payload: bytes) -> bytes:
    """One message frame."""
    return _HEADER.pack(MESSAGE_FLAG, len(payload)) + payload


def trailer_frame(code: int, message: str, metadata: Iterable[tuple[str, str | bytes]]) -> bytes:
    """The closing frame: grpc-status, grpc-message and the call's other trailers."""
    lines = [f"grpc-status: {code}"]
    if message:
        lines.append(f"grpc-message: {encode_grpc_message(message)}")
    lines.extend(f"{key}: {value}" for key, value in header_values(metadata))
    block = "".join(line + "\r\n" for line in lines).encode("ascii")
    return _HEADER.pack(TRAILER_FLAG, len(block)) + block


def header_values(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """gRPC metadata as header values: `-bin` keys base64 (unpadded, as the gRPC spec asks)."""
    values: list[tuple[str, str]] = []
    for key, value in metadata:
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            values.append((key, base64.b64encode(raw).decode().rstrip("=")))
        else:
            values.append((key, value.decode() if isinstance(value, bytes) else value))
    return values


def encode_grpc_message(message: str) -> str:
    """Percent-encode a status message for the `grpc-message` header/trailer."""
    return quote(message, safe=_MESSAGE_SAFE)


def encode_chunk(data: bytes, text: bool) -> bytes:
    """A piece of the response body in the client's mode (each text chunk padded)."""
    return base64.b64encode(data) if text else data


def parse_timeout(value: str | None) -> float | None:
    """`grpc-timeout` (`100m`, `5S`) in seconds; None when absent or malformed."""
    if not value:
        return None
    match = _TIMEOUT.match(value.strip())
    if not match:
        return None
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]
