"""A cheaper parse of UploadFile's chunk messages, the one byte-heavy request of the service.

betterproto2's generic parser reads a 1 MiB `chunk` through a stream, copying it twice; at
64 messages per 64 MiB file that was ~25 ms of the event loop's time per file, on the
upload's critical path (bench/bench_ingest_upload.py). A chunk message on the wire is
exactly one field: tag 0x12 (field 2, length-delimited), a varint length, the bytes. When a
message is exactly that, it becomes `UploadFileRequest(chunk=...)` with one slice; anything
else (the metadata message, unknown fields, a repeated field, a malformed message) goes
through `FromString`, so the result is always what `FromString` returns.
"""

from __future__ import annotations

from gen.medmesh.ingest.v1 import UploadFileRequest

_CHUNK_TAG = 0x12  # field 2 (chunk), wire type 2 (length-delimited)
_MAX_VARINT_BYTES = 10


def parse_upload_file_request(data: bytes) -> UploadFileRequest:
    """`UploadFileRequest.FromString(data)`, without the generic parser for chunk messages."""
    if data[:1] == bytes((_CHUNK_TAG,)):
        length, shift, position = 0, 0, 1
        while position <= min(len(data) - 1, _MAX_VARINT_BYTES):
            byte = data[position]
            length |= (byte & 0x7F) << shift
            position += 1
            if byte < 0x80:
                if position + length == len(data):
                    return UploadFileRequest(chunk=data[position:])
                break
            shift += 7
    return UploadFileRequest.FromString(data)
