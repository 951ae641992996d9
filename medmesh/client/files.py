"""Local files as svc_ingest wants them declared: kind, media type, size and SHA-256.

The kind comes from the file's first bytes (what svc_ingest checks too), else its extension,
so a DICOM file without an extension is still recognised. The SHA-256 is computed by
reading the file once in 1 MiB pieces in a worker thread, before the upload starts: the
metadata message that opens an upload carries it, and the CLI compares it with the study's
stored files to skip what is there already.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gen.medmesh.common.v1 import FileKind

CHUNK_BYTES = 1024 * 1024  # UploadFile's largest chunk; also the hashing read size

CONTENT_TYPES = {
    FileKind.IMAGE_PNG: "image/png",
    FileKind.IMAGE_JPEG: "image/jpeg",
    FileKind.IMAGE_DICOM: "application/dicom",
    FileKind.TEXT_NOTE: "text/plain; charset=utf-8",
}
_EXTENSIONS = {
    ".png": FileKind.IMAGE_PNG,
    ".jpg": FileKind.IMAGE_JPEG,
    ".jpeg": FileKind.IMAGE_JPEG,
    ".dcm": FileKind.IMAGE_DICOM,
    ".dicom": FileKind.IMAGE_DICOM,
    ".txt": FileKind.TEXT_NOTE,
}


class UnknownFileKind(ValueError):
    """A file that is neither PNG, JPEG, DICOM nor a `.txt` note."""


def kind_of(path: Path, head: bytes) -> FileKind:
    """The kind of a file from its first 132 bytes, else its extension."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileKind.IMAGE_PNG
    if head.startswith(b"\xff\xd8\xff"):
        return FileKind.IMAGE_JPEG
    if head[128:132] == b"DICM":
        return FileKind.IMAGE_DICOM
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise UnknownFileKind(f"{path.name}: not a PNG, JPEG, DICOM or .txt note")
    return kind


@dataclass(frozen=True)
class LocalFile:
    """A file on disk, described for an upload."""

    path: Path
    kind: FileKind
    content_type: str
    size_bytes: int
    sha256: str

    @property
    def file_name(self) -> str:
        """The name sent to the server: the base name (no folders), Unicode as it is."""
        return self.path.name

    def chunks(self) -> Iterator[bytes]:
        """The bytes, 1 MiB at a time (read afresh on every call, so a retry can resend)."""
        with self.path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk


def _describe(path: Path, kind: FileKind | None) -> LocalFile:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        head = handle.read(132)
        handle.seek(0)
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    kind = kind or kind_of(path, head)
    return LocalFile(path, kind, CONTENT_TYPES[kind], size, digest.hexdigest())


async def describe_file(path: Path | str, kind: FileKind | None = None) -> LocalFile:
    """Kind, size and SHA-256 of `path` (read in a worker thread)."""
    return await asyncio.to_thread(_describe, Path(path), kind)


def files_under(paths: list[Path]) -> list[Path]:
    """`paths` with every folder replaced by the files in it (recursively, sorted, hidden
    files skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)
            )
        else:
            found.append(path)
    return found
