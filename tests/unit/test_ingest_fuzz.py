"""Property-based fuzzing of svc_ingest's validators: mutations of small valid DICOM, PNG and
JPEG files (truncations, bit flips, overwritten and inserted bytes, bogus PNG chunk lengths,
JPEG segment lengths and DICOM tags), fed in chunks of any size. Whatever the bytes, the
validator either accepts them or raises InvalidArgument with a field violation: never
another exception (which the service would answer with INTERNAL). svc_infer's header probe
and decoder get the same files: they may raise PreprocessingError only.

Bounded and deterministic for CI: a fixed number of examples, derandomized, no example
database, no deadline (a slow shared runner must not fail a correct example).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.crafted_files import dicom, jpeg, png

from gen.medmesh.common.v1 import FileKind
from medmesh.errors import InvalidArgument
from svc_infer.preprocess import ImageSpec, PreprocessingError, prepare_image, probe_image
from svc_ingest.config import MIB, IngestConfig
from svc_ingest.validation import CANONICAL_CONTENT_TYPE, FileValidator, check_declaration

CONFIG = IngestConfig(max_pixels=1_000_000, max_decoded_bytes=4 * MIB, header_window_bytes=4096)
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SEEDS: dict[FileKind, list[bytes]] = {
    FileKind.IMAGE_PNG: [
        png(9, 7, color_type=2),
        png(9, 7, bit_depth=16, color_type=6),
        png(5, 3, bit_depth=1, color_type=0),
        png(6, 4, color_type=3),
    ],
    FileKind.IMAGE_JPEG: [jpeg(16, 8), jpeg(9, 9, seed=2)],
    FileKind.IMAGE_DICOM: [dicom(), dicom(rows=4, columns=6, samples=3, bits=8, frames=2)],
}

def _positions(data: bytes) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=max(len(data) - 1, 0))


@st.composite
def truncation(draw: st.DrawFn, data: bytes) -> bytes:
    """The file cut at any point."""
    return data[: draw(st.integers(0, len(data)))]


@st.composite
def bit_flips(draw: st.DrawFn, data: bytes) -> bytes:
    """One to eight bits flipped anywhere."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8)) if data else 0):
        position = draw(_positions(data))
        out[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@st.composite
def overwrite(draw: st.DrawFn, data: bytes) -> bytes:
    """A run of bytes replaced by random ones."""
    position = draw(_positions(data))
    junk = draw(st.binary(min_size=1, max_size=16))
    return data[:position] + junk + data[position + len(junk) :]


@st.composite
def insertion(draw: st.DrawFn, data: bytes) -> bytes:
    """Random bytes inserted (or appended) anywhere."""
    position = draw(st.integers(0, len(data)))
    return data[:position] + draw(st.binary(min_size=1, max_size=64)) + data[position:]


def _chunk_offsets(data: bytes) -> list[int]:
    """Offsets of PNG chunk length fields."""
    offsets, position = [], 8
    while position + 8 <= len(data):
        offsets.append(position)
        (length,) = struct.unpack(">I", data[position : position + 4])
        position += 12 + length
    return offsets


@st.composite
def bogus_png_length(draw: st.DrawFn, data: bytes) -> bytes:
    """A PNG chunk's length field set to anything (0, huge, off by a little)."""
    offsets = [at for at in _chunk_offsets(data) if at + 4 <= len(data)]
    if not offsets:
        return data
    at = draw(st.sampled_from(offsets))
    (length,) = struct.unpack(">I", data[at : at + 4])
    new = draw(
        st.one_of(
            st.integers(0, 2**32 - 1),
            st.integers(max(0, length - 4), length + 4),
            st.sampled_from([0, 13, 2**31 - 1, 2**31, 2**32 - 1]),
        )
    )
    return data[:at] + struct.pack(">I", new) + data[at + 4 :]


@st.composite
def bogus_jpeg_length(draw: st.DrawFn, data: bytes) -> bytes:
    """A JPEG marker segment's length set to anything."""
    ends = range(2, min(len(data) - 4, 4096))
    markers = [i for i in ends if data[i] == 0xFF and data[i + 1] > 0xC0]
    if not markers:
        return data
    at = draw(st.sampled_from(markers)) + 2
    new = draw(st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 2, 0xFFFF])))
    return data[:at] + struct.pack(">H", new) + data[at + 2 :]


@st.composite
def bogus_dicom_element(draw: st.DrawFn, data: bytes) -> bytes:
    """A DICOM tag, VR or length replaced after the preamble: garbage tags, odd VRs, lengths
    of 0, huge or undefined (0xFFFFFFFF), or a whole random element inserted."""
    position = draw(st.integers(132, max(132, len(data) - 8)))
    choice = draw(st.sampled_from(["tag", "vr", "length16", "length32", "element"]))
    if choice == "tag":
        value = struct.pack("<HH", draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
    elif choice == "vr":
        value = draw(st.sampled_from([b"SQ", b"OB", b"UN", b"US", b"UI", b"XX", b"\x00\x00"]))
    elif choice == "length16":
        value = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
    elif choice == "length32":
        value = struct.pack("<I", draw(st.sampled_from([0, 1, 2**31, 0xFFFFFFFF, len(data)])))
    else:
        element = struct.pack("<HH", draw(st.integers(0, 0x7FE0)), draw(st.integers(0, 0xFFFF)))
        element += draw(st.sampled_from([b"US", b"UL", b"SQ", b"OB", b"DS", b"IS"]))
        element += draw(st.binary(min_size=2, max_size=12))
        return data[:position] + element + data[position:]
    return data[:position] + value + data[position + len(value) :]


Mutator = Callable[[bytes], st.SearchStrategy[bytes]]


def mutated(kind: FileKind, *extra: Mutator) -> st.SearchStrategy[bytes]:
    """A seed of `kind` under one or two stacked mutations."""
    mutations = [truncation, bit_flips, overwrite, insertion, *extra]

    def mutate(data: bytes) -> st.SearchStrategy[bytes]:
        return st.one_of(*(m(data) for m in mutations))

    once = st.sampled_from(SEEDS[kind]).flatmap(mutate)
    return st.one_of(once, once.flatmap(mutate))


def assert_only_invalid_argument(data: bytes, kind: FileKind, chunk: int) -> None:
    """Validate `data` in chunks of `chunk` bytes: acceptance or InvalidArgument, nothing else."""
    declaration = check_declaration(
        kind=kind,
        file_name="fuzz.bin",
        content_type=CANONICAL_CONTENT_TYPE[kind],
        size_bytes=max(len(data), 1),
        sha256="",
        config=CONFIG,
    )
    validator = FileValidator(declaration, CONFIG, content_field="chunk")
    try:
        for start in range(0, len(data), chunk):
            validator.feed(data[start : start + chunk])
        validator.finish()
    except InvalidArgument as exc:
        refusal = exc
    else:
        return
    assert refusal.violations, "a refusal without a field violation"
    assert all(v.field and v.description for v in refusal.violations)


@FUZZ
@given(data=mutated(FileKind.IMAGE_PNG, bogus_png_length), chunk=st.integers(1, 300))
def test_a_mutated_png_is_accepted_or_refused_with_a_field_violation(
    data: bytes, chunk: int
) -> None:
    assert_only_invalid_argument(data, FileKind.IMAGE_PNG, chunk)


@FUZZ
@given(data=mutated(FileKind.IMAGE_JPEG, bogus_jpeg_length), chunk=st.integers(1, 300))
def test_a_mutated_jpeg_is_accepted_or_refused_with_a_field_violation(
    data: bytes, chunk: int
) -> None:
    assert_only_invalid_argument(data, FileKind.IMAGE_JPEG, chunk)


@FUZZ
@given(data=mutated(FileKind.IMAGE_DICOM, bogus_dicom_element), chunk=st.integers(1, 600))
def test_a_mutated_dicom_is_accepted_or_refused_with_a_field_violation(
    data: bytes, chunk: int
) -> None:
    assert_only_invalid_argument(data, FileKind.IMAGE_DICOM, chunk)


@FUZZ
@given(
    data=st.binary(max_size=2048), kind=st.sampled_from(list(SEEDS)), chunk=st.integers(1, 512)
)
def test_random_bytes_behind_a_real_magic_number_are_refused_with_a_field_violation(
    data: bytes, kind: FileKind, chunk: int
) -> None:
    magic = {
        FileKind.IMAGE_PNG: SEEDS[FileKind.IMAGE_PNG][0][:16],
        FileKind.IMAGE_JPEG: b"\xff\xd8\xff",
        FileKind.IMAGE_DICOM: SEEDS[FileKind.IMAGE_DICOM][0][:140],
    }[kind]
    assert_only_invalid_argument(magic + data, kind, chunk)


@FUZZ
@given(
    data=st.one_of(
        mutated(FileKind.IMAGE_PNG, bogus_png_length),
        mutated(FileKind.IMAGE_JPEG, bogus_jpeg_length),
        mutated(FileKind.IMAGE_DICOM, bogus_dicom_element),
    ),
    kind=st.sampled_from(list(SEEDS)),
)
def test_svc_infer_probes_and_decodes_mutated_files_or_raises_a_preprocessing_error(
    data: bytes, kind: FileKind
) -> None:
    # The worker turns PreprocessingError into a failed job; anything else would fail the
    # whole batch. (Mutations of one kind are also tried as the others.)
    try:
        probe_image(data, kind)
        prepare_image(data, kind, ImageSpec(height=8, width=8))
    except PreprocessingError:
        pass
