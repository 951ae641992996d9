"""One S3 PUT whose body is sent while the upload's chunks arrive, made visible only by its end.

Why not a plain PUT with `Content-Length`: when the connection closes early a server may keep
the truncated body as the object. Plain localbucket does exactly that (measured: a PUT of 1000
declared bytes cut after 500 leaves a 500-byte object; the embedded server's own body reader,
medmesh/launcher/bucket.py, now refuses it as S3 does), so "abort the connection" alone
cannot guarantee that a refused upload leaves nothing on every S3-compatible server.

So the body goes in S3's streaming format, the one the AWS SDKs upload with:
`Content-Encoding: aws-chunked`, `x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`,
the data framed in chunks (`<hex length>\\r\\n<bytes>\\r\\n`), then a zero-length chunk and a
trailer `x-amz-checksum-sha256: <base64>` that S3 checks against what it received. A server
completes the object only on the zero-length chunk (the embedded server and moto: a body cut
anywhere before it is refused, nothing is stored; tests/integration/ingest/test_streaming_put.py).
The writer holds back the latest chunk and sends it together with the terminator and the
trailer in `commit()`, which the caller reaches only after every end-of-file check passed;
`abort()` shuts the socket down instead. Any byte of the terminator may commit (plain
localbucket accepted `0` without its line end), so it is sent in one piece and never before
`commit()`.

The request is signed with minio's SigV4 signer (header auth; the payload itself is unsigned
and its integrity comes from the trailer). Sends run in a worker thread, one at a time (a
socket send releases the GIL): chunk N is on the wire while the event loop receives and
validates chunk N+1. Memory per upload: the held chunk and the one being sent. Chunks under
`COALESCE_BYTES` are gathered (copied once) into one held buffer until it reaches that size:
a client sending tiny chunks costs one send per 64 KiB, not a thread hop and a syscall per
chunk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import re
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult

import structlog
from minio import time as minio_time
from minio.error import S3Error
from minio.signer import sign_v4_s3

from medmesh.errors import DependencyUnavailable
from medmesh.objects import ObjectStore

STREAMING_PAYLOAD = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
TRAILER = "x-amz-checksum-sha256"
# The aws-chunked framing unit (S3: at least 8 KiB except the last); one gRPC chunk usually.
FRAME_BYTES = 1024 * 1024
_TERMINATOR = b"0\r\n"
_SHA256_B64_LENGTH = 44
_CONNECT_TIMEOUT_S = 10.0
_IO_TIMEOUT_S = 60.0
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
COALESCE_BYTES = 64 * 1024

Buffers = list[bytes | memoryview]
log = structlog.get_logger(__name__)


def encoded_length(size: int, frame: int = FRAME_BYTES) -> int:
    """The `Content-Length` of a `size`-byte body framed in `frame`-byte chunks + trailer."""
    full, rest = divmod(size, frame)
    length = full * (len(f"{frame:x}") + 4 + frame)
    if rest:
        length += len(f"{rest:x}") + 4 + rest
    return length + len(_TERMINATOR) + len(f"{TRAILER}:") + _SHA256_B64_LENGTH + 2 + 2


def end_of_body(sha256_hex: str) -> bytes:
    """The terminator and the checksum trailer: the bytes that complete the object."""
    digest = base64.b64encode(bytes.fromhex(sha256_hex))
    return _TERMINATOR + f"{TRAILER}:".encode() + digest + b"\r\n\r\n"


class ChunkFramer:
    """Frames a stream of bytes of known total size into aws-chunked chunks, without copying
    the data: each call returns the pieces (headers, memoryviews, line ends) to send."""

    def __init__(self, size: int, frame: int = FRAME_BYTES) -> None:
        self._size = size
        self._frame = frame
        self._position = 0

    def frame(self, data: bytes | bytearray | memoryview) -> Buffers:
        """The framed pieces for the next `data` (which must not pass the total size)."""
        pieces: Buffers = []
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            within = self._position % self._frame
            if within == 0:
                this_frame = min(self._frame, self._size - self._position)
                pieces.append(f"{this_frame:x}\r\n".encode())
            take = min(self._frame - within, len(view) - offset)
            pieces.append(view[offset : offset + take])
            offset += take
            self._position += take
            if self._position % self._frame == 0 or self._position == self._size:
                pieces.append(b"\r\n")
        return pieces


def send_pieces(sock: socket.socket, pieces: Sequence[bytes | memoryview]) -> None:
    """Send every piece: one `sendmsg` (gather, no copy) per pass on plain sockets."""
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg on TLS sockets
        for piece in pieces:
            sock.sendall(piece)
        return
    views = [memoryview(p) for p in pieces if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0


def open_put_request(
    store: ObjectStore, real_bucket: str, key: str, content_type: str, size: int
) -> http.client.HTTPConnection:
    """Connect and send the signed headers of a streaming PUT of `size` bytes (blocking);
    the caller then sends the framed body on `conn.sock` and reads `conn.getresponse()`."""
    client = store.client
    url: SplitResult = client._base_url.build(  # minio internal, pinned <8
        method="PUT", region=store.region, bucket_name=real_bucket, object_name=key
    )
    # Any: minio's signer types header values str | list | tuple; every one here is a str.
    headers: dict[str, Any] = {
        "Host": url.netloc,
        "Content-Type": content_type,
        "Content-Encoding": "aws-chunked",
        "Content-Length": str(encoded_length(size)),
        "x-amz-decoded-content-length": str(size),
        "x-amz-content-sha256": STREAMING_PAYLOAD,
        "x-amz-trailer": TRAILER,
    }
    date = minio_time.utcnow()
    headers["x-amz-date"] = minio_time.to_amz_date(date)
    credentials = client._provider.retrieve() if client._provider else None
    if credentials is not None:
        if credentials.session_token:
            headers["X-Amz-Security-Token"] = credentials.session_token
        headers = sign_v4_s3(
            method="PUT",
            url=url,
            region=store.region,
            headers=headers,
            credentials=credentials,
            content_sha256=STREAMING_PAYLOAD,
            date=date,
        )
    host, port = url.hostname or "", url.port
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, port, timeout=_CONNECT_TIMEOUT_S, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=_CONNECT_TIMEOUT_S)
    conn.connect()
    assert conn.sock is not None
    conn.sock.settimeout(_IO_TIMEOUT_S)
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.putrequest(
        "PUT",
        url.path + (f"?{url.query}" if url.query else ""),
        skip_host=True,
        skip_accept_encoding=True,
    )
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn


class StreamingPutWriter:
    """One object written with a single streaming PUT: `write` each chunk, then `commit`
    (with the SHA-256 the validator computed) or `abort`."""

    def __init__(
        self, store: ObjectStore, bucket: str, key: str, *, content_type: str, size: int
    ) -> None:
        self._store = store
        self._logical_bucket = bucket
        self._bucket = store.bucket(bucket)
        self._key = key
        self._content_type = content_type
        self._size = size
        self._framer = ChunkFramer(size)
        self._held: bytes | memoryview | bytearray | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._terminated = False
        self.bytes_written = 0

    @property
    def key(self) -> str:
        """The object key being written."""
        return self._key

    async def write(self, data: bytes | memoryview) -> None:
        """Hold `data` back; send the chunk held before it (after the previous send ended)."""
        if not data:
            return
        if self.bytes_written + len(data) > self._size:
            raise ValueError(f"more than the declared {self._size} bytes written to {self._key}")
        self.bytes_written += len(data)
        held = self._held
        if held is not None and len(held) < COALESCE_BYTES and len(data) < COALESCE_BYTES:
            if not isinstance(held, bytearray):  # a buffer of our own, never shipped yet
                held = self._held = bytearray(held)
            held += data
            return
        self._held = data
        if held is not None:
            await self._ship(self._framer.frame(held))

    async def _ship(self, pieces: Buffers) -> None:
        await self._wait_in_flight()
        self._in_flight = asyncio.ensure_future(asyncio.to_thread(self._send, pieces))

    async def _wait_in_flight(self) -> None:
        # Shielded: a cancelled RPC must not cancel the wait for a send still running in its
        # thread, or abort() could close the socket under it.
        if self._in_flight is not None:
            await asyncio.shield(self._in_flight)
            self._in_flight = None

    def _send(self, pieces: Buffers) -> None:
        """Worker thread: open the request on first use, then send `pieces`."""
        try:
            if self._conn is None:
                self._conn = open_put_request(
                    self._store, self._bucket, self._key, self._content_type, self._size
                )
            assert self._conn.sock is not None
            send_pieces(self._conn.sock, pieces)
        except OSError as exc:
            raise DependencyUnavailable("s3", self._failure(exc)) from exc

    def _failure(self, exc: OSError) -> str:
        """What to report when a send failed: S3's answer if it sent one (it may refuse the
        request early, e.g. a bad signature), else the socket error."""
        if self._conn is not None and self._conn.sock is not None:
            try:
                self._conn.sock.settimeout(1.0)
                response = self._conn.getresponse()
                return f"PUT {self._key}: HTTP {response.status} {_error_code(response.read())}"
            except (OSError, http.client.HTTPException):
                pass
        return f"PUT {self._key}: {exc}"

    async def commit(self, sha256: str) -> None:
        """Send the held chunk, the terminator and the checksum: S3 completes the object."""
        if self.bytes_written != self._size:
            raise ValueError(f"{self.bytes_written} of the declared {self._size} bytes written")
        held, self._held = self._held, None
        pieces = self._framer.frame(held) if held is not None else []
        await self._wait_in_flight()
        self._terminated = True  # from here on the object may exist
        await self._ship([*pieces, end_of_body(sha256)])
        await self._wait_in_flight()
        # Tracked like a send: an abort after a hang-up waits for S3's answer before it
        # removes the object, so the removal cannot overtake the PUT's completion.
        self._in_flight = asyncio.ensure_future(asyncio.to_thread(self._response))
        await self._wait_in_flight()
        self._terminated = False
        self._close()

    def _response(self) -> None:
        """Worker thread: S3's answer to the PUT; anything but 200 is a failure."""
        assert self._conn is not None
        try:
            response = self._conn.getresponse()
            status, body = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise DependencyUnavailable("s3", f"PUT {self._key}: {exc}") from exc
        if status != http.client.OK:
            raise DependencyUnavailable("s3", f"PUT {self._key}: HTTP {status} {_error_code(body)}")

    async def abort(self) -> None:
        """Cut the request short (S3 stores nothing); safe at any point, and twice. If the
        terminator was already sent (commit failed while reading S3's answer), the object
        may exist: remove it. Shielded from cancellation like the multipart abort."""
        self._held = None
        await asyncio.shield(self._abort())

    async def _abort(self) -> None:
        conn = self._conn
        if conn is not None and conn.sock is not None and not self._terminated:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # unblocks a send in progress
        await settled(self._in_flight)  # the send failing is what abort expects
        self._in_flight = None
        self._close()
        if self._terminated:
            self._terminated = False
            try:
                await self._store.remove(self._logical_bucket, self._key)
            except (DependencyUnavailable, S3Error) as exc:
                # S3Error: S3 refused the removal (a wrong key is refused for it as for the
                # PUT); raising it would hide the commit's failure from the caller.
                log.warning("object cleanup failed", key=self._key, error=str(exc))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


async def settled(future: asyncio.Future[Any] | None) -> None:
    """Wait until `future` is done, whatever its outcome (its error counts as seen)."""
    if future is None:
        return
    await asyncio.wait({future})
    if not future.cancelled():
        future.exception()


def _error_code(body: bytes) -> str:
    found = _ERROR_CODE.search(body or b"")
    return found.group(1).decode(errors="replace") if found else ""
