"""S3 object storage through the minio SDK, for every service that stores images, models or
reports.

The SDK is synchronous, so each call runs in a worker thread (`asyncio.to_thread`); the
`Minio` client stays reachable as `store.client` for anything not wrapped here. Buckets are
addressed by their logical names (`RAW_IMAGES`, ...) and mapped to real names with an optional
prefix, so tests can share one server. S3 user metadata is never used: the embedded server
does not keep it, and PostgreSQL is the system of record for what an object is.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from datetime import timedelta
from typing import BinaryIO, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import MinioException, S3Error, ServerError
from urllib3.util import Retry, Timeout

from medmesh.errors import DependencyUnavailable, FailedPrecondition, NotFound

RAW_IMAGES = "medical-images-raw"
PROCESSED_IMAGES = "medical-images-processed"
ML_MODELS = "ml-models"
REPORTS_ARCHIVE = "reports-archive"
LOGICAL_BUCKETS: tuple[str, ...] = (RAW_IMAGES, PROCESSED_IMAGES, ML_MODELS, REPORTS_ARCHIVE)

# Multipart part size for streams of unknown length (S3 allows 5 MiB .. 5 GiB).
_PART_SIZE = 10 * 1024 * 1024
_MAX_BUCKET_NAME = 63
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})
_BUCKET_ALREADY_THERE = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})

P = ParamSpec("P")
T = TypeVar("T")


def _parse_s3_url(url: str) -> tuple[str, str, str, bool]:
    """`http(s)://ACCESS:SECRET@host:port` → (endpoint, access key, secret key, secure)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("S3 URL must look like http(s)://ACCESS:SECRET@host:port")
    endpoint = parts.hostname + (f":{parts.port}" if parts.port else "")
    return (
        endpoint,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
        parts.scheme == "https",
    )


class ObjectStore:
    """The four medmesh buckets on one S3 endpoint."""

    def __init__(
        self,
        url: str,
        *,
        bucket_prefix: str = "",
        region: str = "us-east-1",
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        retries: int = 3,
    ) -> None:
        endpoint, access_key, secret_key, secure = _parse_s3_url(url)
        self._names = {name: f"{bucket_prefix}{name}" for name in LOGICAL_BUCKETS}
        for real in self._names.values():
            if len(real) > _MAX_BUCKET_NAME or real != real.lower():
                raise ValueError(f"invalid bucket name {real!r} (prefix too long or not lowercase)")
        # minio's default pool waits 5 minutes per attempt and retries 5 times; a service
        # should report S3 unavailable within seconds instead.
        self._http = urllib3.PoolManager(
            timeout=Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            retries=Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        # A fixed region stops minio from asking the server for each bucket's location.
        self.region = region
        self.client = Minio(
            endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=secure,
            region=region,
            http_client=self._http,
        )

    def bucket(self, logical_name: str) -> str:
        """The real bucket name for a logical one (`RAW_IMAGES` → `<prefix>medical-images-raw`)."""
        try:
            return self._names[logical_name]
        except KeyError:
            raise ValueError(f"unknown bucket {logical_name!r}") from None

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking SDK call in a thread; transport failures become DependencyUnavailable."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except S3Error as exc:
            if exc.code in _MISSING_OBJECT_CODES:
                raise NotFound(f"{exc.bucket_name}/{exc.object_name}: {exc.code}") from exc
            raise
        except (urllib3.exceptions.HTTPError, ServerError, MinioException, OSError) as exc:
            # ServerError: 5xx after retries; other MinioException: not an S3 answer at all.
            raise DependencyUnavailable("s3", str(exc)) from exc

    def _ensure_buckets_sync(self) -> list[str]:
        created = []
        for real in self._names.values():
            if self.client.bucket_exists(real):
                continue
            try:
                self.client.make_bucket(real, location=self.region)
            except S3Error as exc:
                # Another replica created it between our check and our create.
                if exc.code not in _BUCKET_ALREADY_THERE:
                    raise
            else:
                created.append(real)
        return created

    async def ensure_buckets(self) -> list[str]:
        """Create the buckets that do not exist yet; returns the real names created."""
        return await self._run(self._ensure_buckets_sync)

    async def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Store `data` under `key` in logical bucket `bucket`; returns the ETag."""
        result = await self._run(
            self.client.put_object,
            self.bucket(bucket),
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
        )
        return result.etag or ""

    async def put_stream(
        self,
        bucket: str,
        key: str,
        stream: BinaryIO,
        *,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Store a file-like object; with `length=-1` it is uploaded in multipart chunks."""
        result = await self._run(
            self.client.put_object,
            self.bucket(bucket),
            key,
            stream,
            length,
            content_type=content_type,
            part_size=_PART_SIZE if length < 0 else 0,
        )
        return result.etag or ""

    def _get_bytes_sync(self, real_bucket: str, key: str) -> bytes:
        response = self.client.get_object(real_bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        """The whole object; raises NotFound when it (or the bucket) does not exist."""
        return await self._run(self._get_bytes_sync, self.bucket(bucket), key)

    def _read_head_sync(self, real_bucket: str, key: str, length: int) -> tuple[bytes, int]:
        response = self.client.get_object(real_bucket, key, offset=0, length=length)
        try:
            data = response.read()
            # "bytes 0-1023/5000": the object's size follows the slash.
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            return data, int(total) if total.isdigit() else len(data)
        finally:
            response.close()
            response.release_conn()

    async def read_head(self, bucket: str, key: str, length: int) -> tuple[bytes, int]:
        """The object's first `length` bytes (all of it when smaller) and its total size, in
        one ranged GET; raises NotFound like `get_bytes`."""
        return await self._run(self._read_head_sync, self.bucket(bucket), key, length)

    async def size(self, bucket: str, key: str) -> int:
        """The object's size in bytes; raises NotFound when it does not exist."""
        stat = await self._run(self.client.stat_object, self.bucket(bucket), key)
        return int(stat.size or 0)

    async def stat(self, bucket: str, key: str) -> tuple[int, str]:
        """The object's size and ETag; raises NotFound when it does not exist."""
        stat = await self._run(self.client.stat_object, self.bucket(bucket), key)
        return int(stat.size or 0), stat.etag or ""

    def _copy_sync(self, real_bucket: str, source_key: str, key: str, if_match: str) -> str:
        source = CopySource(real_bucket, source_key, match_etag=if_match or None)
        try:
            return self.client.copy_object(real_bucket, key, source).etag or ""
        except S3Error as exc:
            if exc.code == "PreconditionFailed":
                raise FailedPrecondition(f"{source_key} changed while it was copied") from exc
            raise

    async def copy(self, bucket: str, source_key: str, key: str, *, if_match: str = "") -> str:
        """Server-side copy within a bucket (the bytes never leave S3); returns the new ETag.
        With `if_match` (an ETag) the copy happens only if the source still has that ETag,
        else FailedPrecondition; a missing source is NotFound."""
        return await self._run(self._copy_sync, self.bucket(bucket), source_key, key, if_match)

    def _list_keys_sync(self, real_bucket: str, prefix: str) -> list[str]:
        objects = self.client.list_objects(real_bucket, prefix=prefix, recursive=True)
        return [o.object_name for o in objects if o.object_name]

    async def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key under `prefix` (for sweepers; holds the whole listing in memory)."""
        return await self._run(self._list_keys_sync, self.bucket(bucket), prefix)

    async def remove(self, bucket: str, key: str) -> None:
        """Delete the object (deleting a missing object is not an error in S3)."""
        await self._run(self.client.remove_object, self.bucket(bucket), key)

    async def presigned_get_url(
        self, bucket: str, key: str, *, expires: timedelta = timedelta(minutes=15)
    ) -> str:
        """A URL that lets a browser download the object without credentials."""
        return await self._run(
            self.client.presigned_get_object, self.bucket(bucket), key, expires=expires
        )

    async def presigned_put_url(
        self, bucket: str, key: str, *, expires: timedelta = timedelta(minutes=15)
    ) -> str:
        """A URL that lets a client upload straight to S3 (image bytes skip REST transcoding)."""
        return await self._run(
            self.client.presigned_put_object, self.bucket(bucket), key, expires=expires
        )

    def close(self) -> None:
        """Drop pooled HTTP connections."""
        self._http.clear()
