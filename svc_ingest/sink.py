"""Writing one object to S3 from a stream of chunks, without holding the file in memory.

Bytes accumulate up to one part (`part_size`, >= 5 MiB); each full part is uploaded in a
worker thread while the next one fills, so receiving and uploading overlap and at most two
parts are held at a time, whatever the file's size. The object becomes visible only at
`commit()`, which callers reach after the last validation passed; `abort()` drops the
multipart upload (S3 then holds nothing). A file smaller than one part is one PUT at commit.

minio's public `put_object(length=-1)` would read a file-like object part by part too, but it
queues parts for its upload threads without bound (memory grows with the file when S3 is
slower than the client) and hides when it commits; so the multipart calls are made here with
minio's request methods (`_create_multipart_upload`, `_upload_part`, ...; minio is pinned <8).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable
from typing import TypeVar

import structlog
import urllib3
from minio.datatypes import Part
from minio.error import MinioException

from medmesh.errors import DependencyUnavailable
from medmesh.objects import ObjectStore

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def _s3(fn: Callable[..., T], *args: object) -> T:
    """A blocking minio call in a thread; transport failures become DependencyUnavailable."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (urllib3.exceptions.HTTPError, MinioException, OSError) as exc:
        raise DependencyUnavailable("s3", str(exc)) from exc


class StreamingObjectWriter:
    """One object being written; use `write` for each chunk, then `commit` or `abort`."""

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
        self.bytes_written = 0

    @property
    def key(self) -> str:
        """The object key being written."""
        return self._key

    async def write(self, data: bytes) -> None:
        """Buffer `data`; ship every full part (waiting for the previous one first)."""
        self._buffer += data
        self.bytes_written += len(data)
        while len(self._buffer) >= self._part_size:
            part = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            await self._ship(part)

    async def _ship(self, part: bytes) -> None:
        if self._in_flight is not None:
            await self._in_flight  # back-pressure: one part uploading while one fills
            self._in_flight = None
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

    async def commit(self) -> None:
        """Make the object visible: the last part and the completion (or one PUT)."""
        if not self._upload_id:
            data = bytes(self._buffer)
            await _s3(
                self._client.put_object,
                self._bucket,
                self._key,
                io.BytesIO(data),
                len(data),
                self._headers["Content-Type"],
            )
            self._buffer.clear()
            return
        if self._buffer:
            await self._ship(bytes(self._buffer))
            self._buffer.clear()
        if self._in_flight is not None:
            await self._in_flight
            self._in_flight = None
        await _s3(
            self._client._complete_multipart_upload,  # minio internal, see docstring
            self._bucket,
            self._key,
            self._upload_id,
            self._parts,
        )
        self._upload_id = ""

    async def abort(self) -> None:
        """Drop everything written so far; safe to call at any point, and twice.

        Shielded from cancellation: a client that hangs up mid-upload must not leave an
        incomplete multipart upload behind.
        """
        self._buffer.clear()
        await asyncio.shield(self._abort())

    async def _abort(self) -> None:
        if self._in_flight is not None:
            with contextlib.suppress(Exception):
                await self._in_flight
            self._in_flight = None
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
