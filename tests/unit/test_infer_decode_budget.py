"""svc_infer's decode guard without servers: the header probe, the decoding-peak estimate
against the memory numpy really allocates, and the image pipeline's per-batch budget (an
in-memory object store and model server stand in for S3 and TF Serving)."""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
import zlib
from collections.abc import Sequence
from typing import Any, cast

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from support.crafted_files import (
    deflated_dicom_with_garbage,
    dicom,
    jpeg,
    jpeg_frame_only,
    png,
    png_raw_size,
    png_with_idat,
)

from gen.medmesh.common.v1 import AnalysisKind, FileKind
from gen.medmesh.events.v1 import InferenceJob
from gen.medmesh.infer.v1 import ModelVersionState
from medmesh.errors import NotFound
from medmesh.image_headers import ImageGeometry
from medmesh.settings import SettingsError
from svc_infer.budget import DecodeBudget
from svc_infer.config import InferConfig
from svc_infer.pipeline import Delivery, ImagePipeline
from svc_infer.preprocess import (
    BLOCK_WORK_BYTES,
    ImageSpec,
    PreprocessingError,
    decode_cost_bytes,
    decode_dicom,
    prepare_image,
    probe_image,
)
from svc_infer.registry import InputSpec, Model, ModelVersion

MIB = 1024 * 1024


def gradient_png(width: int, height: int, *, channels: int = 4, depth: type = np.uint16) -> bytes:
    """A smooth (so quickly compressed) image with a real value range, via OpenCV."""
    top = np.iinfo(depth).max
    ramp = np.linspace(0, top, width, dtype=np.float64).astype(depth)
    image = np.repeat(np.tile(ramp, (height, 1))[:, :, None], channels, axis=2)
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return buffer.tobytes()


PROBES = [
    ("16-bit RGBA PNG", gradient_png(40, 30), FileKind.IMAGE_PNG, ImageGeometry(40, 30, 4, 2)),
    ("8-bit gray PNG", png(9, 7, color_type=0), FileKind.IMAGE_PNG, ImageGeometry(9, 7, 1, 1)),
    ("JPEG", jpeg(33, 17), FileKind.IMAGE_JPEG, ImageGeometry(33, 17, 3, 1)),
    (
        "12-bit CMYK JPEG header",
        jpeg_frame_only(500, 400, components=4, precision=12),
        FileKind.IMAGE_JPEG,
        ImageGeometry(500, 400, 4, 2),
    ),
    (
        "multi-frame RGB DICOM",
        dicom(rows=6, columns=5, samples=3, bits=8, frames=4),
        FileKind.IMAGE_DICOM,
        ImageGeometry(5, 6, 3, 1, 4),
    ),
]


@pytest.mark.parametrize(
    ("case", "data", "kind", "expected"), PROBES, ids=[case for case, _, _, _ in PROBES]
)
def test_the_header_probe_reads_what_a_decoder_would_allocate(
    case: str, data: bytes, kind: FileKind, expected: ImageGeometry
) -> None:
    assert probe_image(data, kind) == expected


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, FileKind.IMAGE_PNG),
        (jpeg_frame_only(64, 64, app_bytes=200_000)[:100_000], FileKind.IMAGE_JPEG),
        (deflated_dicom_with_garbage(), FileKind.IMAGE_DICOM),
        (b"\x00" * 128 + b"DICM" + b"\xff" * 64, FileKind.IMAGE_DICOM),
        (b"a note", FileKind.TEXT_NOTE),
    ],
    ids=["png without IHDR", "jpeg frame past the head", "deflated dicom", "bad meta", "text"],
)
def test_an_unreadable_header_is_a_preprocessing_error(data: bytes, kind: FileKind) -> None:
    with pytest.raises(PreprocessingError):
        probe_image(data, kind)


def test_a_deflated_dicom_is_refused_by_the_decoder_too() -> None:
    with pytest.raises(PreprocessingError, match="deflated"):
        decode_dicom(deflated_dicom_with_garbage())


def test_the_decoding_peak_of_a_16_bit_rgba_png_stays_within_its_estimate() -> None:
    # 1500 x 1500 x 4 x 2 bytes = 18 MB decoded. Scaling it to 8 bits in float64 at once
    # (as before) held ~4 float64 copies: over 200 MB, far above the estimate.
    data = gradient_png(1500, 1500)
    geometry = probe_image(data, FileKind.IMAGE_PNG)
    estimate = decode_cost_bytes(geometry, len(data))
    tracemalloc.start()
    try:
        prepare_image(data, FileKind.IMAGE_PNG, ImageSpec())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak + len(data) <= estimate, (peak, estimate)
    assert peak > geometry.frame_bytes  # the decoded image itself was traced


def multi_frame_dicom(frames: int, rows: int = 32, columns: int = 24) -> bytes:
    """A 16-bit multi-frame DICOM whose frame i holds the value 100 * (i + 1) everywhere."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = 500.0, 1000.0
    pixels = np.stack([np.full((rows, columns), 100 * (i + 1), np.uint16) for i in range(frames)])
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_a_multi_frame_dicom_decodes_its_middle_frame_only() -> None:
    gray = decode_dicom(multi_frame_dicom(5))
    assert gray.shape == (32, 24)
    # Frame 2 (value 300) through the window 0..1000: ((300 - 499.5) / 999 + 0.5) * 255.
    assert int(gray[0, 0]) == round(((300 - 499.5) / 999 + 0.5) * 255)


@pytest.mark.parametrize("block", [7, 1 << 20])
def test_blocked_scaling_gives_the_same_pixels_as_one_block(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    data = gradient_png(97, 61, channels=3)
    monkeypatch.setattr("svc_infer.preprocess._BLOCK_ELEMENTS", 1 << 20)
    whole = prepare_image(data, FileKind.IMAGE_PNG, ImageSpec())
    monkeypatch.setattr("svc_infer.preprocess._BLOCK_ELEMENTS", block)
    blocked = prepare_image(data, FileKind.IMAGE_PNG, ImageSpec())
    assert np.array_equal(whole.rgb8, blocked.rgb8)
    assert np.array_equal(whole.tensor, blocked.tensor)


# ---------------------------------------------------------------- the pipeline's budget


class MemoryObjects:
    """The part of ObjectStore the image pipeline uses, in memory."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.full_reads: list[str] = []
        self.stored: dict[str, bytes] = {}

    async def read_head(self, bucket: str, key: str, length: int) -> tuple[bytes, int]:
        if key not in self.files:
            raise NotFound(key)
        return self.files[key][:length], len(self.files[key])

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        self.full_reads.append(key)
        return self.files[key]

    async def put_bytes(self, bucket: str, key: str, data: bytes, **_: Any) -> str:
        self.stored[key] = data
        return "etag"


class CountingModelServer:
    """Predict answers zeros; it records the batch sizes it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def predict(self, ref: Any, inputs: dict[str, np.ndarray], **_: Any) -> Any:
        (batch,) = inputs.values()
        self.batches.append(len(batch))
        return {"probs": np.full((len(batch), 2), 0.5, np.float32)}, None


MODEL = Model(
    name="resnet",
    kind=AnalysisKind.IMAGE_CLASSIFICATION,
    stable_version=1,
    versions=(
        ModelVersion(
            model="resnet",
            version=1,
            state=ModelVersionState.REGISTERED,
            labels=("normal", "finding"),
            artifact_uri="s3://ml-models/resnet/1",
            input_spec=InputSpec(input_name="x", output_name="probs", shape=(32, 32, 3)),
            preprocessing_version="",
        ),
    ),
)


def deliveries(keys: Sequence[str], kind: FileKind = FileKind.IMAGE_PNG) -> list[Delivery]:
    """One delivery per object key (no message: the pipeline never touches it)."""
    return [
        Delivery(
            cast(Any, None),
            InferenceJob(
                job_id=f"job-{i}",
                clinic_id="clinic-a",
                study_id="s-1",
                file_id=f"f-{i}",
                kind=kind,
                object_key=key,
            ),
            attempt=1,
            started=time.time(),
        )
        for i, key in enumerate(keys)
    ]


def pipeline(objects: MemoryObjects, budget: int, *, header_bytes: int = 64 * 1024) -> Any:
    """An ImagePipeline over the in-memory stand-ins."""
    return ImagePipeline(
        cast(Any, objects),
        cast(Any, CountingModelServer()),
        top_k=2,
        timeout_s=5.0,
        decode_budget_bytes=budget,
        header_bytes=header_bytes,
    )


BOMBS = [
    (
        "16-bit RGBA PNG of 20000 x 20000",
        png_with_idat(20000, 20000, b"x", bit_depth=16, color_type=6),
        FileKind.IMAGE_PNG,
    ),
    (
        "CMYK JPEG of 60000 x 60000",
        jpeg_frame_only(60000, 60000, components=4),
        FileKind.IMAGE_JPEG,
    ),
    (
        "DICOM frame of 65535 x 65535 RGB 16-bit",
        dicom(rows=65535, columns=65535, samples=3, pixel_bytes=16),
        FileKind.IMAGE_DICOM,
    ),
]


@pytest.mark.parametrize(("case", "data", "kind"), BOMBS, ids=[case for case, _, _ in BOMBS])
async def test_an_image_over_the_batch_budget_fails_for_good_without_being_downloaded(
    case: str, data: bytes, kind: FileKind
) -> None:
    objects = MemoryObjects({"bomb": data, "fine": png(20, 20)})
    outcomes = await pipeline(objects, 256 * MIB).run(MODEL, 1, deliveries(["bomb"], kind))
    (outcome,) = outcomes
    assert outcome.permanent
    assert "DecodeRefused" in outcome.error
    assert "MEDMESH_INFER_BATCH_DECODE_BUDGET_BYTES" in outcome.error
    assert objects.full_reads == []


async def test_a_corrupt_image_still_fails_for_a_retry_not_for_good() -> None:
    objects = MemoryObjects({"broken": png(20, 20)[:60]})
    (outcome,) = await pipeline(objects, 256 * MIB).run(MODEL, 1, deliveries(["broken"]))
    assert outcome.error
    assert not outcome.permanent


async def test_a_batch_decodes_only_as_many_images_at_once_as_its_budget_holds() -> None:
    # Each 1200 x 1000 RGB PNG is estimated at ~3.6 MB x 2 + 4.8 MB x 2 + 64 MiB + its file;
    # a budget of 2.5 estimates lets two decode at a time, never three.
    files = {f"img-{i}": gradient_png(1200, 1000, channels=3, depth=np.uint8) for i in range(5)}
    one = decode_cost_bytes(probe_image(files["img-0"], FileKind.IMAGE_PNG), len(files["img-0"]))
    objects = MemoryObjects(files)
    images = pipeline(objects, int(one * 2.5), header_bytes=1024)
    outcomes = await images.run(MODEL, 1, deliveries(sorted(files)))
    assert [o.error for o in outcomes] == [""] * 5
    assert images.last_budget.peak == 2 * one
    assert images.last_budget.held == 0
    assert len(objects.stored) == 5


async def test_a_small_image_is_read_once() -> None:
    objects = MemoryObjects({"small": png(20, 20)})
    (outcome,) = await pipeline(objects, 256 * MIB).run(MODEL, 1, deliveries(["small"]))
    assert outcome.error == ""
    assert objects.full_reads == []  # the head was the whole file


async def test_the_budget_serves_requests_first_come_first_served() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []

    async def take(name: str, amount: int, hold_s: float) -> None:
        async with budget.hold(amount):
            order.append(name)
            await asyncio.sleep(hold_s)

    first = asyncio.create_task(take("a", 60, 0.05))
    await asyncio.sleep(0)
    big = asyncio.create_task(take("big", 100, 0))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 10, 0))
    await asyncio.gather(first, big, small)
    assert order == ["a", "big", "small"]  # the small one did not overtake the big one
    assert budget.peak == 100
    with pytest.raises(ValueError, match="exceed"):
        async with budget.hold(101):
            pass


def test_the_estimate_counts_the_file_two_frames_two_working_images_and_the_blocks() -> None:
    geometry = ImageGeometry(1000, 500, 4, 2, frames=7)
    expected = 123 + 2 * 1000 * 500 * 8 + 2 * 1000 * 500 * 4 + BLOCK_WORK_BYTES
    assert decode_cost_bytes(geometry, 123) == expected


def test_png_fixture_sizes_are_consistent() -> None:
    # Guards the crafted files used above: the zero PNG decodes to what its IHDR says.
    raw = bytes(png_raw_size(5, 4, bit_depth=16, color_type=6))
    data = png_with_idat(5, 4, zlib.compress(raw), bit_depth=16, color_type=6)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (4, 5, 4)
    assert decoded.dtype == np.uint16


def test_the_budget_settings_are_read_from_the_environment_and_checked() -> None:
    config = InferConfig.from_extra(
        {
            "MEDMESH_INFER_BATCH_DECODE_BUDGET_BYTES": str(512 * MIB),
            "MEDMESH_INFER_HEADER_BYTES": "65536",
        }
    )
    assert (config.batch_decode_budget_bytes, config.header_bytes) == (512 * MIB, 65536)
    with pytest.raises(SettingsError, match="BATCH_DECODE_BUDGET_BYTES"):
        InferConfig(batch_decode_budget_bytes=MIB)
