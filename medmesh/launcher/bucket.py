"""The embedded S3 server: localbucket, with request bodies read the way S3 reads them.

    python -m medmesh.launcher.bucket DATA_ROOT --host 127.0.0.1 --port PORT

localbucket (a pure-Python S3 server, pinned <1.3) is right about everything medmesh uses but
three things about request bodies, all fixed here, where it reads them:
- A PUT whose connection ends before `Content-Length` bytes arrived is stored, truncated, as
  the object. S3 refuses it (400 IncompleteBody) and stores nothing; so does this server.
- Every body is held whole in memory before a byte reaches the disk, and its MD5 (the ETag)
  is computed only then: a 1 GiB upload took 1 GiB of memory, and the disk write and the hash
  all came after the last byte. Here a PutObject or UploadPart body streams to the object's
  temporary file in 1 MiB pieces, hashed on the way, as S3 servers do.
- An `aws-chunked` body (the AWS SDKs' streaming upload, and svc_ingest's streaming PUT) was
  read whole, then decoded with three more copies. Here its chunks are decoded as they arrive,
  and a body that ends before its zero-length chunk, or holds other than
  `x-amz-decoded-content-length` bytes, is refused.
Everything else (routing, storage layout, ETags, errors as XML) is localbucket's own code;
like localbucket, this server checks neither credentials nor payload hashes (S3 checks both).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Iterator
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import localbucket

PIECE_BYTES = 1024 * 1024
_MAX_LINE = 4096
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})(;[^\r\n]*)?\r\n")


def _incomplete(message: str) -> localbucket.S3Error:
    return localbucket.S3Error(HTTPStatus.BAD_REQUEST, "IncompleteBody", message)


def _invalid(message: str) -> localbucket.S3Error:
    return localbucket.S3Error(HTTPStatus.BAD_REQUEST, "InvalidRequest", message)


def read_pieces(stream: BinaryIO, length: int, buffer: memoryview) -> Iterator[memoryview]:
    """Exactly `length` bytes of `stream`, as views of `buffer` (each valid until the next);
    IncompleteBody when the stream ends first."""
    remaining = length
    while remaining:
        got = stream.readinto(buffer[: min(len(buffer), remaining)])  # type: ignore[attr-defined]
        if not got:
            raise _incomplete("The request body ended before its declared length.")
        remaining -= got
        yield buffer[:got]


def aws_chunked_pieces(
    stream: BinaryIO, decoded_length: int | None, content_length: int, buffer: memoryview
) -> Iterator[memoryview]:
    """The payload of an aws-chunked body, decoded as it arrives (views of `buffer`).

    `decoded_length` (x-amz-decoded-content-length), when given, must match the payload
    exactly; the payload can never exceed the body's `content_length`. Chunk signatures
    (`;chunk-signature=`) and trailers (`x-amz-checksum-*`) are read, not checked."""
    limit = content_length if decoded_length is None else decoded_length
    length = 0
    while True:
        line = stream.readline(_MAX_LINE)
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            if len(line) < _MAX_LINE and not line.endswith(b"\n"):
                raise _incomplete("The chunked body ended before its last chunk.")
            raise _invalid("Invalid chunk header.")
        size = int(match.group(1), 16)
        if size == 0:
            break
        if length + size > limit:
            raise _invalid("The chunks hold more than x-amz-decoded-content-length.")
        yield from read_pieces(stream, size, buffer)
        length += size
        if stream.readline(_MAX_LINE) != b"\r\n":
            raise _incomplete("A chunk is not followed by its line end.")
    while True:  # the trailer section, up to its empty line
        line = stream.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            raise _incomplete("The chunked body ended inside its trailer.")
        if not line.strip():
            break
    if decoded_length is not None and length != decoded_length:
        raise _incomplete("The chunks hold less than x-amz-decoded-content-length.")


class S3Handler(localbucket.S3Handler):
    """localbucket's handler with S3's reading of request bodies (module docstring)."""

    def _http_chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _body_pieces(self) -> Iterator[memoryview]:
        """The request body's payload in pieces, each a view valid until the next."""
        headers = self.headers
        try:
            length = int(headers.get("Content-Length") or 0)
            decoded = headers.get("x-amz-decoded-content-length")
            decoded_length = int(decoded) if decoded is not None else None
        except ValueError:
            raise _invalid("Invalid length header.") from None
        buffer = memoryview(bytearray(max(1, min(PIECE_BYTES, length))))
        streaming = headers.get("x-amz-content-sha256", "").startswith("STREAMING-") or (
            "aws-chunked" in headers.get("Content-Encoding", "")
        )
        if streaming:
            return aws_chunked_pieces(self.rfile, decoded_length, length, buffer)
        return read_pieces(self.rfile, length, buffer)

    def _write_body(self, file: BinaryIO) -> str:
        """Stream the request body into `file`; its MD5 (the ETag). On a refused body the
        caller (localbucket's `_write_object` / `_store_part`) removes the temporary file."""
        digest = hashlib.md5()  # noqa: S324 - S3's ETag is an MD5
        try:
            for piece in self._body_pieces():
                file.write(piece)
                digest.update(piece)
        except localbucket.S3Error:
            self.close_connection = True  # the rest of the body is never read
            raise
        return digest.hexdigest()

    def _put(self, bucket: str, key: str) -> None:
        """PutObject and UploadPart stream to disk; the rest is localbucket's `_put`."""
        copy = "x-amz-copy-source" in self.headers
        if not bucket or not key or copy or self._http_chunked():
            super()._put(bucket, key)
            return
        if "uploadId" in self.query or "partNumber" in self.query:
            self._check_query("UploadPart", {"uploadId", "partNumber"})
            etag = self._store_part(bucket, key, self._write_body)
        else:
            self._check_query("PutObject")
            etag = self._write_object(bucket, key, self._write_body)
        self._send(HTTPStatus.OK, headers={"ETag": f'"{etag}"'})

    def _read_body(self) -> bytes:
        """Small bodies localbucket reads whole (XML documents, bucket creation)."""
        if self._http_chunked():
            return super()._read_body()  # HTTP chunking: localbucket's own reader
        try:
            return b"".join(bytes(piece) for piece in self._body_pieces())
        except localbucket.S3Error:
            self.close_connection = True
            raise


def main() -> None:
    """localbucket's command line (DATA_ROOT, --host, --port) with this module's handler."""
    parser = argparse.ArgumentParser(prog="python -m medmesh.launcher.bucket")
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s]: %(message)s")
    data_root = args.data_root.resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    S3Handler.data_root = data_root
    server = ThreadingHTTPServer((args.host, args.port), S3Handler)
    logging.getLogger("localbucket").info(
        "LocalBucket %s (medmesh body reader) serving %s on http://%s:%s",
        localbucket.__version__,
        data_root,
        args.host,
        args.port,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
