"""Image preprocessing with OpenCV: bytes of a stored study file → the tensor a model expects.

Pure functions, no I/O, so that every rule (DICOM rescale and windowing, channel handling,
resizing, normalisation) is unit-tested without a server. The output of `prepare_image` is
both the model input (float32, normalised as the model version's `InputSpec` says) and the
8-bit RGB picture that goes to the `medical-images-processed` bucket, so a clinician can see
exactly what the model saw.

`IMAGE_PREPROCESSING_VERSION` is stored with every result; change it whenever the code here
changes what a model receives, so results made by different preprocessing can be told apart.

Memory is bounded before anything is decoded: `probe_image` reads what a decoder would
allocate from the header (medmesh.image_headers, as ingest does) and `decode_cost_bytes`
turns it into the peak this module holds for the file: the file, one decoded frame (a
multi-frame DICOM decodes only its middle frame), 8-bit working images, and float work done
in blocks of rows (`_BLOCK_ELEMENTS`), never on a whole image at once. The worker checks that
peak against its per-batch budget before decoding (pipeline.py).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_rescale, pixel_array

from gen.medmesh.common.v1 import FileKind
from medmesh.image_headers import (
    HeaderError,
    ImageGeometry,
    dicom_geometry,
    jpeg_geometry,
    png_header,
    read_dicom_header,
)

IMAGE_PREPROCESSING_VERSION = "img-opencv-v1"
"""Decode → 8-bit → gray replicated to 3 channels → INTER_AREA/LINEAR resize → normalise."""

_IMAGE_KINDS = frozenset(
    {FileKind.IMAGE_PNG, FileKind.IMAGE_JPEG, FileKind.IMAGE_DICOM},
)
# Pixel budget for a decoded image (a 16k x 16k scan); larger files are refused, not resized,
# because decoding them alone would take gigabytes.
MAX_PIXELS = 16384 * 16384
# Float work (scaling to 8 bits, DICOM rescale and windowing) runs on blocks of rows of about
# this many samples: a float64 temporary is at most 8 MiB, whatever the image size.
_BLOCK_ELEMENTS = 1 << 20
# What the blocked float work may hold at once (a few float64 temporaries of one block).
BLOCK_WORK_BYTES = 64 * 1024 * 1024
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]


class PreprocessingError(ValueError):
    """The file cannot be turned into a model input (corrupt, unsupported, empty)."""


@dataclass(frozen=True)
class ImageSpec:
    """How a model version wants its images: size, channel order and normalisation.

    `mean` is subtracted from pixels scaled to [0, 1], per channel in `color_order`, and the
    result is divided by `std` (ImageNet/torch style: mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225), RGB; Keras "caffe" style: BGR, mean=(0.406, 0.458, 0.485),
    std=1/255).
    """

    height: int = 224
    width: int = 224
    color_order: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.color_order not in {"RGB", "BGR"}:
            raise ValueError(f"color_order must be RGB or BGR, got {self.color_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError("mean and std need three values and std no zero")
        if self.height <= 0 or self.width <= 0:
            raise ValueError("height and width must be positive")


@dataclass(frozen=True)
class PreparedImage:
    """A preprocessed image: the model input and the 8-bit RGB picture it was made from."""

    tensor: np.ndarray
    """float32 [height, width, 3], normalised, in the spec's channel order."""
    rgb8: np.ndarray = field(repr=False)
    """uint8 [height, width, 3], RGB: what is stored in `medical-images-processed`."""
    source_shape: tuple[int, ...] = ()
    """Shape of the decoded pixels before resizing (rows, columns[, channels])."""


def probe_image(head: bytes, kind: FileKind) -> ImageGeometry:
    """What decoding the file whose first bytes are `head` would allocate, from its header
    alone; raises PreprocessingError when the header is not readable (or not all in `head`)."""
    try:
        if kind == FileKind.IMAGE_PNG:
            return png_header(head).geometry
        if kind == FileKind.IMAGE_JPEG:
            geometry = jpeg_geometry(head)
            if geometry is None:
                raise PreprocessingError(f"no JPEG frame header in the first {len(head)} bytes")
            return geometry
        if kind == FileKind.IMAGE_DICOM:
            return dicom_geometry(read_dicom_header(head))
    except HeaderError as exc:
        raise PreprocessingError(f"unreadable image header: {exc}") from None
    raise PreprocessingError(f"file kind {kind.name} is not an image")


def decode_cost_bytes(geometry: ImageGeometry, file_bytes: int) -> int:
    """The most memory `prepare_image` holds for one file: the file itself, two copies of a
    decoded frame (the decoder's, and a colour conversion or 8-bit scaling of it), two 8-bit
    four-channel working images, and the blocked float work."""
    working = geometry.width * geometry.height * 4
    return file_bytes + 2 * geometry.frame_bytes + 2 * working + BLOCK_WORK_BYTES


def _row_blocks(rows: int, row_elements: int) -> range:
    """Start rows of blocks of about _BLOCK_ELEMENTS samples."""
    return range(0, rows, max(1, _BLOCK_ELEMENTS // max(row_elements, 1)))


def is_image_kind(kind: FileKind) -> bool:
    """True for the file kinds that `prepare_image` accepts."""
    return kind in _IMAGE_KINDS


def prepare_image(data: bytes, kind: FileKind, spec: ImageSpec) -> PreparedImage:
    """Decode `data` as `kind` and produce the model input; raises PreprocessingError."""
    if kind == FileKind.IMAGE_DICOM:
        pixels = decode_dicom(data)
    elif kind in (FileKind.IMAGE_PNG, FileKind.IMAGE_JPEG):
        pixels = decode_raster(data)
    else:
        raise PreprocessingError(f"file kind {kind.name} is not an image")
    gray = _gray8(pixels)
    if gray is not None:
        # Resizing the one channel and replicating it afterwards gives the same pixels as
        # resizing three equal channels (OpenCV treats channels independently), at a third
        # of the cost; the tensor comes from the same channel through a lookup table.
        small = resize(gray, spec.height, spec.width)
        return PreparedImage(
            _normalise_gray(small, spec),
            cv2.cvtColor(small, cv2.COLOR_GRAY2RGB),
            tuple(pixels.shape),
        )
    rgb8 = resize(to_rgb8(pixels), spec.height, spec.width)
    return PreparedImage(normalise(rgb8, spec), rgb8, tuple(pixels.shape))


def _gray8(pixels: np.ndarray) -> np.ndarray | None:
    """The single 8-bit channel of a gray image (as `to_rgb8` would scale it), else None."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim != 2:
        return None
    return pixels if pixels.dtype == np.uint8 else _scale_to_uint8(pixels)


def decode_raster(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes → pixels as OpenCV decodes them (gray, BGR or BGRA; 8 or 16 bit)."""
    if not data:
        raise PreprocessingError("the file is empty")
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_UNCHANGED keeps 16-bit depth and single-channel images as they are, so that
    # `to_rgb8` scales 16-bit radiographs by their real range rather than cv2's truncation.
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise PreprocessingError("the bytes do not decode as PNG or JPEG")
    _check_size(pixels)
    return pixels


def decode_dicom(data: bytes) -> np.ndarray:
    """DICOM Part 10 bytes → 8-bit grayscale: modality rescale, then VOI windowing.

    Rescale slope/intercept map stored values to physical units (e.g. Hounsfield); the
    window (center/width from the file, else the image's own range) then maps those units to
    0..255. MONOCHROME1 (white = low values) is inverted so that every output has the usual
    polarity. Multi-frame files use their middle frame, and only that frame is decoded.
    """
    try:
        header = read_dicom_header(data)  # refuses deflated data sets before inflating
        frames = dicom_geometry(header).frames
    except HeaderError as exc:
        raise PreprocessingError(f"not a readable DICOM image: {exc}") from None
    try:
        dataset = pydicom.Dataset()
        raw = pixel_array(io.BytesIO(data), index=frames // 2, ds_out=dataset)
    except (NotImplementedError, RuntimeError) as exc:  # compressed without a decoder plugin
        raise PreprocessingError(f"DICOM pixel data cannot be decoded here: {exc}") from exc
    except Exception as exc:  # untrusted bytes: any decoder failure is a bad file
        raise PreprocessingError(f"not a readable DICOM image: {exc}") from exc
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if raw.ndim == 3:
        if photometric not in {"RGB", "YBR_FULL", "YBR_FULL_422"}:
            raise PreprocessingError(f"unsupported DICOM photometric {photometric}")
        # Colour DICOM (rare in radiology): pydicom converts YBR to RGB; OpenCV wants BGR.
        rgb = np.ascontiguousarray(raw)
        return cv2.cvtColor(to_rgb8(rgb), cv2.COLOR_RGB2BGR)
    _check_size(raw)
    return _window_blocks(raw, dataset, inverted=photometric == "MONOCHROME1")


def _window_blocks(raw: np.ndarray, dataset: pydicom.Dataset, *, inverted: bool) -> np.ndarray:
    """Rescale and window a 2-D frame block by block of rows: the same values as doing it
    on the whole frame (every step is per pixel), with float64 temporaries of one block."""
    blocks = _row_blocks(raw.shape[0], raw.shape[1])
    step = blocks.step

    def values(start: int) -> np.ndarray:
        return apply_rescale(raw[start : start + step], dataset).astype(np.float64)

    def value_range() -> tuple[float, float]:
        low, high = np.inf, -np.inf
        for start in blocks:
            block = values(start)
            low, high = min(low, float(block.min())), max(high, float(block.max()))
        return low, high

    center, width = window_of(dataset, value_range)
    gray = np.empty(raw.shape, dtype=np.uint8)
    for start in blocks:
        gray[start : start + step] = window(values(start), center, width)
    if inverted:
        np.subtract(255, gray, out=gray)
    return gray


def window_of(
    dataset: pydicom.Dataset, values: np.ndarray | Callable[[], tuple[float, float]]
) -> tuple[float, float]:
    """The VOI window to use: the file's first WindowCenter/WindowWidth, else the values'
    min..max (`values` may be a function returning that range, computed only if needed)."""
    center = _first_number(getattr(dataset, "WindowCenter", None))
    width = _first_number(getattr(dataset, "WindowWidth", None))
    if center is not None and width is not None and width >= 1:
        return center, width
    if callable(values):
        low, high = values()
    else:
        low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear windowing (PS3.3 C.11.2.1.2) of physical values to uint8 0..255."""
    if width < 1:
        raise PreprocessingError("window width must be at least 1")
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    # Width 1 is a threshold: everything is either below `low` or above `high`.
    scaled = ((values - (center - 0.5)) / max(width - 1, 1e-9) + 0.5) * 255.0
    scaled = np.where(values <= low, 0.0, np.where(values > high, 255.0, scaled))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _first_number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any decoded image → uint8 RGB: deeper images scaled by their own range, gray images
    replicated to three channels, alpha dropped, OpenCV's BGR turned into RGB."""
    image = pixels
    if image.dtype != np.uint8:
        image = _scale_to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise PreprocessingError(f"unsupported pixel layout {image.shape}")


def _scale_to_uint8(image: np.ndarray) -> np.ndarray:
    """The image's own range stretched to 0..255, in float64 as before, block by block of
    rows (per pixel, so the same values) so that a 16-bit RGBA scan never exists as float64."""
    low, high = float(image.min()), float(image.max())
    out = np.zeros(image.shape, dtype=np.uint8)
    if high <= low:
        return out
    scale = 255.0 / (high - low)
    row_elements = int(np.prod(image.shape[1:])) if image.ndim > 1 else 1
    blocks = _row_blocks(image.shape[0], row_elements)
    for start in blocks:
        block = image[start : start + blocks.step].astype(np.float64)
        out[start : start + blocks.step] = np.rint((block - low) * scale)
    return out


def resize(rgb8: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to the model's input size: INTER_AREA when shrinking (no aliasing), bilinear
    when enlarging. The aspect ratio is not kept; the classifier was trained on squashed
    inputs the same way (Keras' image_dataset_from_directory default)."""
    if rgb8.shape[:2] == (height, width):
        return rgb8
    shrinking = rgb8.shape[0] > height or rgb8.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb8, (width, height), interpolation=interpolation)


def normalise(rgb8: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """uint8 RGB → float32 in the spec's channel order: (pixel / 255 - mean) / std."""
    image = rgb8 if spec.color_order == "RGB" else rgb8[:, :, ::-1]
    table = _lookup_table(spec)
    out = np.empty(image.shape, dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], image[:, :, channel], out=out[:, :, channel])
    return out


def _normalise_gray(gray8: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """`normalise` of a gray picture replicated to three channels, from its one channel."""
    return np.take(_lookup_table(spec).T, gray8, axis=0)


@functools.lru_cache(maxsize=32)
def _lookup_table(spec: ImageSpec) -> np.ndarray:
    """float32 [3, 256]: `(value / 255 - mean[c]) / std[c]` for every 8-bit value, computed
    with the same float32 operations as the formula, so a lookup gives identical tensors at
    a fraction of the arithmetic per pixel."""
    values = np.arange(256, dtype=np.float32)[np.newaxis, :] / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, np.newaxis]
    std = np.asarray(spec.std, dtype=np.float32)[:, np.newaxis]
    table = ((values - mean) / std).astype(np.float32)
    table.flags.writeable = False
    return table


def encode_png(rgb8: np.ndarray) -> bytes:
    """The processed picture as PNG bytes (lossless, so it is exactly what the model saw).

    A gray picture (three equal channels, as every radiograph here) is stored with one
    channel: it decodes to the same pixels, and encodes four times faster and smaller, CPU
    that the model server needs more on a shared machine. Fast settings for the same reason:
    zlib level 1 with Huffman coding only, after the SUB filter (one filter instead of
    libpng's adaptive choice among five): a third of the time of level 1's defaults for a
    file of about the same size on radiograph-like pictures."""
    if np.array_equal(rgb8[:, :, 0], rgb8[:, :, 1]) and np.array_equal(
        rgb8[:, :, 1], rgb8[:, :, 2]
    ):
        image = np.ascontiguousarray(rgb8[:, :, 0])
    else:
        image = cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
        raise PreprocessingError("PNG encoding failed")
    return buffer.tobytes()


def _check_size(pixels: np.ndarray) -> None:
    rows, cols = pixels.shape[0], pixels.shape[1] if pixels.ndim > 1 else 1
    if rows * cols == 0:
        raise PreprocessingError("the image has no pixels")
    if rows * cols > MAX_PIXELS:
        raise PreprocessingError(f"the image has {rows * cols} pixels, more than {MAX_PIXELS}")
