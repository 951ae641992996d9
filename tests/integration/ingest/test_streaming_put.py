"""The streaming PUT that svc_ingest writes uploads with (svc_ingest/streaming_put.py) and the
guarantees around it, against two real S3 servers: localbucket (the embedded one) and moto's
ThreadedMotoServer. A TCP tap between the service and S3 records every byte that went to S3,
so the tests can see what was sent and what was held back.

- the object appears only after commit; the last chunk and the terminator wait for it;
- an abort at any point leaves no object, no upload, no temporary file on either server,
  also when every data byte was sent and only the terminator is missing;
- a client that hangs up mid-stream (streaming PUT or multipart) leaves nothing behind;
- the cheaper UploadFile chunk parser gives what betterproto2's parser gives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from moto.server import ThreadedMotoServer

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import UploadFileMetadata, UploadFileRequest
from medmesh.errors import NotFound
from medmesh.launcher import S3Server
from medmesh.objects import RAW_IMAGES, ObjectStore
from svc_ingest import streaming_put
from svc_ingest.config import MIB, IngestConfig
from svc_ingest.streaming_put import (
    COALESCE_BYTES,
    ChunkFramer,
    StreamingPutWriter,
    encoded_length,
    end_of_body,
    open_put_request,
    send_pieces,
)
from svc_ingest.wire import parse_upload_file_request

from .conftest import Ingest, StartIngest
from .samples import png, sha256

# --- S3 servers and a tap in front of them -------------------------------------------------


@dataclass
class S3Endpoint:
    """An S3 server for this module; localbucket's data folder when it has one."""

    name: str
    url: str
    data_dir: Path | None = None


@pytest.fixture(scope="module")
def localbucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """localbucket with a folder of its own (its temporary files and uploads are visible)."""
    server = S3Server(tmp_path_factory.mktemp("streaming-put-s3"))
    server.start()
    yield S3Endpoint("localbucket", server.url, server.storage)
    server.stop()


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Endpoint]:
    """moto's S3 in a thread of this process."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Endpoint("moto", f"http://testing:testing@{host}:{port}")
    server.stop()


@pytest.fixture(params=["localbucket", "moto"])
def s3(request: pytest.FixtureRequest) -> S3Endpoint:
    """Each test runs against both servers."""
    return request.getfixturevalue(request.param)


@dataclass
class Tap:
    """A TCP proxy that records, per connection, the bytes the client sent upstream."""

    upstream: tuple[str, int]
    sent: list[bytearray] = field(default_factory=list)
    open: list[bool] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.sent)
        self.sent.append(bytearray())
        self.open.append(True)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await src.read(256 * 1024):
                    if record:
                        self.sent[index] += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        self.open[index] = False

    def puts(self) -> list[tuple[int, bytes]]:
        """(connection index, body so far) of every streaming PUT seen."""
        found = []
        for index, sent in enumerate(self.sent):
            head, _, body = bytes(sent).partition(b"\r\n\r\n")
            if head.startswith(b"PUT ") and b"aws-chunked" in head.lower():
                found.append((index, body))
        return found

    def puts_closed(self) -> bool:
        """Whether every streaming PUT connection has been closed."""
        return not any(self.open[index] for index, _ in self.puts())

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def tap(s3: S3Endpoint) -> AsyncIterator[tuple[Tap, str]]:
    """A tap in front of `s3`, and the S3 URL that goes through it."""
    parts = urlsplit(s3.url)
    tap = Tap((parts.hostname or "", parts.port or 80))
    port = await tap.start()
    credentials = parts.netloc.rpartition("@")[0]
    yield tap, urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))
    await tap.close()


def visible(store: ObjectStore, s3: S3Endpoint) -> list[str]:
    """What a client could see of an upload in progress: objects and multipart uploads."""
    return [item for item in leftovers(store, s3) if not item.startswith("temporary ")]


def leftovers(store: ObjectStore, s3: S3Endpoint) -> list[str]:
    """Everything an upload can leave in S3: objects, multipart uploads, temporary files."""
    bucket = store.bucket(RAW_IMAGES)
    found = [f"object {o.object_name}" for o in store.client.list_objects(bucket, recursive=True)]
    if s3.data_dir is not None:  # localbucket: uploads and temporary files are folders/files
        uploads = s3.data_dir / ".localbucket-uploads"
        found += [f"upload {p.name}" for p in uploads.glob("*/") if (p / "upload.json").exists()]
        found += [f"temporary {p.name}" for p in (s3.data_dir / bucket).rglob(".localbucket-*")]
    else:
        listing = store.client._list_multipart_uploads(bucket)
        found += [f"upload {u.upload_id}" for u in listing.uploads]
    return found


def decode_aws_chunked(body: bytes) -> tuple[bytes, bool]:
    """An independent decoder for the tests: (the data so far, whether the terminator came)."""
    data, position = bytearray(), 0
    while (line_end := body.find(b"\r\n", position)) >= 0:
        size = int(body[position:line_end], 16)
        if size == 0:
            return bytes(data), True
        start = line_end + 2
        if len(body) < start + size + 2:
            break
        data += body[start : start + size]
        position = start + size + 2
    return bytes(data), False


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def exists(store: ObjectStore, key: str) -> bool:
    try:
        await store.size(RAW_IMAGES, key)
    except NotFound:
        return False
    return True


async def eventually(check: object, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def store(s3: S3Endpoint, name_prefix: str) -> AsyncIterator[ObjectStore]:
    """The buckets of this test on `s3`, addressed directly."""
    objects = ObjectStore(s3.url, bucket_prefix=name_prefix + "-")
    await objects.ensure_buckets()
    yield objects
    objects.close()


# --- the framing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk"),
    [(1, 1), (MIB - 1, 4096), (MIB, MIB), (MIB + 1, 700_000), (3 * MIB + 7, MIB)],
)
def test_the_framed_body_has_the_announced_length_and_decodes_to_the_data(
    size: int, chunk: int
) -> None:
    data = os.urandom(size)
    framer = ChunkFramer(size)
    body = b"".join(bytes(p) for c in pieces(data, chunk) for p in framer.frame(c))
    body += end_of_body(sha256(data))
    assert len(body) == encoded_length(size)
    assert decode_aws_chunked(body) == (data, True)
    digest = base64.b64encode(hashlib.sha256(data).digest())
    assert body.endswith(b"0\r\nx-amz-checksum-sha256:" + digest + b"\r\n\r\n")


# --- the writer against both servers -------------------------------------------------------


async def test_the_object_appears_only_at_commit_and_the_last_chunk_waits_for_it(
    s3: S3Endpoint, store: ObjectStore, tap: tuple[Tap, str], name_prefix: str
) -> None:
    proxy, url = tap
    tapped = ObjectStore(url, bucket_prefix=name_prefix + "-")
    data = os.urandom(3 * MIB + 12345)
    chunks = pieces(data, MIB)
    writer = StreamingPutWriter(tapped, RAW_IMAGES, "k", content_type="image/png", size=len(data))
    for chunk in chunks:
        await writer.write(chunk)

    held_back = len(chunks[-1])
    await eventually(lambda: proxy.puts() and len(proxy.puts()[0][1]) > len(data) - held_back)
    await asyncio.sleep(0.3)  # nothing more goes out before commit
    ((_, body),) = proxy.puts()
    assert decode_aws_chunked(body) == (data[: len(data) - held_back], False)
    assert not await exists(store, "k")

    await writer.commit(sha256(data))
    ((_, body),) = proxy.puts()
    assert decode_aws_chunked(body) == (data, True)
    assert await store.get_bytes(RAW_IMAGES, "k") == data
    assert leftovers(store, s3) == ["object k"]
    tapped.close()


@pytest.mark.parametrize("chunks_before_abort", [0, 1, 4], ids=["none", "one", "all"])
async def test_an_aborted_streaming_put_leaves_nothing(
    s3: S3Endpoint, store: ObjectStore, chunks_before_abort: int
) -> None:
    data = os.urandom(4 * MIB)
    writer = StreamingPutWriter(store, RAW_IMAGES, "k", content_type="image/png", size=len(data))
    for chunk in pieces(data, MIB)[:chunks_before_abort]:
        await writer.write(chunk)
    await asyncio.sleep(0.2)  # let the sends reach the server
    await writer.abort()
    await writer.abort()  # twice is fine
    await asyncio.sleep(0.3)  # the server has seen the connection close
    assert leftovers(store, s3) == []


async def test_tiny_chunks_are_sent_in_coalesced_pieces_and_arrive_intact(
    s3: S3Endpoint, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200 KiB in 1-byte and 7-byte chunks, then one 100 KiB chunk: one send per ~64 KiB
    # gathered (and one for the large chunk), not a thread hop and a syscall per chunk.
    data = os.urandom(200 * 1024 + 100 * 1024)
    sends: list[int] = []
    real_send = streaming_put.send_pieces

    def counting(sock: object, pieces: list[bytes | memoryview]) -> None:
        sends.append(sum(len(p) for p in pieces))
        real_send(sock, pieces)  # type: ignore[arg-type]

    monkeypatch.setattr(streaming_put, "send_pieces", counting)
    writer = StreamingPutWriter(store, RAW_IMAGES, "k", content_type="image/png", size=len(data))
    position = 0
    for index in range(200 * 1024 // 4):  # alternating 1 and 7 bytes: 4 bytes a chunk
        size = 1 if index % 2 == 0 else 7
        await writer.write(data[position : position + size])
        position += size
    await writer.write(data[position:])
    await writer.commit(sha256(data))
    assert await store.get_bytes(RAW_IMAGES, "k") == data
    assert COALESCE_BYTES == 64 * 1024
    assert len(sends) <= 200 * 1024 // (64 * 1024) + 3, len(sends)


async def send_framed(
    store: ObjectStore, data: bytes, *, terminated: bool
) -> http.client.HTTPConnection:
    """A streaming PUT of `data` to key "k" as svc_ingest frames it, with or without the
    terminator and trailer that complete it; the connection, for its answer."""
    conn = await asyncio.to_thread(
        open_put_request, store, store.bucket(RAW_IMAGES), "k", "image/png", len(data)
    )
    assert conn.sock is not None
    framed = ChunkFramer(len(data)).frame(data)
    if terminated:
        framed.append(end_of_body(sha256(data)))
    await asyncio.to_thread(send_pieces, conn.sock, framed)
    return conn


async def test_a_body_missing_only_its_terminator_is_discarded_by_the_server(
    s3: S3Endpoint, store: ObjectStore
) -> None:
    # The worst case an abort can meet: every data byte sent, only the terminator missing.
    data = os.urandom(2 * MIB + 5)
    conn = await send_framed(store, data, terminated=False)
    await asyncio.sleep(0.2)
    conn.close()
    await asyncio.sleep(0.3)
    assert leftovers(store, s3) == []


async def test_a_complete_body_sent_the_same_way_is_stored(
    s3: S3Endpoint, store: ObjectStore
) -> None:
    # The counterpart of the test above: the same request with its terminator commits.
    data = os.urandom(2 * MIB + 5)
    conn = await send_framed(store, data, terminated=True)
    response = await asyncio.to_thread(conn.getresponse)
    assert response.status == 200, response.read()
    conn.close()
    assert await store.get_bytes(RAW_IMAGES, "k") == data
    assert leftovers(store, s3) == ["object k"]


# --- through the service -------------------------------------------------------------------


@pytest.fixture(params=["streaming-put", "multipart"])
def writer_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def ingest_config(writer_kind: str) -> IngestConfig:
    """The package's test limits; the streaming PUT on or off."""
    return IngestConfig(
        max_image_bytes=32 * MIB,
        max_stream_bytes=24 * MIB,
        max_pixels=4_000_000,
        header_window_bytes=256 * 1024,
        part_size_bytes=5 * MIB,
        streaming_put_max_bytes=24 * MIB if writer_kind == "streaming-put" else 0,
    )


@dataclass
class Upload:
    """An UploadFile call whose stream stays open until `release` is set."""

    call: grpc.aio.StreamUnaryCall
    release: asyncio.Event


def start_upload(ingest: Ingest, parent: str, data: bytes, sent: int, **meta: object) -> Upload:
    """Start UploadFile: metadata, then the first `sent` chunks of 1 MiB, then wait for
    `release` before the rest and the end of the stream."""
    release = asyncio.Event()
    fields: dict[str, object] = {
        "parent": parent,
        "kind": FileKind.IMAGE_PNG,
        "file_name": "scan.png",
        "content_type": "image/png",
        "size_bytes": len(data),
        **meta,
    }

    async def stream() -> AsyncIterator[UploadFileRequest]:
        yield UploadFileRequest(metadata=UploadFileMetadata(**fields))  # type: ignore[arg-type]
        chunks = pieces(data, MIB)
        for chunk in chunks[:sent]:
            yield UploadFileRequest(chunk=chunk)
        await release.wait()
        for chunk in chunks[sent:]:
            yield UploadFileRequest(chunk=chunk)

    return Upload(ingest.stub.upload_file(stream(), metadata=ingest.auth()), release)


@pytest.fixture
async def ingest(
    start_ingest: StartIngest, s3: S3Endpoint, tap: tuple[Tap, str]
) -> AsyncIterator[Ingest]:
    """svc_ingest writing to `s3` through the tap."""
    async with start_ingest(s3=tap[1], s3_data_dir=s3.data_dir) as service:
        yield service


def s3_started(store: ObjectStore, s3: S3Endpoint, proxy: Tap, writer_kind: str) -> bool:
    """Whether the service has begun writing the object (bytes of it are on S3's side)."""
    if writer_kind == "streaming-put":
        return any(len(body) >= MIB for _, body in proxy.puts())
    return any(item.startswith("upload ") for item in leftovers(store, s3))


async def test_a_client_that_hangs_up_mid_stream_leaves_nothing_behind(
    ingest: Ingest, store: ObjectStore, s3: S3Endpoint, tap: tuple[Tap, str], writer_kind: str
) -> None:
    study = await ingest.create_study()
    data = png(1500, 1400, seed=11, level=0)  # ~6 MiB: more than one 5 MiB part
    upload = start_upload(ingest, study.name, data, sent=6)
    await eventually(lambda: s3_started(store, s3, tap[0], writer_kind))

    upload.call.cancel()  # the client goes away
    with pytest.raises(asyncio.CancelledError):
        await upload.call
    await eventually(lambda: not leftovers(store, s3) and tap[0].puts_closed())
    assert ingest.count("medical_data") == 0
    assert ingest.count("outbox") == 0

    # The service goes on: the same file uploads fine afterwards, intact, with this writer.
    again = start_upload(ingest, study.name, data, sent=0)
    again.release.set()
    response = await again.call
    assert response.file.sha256 == sha256(data)
    key = f"clinic-a/{study.study_id}/{response.file.file_id}"
    assert leftovers(store, s3) == [f"object {key}"]
    assert await store.get_bytes(RAW_IMAGES, key) == data


@pytest.mark.parametrize("writer_kind", ["streaming-put"])
async def test_the_last_chunk_and_the_terminator_wait_for_the_end_of_the_stream(
    ingest: Ingest, store: ObjectStore, s3: S3Endpoint, tap: tuple[Tap, str], writer_kind: str
) -> None:
    proxy, _ = tap
    study = await ingest.create_study()
    data = png(1000, 1000, seed=12, level=0)  # ~2.9 MiB: three chunks
    last = len(pieces(data, MIB)[-1])
    upload = start_upload(ingest, study.name, data, sent=3)  # every chunk; the stream stays open
    await eventually(lambda: any(len(body) > len(data) - last for _, body in proxy.puts()))
    await asyncio.sleep(0.3)
    ((_, body),) = proxy.puts()
    assert decode_aws_chunked(body) == (data[: len(data) - last], False)
    # The server may be writing what it received to a temporary file (S3 servers stream to
    # disk); no object and no upload exists yet.
    assert visible(store, s3) == []

    upload.release.set()  # the stream ends: the checks pass, the object commits
    response = await upload.call
    ((_, body),) = proxy.puts()
    assert decode_aws_chunked(body) == (data, True)
    key = f"clinic-a/{study.study_id}/{response.file.file_id}"
    assert await store.get_bytes(RAW_IMAGES, key) == data


async def test_a_refused_upload_never_sends_the_terminator_and_leaves_nothing(
    ingest: Ingest, store: ObjectStore, s3: S3Endpoint, tap: tuple[Tap, str], writer_kind: str
) -> None:
    study = await ingest.create_study()
    data = png(1500, 1400, seed=13, level=0)
    upload = start_upload(ingest, study.name, data, sent=0, sha256=secrets.token_hex(32))
    upload.release.set()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await upload.call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.sha256" in (failure.value.details() or "")
    for _, body in tap[0].puts():
        assert not decode_aws_chunked(body)[1]
    await eventually(lambda: not leftovers(store, s3))
    assert ingest.count("medical_data") == 0


# --- the UploadFile chunk parser -----------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"\x12\x00",  # an empty chunk
        bytes(UploadFileRequest(chunk=b"x")),
        bytes(UploadFileRequest(chunk=os.urandom(MIB))),
        bytes(UploadFileRequest(chunk=os.urandom(300))) + b"\x18\x01",  # + an unknown field
        bytes(UploadFileRequest(chunk=b"ab")) + bytes(UploadFileRequest(chunk=b"cd")),  # twice
        bytes(UploadFileRequest(metadata=UploadFileMetadata(parent="studies/x", size_bytes=9))),
        b"",
        b"\x12\x05abc",  # shorter than its length says: betterproto2 keeps what is there
    ],
    ids=[
        "empty-chunk",
        "one-byte",
        "1-mib",
        "unknown-field",
        "chunk-twice",
        "metadata",
        "nothing",
        "truncated",
    ],
)
def test_the_chunk_parser_reads_what_betterproto_reads(message: bytes) -> None:
    parsed, reference = parse_upload_file_request(message), UploadFileRequest.FromString(message)
    assert parsed.metadata == reference.metadata
    assert (None if parsed.chunk is None else bytes(parsed.chunk)) == reference.chunk


@pytest.mark.parametrize(
    "message",
    [b"\x12", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"],
    ids=["no-length", "overlong-length"],
)
def test_the_chunk_parser_refuses_what_betterproto_refuses(message: bytes) -> None:
    with pytest.raises(Exception) as expected:  # noqa: PT011 - whatever betterproto2 raises
        UploadFileRequest.FromString(message)
    with pytest.raises(type(expected.value)):
        parse_upload_file_request(message)
