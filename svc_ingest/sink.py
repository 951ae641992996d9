"""Writing one object to S3 from a stream of chunks, without holding the file in memory.

Two writers, one contract (`ObjectWriter`): `write` each chunk, then `commit` after the last
check passed (only then may the object become visible, so a chunk may be written before its
own check ended) or `abort` (nothing stays behind, also on cancellation).
`store_validated_stream` drives one upload through a validator into a writer.
`open_object_writer` picks the writer:
- a file of known size up to `streaming_put_max` goes as ONE streaming PUT
  (streaming_put.py): a single request, no part files on the server; measured 1.4-2x
  faster than multipart on the embedded server (docs/ingest.md, benchmark);
- anything else goes as a multipart upload (`MultipartObjectWriter`, below).

Multipart: bytes accumulate up to one part (`part_size`, >= 5 MiB); each full part is
uploaded in a worker thread while the next one fills, so receiving and uploading overlap and
at most two parts are held at a time, whatever the file's size. The object becomes visible only at
`commit()`, which callers reach after the last validation passed; `abort()` drops the
multipart upload (S3 then holds nothing). A file smaller than one part is one PUT at commit.

minio's public `put_object(length=-1)` would read a file-like object part by part too, but it
queues parts for its upload threads without bound (memory grows with the file when S3 is
slower than the client) and hides when it commits; so the multipart calls are made here with
minio's request methods (`_create_multipart_upload`, `_upload_part`, ...; minio is pinned <8).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

import structlog
import urllib3
from minio.datatypes import Part
from minio.error import MinioException

from medmesh.errors import DependencyUnavailable
from medmesh.objects import ObjectStore
from svc_ingest.streaming_put import StreamingPutWriter, settled

log = structlog.get_logger(__name__)
T = TypeVar("T")
# S3's limit for one PUT.
MAX_SINGLE_PUT_BYTES = 5 * 1024**3


async def _s3_none(fn: Callable[..., object], *args: object) -> None:
    await _s3(fn, *args)


class ObjectWriter(Protocol):
    """What an upload needs from the object being written (see the module docstring)."""

    bytes_written: int

    @property
    def key(self) -> str: ...

    async def write(self, data: bytes | memoryview) -> None: ...

    async def commit(self, sha256: str) -> None: ...

    async def abort(self) -> None: ...


def open_object_writer(
    store: ObjectStore,
    bucket: str,
    key: str,
    *,
    content_type: str,
    size: int | None,
    part_size: int,
    streaming_put_max: int,
) -> ObjectWriter:
    """The writer for one object: one streaming PUT when its size is known and at most
    `streaming_put_max` (capped at S3's 5 GiB; 0 turns it off), else multipart."""
    if size is not None and 0 < size <= min(streaming_put_max, MAX_SINGLE_PUT_BYTES):
        return StreamingPutWriter(store, bucket, key, content_type=content_type, size=size)
    return MultipartObjectWriter(store, bucket, key, content_type=content_type, part_size=part_size)


class Checked(Protocol):
    """What a validator's verdict must tell the writer: the checksum to commit with."""

    @property
    def sha256(self) -> str: ...


C = TypeVar("C", bound=Checked)
C_co = TypeVar("C_co", bound=Checked, covariant=True)


class Validator(Protocol[C_co]):
    """Sees every byte in order (`feed` raises at the first wrong one); `finish` is the verdict."""

    def feed(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> C_co: ...


# Below this a chunk is checked in the event loop: a thread hop would cost more than hashing.
_INLINE_CHECK_BYTES = 64 * 1024


class _Lane:
    """One blocking step per chunk in a worker thread, in order, one at a time."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[None] | None = None

    async def run(self, fn: Callable[[bytes | memoryview], None], data: bytes | memoryview) -> None:
        """Wait for the previous step (raising its error), then start `fn(data)`."""
        await self.wait()
        if len(data) < _INLINE_CHECK_BYTES:
            fn(data)
        else:
            self._pending = asyncio.ensure_future(asyncio.to_thread(fn, data))

    async def wait(self) -> None:
        # Shielded, and kept until it succeeded: after a cancellation or an error, settle()
        # still waits for a step running in its thread.
        if self._pending is not None:
            await asyncio.shield(self._pending)
            self._pending = None

    async def settle(self) -> None:
        """Wait for a step still running, ignoring its outcome (cleanup after a failure)."""
        await settled(self._pending)
        self._pending = None


async def store_validated_stream(
    chunks: AsyncIterator[bytes | memoryview], validator: Validator[C], writer: ObjectWriter
) -> C:
    """Stream `chunks` through `validator` into `writer`; commit only on a clean verdict.

    Checking (hashing, structure) and sending run in two worker threads while the event loop
    receives the next chunk: both release the GIL for their bulk work. A chunk may reach the
    wire before its check ended: the writers make nothing visible before `commit`, which comes
    after `finish()`. Any failure (a refusal, S3, a hang-up or cancellation) aborts the writer;
    when a chunk was refused, that refusal is what the caller sees.
    """
    checks = _Lane()
    try:
        async for chunk in chunks:
            await checks.run(validator.feed, chunk)
            try:
                await writer.write(chunk)
            except Exception:
                await checks.wait()  # a refusal of this chunk explains the writer's failure
                raise
        await checks.wait()
        verdict = validator.finish()
        await writer.commit(verdict.sha256)
    except BaseException:
        # One shielded clean-up: a second cancellation must not skip the abort.
        await asyncio.shield(_clean_up(checks, writer))
        raise
    return verdict


async def _clean_up(checks: _Lane, writer: ObjectWriter) -> None:
    await checks.settle()
    await writer.abort()


async def _s3(fn: Callable[..., T], *args: object) -> T:
    """A blocking minio call in a thread; transport failures become DependencyUnavailable."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (urllib3.exceptions.HTTPError, MinioException, OSError) as exc:
        raise DependencyUnavailable("s3", str(exc)) from exc


class MultipartObjectWriter:
    """One object written as a multipart upload (a single PUT when smaller than a part)."""

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        key: str,
        *,
        content_type: str,
        part_size: int,
    ) -> None:
        self._client = store.client
        self._bucket = store.bucket(bucket)
        self._key = key
        self._headers = {"Content-Type": content_type}
        self._part_size = part_size
        self._buffer = bytearray()
        self._upload_id = ""
        self._parts: list[Part] = []
        self._in_flight: asyncio.Task[None] | None = None
        self._completing = False
        self.bytes_written = 0

    @property
    def key(self) -> str:
        """The object key being written."""
        return self._key

    async def write(self, data: bytes | memoryview) -> None:
        """Buffer `data`; ship every full part (waiting for the previous one first)."""
        self._buffer += data
        self.bytes_written += len(data)
        while len(self._buffer) >= self._part_size:
            part = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            await self._ship(part)

    async def _wait_in_flight(self) -> None:
        # Back-pressure: one part uploading while one fills. Shielded: a cancelled RPC must
        # not cancel the part upload (its thread goes on), or abort() could not wait for it.
        if self._in_flight is not None:
            await asyncio.shield(self._in_flight)
            self._in_flight = None

    async def _ship(self, part: bytes) -> None:
        await self._wait_in_flight()
        if not self._upload_id:
            self._upload_id = await _s3(
                self._client._create_multipart_upload,  # minio internal, see docstring
                self._bucket,
                self._key,
                self._headers,
            )
        number = len(self._parts) + 1
        self._parts.append(Part(number, ""))
        self._in_flight = asyncio.create_task(self._upload_part(number, part))

    async def _upload_part(self, number: int, part: bytes) -> None:
        etag = await _s3(
            self._client._upload_part,  # minio internal, see docstring
            self._bucket,
            self._key,
            part,
            None,
            self._upload_id,
            number,
        )
        self._parts[number - 1] = Part(number, etag)

    async def commit(self, sha256: str = "") -> None:
        """Make the object visible: the last part and the completion (or one PUT). `sha256`
        is part of the writer contract; multipart parts carry no whole-object checksum."""
        del sha256
        if not self._upload_id:
            data = bytes(self._buffer)
            self._buffer.clear()
            await self._finish(
                self._client.put_object,
                self._bucket,
                self._key,
                io.BytesIO(data),
                len(data),
                self._headers["Content-Type"],
            )
            return
        if self._buffer:
            await self._ship(bytes(self._buffer))
            self._buffer.clear()
        await self._wait_in_flight()
        await self._finish(
            self._client._complete_multipart_upload,  # minio internal, see docstring
            self._bucket,
            self._key,
            self._upload_id,
            self._parts,
        )
        self._upload_id = ""

    async def _finish(self, fn: Callable[..., object], *args: object) -> None:
        """The call that makes the object visible, tracked like a part upload so that an
        abort (after a hang-up) waits for it before cleaning up."""
        self._completing = True
        self._in_flight = asyncio.create_task(_s3_none(fn, *args))
        await self._wait_in_flight()
        self._completing = False

    async def abort(self) -> None:
        """Drop everything written so far; safe to call at any point, and twice.

        Shielded from cancellation: a client that hangs up mid-upload must not leave an
        incomplete multipart upload behind.
        """
        self._buffer.clear()
        await asyncio.shield(self._abort())

    async def _abort(self) -> None:
        if self._in_flight is not None:
            await settled(self._in_flight)
            self._in_flight = None
        if self._completing:
            # The completion (or the one PUT) was sent but its answer did not arrive: the
            # object may exist. The key is unique to this upload, so removing it is safe.
            self._completing = False
            try:
                await _s3(self._client.remove_object, self._bucket, self._key)
            except DependencyUnavailable as exc:
                log.warning("object cleanup failed", key=self._key, error=str(exc))
        if self._upload_id:
            upload_id, self._upload_id = self._upload_id, ""
            try:
                await _s3(
                    self._client._abort_multipart_upload,  # minio internal, see docstring
                    self._bucket,
                    self._key,
                    upload_id,
                )
            except DependencyUnavailable as exc:
                log.warning("multipart abort failed", key=self._key, error=str(exc))
