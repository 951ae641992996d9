"""The proto contract and its generated code: lint, freshness, documentation, HTTP mappings,
and that betterproto2 messages agree with protobuf on the wire and in JSON."""

from __future__ import annotations

import datetime
import functools
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import betterproto2
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from gen.medmesh.auth import v1 as auth
from gen.medmesh.common import v1 as common
from gen.medmesh.events import v1 as events
from gen.medmesh.infer import v1 as infer
from gen.medmesh.ingest import v1 as ingest
from medmesh import codegen

IMAGE_PATH = codegen.GEN_DIR / codegen.IMAGE_NAME
SERVICES = {
    "medmesh.auth.v1.AuthService",
    "medmesh.ingest.v1.IngestService",
    "medmesh.infer.v1.InferenceService",
    "medmesh.infer.v1.ModelRegistryService",
    "medmesh.report.v1.ReportService",
}
# Unary RPCs that only services call, so the edge does not expose them (none yet: an RPC
# listed here must say so in its comment).
INTERNAL_RPCS: frozenset[str] = frozenset()
STATUS_CODES = re.compile(
    r"\b(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|"
    r"PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|"
    r"UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED)\b"
)
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.UTC)

# Field numbers of descriptor.proto, used to walk SourceCodeInfo paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE, SERVICE_METHOD = 2, 2


@dataclass(frozen=True)
class Element:
    """One named element of a proto file and the leading comment on it."""

    kind: str
    full_name: str
    short_name: str
    comment: str


@functools.cache
def load_image() -> descriptor_pb2.FileDescriptorSet:
    """The committed descriptor image."""
    return descriptor_pb2.FileDescriptorSet.FromString(IMAGE_PATH.read_bytes())


@functools.cache
def load_pool() -> descriptor_pool.DescriptorPool:
    """A fresh descriptor pool holding every file of the image (imports come first)."""
    pool = descriptor_pool.DescriptorPool()
    for file in load_image().file:
        pool.Add(file)
    return pool


def contract_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The image's medmesh files, without google/api and google/protobuf."""
    return [file for file in load_image().file if file.package.startswith("medmesh.")]


def walk_elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[Element]:
    """Every service, method, message, field, oneof, enum and enum value of a file."""
    comments = {
        tuple(location.path): location.leading_comments.strip()
        for location in file.source_code_info.location
    }

    def element(kind: str, path: tuple[int, ...], scope: str, name: str) -> Element:
        return Element(kind, f"{scope}.{name}", name, comments.get(path, ""))

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str):
        yield element("enum", path, scope, enum.name)
        for index, value in enumerate(enum.value):
            yield element("enum value", (*path, ENUM_VALUE, index), scope, value.name)

    def walk_message(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str):
        yield element("message", path, scope, message.name)
        inner = f"{scope}.{message.name}"
        for index, field in enumerate(message.field):
            yield element("field", (*path, MESSAGE_FIELD, index), inner, field.name)
        for index, oneof in enumerate(message.oneof_decl):
            if not oneof.name.startswith("_"):  # synthetic oneofs of proto3 `optional`
                yield element("oneof", (*path, MESSAGE_ONEOF, index), inner, oneof.name)
        for index, enum in enumerate(message.enum_type):
            yield from walk_enum(enum, (*path, MESSAGE_ENUM, index), inner)
        for index, nested in enumerate(message.nested_type):
            if not nested.options.map_entry:
                yield from walk_message(nested, (*path, MESSAGE_NESTED, index), inner)

    package = file.package
    for index, message in enumerate(file.message_type):
        yield from walk_message(message, (FILE_MESSAGE, index), package)
    for index, enum in enumerate(file.enum_type):
        yield from walk_enum(enum, (FILE_ENUM, index), package)
    for index, service in enumerate(file.service):
        yield element("service", (FILE_SERVICE, index), package, service.name)
        for method_index, method in enumerate(service.method):
            path = (FILE_SERVICE, index, SERVICE_METHOD, method_index)
            yield element("rpc", path, f"{package}.{service.name}", method.name)


def all_elements() -> list[Element]:
    """Every documented element of the contract."""
    return [element for file in contract_files() for element in walk_elements(file)]


def all_methods() -> list[tuple[str, descriptor_pb2.MethodDescriptorProto]]:
    """(full service name, method) for every RPC of the contract."""
    return [
        (f"{file.package}.{service.name}", method)
        for file in contract_files()
        for service in file.service
        for method in service.method
    ]


def unary_rpc_names() -> list[str]:
    """Full names of the unary RPCs."""
    return [
        f"{service}.{method.name}"
        for service, method in all_methods()
        if not method.client_streaming and not method.server_streaming
    ]


def http_rule(pool: descriptor_pool.DescriptorPool, rpc: str) -> str | None:
    """The google.api.http option of an RPC as text, or None when it has none."""
    options = pool.FindMethodByName(rpc).GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    return str(options.Extensions[annotations_pb2.http])


def test_buf_lint_passes_with_the_standard_rules() -> None:
    codegen.lint()


def test_committed_gen_is_what_the_contract_generates() -> None:
    assert codegen.generate(check=True) == 0


def test_descriptor_image_lists_every_service() -> None:
    pool = load_pool()
    found = {
        service.full_name
        for file in contract_files()
        for service in pool.FindFileByName(file.name).services_by_name.values()
    }
    assert found == SERVICES


def test_descriptor_image_carries_source_info_for_reflection() -> None:
    assert all(file.source_code_info.location for file in contract_files())


def test_every_element_has_a_leading_comment_that_starts_with_its_name() -> None:
    undocumented = [
        f"{element.kind} {element.full_name}: {element.comment[:40]!r}"
        for element in all_elements()
        if not re.match(rf"{re.escape(element.short_name)}\b", element.comment)
    ]
    assert undocumented == []


def test_every_rpc_comment_names_the_errors_it_returns() -> None:
    silent = [
        element.full_name
        for element in all_elements()
        if element.kind == "rpc" and not STATUS_CODES.search(element.comment)
    ]
    assert silent == []


@pytest.mark.parametrize("rpc", unary_rpc_names())
def test_unary_rpc_is_mapped_to_http_unless_internal(rpc: str) -> None:
    rule = http_rule(load_pool(), rpc)
    if rpc in INTERNAL_RPCS:
        assert rule is None
    else:
        assert rule is not None, f"{rpc} has no google.api.http option"


def test_client_streaming_rpcs_are_not_mapped_to_http() -> None:
    pool = load_pool()
    mapped = [
        f"{service}.{method.name}"
        for service, method in all_methods()
        if method.client_streaming and http_rule(pool, f"{service}.{method.name}") is not None
    ]
    assert mapped == []


def test_rpcs_mapped_to_http_get_are_marked_free_of_side_effects() -> None:
    pool = load_pool()
    no_side_effects = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    wrong = [
        f"{service}.{method.name}"
        for service, method in all_methods()
        if (http_rule(pool, f"{service}.{method.name}") or "").startswith("get:")
        and method.options.idempotency_level != no_side_effects
    ]
    assert wrong == []


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_grpcio_sync_stub_has_a_method_per_rpc_with_generated_messages(service: str) -> None:
    package, _, service_name = service.rpartition(".")
    module = importlib.import_module(f"gen.{package}")
    stub = getattr(module, f"{service_name}Stub")
    for full_service, method in all_methods():
        if full_service != service:
            continue
        assert callable(getattr(stub, betterproto2.casing.snake_case(method.name)))
        for type_name in (method.input_type, method.output_type):
            assert hasattr(module, type_name.rpartition(".")[2]), type_name


SAMPLE_MESSAGES: list[betterproto2.Message] = [
    ingest.Study(
        name="studies/0d1f",
        study_id="0d1f",
        clinic_id="clinic-1",
        patient_ref="p-42",
        status=common.StudyStatus.RESULT_READY,
        files=[
            ingest.StudyFile(
                name="studies/0d1f/files/9a",
                kind=common.FileKind.IMAGE_DICOM,
                size_bytes=5 * 2**30,
                status=ingest.FileStatus.ANALYSED,
                image_width=0,
                create_time=NOW,
            )
        ],
        create_time=NOW,
    ),
    ingest.UploadFileRequest(chunk=b"\x89PNG\r\n\x1a\n"),
    ingest.UploadFileRequest(
        metadata=ingest.UploadFileMetadata(parent="studies/0d1f", kind=common.FileKind.TEXT_NOTE)
    ),
    ingest.CreateUploadUrlResponse(
        url="https://s3.example/raw/obj?X-Amz-Signature=ab",
        required_headers={"Content-Type": "image/png"},
        expire_time=NOW,
    ),
    infer.Result(
        name="studies/0d1f/results/77",
        kind=common.AnalysisKind.TEXT_ANALYSIS,
        model_version=3,
        arm=infer.TrafficArm.CANARY,
        text=infer.TextAnalysis(
            findings=[common.LabelScore(label="fracture", score=0.75)],
            urgency=common.LabelScore(label="urgent", score=0.5),
            summary="Suspected fracture.",
        ),
        timings=infer.Timings(queue_ms=1.5, total_ms=20.25),
    ),
    auth.LoginResponse(access_token="a.b.c", token_type="Bearer", expires_in=900, expire_time=NOW),
    auth.GetJwksResponse(keys=[auth.Jwk(kty="OKP", kid="k1", alg="EdDSA", crv="Ed25519", x="AQ")]),
    events.DeadLetterEnvelope(
        original_subject="medmesh.jobs.infer.image",
        payload=bytes(events.InferenceJob(job_id="j1", kind=common.FileKind.IMAGE_PNG)),
        attempts=3,
        headers={"traceparent": "00-abc-def-01"},
    ),
]


def sample_id(message: betterproto2.Message) -> str:
    """A readable test id: the message's class name."""
    return type(message).__name__


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=sample_id)
def test_message_round_trips_through_bytes(message: betterproto2.Message) -> None:
    assert type(message).FromString(bytes(message)) == message


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=sample_id)
def test_message_round_trips_through_a_json_dict(message: betterproto2.Message) -> None:
    assert type(message).from_dict(message.to_dict()) == message


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=sample_id)
def test_message_json_matches_protobuf_json_of_the_same_bytes(
    message: betterproto2.Message,
) -> None:
    full_name = f"{type(message).__module__.removeprefix('gen.')}.{type(message).__name__}"
    descriptor = load_pool().FindMessageTypeByName(full_name)
    parsed = message_factory.GetMessageClass(descriptor).FromString(bytes(message))
    assert json_format.MessageToDict(parsed) == message.to_dict()


def test_oneof_reports_which_member_is_set() -> None:
    result = infer.Result.FromString(bytes(SAMPLE_MESSAGES[4]))
    assert betterproto2.which_one_of(result, "analysis")[0] == "text"
    assert result.image is None
