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
    pending_upload_max_age_s: float = 3600.0
    """MEDMESH_INGEST_PENDING_UPLOAD_MAX_AGE_S: a presigned upload not completed this long
    after CreateUploadUrl is abandoned: the sweeper deletes its row and objects. Must exceed
    PRESIGN_EXPIRY_S + COMPLETE_LEASE_S (a client PUTting at the URL's last second still
    gets to complete)."""
    complete_lease_s: float = 600.0
    """MEDMESH_INGEST_COMPLETE_LEASE_S: how long one CompleteUpload (copy + validation) may
    hold a file before another call may take over (a crashed replica's copy is then
    removed)."""
    sweep_interval_s: float = 60.0
    """MEDMESH_INGEST_SWEEP_INTERVAL_S: how often the sweeper looks for abandoned uploads
    and staged objects no pending file names."""
    max_files_per_study: int = 500
    """MEDMESH_INGEST_MAX_FILES_PER_STUDY: files a study may hold (pending ones included);
    also bounds the inputs of its report."""
    max_pending_uploads: int = 100
    """MEDMESH_INGEST_MAX_PENDING_UPLOADS: presigned uploads a clinic may have announced and
    not completed at once."""
    max_stored_bytes: int = 1024 * 1024 * MIB
    """MEDMESH_INGEST_MAX_STORED_BYTES: bytes a clinic may store (distinct objects: a
    de-duplicated copy counts once); default 1 TiB."""

    def __post_init__(self) -> None:
        if self.part_size_bytes < 5 * MIB:
            raise SettingsError("MEDMESH_INGEST_PART_SIZE_BYTES must be at least 5 MiB (S3)")
        if not 0 <= self.streaming_put_max_bytes <= 5 * 1024 * MIB:
            raise SettingsError("MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES must be 0 .. 5 GiB (S3)")
        if self.pending_upload_max_age_s <= self.presign_expiry_s + self.complete_lease_s:
            raise SettingsError(
                "MEDMESH_INGEST_PENDING_UPLOAD_MAX_AGE_S must exceed"
                " PRESIGN_EXPIRY_S + COMPLETE_LEASE_S"
            )
        if self.sweep_interval_s <= 0 or self.complete_lease_s <= 0:
            raise SettingsError("MEDMESH_INGEST_SWEEP_INTERVAL_S and COMPLETE_LEASE_S must be > 0")
        if min(self.max_files_per_study, self.max_pending_uploads, self.max_stored_bytes) < 1:
            raise SettingsError(
                "MEDMESH_INGEST_MAX_FILES_PER_STUDY, MAX_PENDING_UPLOADS and"
                " MAX_STORED_BYTES must be at least 1"
            )

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> IngestConfig:
        """Parse `Settings.extra` (the MEDMESH_INGEST_* variables); unset ones keep defaults."""
        return config_from_env(cls, extra, "MEDMESH_INGEST_")
