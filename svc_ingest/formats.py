"""What the bytes of each file kind must look like, checked while they stream past.

Each checker sees the file once, in chunks, and holds only a bounded prefix (the header
window) plus a few bytes of state, so a 1 GiB DICOM costs the same memory as a 1 MiB PNG.
What a decoder would allocate comes from the header (medmesh.image_headers: PNG IHDR, JPEG
SOFn, DICOM Rows/Columns/SamplesPerPixel/BitsAllocated/NumberOfFrames, read with
`stop_before_pixels=True`) and is checked against the limits before anything downstream
would decode it: a 20000x20000 PNG header is refused after 33 bytes.

Checkers raise `FormatError` and nothing else, whatever the bytes (the fuzz tests hold them
to that); `validation.py` turns it into a field violation.
"""

from __future__ import annotations

import codecs
import re
import struct
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from gen.medmesh.common.v1 import FileKind
from medmesh.image_headers import (
    DICOM_MAGIC,
    DICOM_MAGIC_OFFSET,
    PNG_SIGNATURE,
    HeaderError,
    ImageGeometry,
    PngHeader,
    dicom_geometry,
    dicom_transfer_syntax,
    jpeg_geometry,
    parse_png_ihdr,
    read_dicom_header,
)

JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
# (7FE0,0010) Pixel Data, little endian: its presence ends the header we need.
_DICOM_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_DICOM_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns", "BitsAllocated")
_PNG_MAX_CHUNK = 2**31 - 1
# zlib's worst case on incompressible data is a few bytes per 64 KiB stored block; an encoder
# using fixed Huffman codes on noise can reach 9/8. A quarter more than the inflated size
# (plus a little for tiny images) is "far larger" than any encoder writes.
_PNG_IDAT_SLACK_DIVISOR = 4
_PNG_IDAT_SLACK_BYTES = 64 * 1024
# IDAT bytes go to zlib in pieces of this size, each allowed this much output per call, so
# an inflation step holds at most _INFLATE_OUT bytes and re-copies at most a piece.
_INFLATE_PIECE = 16 * 1024
_INFLATE_OUT = 1024 * 1024
# Control characters a clinical note may not hold: C0 except tab, line feed, form feed and
# carriage return; DEL; C1. (NUL is the one seen in the wild: it truncates C strings.)
_NOTE_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")

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
    corruption and trailing garbage without decoding a pixel.

    The IHDR is parsed as soon as its CRC checked out and handed to `on_header` (the caller's
    decoded-size bound), before a byte of image data is inflated. The IDAT chunks must then
    hold one zlib stream that inflates to exactly the size the dimensions need: their
    compressed length may not exceed that size by more than zlib's worst case allows
    (checked on each chunk's declared length, before its data is read), and the stream is
    inflated as it arrives, in bounded pieces, and refused the moment it would inflate past
    that size. So a zlib bomb costs at most the bytes the header admitted, never more.
    """

    def __init__(self, on_header: Callable[[PngHeader], None] | None = None) -> None:
        self._buf = bytearray()
        self._state = "signature"
        self._remaining = 0
        self._crc = 0
        self._type = b""
        self._first = True
        self._on_header = on_header
        self._ihdr = bytearray()
        self.header: PngHeader | None = None
        self._inflater = zlib.decompressobj()
        self._inflated = 0
        self._idat_bytes = 0
        self._idat_state = "before"  # before, in, after (the IDAT run)

    def feed(self, data: bytes | memoryview) -> None:
        """Consume the next bytes of the file."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._state == "data":
                take = min(self._remaining, len(view) - pos)
                piece = view[pos : pos + take]
                self._crc = zlib.crc32(piece, self._crc)
                if self._type == b"IHDR":
                    self._ihdr += piece
                elif self._type == b"IDAT":
                    self._inflate(piece)
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
            if self._first and (self._type != b"IHDR" or length != 13):
                raise FormatError("PNG does not start with a 13-byte IHDR chunk")
            self._first = False
            self._start_chunk(length)
            self._crc = zlib.crc32(self._type)
            self._remaining = length
            self._state = "data" if length else "crc"
        else:
            if struct.unpack(">I", field_bytes)[0] != self._crc:
                raise FormatError(f"PNG chunk {self._type.decode()} fails its CRC check")
            if self._type == b"IHDR":
                self._header_complete()
            self._state = "end" if self._type == b"IEND" else "header"

    def _header_complete(self) -> None:
        try:
            self.header = parse_png_ihdr(bytes(self._ihdr))
        except HeaderError as exc:
            raise FormatError(str(exc)) from None
        if self._on_header is not None:
            self._on_header(self.header)

    def _start_chunk(self, length: int) -> None:
        """Checks a chunk's type and declared length against the IDAT rules."""
        if self._type == b"IHDR" and self.header is not None:
            raise FormatError("PNG has a second IHDR chunk")
        if self._type != b"IDAT":
            if self._idat_state == "in":
                self._idat_state = "after"
            if self._type == b"IEND":
                self._check_image_data_complete()
            return
        if self.header is None:  # pragma: no cover - IHDR comes first, checked above
            raise FormatError("PNG has image data before its header")
        if self._idat_state == "after":
            raise FormatError("PNG image data (IDAT) is split by other chunks")
        self._idat_state = "in"
        self._idat_bytes += length
        needed = self.header.filtered_bytes
        allowed = needed + needed // _PNG_IDAT_SLACK_DIVISOR + _PNG_IDAT_SLACK_BYTES
        if self._idat_bytes > allowed:
            raise FormatError(
                f"PNG holds {self._idat_bytes} bytes of compressed image data, far more than"
                f" the {needed} bytes its dimensions need"
            )

    def _inflate(self, data: memoryview) -> None:
        """Inflate IDAT bytes in bounded pieces, counting (and dropping) the output."""
        assert self.header is not None
        needed = self.header.filtered_bytes
        for start in range(0, len(data), _INFLATE_PIECE):
            piece: bytes | memoryview = data[start : start + _INFLATE_PIECE]
            while piece:
                if self._inflater.eof:
                    raise FormatError("PNG image data goes on after its zlib stream ended")
                try:
                    out = self._inflater.decompress(piece, _INFLATE_OUT)
                except zlib.error as exc:
                    raise FormatError(f"PNG image data is not a valid zlib stream: {exc}") from None
                self._count_inflated(len(out), needed)
                if self._inflater.unused_data:
                    raise FormatError("PNG image data goes on after its zlib stream ended")
                piece = self._inflater.unconsumed_tail

    def _count_inflated(self, produced: int, needed: int) -> None:
        self._inflated += produced
        if self._inflated > needed:
            raise FormatError(
                f"PNG image data inflates to more than the {needed} bytes its dimensions need"
            )

    def _check_image_data_complete(self) -> None:
        if self.header is None or self._idat_state == "before":
            raise FormatError("PNG has no image data (IDAT)")
        needed = self.header.filtered_bytes
        while not self._inflater.eof:  # output zlib still holds back, if any
            try:
                out = self._inflater.decompress(b"", _INFLATE_OUT)
            except zlib.error as exc:
                raise FormatError(f"PNG image data is not a valid zlib stream: {exc}") from None
            if not out:
                raise FormatError("PNG image data is truncated (its zlib stream does not end)")
            self._count_inflated(len(out), needed)
        if self._inflated != needed:
            raise FormatError(
                f"PNG image data inflates to {self._inflated} bytes, not the {needed} bytes its"
                " dimensions need"
            )

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
    byte anywhere is not; neither is a NUL or another control character (see
    `_NOTE_CONTROL`), nor a note that is only white space."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._offset = 0
        self._visible = False

    def feed(self, data: bytes | memoryview) -> None:
        """Decode the text and check its characters; the text itself is dropped."""
        try:
            text = self._decoder.decode(bytes(data))
        except UnicodeDecodeError as exc:
            raise FormatError(f"text is not UTF-8 (byte {self._offset + exc.start})") from None
        self._check(text)
        self._offset += len(data)

    def _check(self, text: str) -> None:
        control = _NOTE_CONTROL.search(text)
        if control is not None:
            raise FormatError(
                f"text holds the control character U+{ord(control.group()):04X}"
                " (NUL and control characters other than tab and line breaks are refused)"
            )
        if not self._visible:
            # White space, and format characters such as U+200B or a BOM, show nothing.
            self._visible = any(
                not c.isspace() and unicodedata.category(c) != "Cf" for c in text
            )

    def finish(self) -> None:
        """The file ended: no half character may be left, and something must be written."""
        try:
            self._check(self._decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            raise FormatError("text is not UTF-8 (it ends inside a character)") from None
        if not self._visible:
            raise FormatError("text is empty or only white space or invisible characters")


def jpeg_dimensions(prefix: bytes, *, complete: bool) -> ImageGeometry | None:
    """The JPEG's frame header in `prefix`, or None while more bytes are needed.

    `complete` says no more bytes will come (end of file or header window full); then a
    missing frame header is an error.
    """
    try:
        geometry = jpeg_geometry(prefix)
    except HeaderError as exc:
        raise FormatError(str(exc)) from None
    if geometry is None and complete:
        raise FormatError("JPEG header cannot be read (no frame header in its header window)")
    return geometry


@dataclass(frozen=True)
class DicomHeader:
    """What ingest needs from a DICOM header."""

    transfer_syntax: str
    geometry: ImageGeometry


def dicom_header(prefix: bytes, *, supported_syntaxes: tuple[str, ...]) -> DicomHeader:
    """Parse the DICOM header in `prefix` (the whole file, or the header window) without pixel
    data: preamble + `DICM`, a supported transfer syntax (checked before the data set is
    parsed), required tags, pixel data present, and the geometry of the pixels."""
    try:
        syntax = dicom_transfer_syntax(prefix)
        if syntax not in supported_syntaxes:
            raise FormatError(f"DICOM transfer syntax {syntax} is not supported")
        dataset = read_dicom_header(prefix)
        missing = [tag for tag in _DICOM_REQUIRED if _dicom_value(dataset, tag) in (None, "")]
        if missing:
            raise FormatError(f"DICOM lacks required tags: {', '.join(missing)}")
        if _DICOM_PIXEL_TAG not in prefix[DICOM_MAGIC_OFFSET:]:
            raise FormatError("DICOM has no pixel data within its header window")
        return DicomHeader(syntax, dicom_geometry(dataset))
    except HeaderError as exc:
        raise FormatError(str(exc)) from None


def _dicom_value(dataset: object, tag: str) -> object:
    """A data set's value, or None when pydicom cannot read it (a value of the wrong VR)."""
    try:
        return dataset.get(tag)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - untrusted bytes: an unreadable value is a missing one
        return None
