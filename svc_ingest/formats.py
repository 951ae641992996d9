"""What the bytes of each file kind must look like, checked while they stream past.

Each checker sees the file once, in chunks, and holds only a bounded prefix (the header
window) plus a few bytes of state, so a 1 GiB DICOM costs the same memory as a 1 MiB PNG.
Dimensions come from the header (Pillow's `Image.open` parses headers and decodes nothing;
pydicom with `stop_before_pixels=True`) and are checked against the pixel limit before anything
downstream would decode them: a 20000x20000 PNG header is refused after 1 KiB.

Checkers raise `FormatError`; `validation.py` turns it into a field violation.
"""

from __future__ import annotations

import codecs
import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import pydicom
import pydicom.errors
from PIL import Image, UnidentifiedImageError

from gen.medmesh.common.v1 import FileKind

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
# (7FE0,0010) Pixel Data, little endian: its presence ends the header we need.
_DICOM_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_DICOM_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns", "BitsAllocated")
_PNG_MAX_CHUNK = 2**31 - 1

KIND_NAMES = {
    FileKind.IMAGE_PNG: "a PNG image",
    FileKind.IMAGE_JPEG: "a JPEG image",
    FileKind.IMAGE_DICOM: "a DICOM file",
    FileKind.TEXT_NOTE: "a text note",
}


class FormatError(ValueError):
    """The bytes are not a well-formed file of the declared kind. `wrong_kind` is set when
    they are recognisably another kind (the declaration is wrong, not the bytes)."""

    def __init__(self, message: str, *, wrong_kind: bool = False) -> None:
        super().__init__(message)
        self.wrong_kind = wrong_kind


@dataclass(frozen=True)
class Dimensions:
    """What the header says about the pixels."""

    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        """Pixels a decoder would allocate for."""
        return self.width * self.height * self.frames


def sniff_kind(prefix: bytes) -> FileKind | None:
    """The image kind the magic bytes announce, or None (text has no magic)."""
    if prefix.startswith(PNG_SIGNATURE):
        return FileKind.IMAGE_PNG
    if prefix.startswith(JPEG_SOI):
        return FileKind.IMAGE_JPEG
    if prefix[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return FileKind.IMAGE_DICOM
    return None


class PngStructure:
    """Walks PNG chunks (length, type, data, CRC-32) as bytes arrive: catches truncation,
    corruption and trailing garbage without decoding a pixel."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "signature"
        self._remaining = 0
        self._crc = 0
        self._type = b""
        self._first = True

    def feed(self, data: bytes | memoryview) -> None:
        """Consume the next bytes of the file."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._state == "data":
                take = min(self._remaining, len(view) - pos)
                self._crc = zlib.crc32(view[pos : pos + take], self._crc)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "crc"
                continue
            if self._state == "end":
                raise FormatError("PNG has bytes after its IEND chunk")
            need = (8 if self._state in {"signature", "header"} else 4) - len(self._buf)
            take = min(need, len(view) - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if take == need:
                self._complete_field()

    def _complete_field(self) -> None:
        field_bytes = bytes(self._buf)
        self._buf.clear()
        if self._state == "signature":
            if field_bytes != PNG_SIGNATURE:
                raise FormatError("PNG signature is wrong")
            self._state = "header"
        elif self._state == "header":
            length, self._type = struct.unpack(">I4s", field_bytes)
            if length > _PNG_MAX_CHUNK or not self._type.isalpha():
                raise FormatError("PNG chunk header is corrupt")
            if self._first and self._type != b"IHDR":
                raise FormatError("PNG does not start with an IHDR chunk")
            self._first = False
            self._crc = zlib.crc32(self._type)
            self._remaining = length
            self._state = "data" if length else "crc"
        else:
            if struct.unpack(">I", field_bytes)[0] != self._crc:
                raise FormatError(f"PNG chunk {self._type.decode()} fails its CRC check")
            self._state = "end" if self._type == b"IEND" else "header"

    def finish(self) -> None:
        """The file ended: it must have ended right after IEND."""
        if self._state != "end":
            raise FormatError("PNG is truncated (no IEND chunk)")


class JpegStructure:
    """A JPEG starts with SOI and ends with EOI; a truncated transfer loses the EOI."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes | memoryview) -> None:
        """Remember the last two bytes."""
        self._tail = (self._tail + bytes(data[-2:]))[-2:]

    def finish(self) -> None:
        """The file ended: its last marker must be EOI."""
        if self._tail != JPEG_EOI:
            raise FormatError("JPEG is truncated (no end-of-image marker)")


class Utf8Text:
    """Strict incremental UTF-8 decoding: a character split across chunks is fine, an invalid
    byte anywhere is not."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._offset = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Decode and drop the text; only validity matters here."""
        try:
            self._decoder.decode(bytes(data))
        except UnicodeDecodeError as exc:
            raise FormatError(f"text is not UTF-8 (byte {self._offset + exc.start})") from None
        self._offset += len(data)

    def finish(self) -> None:
        """The file ended: no half character may be left."""
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FormatError("text is not UTF-8 (it ends inside a character)") from None


def image_dimensions(prefix: bytes, kind: FileKind, *, complete: bool) -> Dimensions | None:
    """Width and height from the header in `prefix`, or None while more bytes are needed.

    `complete` says no more bytes will come (end of file or header window full); then a header
    that does not parse is an error. Pillow decodes nothing here.
    """
    fmt = "PNG" if kind == FileKind.IMAGE_PNG else "JPEG"
    try:
        # Pillow warns before refusing; the pixel limit is checked by the caller either way.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(prefix), formats=[fmt]) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise FormatError(f"image has too many pixels: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error):
        if complete:
            raise FormatError(f"{fmt} header cannot be read") from None
        return None
    return Dimensions(width, height)


@dataclass(frozen=True)
class DicomHeader:
    """What ingest needs from a DICOM header."""

    transfer_syntax: str
    dimensions: Dimensions


def dicom_header(prefix: bytes, *, supported_syntaxes: tuple[str, ...]) -> DicomHeader:
    """Parse the DICOM header in `prefix` (the whole file, or the header window) without pixel
    data: preamble + `DICM`, required tags, a supported transfer syntax, pixel data present."""
    if prefix[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] != DICOM_MAGIC:
        raise FormatError("DICOM has no 128-byte preamble followed by DICM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd but readable values
            dataset = pydicom.dcmread(io.BytesIO(prefix), stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, ValueError, EOFError, KeyError, OSError) as exc:
        raise FormatError(f"DICOM header cannot be parsed: {exc}") from None
    syntax = str(getattr(dataset.file_meta, "TransferSyntaxUID", "") or "")
    if not syntax:
        raise FormatError("DICOM file meta has no transfer syntax")
    if syntax not in supported_syntaxes:
        raise FormatError(f"DICOM transfer syntax {syntax} is not supported")
    missing = [tag for tag in _DICOM_REQUIRED if dataset.get(tag) in (None, "")]
    if missing:
        raise FormatError(f"DICOM lacks required tags: {', '.join(missing)}")
    if _DICOM_PIXEL_TAG not in prefix[DICOM_MAGIC_OFFSET:]:
        raise FormatError("DICOM has no pixel data within its header window")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    return DicomHeader(syntax, Dimensions(int(dataset.Columns), int(dataset.Rows), frames))
