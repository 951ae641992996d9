"""What an image's header says a decoder will allocate, read without decoding a pixel.

svc_ingest refuses a file whose decoded pixels would exceed its bound before the file is
stored; svc_infer checks the same header again before it decodes a stored file (a file may
predate a lower limit, or reach the bucket some other way) and sizes its batch memory budget
from it. Both need the same reading of PNG IHDR, JPEG SOF and DICOM headers, so it lives here.

Every function takes untrusted bytes and raises `HeaderError` (a ValueError), never anything
else, for bytes that are not a well-formed header.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import pydicom

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
# Deflated Explicit VR Little Endian compresses the whole data set: reading its header means
# inflating an attacker's stream (pydicom inflates it all at once), so it is refused before
# anything is parsed.
DEFLATED_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99"})

# PNG colour types: samples per pixel in the file, and what OpenCV's IMREAD_UNCHANGED
# decodes them to (palette → BGR or BGRA with tRNS, gray + alpha → BGRA).
_PNG_FILE_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DECODED_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
_PNG_BIT_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_PNG_MAX_DIMENSION = 2**31 - 1

# JPEG start-of-frame markers (C0..CF without DHT C4, JPG C8, DAC CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length: TEM, RST0..7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})

_DICOM_BITS_ALLOCATED = frozenset({1, 8, 16, 32, 64})
# Explicit VRs whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_DICOM_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_DICOM_MAX_DIMENSION = 65535  # Rows and Columns are US (16-bit) values
_DICOM_MAX_FRAMES = 2**31 - 1


class HeaderError(ValueError):
    """The bytes are not a well-formed header of the kind asked for."""


@dataclass(frozen=True)
class ImageGeometry:
    """What a decoder allocates: width x height x channels x bytes per sample x frames."""

    width: int
    height: int
    channels: int = 1
    bytes_per_sample: int = 1
    frames: int = 1

    @property
    def pixels(self) -> int:
        """Pixels of all frames."""
        return self.width * self.height * self.frames

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame."""
        return self.width * self.height * self.channels * self.bytes_per_sample

    @property
    def decoded_bytes(self) -> int:
        """Bytes of all decoded frames: the bound a decode bomb is measured against."""
        return self.frame_bytes * self.frames

    def describe(self) -> str:
        """`4000x3000, 4 channels of 2 bytes, 1 frame` (for refusals)."""
        frames = f"{self.frames} frame" + ("s" if self.frames != 1 else "")
        return (
            f"{self.width}x{self.height}, {self.channels} channel"
            + ("s" if self.channels != 1 else "")
            + f" of {self.bytes_per_sample} byte"
            + ("s" if self.bytes_per_sample != 1 else "")
            + f", {frames}"
        )


@dataclass(frozen=True)
class PngHeader:
    """A PNG's IHDR chunk."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool

    @property
    def geometry(self) -> ImageGeometry:
        """What OpenCV decodes this PNG to (16-bit depth stays 16-bit)."""
        return ImageGeometry(
            self.width,
            self.height,
            _PNG_DECODED_CHANNELS[self.color_type],
            2 if self.bit_depth == 16 else 1,
        )

    @property
    def filtered_bytes(self) -> int:
        """The exact size of the inflated IDAT stream: a filter byte per row (per pass when
        interlaced) plus the packed samples."""
        bits = _PNG_FILE_SAMPLES[self.color_type] * self.bit_depth
        if not self.interlaced:
            return self.height * (1 + (self.width * bits + 7) // 8)
        total = 0
        for x0, y0, dx, dy in _ADAM7:
            columns = (self.width - x0 + dx - 1) // dx if self.width > x0 else 0
            rows = (self.height - y0 + dy - 1) // dy if self.height > y0 else 0
            if columns and rows:
                total += rows * (1 + (columns * bits + 7) // 8)
        return total


def parse_png_ihdr(payload: bytes) -> PngHeader:
    """The 13 bytes of an IHDR chunk's data."""
    if len(payload) != 13:
        raise HeaderError(f"PNG IHDR has {len(payload)} bytes, not 13")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", payload
    )
    if not (0 < width <= _PNG_MAX_DIMENSION and 0 < height <= _PNG_MAX_DIMENSION):
        raise HeaderError(f"PNG dimensions {width}x{height} are out of range")
    if color not in _PNG_BIT_DEPTHS or depth not in _PNG_BIT_DEPTHS[color]:
        raise HeaderError(f"PNG colour type {color} with bit depth {depth} is not valid")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise HeaderError("PNG IHDR names an unknown compression, filter or interlace method")
    return PngHeader(width, height, depth, color, bool(interlace))


def png_header(prefix: bytes) -> PngHeader:
    """The IHDR of the PNG whose first 33 bytes are in `prefix`."""
    if len(prefix) < 33 or not prefix.startswith(PNG_SIGNATURE):
        raise HeaderError("not a PNG (no signature and IHDR)")
    length, kind = struct.unpack(">I4s", prefix[8:16])
    if kind != b"IHDR" or length != 13:
        raise HeaderError("PNG does not start with an IHDR chunk")
    return parse_png_ihdr(prefix[16:29])


def jpeg_geometry(prefix: bytes) -> ImageGeometry | None:
    """The frame header (SOFn) of the JPEG starting at `prefix`, walking its marker segments;
    None while `prefix` ends before the frame header. Linear in the bytes it walks. Junk
    between segments is skipped, as Pillow and libjpeg do (some cameras write it)."""
    if not prefix.startswith(b"\xff\xd8"):
        raise HeaderError("JPEG does not start with SOI")
    pos, end = 2, len(prefix)
    while True:
        if pos + 2 > end:
            return None
        if prefix[pos] != 0xFF:  # junk between segments
            pos += 1
            continue
        marker = prefix[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE or marker == 0x00:  # no length (0x00: stuffed junk)
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            raise HeaderError("JPEG has no frame header before its image data")
        if pos + 4 > end:
            return None
        (length,) = struct.unpack(">H", prefix[pos + 2 : pos + 4])
        if length < 2:
            raise HeaderError(f"JPEG segment at byte {pos} has a bad length")
        if marker in _JPEG_SOF:
            if pos + 2 + length > end:
                return None
            return _jpeg_frame(prefix[pos + 4 : pos + 2 + length])
        pos += 2 + length


def _jpeg_frame(segment: bytes) -> ImageGeometry:
    if len(segment) < 6:
        raise HeaderError("JPEG frame header is too short")
    precision, height, width, components = struct.unpack(">BHHB", segment[:6])
    if precision not in (8, 12, 16):
        raise HeaderError(f"JPEG sample precision {precision} is not valid")
    if height == 0:
        raise HeaderError("JPEG defines its height after the first scan (DNL): unsupported")
    if width == 0:
        raise HeaderError("JPEG frame header has no width")
    if not 1 <= components <= 4 or len(segment) < 6 + 3 * components:
        raise HeaderError(f"JPEG frame has {components} components, not 1 to 4")
    return ImageGeometry(width, height, components, 1 if precision == 8 else 2)


def dicom_transfer_syntax(prefix: bytes) -> str:
    """The TransferSyntaxUID of the file meta group (always explicit VR little endian), read
    without pydicom so that nothing else of the file is parsed first."""
    if prefix[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] != DICOM_MAGIC:
        raise HeaderError("DICOM has no 128-byte preamble followed by DICM")
    pos = DICOM_MAGIC_OFFSET + 4
    while pos + 8 <= len(prefix):
        group, element = struct.unpack("<HH", prefix[pos : pos + 4])
        if group != 0x0002:
            break
        vr = prefix[pos + 4 : pos + 6]
        if vr in _DICOM_LONG_VRS:
            if pos + 12 > len(prefix):
                break
            (length,) = struct.unpack("<I", prefix[pos + 8 : pos + 12])
            start = pos + 12
        else:
            (length,) = struct.unpack("<H", prefix[pos + 6 : pos + 8])
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > len(prefix):
            raise HeaderError("DICOM file meta information is corrupt")
        if element == 0x0010:
            value = prefix[start : start + length]
            try:
                return value.decode("ascii").rstrip("\x00 ")
            except UnicodeDecodeError:
                raise HeaderError("DICOM transfer syntax is not an ASCII UID") from None
        pos = start + length
    raise HeaderError("DICOM file meta has no transfer syntax")


def read_dicom_header(prefix: bytes) -> pydicom.Dataset:
    """The data set of a DICOM file up to its pixel data. The transfer syntax is checked
    first (deflated ones are refused); any pydicom failure becomes HeaderError."""
    syntax = dicom_transfer_syntax(prefix)
    if syntax in DEFLATED_TRANSFER_SYNTAXES:
        raise HeaderError(f"DICOM transfer syntax {syntax} (deflated) is not supported")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd but readable values
            return pydicom.dcmread(io.BytesIO(prefix), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is a bad file
        raise HeaderError(f"DICOM header cannot be parsed: {type(exc).__name__}: {exc}") from None


def dicom_geometry(dataset: pydicom.Dataset) -> ImageGeometry:
    """Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames of a data set."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = int(dataset.get("Rows") or 0)
            columns = int(dataset.get("Columns") or 0)
            samples = int(dataset.get("SamplesPerPixel") or 1)
            bits = int(dataset.get("BitsAllocated") or 0)
            frames = int(dataset.get("NumberOfFrames") or 1)
    except Exception as exc:  # noqa: BLE001 - a value pydicom cannot turn into an integer
        raise HeaderError(f"DICOM image attributes are not numbers: {exc}") from None
    if not (0 < rows <= _DICOM_MAX_DIMENSION and 0 < columns <= _DICOM_MAX_DIMENSION):
        raise HeaderError(f"DICOM image is {columns}x{rows}: no pixels or out of range")
    if samples not in (1, 3, 4):
        raise HeaderError(f"DICOM SamplesPerPixel {samples} is not 1, 3 or 4")
    if bits not in _DICOM_BITS_ALLOCATED:
        raise HeaderError(f"DICOM BitsAllocated {bits} is not 1, 8, 16, 32 or 64")
    if not 0 < frames <= _DICOM_MAX_FRAMES:
        raise HeaderError(f"DICOM NumberOfFrames {frames} is out of range")
    return ImageGeometry(columns, rows, samples, max(1, bits // 8), frames)
