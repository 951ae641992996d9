"""A cheaper parse of UploadFile's chunk messages, the one byte-heavy request of the service.

betterproto2's generic parser reads a 1 MiB `chunk` through a stream, copying it twice; even
one slice (`data[n:]`) copies the megabyte, and at 64 messages per 64 MiB file every copy is
on the upload's critical path (bench/bench_ingest_upload.py). A chunk message on the wire is
exactly one field: tag 0x12 (field 2, length-delimited), a varint length, the bytes. When a
message is exactly that, it becomes a `ChunkMessage` whose chunk is a view into the received
message (no copy); anything else (the metadata message, unknown fields, a repeated field, a
malformed message) goes through `FromString`. Either way the result reads like what
`FromString` returns: `.metadata` and `.chunk` with the same contents.
"""

from __future__ import annotations

from dataclasses import dataclass

from gen.medmesh.ingest.v1 import UploadFileRequest

_CHUNK_TAG = 0x12  # field 2 (chunk), wire type 2 (length-delimited)
_MAX_VARINT_BYTES = 10


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    """An UploadFileRequest holding only `chunk`, as a view of the message's own bytes."""

    chunk: memoryview
    metadata: None = None


def parse_upload_file_request(data: bytes) -> UploadFileRequest | ChunkMessage:
    """`UploadFileRequest.FromString(data)`, without the generic parser for chunk messages."""
    if data[:1] == bytes((_CHUNK_TAG,)):
        length, shift, position = 0, 0, 1
        while position <= min(len(data) - 1, _MAX_VARINT_BYTES):
            byte = data[position]
            length |= (byte & 0x7F) << shift
            position += 1
            if byte < 0x80:
                if position + length == len(data):
                    return ChunkMessage(memoryview(data)[position:])
                break
            shift += 7
    return UploadFileRequest.FromString(data)
