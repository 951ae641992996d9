"""svc_ingest's upload validation cost by chunk size: the same bytes in 1-byte, 64 KiB and
1 MiB chunks, and whether the cost stays linear in the bytes.

    python bench/bench_ingest_validation.py [--size-kib 256] [--repeat 3]

In-process (svc_ingest.validation.FileValidator: size, SHA-256, magic, structure, header
probe, PNG inflation), best of `--repeat`, for a PNG (noise, real IDAT), a JPEG whose frame
header sits behind ~60% of the file in APP1 metadata (the case that was quadratic: the head
was copied and re-parsed for every chunk until the frame header turned up), and a DICOM.
Each kind is validated at N and 2N bytes (N = --size-kib) in every chunking. Printed:
  validate   seconds for the file;
  floor      SHA-256 of the same chunk list (the least any validator does: one call per
             chunk, every byte hashed), measured in the same run;
  ratio      validate / floor (what validation costs over the floor, at this chunking);
  growth     seconds at 2N / seconds at N: 2.0 is linear, 4.0 quadratic.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gen.medmesh.common.v1 import FileKind  # noqa: E402
from svc_ingest.config import IngestConfig  # noqa: E402
from svc_ingest.validation import (  # noqa: E402
    CANONICAL_CONTENT_TYPE,
    FileValidator,
    check_declaration,
)

KIB = 1024
MIB = 1024 * KIB
CHUNKS = (1, 64 * KIB, 1 * MIB)
CONFIG = IngestConfig(header_window_bytes=1 * MIB)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(size: int) -> bytes:
    """An 8-bit gray PNG of noise of about `size` bytes (level 1: noise barely compresses)."""
    width = 1024
    height = max(1, size // (width + 1))
    raw = np.random.default_rng(0).integers(0, 256, (height, width + 1), dtype=np.uint8)
    raw[:, 0] = 0  # filter byte: None
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_of(size: int) -> bytes:
    """SOI, ~60% of `size` in APP1 segments, SOF0 (640x480x3), a scan filling the rest, EOI."""
    app = b""
    left = size * 6 // 10
    while left > 0:
        part = min(left, 65533)
        app += b"\xff\xe1" + struct.pack(">H", part + 2) + b"\x00" * part
        left -= part
    sof = struct.pack(">BHHB", 8, 480, 640, 3) + b"".join(bytes((i, 0x11, 0)) for i in (1, 2, 3))
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    head = b"\xff\xd8" + app + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + sos
    scan = np.random.default_rng(1).integers(0, 255, max(0, size - len(head) - 2), np.uint8)
    return head + scan.tobytes() + b"\xff\xd9"


def dicom_of(size: int) -> bytes:
    """A 16-bit monochrome DICOM of about `size` bytes (pydicom, imported here: only this
    builder needs it)."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    columns = 512
    rows = max(1, size // (2 * columns))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(2).integers(0, 4096, rows * columns, np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


KINDS: dict[str, tuple[FileKind, Callable[[int], bytes]]] = {
    "png": (FileKind.IMAGE_PNG, png_of),
    "jpeg": (FileKind.IMAGE_JPEG, jpeg_of),
    "dicom": (FileKind.IMAGE_DICOM, dicom_of),
}


def split(data: bytes, chunk: int) -> list[bytes]:
    """`data` in chunks (1-byte slices are interned by CPython: the list stays small)."""
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


def validate(kind: FileKind, data: bytes, chunks: list[bytes]) -> float:
    """Seconds to validate `chunks` (the file is accepted, or the bench is wrong)."""
    declaration = check_declaration(
        kind=kind,
        file_name="bench.bin",
        content_type=CANONICAL_CONTENT_TYPE[kind],
        size_bytes=len(data),
        sha256="",
        config=CONFIG,
    )
    started = time.perf_counter()
    validator = FileValidator(declaration, CONFIG, content_field="chunk")
    for chunk in chunks:
        validator.feed(chunk)
    validator.finish()
    return time.perf_counter() - started


def floor(chunks: list[bytes]) -> float:
    """Seconds to SHA-256 the same chunk list."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    digest.hexdigest()
    return time.perf_counter() - started


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-kib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_kib * KIB
    print(
        f"{'kind':6} {'chunk':>8} {'bytes':>9} {'validate s':>11} {'floor s':>9}"
        f" {'ratio':>7} {'growth 2N/N':>12}"
    )
    for name, (kind, build) in KINDS.items():
        files = {n: build(n * size) for n in (1, 2)}
        for chunk in CHUNKS:
            seconds = {}
            for n, data in files.items():
                chunks = split(data, chunk)
                seconds[n] = best(
                    lambda kind=kind, data=data, chunks=chunks: validate(kind, data, chunks),
                    args.repeat,
                )
                base = best(lambda chunks=chunks: floor(chunks), args.repeat)
                label = f"{chunk // KIB} KiB" if chunk >= KIB else f"{chunk} B"
                growth = f"{seconds[2] / seconds[1]:12.2f}" if n == 2 else " " * 12
                print(
                    f"{name:6} {label:>8} {len(data):9d} {seconds[n]:11.4f} {base:9.4f}"
                    f" {seconds[n] / base:7.1f} {growth}"
                )


if __name__ == "__main__":
    main()
