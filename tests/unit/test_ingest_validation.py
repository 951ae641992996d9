"""svc_ingest's validator without a server: decode bombs (decoded bytes from PNG IHDR, JPEG
SOFn and DICOM headers), PNG image data that is far larger than its dimensions need or
inflates past them, crafted DICOM, file names and notes, and header work that stays linear
in the bytes whatever the chunking."""

from __future__ import annotations

import io
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from support.crafted_files import (
    DEFLATED_EXPLICIT_VR,
    deflated_dicom_bomb,
    deflated_dicom_with_garbage,
    dicom,
    jpeg,
    jpeg_frame_only,
    png,
    png_chunk,
    png_ihdr,
    png_raw_size,
    png_with_idat,
)

from gen.medmesh.common.v1 import FileKind
from medmesh.errors import InvalidArgument
from svc_ingest import validation
from svc_ingest.config import MIB, IngestConfig
from svc_ingest.validation import (
    CANONICAL_CONTENT_TYPE,
    FileValidator,
    ValidatedFile,
    check_declaration,
    file_name_problem,
)

CONFIG = IngestConfig(max_pixels=10_000_000, max_decoded_bytes=8 * MIB)
PNG, JPEG, DICOM = FileKind.IMAGE_PNG, FileKind.IMAGE_JPEG, FileKind.IMAGE_DICOM


def validate(
    data: bytes, kind: FileKind, *, chunk: int = 64 * 1024, config: IngestConfig = CONFIG
) -> ValidatedFile:
    """Run `data` through a FileValidator in chunks of `chunk` bytes."""
    declaration = check_declaration(
        kind=kind,
        file_name="file.bin",
        content_type=CANONICAL_CONTENT_TYPE[kind],
        size_bytes=len(data),
        sha256="",
        config=config,
    )
    validator = FileValidator(declaration, config, content_field="chunk")
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        validator.feed(view[start : start + chunk])
    return validator.finish()


def refusal(data: bytes, kind: FileKind, **options: object) -> str:
    """The description of the field violation `data` earns (it must earn one)."""
    with pytest.raises(InvalidArgument) as caught:
        validate(data, kind, **options)  # type: ignore[arg-type]
    assert [v.field for v in caught.value.violations] == ["chunk"], caught.value.message
    return caught.value.violations[0].description


def zero_png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A valid PNG of black pixels (cheap to build at any size)."""
    raw = bytes(png_raw_size(width, height, bit_depth=bit_depth, color_type=color_type))
    return png_with_idat(
        width, height, zlib.compress(raw), bit_depth=bit_depth, color_type=color_type
    )


# The limit is 8 MiB = 8388608 decoded bytes; every refused case is under the pixel limit.
DECODE_BOMBS: list[tuple[str, Callable[[], bytes], FileKind]] = [
    (
        "16-bit RGBA PNG (8 bytes a pixel)",
        lambda: zero_png(1100, 1000, bit_depth=16, color_type=6),
        PNG,
    ),
    (
        "16-bit gray PNG (2 bytes a pixel)",
        lambda: zero_png(3000, 1500, bit_depth=16, color_type=0),
        PNG,
    ),
    ("palette PNG (decodes to 4 channels)", lambda: zero_png(1500, 1500, color_type=3), PNG),
    ("gray + alpha PNG (decodes to BGRA)", lambda: zero_png(1500, 1500, color_type=4), PNG),
    ("CMYK JPEG (4 components)", lambda: jpeg_frame_only(1500, 1500, components=4), JPEG),
    ("12-bit JPEG (2 bytes a sample)", lambda: jpeg_frame_only(1200, 1200, precision=12), JPEG),
    (
        "DICOM RGB 16-bit x 400 frames",
        lambda: dicom(rows=64, columns=64, samples=3, frames=400, pixel_bytes=16),
        DICOM,
    ),
    (
        "DICOM 64-bit samples",
        lambda: dicom(rows=1100, columns=1000, bits=64, pixel_bytes=16),
        DICOM,
    ),
]
UNDER_THE_BOUND: list[tuple[str, Callable[[], bytes], FileKind]] = [
    ("8-bit RGB PNG", lambda: zero_png(1100, 1000), PNG),
    ("16-bit RGBA PNG, small", lambda: zero_png(1000, 1000, bit_depth=16, color_type=6), PNG),
    ("RGB JPEG", lambda: jpeg_frame_only(1500, 1500, components=3), JPEG),
    (
        "DICOM RGB 16-bit x 300 frames",
        lambda: dicom(rows=64, columns=64, samples=3, frames=300, pixel_bytes=16),
        DICOM,
    ),
]


@pytest.mark.parametrize(
    ("case", "build", "kind"), DECODE_BOMBS, ids=[case for case, _, _ in DECODE_BOMBS]
)
def test_an_image_that_decodes_to_more_than_the_bound_is_refused_from_its_header(
    case: str, build: Callable[[], bytes], kind: FileKind
) -> None:
    description = refusal(build(), kind)
    assert "decodes to" in description
    assert f"more than the limit of {8 * MIB}" in description


@pytest.mark.parametrize(
    ("case", "build", "kind"), UNDER_THE_BOUND, ids=[case for case, _, _ in UNDER_THE_BOUND]
)
def test_an_image_under_the_decoded_bound_is_accepted_with_its_geometry(
    case: str, build: Callable[[], bytes], kind: FileKind
) -> None:
    validated = validate(build(), kind)
    assert validated.dimensions is not None
    assert validated.dimensions.decoded_bytes <= 8 * MIB


def test_the_decoded_size_counts_every_factor_of_a_dicom_header() -> None:
    geometry = validate(dicom(rows=30, columns=20, samples=3, bits=16, frames=5), DICOM).dimensions
    assert geometry is not None
    assert (geometry.width, geometry.height, geometry.channels) == (20, 30, 3)
    assert (geometry.bytes_per_sample, geometry.frames) == (2, 5)
    assert geometry.decoded_bytes == 20 * 30 * 3 * 2 * 5


def test_a_bomb_header_is_refused_before_its_image_data_is_read() -> None:
    # The IHDR is followed by an IDAT of garbage: the refusal names the size, so nothing
    # was inflated before the header was judged.
    head = zero_png(1100, 1000, bit_depth=16, color_type=6)[:33] + png_chunk(b"IDAT", b"?" * 200)
    declaration = check_declaration(
        kind=PNG, file_name="a.png", content_type="image/png", size_bytes=10**6, sha256="",
        config=CONFIG,
    )  # fmt: skip
    validator = FileValidator(declaration, CONFIG, content_field="chunk")
    with pytest.raises(InvalidArgument, match="decodes to"):
        validator.feed(head)


RAW_8x8 = bytes(png_raw_size(8, 8))
BAD_IMAGE_DATA: list[tuple[str, Callable[[], bytes], str]] = [
    (
        "IDAT far larger than the dimensions need",
        lambda: png_with_idat(8, 8, png(256, 128, seed=3)),  # 100 KiB of noise for 8x8 pixels
        "far more than",
    ),
    (
        "zlib bomb inflating far beyond the dimensions",
        lambda: png_with_idat(64, 64, zlib.compress(bytes(64 * MIB), 9)),
        "inflates to more than",
    ),
    (
        "zlib stream cut short",
        lambda: png_with_idat(8, 8, zlib.compress(RAW_8x8)[:-6]),
        "truncated",
    ),
    (
        "image data shorter than the dimensions",
        lambda: png_with_idat(8, 8, zlib.compress(RAW_8x8[:-5])),
        "not the 200 bytes",
    ),
    ("garbage instead of zlib", lambda: png_with_idat(8, 8, b"\x12\x34" * 50), "not a valid zlib"),
    (
        "bytes after the zlib stream",
        lambda: png_with_idat(8, 8, zlib.compress(RAW_8x8) + b"junk"),
        "after its zlib stream ended",
    ),
    (
        "IDAT chunks split by another chunk",
        lambda: (
            b"\x89PNG\r\n\x1a\n"
            + png_ihdr(8, 8)
            + png_chunk(b"IDAT", zlib.compress(RAW_8x8)[:10])
            + png_chunk(b"tEXt", b"a\x00b")
            + png_chunk(b"IDAT", zlib.compress(RAW_8x8)[10:])
            + png_chunk(b"IEND", b"")
        ),
        "split by other chunks",
    ),
    (
        "no IDAT at all",
        lambda: b"\x89PNG\r\n\x1a\n" + png_ihdr(8, 8) + png_chunk(b"IEND", b""),
        "no image data",
    ),
    (
        "IHDR with an invalid depth for its colour type",
        lambda: png_with_idat(8, 8, zlib.compress(RAW_8x8), bit_depth=4, color_type=2),
        "not valid",
    ),
]


@pytest.mark.parametrize(
    ("case", "build", "expected"), BAD_IMAGE_DATA, ids=[case for case, _, _ in BAD_IMAGE_DATA]
)
def test_png_image_data_must_fit_the_dimensions_exactly(
    case: str, build: Callable[[], bytes], expected: str
) -> None:
    assert expected in refusal(build(), PNG)


def test_a_zlib_bomb_is_refused_without_inflating_it() -> None:
    # 64 MiB of zeros in ~64 KiB of IDAT for a 64x64 image: refused after inflating at most
    # the 4 KiB the dimensions need (plus one bounded step), i.e. quickly.
    bomb = png_with_idat(64, 64, zlib.compress(bytes(64 * MIB), 9))
    started = time.process_time()
    refusal(bomb, PNG)
    assert time.process_time() - started < 0.05


@pytest.mark.parametrize(
    ("bit_depth", "color_type"),
    [
        *[(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2)],
        *[(1, 3), (8, 3), (8, 4), (16, 4), (8, 6), (16, 6)],
    ],
)
def test_every_png_colour_type_and_depth_is_accepted(bit_depth: int, color_type: int) -> None:
    validated = validate(png(17, 11, bit_depth=bit_depth, color_type=color_type), PNG, chunk=7)
    assert validated.dimensions is not None
    assert (validated.dimensions.width, validated.dimensions.height) == (17, 11)
    assert validated.dimensions.bytes_per_sample == (2 if bit_depth == 16 else 1)


def test_an_interlaced_png_is_measured_by_its_seven_passes() -> None:
    # OpenCV cannot write Adam7; Pillow can.
    out = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (13, 21, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "PNG", interlace=1)
    assert validate(out.getvalue(), PNG, chunk=5).dimensions is not None


def with_bits_allocated(bits: int) -> bytes:
    """A valid DICOM whose (0028,0100) BitsAllocated is patched to `bits`."""
    element = b"\x28\x00\x00\x01US\x02\x00"
    data = dicom(bits=16)
    assert data.count(element + b"\x10\x00") == 1
    return data.replace(element + b"\x10\x00", element + bytes((bits, 0)))


CRAFTED_DICOM: list[tuple[str, Callable[[], bytes], str]] = [
    ("deflated syntax with a garbage body", deflated_dicom_with_garbage, "not supported"),
    ("meta group with a length past the end", lambda: dicom()[:140] + b"\xff" * 40, "DICOM"),
    ("a body of garbage after valid meta", lambda: dicom()[:300] + bytes(range(256)) * 4, "DICOM"),
    ("Rows of zero", lambda: dicom(rows=0, pixel_bytes=16), "no pixels"),
    ("BitsAllocated of 12", lambda: with_bits_allocated(12), "BitsAllocated"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "build", "expected"), CRAFTED_DICOM, ids=[case for case, _, _ in CRAFTED_DICOM]
)
def test_a_crafted_dicom_is_a_field_violation_not_a_crash(
    case: str, build: Callable[[], bytes], expected: str
) -> None:
    assert expected in refusal(build(), DICOM)


def test_a_deflated_dicom_is_refused_before_pydicom_inflates_it_even_when_configured() -> None:
    # pydicom inflates a deflated data set in one piece; 256 MiB of zeros is ~256 KiB here.
    config = IngestConfig(
        dicom_transfer_syntaxes=(DEFLATED_EXPLICIT_VR,), header_window_bytes=1 * MIB
    )
    bomb = deflated_dicom_bomb(256 * MIB)
    started = time.process_time()
    assert "deflated" in refusal(bomb, DICOM, config=config)
    assert time.process_time() - started < 0.5


BAD_NAMES = [
    ("", "required"),
    ("   ", "required"),
    ("x" * 256, "required"),
    (".", "must not be"),
    ("..", "must not be"),
    ("../etc/passwd", "path separators"),
    ("a\\b.png", "path separators"),
    ("scan\r\nX-Injected: 1.png", "control characters (U+000D at 4)"),
    ("scan\n.png", "control characters (U+000A"),
    ("nul\x00.png", "control characters (U+0000"),
    ("tab\t.png", "control characters (U+0009"),
    ("bell\x07.png", "control characters"),
    ("esc\x1b[31m.png", "control characters (U+001B"),
    ("del\x7f.png", "control characters (U+007F"),
    ("nel\x85.png", "control characters (U+0085"),
    ("line\u2028sep.png", "control characters (U+2028"),
    ("para\u2029sep.png", "control characters (U+2029"),
    ("invoice\u202egnp.exe", "bidirectional controls (U+202E"),
    ("x\u2066y.png", "bidirectional controls (U+2066"),
    ("x\u200fy.png", "bidirectional controls (U+200F"),
]
GOOD_NAMES = [
    "снимок грудной клетки.png",
    "Рентген_2026-12-04 (копия).dcm",
    "naïve café.jpg",
    "صورة الصدر.png",
    "胸部X线.png",
    "family 👨‍👩‍👧.png",  # zero-width joiners stay: they are part of the emoji
    'quote " and <tag> & semicolon;.png',
    "x" * 255,
]


@pytest.mark.parametrize(("name", "expected"), BAD_NAMES, ids=[repr(n)[:40] for n, _ in BAD_NAMES])
def test_a_bad_file_name_is_refused_and_named_by_code_point(name: str, expected: str) -> None:
    problem = file_name_problem(name)
    assert expected in problem
    assert not any(c in problem for c in "\r\n\x00\u202e")  # the refusal never echoes them


@pytest.mark.parametrize("name", GOOD_NAMES, ids=[repr(n)[:30] for n in GOOD_NAMES])
def test_a_good_file_name_is_accepted_exactly_as_given(name: str) -> None:
    assert file_name_problem(name) == ""
    declaration = check_declaration(
        kind=PNG, file_name=name, content_type="image/png", size_bytes=1, sha256="",
        config=CONFIG,
    )  # fmt: skip
    assert declaration.file_name == name


BAD_NOTES = [
    ("NUL in the middle", "history: \x00 none", "U+0000"),
    ("NUL only", "\x00", "U+0000"),
    ("escape sequence", "\x1b[2J cleared", "U+001B"),
    ("C1 control", "next\x85line", "U+0085"),
    ("spaces and newlines only", " \n\t \r\n", "white space"),
    ("ideographic space only", "\u3000\u3000", "white space"),
    ("zero-width spaces only", "\u200b\u200b\ufeff", "white space"),
]
GOOD_NOTES = [
    "Пациент жалуется на боль в груди.\nТемпература 37,8 °C.",  # noqa: RUF001 - Cyrillic on purpose
    "Tab\tseparated\r\nlines\fand a form feed",
    "\ufeffBOM first, then text",
    "emoji 🩺 and ZWJ 👩‍⚕️",
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_NOTES, ids=[c for c, _, _ in BAD_NOTES])
@pytest.mark.parametrize("chunk", [1, 4096])
def test_a_note_with_control_characters_or_nothing_visible_is_refused(
    case: str, text: str, expected: str, chunk: int
) -> None:
    assert expected in refusal(text.encode(), FileKind.TEXT_NOTE, chunk=chunk)


@pytest.mark.parametrize("text", GOOD_NOTES)
def test_a_note_in_any_script_is_accepted(text: str) -> None:
    assert validate(text.encode(), FileKind.TEXT_NOTE, chunk=3).size_bytes == len(text.encode())


def _count_header_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the header parsers the validator calls; the list collects the bytes given."""
    given: list[int] = []
    for name in ("jpeg_dimensions", "dicom_header"):
        original = getattr(validation, name)

        def counting(prefix: bytes, *args: object, _original=original, **kwargs: object) -> object:
            given.append(len(prefix))
            return _original(prefix, *args, **kwargs)

        monkeypatch.setattr(validation, name, counting)
    return given


@pytest.mark.parametrize("chunk", [1, 7, 64 * 1024, 1 * MIB])
def test_header_parsing_work_is_linear_in_the_bytes_whatever_the_chunking(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    # The frame header sits behind 600 KiB of APP1 metadata (a phone's EXIF + thumbnails).
    data = jpeg_frame_only(640, 480, app_bytes=600 * 1024)
    given = _count_header_bytes(monkeypatch)
    assert validate(data, JPEG, chunk=chunk).dimensions is not None
    # Re-parsing the head per chunk made this ~ len(data)**2 / 2 for 1-byte chunks.
    assert sum(given) <= 4 * len(data)
    assert len(given) <= 2 + len(data).bit_length()


def test_a_jpeg_without_a_frame_header_in_the_window_is_refused() -> None:
    config = IngestConfig(header_window_bytes=256 * 1024)
    data = jpeg_frame_only(64, 64, app_bytes=300 * 1024)
    assert "no frame header" in refusal(data, JPEG, config=config, chunk=1000)


def test_a_jpeg_with_junk_between_segments_is_read_as_pillow_reads_it() -> None:
    data = jpeg(21, 13)
    # Junk (and a stuffed FF00) after the APP0 segment, as some cameras write.
    assert data[2:4] == b"\xff\xe0"
    after_app0 = 4 + int.from_bytes(data[4:6], "big")
    junky = data[:after_app0] + b"\x00\x13\x37\xff\x00" + data[after_app0:]
    validated = validate(junky, JPEG, chunk=3)
    assert validated.dimensions is not None
    assert (validated.dimensions.width, validated.dimensions.height) == (21, 13)


def test_a_real_jpeg_is_read_in_one_byte_chunks() -> None:
    validated = validate(jpeg(33, 17), JPEG, chunk=1)
    assert validated.dimensions is not None
    assert (validated.dimensions.width, validated.dimensions.height) == (33, 17)
