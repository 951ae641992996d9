"""Validation of what a client declares about a file and of the bytes it then sends.

`check_declaration` runs before a byte is stored (kind, content type, name, size limits,
checksum format). `FileValidator` then sees every byte once, in order: it counts them, hashes
them (SHA-256), checks the magic bytes against the declared kind, walks the file's structure
(formats.py) and reads the image dimensions from the header as soon as the header has arrived,
refusing a decompression bomb before anything decodes it. `finish()` is the last word: only
when it returns may the upload be committed.

Every refusal is an InvalidArgument with a field violation; the field names follow the request
the bytes came in (`metadata.sha256` and `chunk` for UploadFile, `sha256` and `name` for
CompleteUpload, `text` for CreateTextNote).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from gen.medmesh.common.v1 import FileKind
from medmesh.errors import FieldViolation, InvalidArgument, ResourceExhausted
from svc_ingest.config import IngestConfig
from svc_ingest.formats import (
    KIND_NAMES,
    Dimensions,
    FormatError,
    JpegStructure,
    PngStructure,
    Utf8Text,
    dicom_header,
    image_dimensions,
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
    dimensions: Dimensions | None


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
    if not file_name or len(file_name) > MAX_FILE_NAME:
        bad("file_name", f"is required and at most {MAX_FILE_NAME} characters")
    elif any(c in file_name for c in "/\\\x00"):
        bad("file_name", "must not contain path separators or NUL")
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
        self.dimensions: Dimensions | None = None

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
        checkers = {
            FileKind.IMAGE_PNG: PngStructure,
            FileKind.IMAGE_JPEG: JpegStructure,
            FileKind.TEXT_NOTE: Utf8Text,
        }
        checker = checkers.get(declared)
        self._structure = checker() if checker else None

    def _probe_header(self, *, complete: bool) -> None:
        if self.dimensions is not None or self._decl.kind == FileKind.TEXT_NOTE:
            return
        window_full = len(self._head) >= self._config.header_window_bytes
        complete = complete or window_full
        if self._decl.kind == FileKind.IMAGE_DICOM:
            if not complete:
                return
            header = dicom_header(
                bytes(self._head), supported_syntaxes=self._config.dicom_transfer_syntaxes
            )
            dimensions: Dimensions | None = header.dimensions
        else:
            dimensions = image_dimensions(bytes(self._head), self._decl.kind, complete=complete)
        if dimensions is None:
            return
        if dimensions.width <= 0 or dimensions.height <= 0:
            raise FormatError("image has no pixels")
        if dimensions.pixels > self._config.max_pixels:
            raise FormatError(
                f"image is {dimensions.width}x{dimensions.height}"
                + (f"x{dimensions.frames}" if dimensions.frames > 1 else "")
                + f" ({dimensions.pixels} pixels), more than the limit of"
                f" {self._config.max_pixels}"
            )
        self.dimensions = dimensions

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
