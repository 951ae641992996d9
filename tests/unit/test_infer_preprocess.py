"""svc_infer's OpenCV/pydicom preprocessing, without I/O: decoding, DICOM rescale and
windowing, channel handling, resizing and normalisation."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from gen.medmesh.common.v1 import FileKind
from svc_infer.preprocess import (
    ImageSpec,
    PreprocessingError,
    decode_dicom,
    encode_png,
    normalise,
    prepare_image,
    to_rgb8,
    window,
)

SPEC = ImageSpec()


def png(pixels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", pixels)
    assert ok
    return buffer.tobytes()


def dicom(
    pixels: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    center: float | None = None,
    width: float | None = None,
    photometric: str = "MONOCHROME2",
) -> bytes:
    """A minimal uncompressed DICOM Part 10 file holding `pixels` (uint16, one frame)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if center is not None and width is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_gray_png_becomes_a_224_square_with_three_equal_channels() -> None:
    gray = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1))  # 64 x 128 ramp
    prepared = prepare_image(png(gray), FileKind.IMAGE_PNG, SPEC)
    assert prepared.tensor.shape == (224, 224, 3)
    assert prepared.tensor.dtype == np.float32
    assert prepared.source_shape == (64, 128)
    assert np.array_equal(prepared.rgb8[:, :, 0], prepared.rgb8[:, :, 1])
    assert np.array_equal(prepared.rgb8[:, :, 1], prepared.rgb8[:, :, 2])
    # The ramp survives resizing: dark on the left, bright on the right.
    assert prepared.rgb8[100, 5, 0] < 20 < 230 < prepared.rgb8[100, 218, 0]


def test_a_color_jpeg_keeps_its_colors_in_rgb_order() -> None:
    bgr = np.zeros((300, 300, 3), dtype=np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's BGR order
    ok, jpeg = cv2.imencode(".jpg", bgr)
    assert ok
    prepared = prepare_image(jpeg.tobytes(), FileKind.IMAGE_JPEG, SPEC)
    red, green, blue = prepared.rgb8[112, 112]
    assert red > 180
    assert green < 20
    assert blue < 20


def test_a_16_bit_png_is_scaled_by_its_own_range() -> None:
    deep = np.zeros((32, 32), dtype=np.uint16)
    deep[:, 16:] = 4000
    rgb = to_rgb8(cv2.imdecode(np.frombuffer(png(deep), np.uint8), cv2.IMREAD_UNCHANGED))
    assert rgb[0, 0, 0] == 0
    assert rgb[0, 31, 0] == 255


@pytest.mark.parametrize(
    ("color_order", "mean", "std", "expected_first_channel"),
    [
        ("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0),  # red pixel, red first, [0, 1]
        ("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0.0),  # blue first: no blue in it
        ("RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (1.0 - 0.485) / 0.229),
        ("BGR", (0.406, 0.458, 0.485), (1 / 255, 1 / 255, 1 / 255), -0.406 * 255),  # caffe
    ],
)
def test_normalisation_follows_the_model_spec(
    color_order: str,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    expected_first_channel: float,
) -> None:
    red = np.zeros((224, 224, 3), dtype=np.uint8)
    red[:, :, 0] = 255
    spec = ImageSpec(color_order=color_order, mean=mean, std=std)
    tensor = normalise(red, spec)
    assert tensor[0, 0, 0] == pytest.approx(expected_first_channel, rel=1e-5, abs=1e-5)


def test_dicom_rescale_slope_and_intercept_apply_before_the_window() -> None:
    # Stored 0..2000 with slope 2, intercept -1000 → -1000..3000 HU. A window centred at 0
    # HU, 200 wide, maps stored 500 (0 HU) to mid-gray, stored 400 (-200 HU) to black and
    # stored 600 (200 HU) to white.
    stored = np.array([[400, 500, 600, 2000]], dtype=np.uint16).repeat(4, axis=0)
    gray = decode_dicom(dicom(stored, slope=2.0, intercept=-1000.0, center=0.0, width=200.0))
    assert gray.dtype == np.uint8
    assert list(gray[0]) == [0, 128, 255, 255]


def test_dicom_without_a_window_uses_the_full_range_of_its_values() -> None:
    stored = np.array([[100, 150, 200]], dtype=np.uint16).repeat(3, axis=0)
    gray = decode_dicom(dicom(stored, slope=1.0, intercept=0.0))
    assert gray[0, 0] == 0
    assert gray[0, 2] == 255
    assert 120 <= gray[0, 1] <= 135


def test_monochrome1_dicom_is_inverted_to_the_usual_polarity() -> None:
    stored = np.array([[0, 1000]], dtype=np.uint16).repeat(2, axis=0)
    gray = decode_dicom(dicom(stored, photometric="MONOCHROME1"))
    assert list(gray[0]) == [255, 0]


def test_a_dicom_file_goes_through_the_whole_pipeline() -> None:
    stored = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 1000) + 24
    prepared = prepare_image(
        dicom(stored, slope=1.0, intercept=-1024.0, center=40.0, width=400.0),
        FileKind.IMAGE_DICOM,
        SPEC,
    )
    assert prepared.tensor.shape == (224, 224, 3)
    assert prepared.source_shape == (64, 64)


def test_windowing_matches_the_dicom_standard_formula() -> None:
    values = np.array([-1000.0, 20.0, 40.0, 1000.0])
    out = window(values, center=40.0, width=400.0)
    assert list(out) == [0, 115, 128, 255]  # ((x - 39.5) / 399 + 0.5) * 255


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", FileKind.IMAGE_PNG),
        (b"\x89PNG\r\n\x1a\ntruncated", FileKind.IMAGE_PNG),
        (b"not a jpeg at all", FileKind.IMAGE_JPEG),
        (b"DICM? no", FileKind.IMAGE_DICOM),
        (b"a note", FileKind.TEXT_NOTE),
    ],
)
def test_undecodable_input_raises_a_preprocessing_error(data: bytes, kind: FileKind) -> None:
    with pytest.raises(PreprocessingError):
        prepare_image(data, kind, SPEC)


@pytest.mark.parametrize("gray", [False, True], ids=["color", "gray"])
def test_the_processed_png_decodes_back_to_what_the_model_saw(gray: bool) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    if gray:
        rgb[:, :, 1] = rgb[:, :, 2] = rgb[:, :, 0]
    decoded = cv2.imdecode(np.frombuffer(encode_png(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), rgb)


def test_an_image_spec_rejects_an_unknown_channel_order() -> None:
    with pytest.raises(ValueError, match="color_order"):
        ImageSpec(color_order="YUV")
