"""svc_ingest's MEDMESH_INGEST_* settings."""

from __future__ import annotations

import pytest

from medmesh.settings import SettingsError
from svc_ingest.config import DEFAULT_TRANSFER_SYNTAXES, MIB, IngestConfig


def test_unset_variables_keep_the_defaults() -> None:
    config = IngestConfig.from_extra({})
    assert config == IngestConfig()
    assert config.dicom_transfer_syntaxes == DEFAULT_TRANSFER_SYNTAXES


def test_variables_are_parsed_by_the_type_of_their_field() -> None:
    config = IngestConfig.from_extra(
        {
            "MEDMESH_INGEST_MAX_PIXELS": "1000000",
            "MEDMESH_INGEST_PRESIGN_EXPIRY_S": "60.5",
            "MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES": "0",
            "MEDMESH_INGEST_DICOM_TRANSFER_SYNTAXES": "1.2.840.10008.1.2, 1.2.840.10008.1.2.1",
        }
    )
    assert config.max_pixels == 1_000_000
    assert config.presign_expiry_s == 60.5
    assert config.streaming_put_max_bytes == 0
    assert config.dicom_transfer_syntaxes == ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@pytest.mark.parametrize(
    "extra",
    [
        {"MEDMESH_INGEST_MAX_PIXELS": "lots"},
        {"MEDMESH_INGEST_PART_SIZE_BYTES": str(4 * MIB)},
        {"MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES": str(6 * 1024 * MIB)},
        {"MEDMESH_INGEST_PENDING_UPLOAD_MAX_AGE_S": "1200"},
        {"MEDMESH_INGEST_MAX_FILES_PER_STUDY": "0"},
        {"MEDMESH_INGEST_MAX_STORED_BYTES": "0"},
    ],
    ids=[
        "not a number",
        "part below S3's 5 MiB",
        "single PUT above S3's 5 GiB",
        "abandoned before the URL and the completion lease ran out",
        "no files per study",
        "no bytes per clinic",
    ],
)
def test_bad_values_fail_at_start_up(extra: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        IngestConfig.from_extra(extra)
