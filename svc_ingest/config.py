"""svc_ingest's own settings: upload limits and tuning, from `MEDMESH_INGEST_*` variables.

Read once at start-up from `Settings.extra`; tests build `IngestConfig(...)` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from medmesh.settings import SettingsError, config_from_env

MIB = 1024 * 1024

# Transfer syntaxes svc_infer can decode with pydicom + Pillow (no extra codec packages):
# uncompressed little endian (implicit, explicit), RLE lossless, JPEG baseline. (Deflated
# syntaxes compress the header too, which the streaming header check cannot read.)
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
)


@dataclass(frozen=True)
class IngestConfig:
    """Limits and tuning of svc_ingest. Each field names its MEDMESH_INGEST_* variable."""

    max_image_bytes: int = 256 * MIB
    """MEDMESH_INGEST_MAX_IMAGE_BYTES: largest PNG or JPEG."""
    max_dicom_bytes: int = 1024 * MIB
    """MEDMESH_INGEST_MAX_DICOM_BYTES: largest DICOM file."""
    max_text_bytes: int = 256 * 1024
    """MEDMESH_INGEST_MAX_TEXT_BYTES: largest clinical note (UTF-8 bytes)."""
    max_stream_bytes: int = 512 * MIB
    """MEDMESH_INGEST_MAX_STREAM_BYTES: largest UploadFile; bigger files use CreateUploadUrl."""
    max_pixels: int = 64_000_000
    """MEDMESH_INGEST_MAX_PIXELS: width x height (x frames) above which an image is refused
    before it is decoded (decompression bombs)."""
    max_decoded_bytes: int = 512 * MIB
    """MEDMESH_INGEST_MAX_DECODED_BYTES: width x height x channels x bytes per sample x frames
    (as the header says: 16-bit samples count 2 bytes, RGBA 4 channels, every DICOM frame)
    above which an image is refused before it is stored. svc_infer checks its own budget
    again before decoding."""
    header_window_bytes: int = 1 * MIB
    """MEDMESH_INGEST_HEADER_WINDOW_BYTES: how far into a file its header must end."""
    part_size_bytes: int = 8 * MIB
    """MEDMESH_INGEST_PART_SIZE_BYTES: S3 multipart part size (S3 minimum 5 MiB); the memory
    an upload holds is about two parts."""
    streaming_put_max_bytes: int = 512 * MIB
    """MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES: UploadFile streams up to this size go to S3 as
    one streaming PUT (faster, no part files); larger ones as multipart. 0: always multipart.
    At most 5 GiB (S3's single-PUT limit)."""
    max_chunk_bytes: int = 1 * MIB
    """MEDMESH_INGEST_MAX_CHUNK_BYTES: largest chunk message of an UploadFile stream."""
    presign_expiry_s: float = 900.0
    """MEDMESH_INGEST_PRESIGN_EXPIRY_S: lifetime of a presigned upload URL."""
    dicom_transfer_syntaxes: tuple[str, ...] = field(default=DEFAULT_TRANSFER_SYNTAXES)
    """MEDMESH_INGEST_DICOM_TRANSFER_SYNTAXES: comma-separated UIDs accepted."""

    def __post_init__(self) -> None:
        if self.part_size_bytes < 5 * MIB:
            raise SettingsError("MEDMESH_INGEST_PART_SIZE_BYTES must be at least 5 MiB (S3)")
        if not 0 <= self.streaming_put_max_bytes <= 5 * 1024 * MIB:
            raise SettingsError("MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES must be 0 .. 5 GiB (S3)")

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> IngestConfig:
        """Parse `Settings.extra` (the MEDMESH_INGEST_* variables); unset ones keep defaults."""
        return config_from_env(cls, extra, "MEDMESH_INGEST_")
