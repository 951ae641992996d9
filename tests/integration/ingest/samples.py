"""Files for the ingest tests, generated in the test run: real PNG/JPEG (Pillow), real DICOM
(pydicom), and hand-built malformed variants."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def sha256(data: bytes) -> str:
    """Lower-case hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def png(width: int = 64, height: int = 48, *, seed: int = 0, level: int = 6) -> bytes:
    """A real RGB PNG with noise (so each seed gives different bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=level)
    return out.getvalue()


def jpeg(width: int = 64, height: int = 48, *, seed: int = 0) -> bytes:
    """A real baseline JPEG."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A structurally valid PNG that claims `width` x `height` with almost no data: a
    decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def with_bad_crc(data: bytes) -> bytes:
    """The PNG with one bit flipped in its last IDAT byte (the CRC no longer matches)."""
    index = data.rindex(b"IEND") - 9  # inside the chunk before IEND, before its CRC
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def dicom(
    *,
    rows: int = 32,
    columns: int = 32,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **drop: bool,
) -> bytes:
    """A real DICOM Part 10 file (secondary capture, 16-bit monochrome). `drop` names tags
    to leave out (`Rows=True`)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "pseudonym-1"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(rows * columns, dtype=np.uint16) % 4096).tobytes()
    compressed = transfer_syntax == JPEGLSLossless
    ds.PixelData = encapsulate([pixels]) if compressed else pixels
    for tag, dropped in drop.items():
        if dropped:
            delattr(ds, tag)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


UNSUPPORTED_SYNTAX = JPEGLSLossless
