"""Validation of what a client declares about a file and of the bytes it then sends.

`check_declaration` runs before a byte is stored (kind, content type, name, size limits,
checksum format). `FileValidator` then sees every byte once, in order: it counts them, hashes
them (SHA-256), checks the magic bytes against the declared kind, walks the file's structure
(formats.py) and reads what a decoder would allocate from the header as soon as the header has
arrived, refusing a decompression bomb (pixels, or decoded bytes: width x height x channels x
bytes per sample x frames) before anything decodes it. `finish()` is the last word: only
when it returns may the upload be committed.

Every refusal is an InvalidArgument with a field violation; the field names follow the request
the bytes came in (`metadata.sha256` and `chunk` for UploadFile, `sha256` and `name` for
CompleteUpload, `text` for CreateTextNote).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from gen.medmesh.common.v1 import FileKind
from medmesh.errors import FieldViolation, InvalidArgument, ResourceExhausted
from medmesh.image_headers import ImageGeometry, PngHeader
from svc_ingest.config import IngestConfig
from svc_ingest.formats import (
    KIND_NAMES,
    FormatError,
    JpegStructure,
    PngStructure,
    Utf8Text,
    dicom_header,
    jpeg_dimensions,
    sniff_kind,
)

CANONICAL_CONTENT_TYPE = {
    FileKind.IMAGE_PNG: "image/png",
    FileKind.IMAGE_JPEG: "image/jpeg",
    FileKind.IMAGE_DICOM: "application/dicom",
    FileKind.TEXT_NOTE: "text/plain; charset=utf-8",
}
_ACCEPTED_CONTENT_TYPES = {
    FileKind.IMAGE_PNG: {"image/png"},
    FileKind.IMAGE_JPEG: {"image/jpeg", "image/jpg"},
    FileKind.IMAGE_DICOM: {"application/dicom"},
    FileKind.TEXT_NOTE: {"text/plain", "text/plain;charset=utf-8"},
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_FILE_NAME = 255
# Bidirectional controls: they make "gpj.exe" display as "exe.jpg" (CVE-2021-42574's trick).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Enough for every magic number we check (DICOM's sits at offset 128).
_SNIFF_BYTES = 132


@dataclass(frozen=True)
class FileDeclaration:
    """What the client says a file is, checked and normalised."""

    kind: FileKind
    file_name: str
    content_type: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ValidatedFile:
    """What the bytes turned out to be."""

    sha256: str
    size_bytes: int
    dimensions: ImageGeometry | None


def size_limit(kind: FileKind, config: IngestConfig) -> int:
    """The largest file of `kind` accepted at all."""
    if kind == FileKind.IMAGE_DICOM:
        return config.max_dicom_bytes
    if kind == FileKind.TEXT_NOTE:
        return config.max_text_bytes
    return config.max_image_bytes


def check_declaration(
    *,
    kind: FileKind,
    file_name: str,
    content_type: str,
    size_bytes: int,
    sha256: str,
    config: IngestConfig,
    prefix: str = "",
    stream_limit: int | None = None,
) -> FileDeclaration:
    """Check everything about a file that can be checked before its bytes arrive.

    Raises InvalidArgument naming every bad field (`prefix` + field), then ResourceExhausted
    when the file is acceptable but larger than `stream_limit` (it should use a presigned URL).
    """
    violations: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(prefix + field, description))

    known_kind = kind in CANONICAL_CONTENT_TYPE
    if not known_kind:
        bad("kind", "must be one of PNG, JPEG, DICOM or TEXT_NOTE")
    name_problem = file_name_problem(file_name)
    if name_problem:
        bad("file_name", name_problem)
    normalised = content_type.lower().replace(" ", "")
    if known_kind and normalised not in _ACCEPTED_CONTENT_TYPES[kind]:
        bad("content_type", f"must be {CANONICAL_CONTENT_TYPE[kind]} for {kind.name}")
    if size_bytes <= 0:
        bad("size_bytes", "must be positive")
    elif known_kind and size_bytes > size_limit(kind, config):
        bad("size_bytes", f"exceeds the {size_limit(kind, config)}-byte limit for {kind.name}")
    if sha256 and not _SHA256.fullmatch(sha256):
        bad("sha256", "must be 64 lower-case hex digits")
    if violations:
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations), violations
        )
    if stream_limit is not None and size_bytes > stream_limit:
        raise ResourceExhausted(
            f"files over {stream_limit} bytes must be uploaded with CreateUploadUrl"
        )
    return FileDeclaration(kind, file_name, CANONICAL_CONTENT_TYPE[kind], size_bytes, sha256)


def file_name_problem(name: str) -> str:
    """Why `name` cannot be a file name, or "".

    Names are refused, not rewritten: the name is the clinic's record of what it sent, so it
    must come back exactly as given (Cyrillic, accents and all), and a refusal tells the
    client which character to fix. Refused: empty or blank names, more than MAX_FILE_NAME
    characters, path separators and "." / "..", control characters (CR and LF split HTTP
    headers and mail lines, NUL truncates C strings), Unicode line and paragraph separators,
    and bidirectional controls (they disguise a name's extension). The characters are named
    by code point in the refusal, never echoed.
    """
    if not name or name.isspace() or len(name) > MAX_FILE_NAME:
        return f"is required, not blank, and at most {MAX_FILE_NAME} characters"
    if name in {".", ".."}:
        return "must not be . or .."
    for position, char in enumerate(name):
        if char in "/\\":
            return f"must not contain path separators (U+{ord(char):04X} at {position})"
        if char in _BIDI_CONTROLS:
            return f"must not contain bidirectional controls (U+{ord(char):04X} at {position})"
        if unicodedata.category(char) in {"Cc", "Zl", "Zp"}:
            return f"must not contain control characters (U+{ord(char):04X} at {position})"
    return ""


class FileValidator:
    """Validates one file's bytes as they stream past; see the module docstring."""

    def __init__(
        self,
        declaration: FileDeclaration,
        config: IngestConfig,
        *,
        content_field: str,
        prefix: str = "",
    ) -> None:
        self._decl = declaration
        self._config = config
        self._content_field = content_field
        self._prefix = prefix
        self._hash = hashlib.sha256()
        self._size = 0
        self._head = bytearray()
        self._structure: PngStructure | JpegStructure | Utf8Text | None = None
        self._started = False
        self._pending: list[bytes | memoryview] = []
        self._probed_at = 0
        self.dimensions: ImageGeometry | None = None
        self.header_bytes_parsed = 0
        """Bytes handed to header parsers so far: linear in the header window whatever the
        chunking (the unit tests count it)."""

    @property
    def size(self) -> int:
        """Bytes seen so far."""
        return self._size

    def _content_error(self, description: str) -> InvalidArgument:
        return InvalidArgument.for_field(self._content_field, description)

    def _error(self, exc: FormatError) -> InvalidArgument:
        if exc.wrong_kind:
            return InvalidArgument.for_field(self._prefix + "kind", str(exc))
        return self._content_error(str(exc))

    def feed(self, data: bytes | memoryview) -> None:
        """The next bytes of the file; raises InvalidArgument as soon as they are wrong."""
        self._size += len(data)
        if self._size > self._decl.size_bytes:
            raise InvalidArgument.for_field(
                self._prefix + "size_bytes",
                f"the file is longer than the declared {self._decl.size_bytes} bytes",
            )
        self._hash.update(data)
        window = self._config.header_window_bytes
        if len(self._head) < window:
            self._head += data[: window - len(self._head)]
        if not self._started:
            self._pending.append(data)
            if len(self._head) < _SNIFF_BYTES and self._size < self._decl.size_bytes:
                return  # not enough bytes to tell the kind yet
            self._start()
            chunks, self._pending = self._pending, []
        else:
            chunks = [data]
        try:
            if self._structure is not None:
                for chunk in chunks:
                    self._structure.feed(chunk)
            self._probe_header(complete=False)
        except FormatError as exc:
            raise self._error(exc) from None

    def _start(self) -> None:
        """Compare the magic bytes with the declared kind and pick the structure checker."""
        self._started = True
        sniffed = sniff_kind(bytes(self._head))
        declared = self._decl.kind
        if sniffed is not None and sniffed != declared:
            raise InvalidArgument.for_field(
                self._prefix + "kind",
                f"the bytes are {KIND_NAMES[sniffed]}, not {KIND_NAMES[declared]}",
            )
        if sniffed is None and declared != FileKind.TEXT_NOTE:
            raise self._content_error(f"the bytes are not {KIND_NAMES[declared]}")
        # DICOM has no end marker; its structure is the header (see _probe_header).
        if declared == FileKind.IMAGE_PNG:
            self._structure = PngStructure(on_header=self._png_header)
        elif declared == FileKind.IMAGE_JPEG:
            self._structure = JpegStructure()
        elif declared == FileKind.TEXT_NOTE:
            self._structure = Utf8Text()
        else:  # DICOM has no end marker; its structure is the header (see _probe_header).
            self._structure = None

    def _png_header(self, header: PngHeader) -> None:
        """PngStructure read the IHDR: bound it before any image data is inflated."""
        self._check_geometry(header.geometry)

    def _probe_header(self, *, complete: bool) -> None:
        """Read the JPEG or DICOM header from the head once enough of it arrived.

        A JPEG's frame header may sit behind 64 KiB segments of metadata, so the head is
        parsed again only when it has doubled since the last try (or is complete): whatever
        the chunking, the parsers see at most about twice the header window in all, not a
        copy of the head per chunk (which made 1-byte chunks quadratic).
        """
        kind = self._decl.kind
        if self.dimensions is not None or kind in (FileKind.TEXT_NOTE, FileKind.IMAGE_PNG):
            return
        complete = complete or len(self._head) >= self._config.header_window_bytes
        waiting = kind == FileKind.IMAGE_DICOM or len(self._head) < 2 * self._probed_at
        if waiting and not complete:
            return
        self._probed_at = len(self._head)
        self.header_bytes_parsed += len(self._head)
        if kind == FileKind.IMAGE_DICOM:
            header = dicom_header(
                bytes(self._head), supported_syntaxes=self._config.dicom_transfer_syntaxes
            )
            geometry: ImageGeometry | None = header.geometry
        else:
            geometry = jpeg_dimensions(bytes(self._head), complete=complete)
        if geometry is not None:
            self._check_geometry(geometry)

    def _check_geometry(self, geometry: ImageGeometry) -> None:
        """Refuse an image whose pixels or decoded bytes are over the limits."""
        limits = self._config
        if geometry.pixels > limits.max_pixels:
            raise FormatError(
                f"image is {geometry.width}x{geometry.height}"
                + (f"x{geometry.frames}" if geometry.frames > 1 else "")
                + f" ({geometry.pixels} pixels), more than the limit of {limits.max_pixels}"
            )
        if geometry.decoded_bytes > limits.max_decoded_bytes:
            raise FormatError(
                f"image decodes to {geometry.decoded_bytes} bytes ({geometry.describe()}),"
                f" more than the limit of {limits.max_decoded_bytes}"
            )
        self.dimensions = geometry

    def finish(self) -> ValidatedFile:
        """The stream ended: size, structure, header and checksum must all be right."""
        if self._size != self._decl.size_bytes:
            raise InvalidArgument.for_field(
                self._prefix + "size_bytes",
                f"the file has {self._size} bytes, not the declared {self._decl.size_bytes}",
            )
        try:
            if self._structure is not None:
                self._structure.finish()
            self._probe_header(complete=True)
        except FormatError as exc:
            raise self._error(exc) from None
        digest = self._hash.hexdigest()
        if self._decl.sha256 and digest != self._decl.sha256:
            raise InvalidArgument.for_field(
                self._prefix + "sha256", f"the file's SHA-256 is {digest}, not the declared one"
            )
        return ValidatedFile(digest, self._size, self.dimensions)
