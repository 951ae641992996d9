"""Hand-built image files for the validator tests: valid small PNG/JPEG/DICOM seeds for the
fuzz tests, and the hostile shapes (decode bombs, oversize or bomb IDAT streams, a deflated
DICOM with a garbage body) that a real encoder would never write."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

DEFLATED_EXPLICIT_VR = "1.2.840.10008.1.2.1.99"
# (colour type → samples in the file) for PNG's raw scanlines.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_ihdr(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """The IHDR chunk."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return png_chunk(b"IHDR", header)


def png_with_idat(
    width: int, height: int, idat: bytes, *, bit_depth: int = 8, color_type: int = 2
) -> bytes:
    """A PNG whose IDAT holds exactly `idat` (CRCs right, whatever the data)."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_ihdr(width, height, bit_depth=bit_depth, color_type=color_type)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_raw_size(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> int:
    """Bytes of the filtered scanlines of a non-interlaced PNG."""
    return height * (1 + (width * _PNG_SAMPLES[color_type] * bit_depth + 7) // 8)


def png(
    width: int = 16, height: int = 12, *, bit_depth: int = 8, color_type: int = 2, seed: int = 0
) -> bytes:
    """A valid PNG of noise, any depth and colour type (palette gets a 256-entry PLTE)."""
    rng = np.random.default_rng(seed)
    row = (width * _PNG_SAMPLES[color_type] * bit_depth + 7) // 8
    raw = b"".join(b"\x00" + rng.bytes(row) for _ in range(height))
    plte = png_chunk(b"PLTE", rng.bytes(3 * 256)) if color_type == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_ihdr(width, height, bit_depth=bit_depth, color_type=color_type)
        + plte
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def jpeg(width: int = 16, height: int = 12, *, seed: int = 0) -> bytes:
    """A real baseline JPEG (OpenCV)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", pixels)
    assert ok
    return buffer.tobytes()


def jpeg_frame_only(
    width: int, height: int, *, components: int = 3, precision: int = 8, app_bytes: int = 0
) -> bytes:
    """SOI, an optional APP1 segment of `app_bytes` (metadata before the frame header, in
    segments of at most 64 KiB), SOFn, a token scan and EOI: a JPEG header claiming
    `width` x `height` x `components` that no decoder could finish."""
    segments = b""
    left = app_bytes
    while left > 0:
        size = min(left, 65533)
        segments += b"\xff\xe1" + struct.pack(">H", size + 2) + b"\x00" * size
        left -= size
    marker = b"\xff\xc0" if precision == 8 else b"\xff\xc1"
    sof = struct.pack(">BHHB", precision, height, width, components)
    sof += b"".join(bytes((i + 1, 0x11, 0)) for i in range(components))
    sos = b"\xff\xda" + struct.pack(">HB", 6 + 2 * components, components)
    sos += b"".join(bytes((i + 1, 0)) for i in range(components)) + b"\x00\x3f\x00"
    return (
        b"\xff\xd8"
        + segments
        + marker
        + struct.pack(">H", len(sof) + 2)
        + sof
        + sos
        + b"\x12\x34" * 8
        + b"\xff\xd9"
    )


def dicom(
    *,
    rows: int = 8,
    columns: int = 8,
    samples: int = 1,
    bits: int = 16,
    frames: int = 1,
    pixel_bytes: int | None = None,
) -> bytes:
    """A DICOM Part 10 file (explicit VR little endian) with the given geometry; its pixel
    data is the full size unless `pixel_bytes` says otherwise (a header that claims more
    than the file holds)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    size = rows * columns * samples * (bits // 8) * frames if pixel_bytes is None else pixel_bytes
    ds.PixelData = bytes(size + size % 2)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    tag = struct.pack("<HH", 2, element) + vr
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return tag + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + struct.pack("<H", len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode()
    return raw + b"\x00" * (len(raw) % 2)


def dicom_with_syntax_and_body(syntax: str, body: bytes) -> bytes:
    """Preamble, DICM, a file meta group naming `syntax`, then `body` as the data set."""
    elements = (
        _meta_element(0x0001, b"OB", b"\x00\x01")
        + _meta_element(0x0002, b"UI", _uid(SecondaryCaptureImageStorage))
        + _meta_element(0x0003, b"UI", _uid(generate_uid()))
        + _meta_element(0x0010, b"UI", _uid(syntax))
    )
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"\x00" * 128 + b"DICM" + group_length + elements + body


def deflated_dicom_with_garbage(size: int = 4096, seed: int = 0) -> bytes:
    """The crafted file of issue 11 item 5: a deflated transfer syntax, a garbage body."""
    garbage = np.random.default_rng(seed).bytes(size)
    return dicom_with_syntax_and_body(DEFLATED_EXPLICIT_VR, garbage)


def deflated_dicom_bomb(inflated_bytes: int) -> bytes:
    """A deflated-syntax DICOM whose body inflates to `inflated_bytes` of zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = b"\x00" * (1024 * 1024)
    body = b"".join(compressor.compress(block) for _ in range(inflated_bytes // len(block)))
    return dicom_with_syntax_and_body(DEFLATED_EXPLICIT_VR, body + compressor.flush())


def read_back(data: bytes) -> pydicom.Dataset:
    """pydicom's reading of a crafted DICOM (for sanity checks in tests)."""
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
