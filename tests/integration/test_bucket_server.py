"""The embedded S3 server (medmesh/launcher/bucket.py): localbucket with S3's reading of
request bodies. Raw HTTP over a real socket, so the tests choose exactly which bytes arrive:
complete bodies are stored byte for byte with their MD5 as ETag; a body that ends early or
does not add up is refused with S3's error and leaves no object and no temporary file."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from medmesh.launcher import S3Server
from medmesh.launcher.servers import S3_ACCESS_KEY, S3_SECRET_KEY

BUCKET = "bodies"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("bucket-server"))
    server.start()
    client = minio_client(server)
    client.make_bucket(BUCKET)
    yield server
    server.stop()


def minio_client(server: S3Server) -> Minio:
    return Minio(
        f"127.0.0.1:{server.port}",
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        secure=False,
        region="us-east-1",
    )


def stored(server: S3Server) -> list[str]:
    """Objects and temporary files in the bucket's folder."""
    folder = Path(server.storage) / BUCKET
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def send_put(
    server: S3Server, key: str, headers: dict[str, str], body: bytes, *, hang_up: bool = False
) -> tuple[int, bytes]:
    """PUT `body` under `headers` on a fresh connection; with `hang_up`, close the sending side
    after the body. S3's answer (status, body)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"PUT /{BUCKET}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body
    sock.sendall(request)
    if hang_up:
        sock.shutdown(socket.SHUT_WR)
    response = http.client.HTTPResponse(sock)
    response.begin()
    answer = response.status, response.read()
    sock.close()
    return answer


def aws_chunked(chunks: list[bytes], *, trailer: bool = True, signed: bool = False) -> bytes:
    """An aws-chunked body of `chunks`, then the zero-length chunk and trailer."""
    extension = ";chunk-signature=" + "0" * 64 if signed else ""
    out = b"".join(f"{len(c):x}{extension}\r\n".encode() + c + b"\r\n" for c in chunks)
    out += f"0{extension}\r\n".encode()
    if trailer:
        out += b"x-amz-checksum-sha256:" + b"A" * 43 + b"=\r\n"
    return out + b"\r\n"


def streaming_headers(body: bytes, decoded_length: int) -> dict[str, str]:
    return {
        "Content-Length": str(len(body)),
        "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-decoded-content-length": str(decoded_length),
        "x-amz-trailer": "x-amz-checksum-sha256",
    }


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "chunk-signatures"])
def test_an_aws_chunked_body_is_stored_byte_for_byte_with_its_md5_as_etag(
    server: S3Server, signed: bool
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    chunks = [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
    body = aws_chunked(chunks, signed=signed)
    status, answer = send_put(server, f"chunked-{signed}", streaming_headers(body, len(data)), body)
    assert status == 200, answer
    response = minio_client(server).get_object(BUCKET, f"chunked-{signed}")
    assert response.read() == data
    assert response.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()


def test_a_plain_put_is_stored_as_sent(server: S3Server) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    result = minio_client(server).put_object(BUCKET, "plain", io.BytesIO(data), len(data))
    assert result.etag == hashlib.md5(data).hexdigest()
    assert minio_client(server).get_object(BUCKET, "plain").read() == data


def _cut_chunked() -> tuple[dict[str, str], bytes]:
    body = aws_chunked([b"a" * 9000, b"b" * 100])
    cut = body[: body.index(b"\r\n0\r\n") + 2]  # every data byte, no zero-length chunk
    return streaming_headers(body, 9100), cut


def _chunks_hold(actual: list[bytes], declared: int) -> tuple[dict[str, str], bytes]:
    body = aws_chunked(actual)
    return streaming_headers(body, declared), body


REFUSED_BODIES = {
    "plain body shorter than its Content-Length": (
        lambda: ({"Content-Length": "1000"}, b"x" * 500),
        "IncompleteBody",
    ),
    "aws-chunked body cut before its zero-length chunk": (_cut_chunked, "IncompleteBody"),
    "aws-chunked chunks hold less than the decoded length": (
        lambda: _chunks_hold([b"a" * 9000], 9100),
        "IncompleteBody",
    ),
    "aws-chunked chunks hold more than the decoded length": (
        lambda: _chunks_hold([b"a" * 9000, b"b" * 200], 9100),
        "InvalidRequest",
    ),
    "aws-chunked chunk header that is not hexadecimal": (
        lambda: (streaming_headers(b"zz\r\n", 2), b"zz\r\n"),
        "InvalidRequest",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_BODIES))
def test_a_body_that_ends_early_or_does_not_add_up_is_refused_and_leaves_nothing(
    server: S3Server, case: str
) -> None:
    make, code = REFUSED_BODIES[case]
    headers, body = make()
    before = stored(server)
    status, answer = send_put(server, "refused", headers, body, hang_up=True)
    assert status == 400
    assert f"<Code>{code}</Code>".encode() in answer
    time.sleep(0.1)  # the handler has answered; nothing may appear afterwards either
    assert stored(server) == before
