"""The IngestService servicer: proto ↔ domain and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from gen.medmesh.ingest.v1 import (
    CompleteUploadRequest,
    CompleteUploadResponse,
    CreateStudyRequest,
    CreateStudyResponse,
    CreateTextNoteRequest,
    CreateTextNoteResponse,
    CreateUploadUrlRequest,
    CreateUploadUrlResponse,
    DeleteStudyRequest,
    DeleteStudyResponse,
    GetFileDownloadUrlRequest,
    GetFileDownloadUrlResponse,
    GetFileRequest,
    GetFileResponse,
    GetStudyRequest,
    GetStudyResponse,
    ListStudiesRequest,
    ListStudiesResponse,
    ListStudyAuditEventsRequest,
    ListStudyAuditEventsResponse,
    UploadFileRequest,
    UploadFileResponse,
    WatchStudyRequest,
    WatchStudyResponse,
)
from medmesh.errors import InvalidArgument
from medmesh.identity import ADMIN, ANY_ROLE, CLINICIAN, WRITERS, RoleRules, current_identity
from svc_ingest import messages
from svc_ingest.audit_trail import AuditTrail, audit_event
from svc_ingest.config import IngestConfig
from svc_ingest.presigned import PresignedUploads
from svc_ingest.status import now_utc
from svc_ingest.studies import Studies, StudyView, parse_file_name, parse_study_name
from svc_ingest.uploads import Uploads
from svc_ingest.validation import check_declaration
from svc_ingest.wire import ChunkMessage, parse_upload_file_request

INGEST_SERVICE = "medmesh.ingest.v1.IngestService"

# Viewers read; technicians and machine clients add files; deleting needs a clinician or admin.
# The audit trail records what colleagues looked at: admins (who answer for access) and
# clinicians (whose study it is) read it; technicians, viewers and machine clients do not need
# to know who else opened a patient's study.
INGEST_RULES: RoleRules = {
    "CreateStudy": WRITERS,
    "GetStudy": ANY_ROLE,
    "ListStudies": ANY_ROLE,
    "DeleteStudy": frozenset({"admin", "clinician"}),
    "UploadFile": WRITERS,
    "CreateTextNote": WRITERS,
    "CreateUploadUrl": WRITERS,
    "CompleteUpload": WRITERS,
    "GetFile": ANY_ROLE,
    "WatchStudy": ANY_ROLE,
    "GetFileDownloadUrl": ANY_ROLE,
    "ListStudyAuditEvents": frozenset({ADMIN, CLINICIAN}),
}


async def _chunks(
    requests: AsyncIterator[UploadFileRequest | ChunkMessage], max_chunk: int
) -> AsyncIterator[bytes | memoryview]:
    """The bytes of an UploadFile stream after its metadata message."""
    async for message in requests:
        if message.metadata is not None:
            raise InvalidArgument.for_field("metadata", "must be sent once, as the first message")
        chunk = message.chunk or b""
        if len(chunk) > max_chunk:
            raise InvalidArgument.for_field("chunk", f"is larger than {max_chunk} bytes")
        if chunk:
            yield chunk


class IngestServicer:
    """medmesh.ingest.v1.IngestService."""

    # UploadFile's chunk messages skip betterproto2's generic parser (medmesh/server.py).
    request_deserializers: ClassVar = {"UploadFile": parse_upload_file_request}

    def __init__(
        self,
        studies: Studies,
        uploads: Uploads,
        presigned: PresignedUploads,
        config: IngestConfig,
        trail: AuditTrail,
    ) -> None:
        self._studies = studies
        self._uploads = uploads
        self._presigned = presigned
        self._config = config
        self._trail = trail

    async def create_study(self, request: CreateStudyRequest, _context: Any) -> CreateStudyResponse:
        view = await self._studies.create_study(
            current_identity(), request.patient_ref, request.description
        )
        return CreateStudyResponse(study=messages.study(view))

    async def get_study(self, request: GetStudyRequest, _context: Any) -> GetStudyResponse:
        view = await self._studies.get_study(
            current_identity(), parse_study_name(request.name, "name")
        )
        return GetStudyResponse(study=messages.study(view))

    async def list_studies(self, request: ListStudiesRequest, _context: Any) -> ListStudiesResponse:
        rows, token = await self._studies.list_studies(
            current_identity(),
            page_size=request.page_size,
            page_token=request.page_token,
            patient_ref=request.patient_ref,
            status=int(request.status),
        )
        return ListStudiesResponse(
            studies=[messages.study(StudyView(r)) for r in rows], next_page_token=token
        )

    async def delete_study(self, request: DeleteStudyRequest, _context: Any) -> DeleteStudyResponse:
        await self._studies.delete_study(current_identity(), parse_study_name(request.name, "name"))
        return DeleteStudyResponse()

    async def get_file(self, request: GetFileRequest, _context: Any) -> GetFileResponse:
        study_id, file_id = parse_file_name(request.name, "name")
        row = await self._studies.get_file(current_identity(), study_id, file_id)
        return GetFileResponse(file=messages.study_file(row))

    async def get_file_download_url(
        self, request: GetFileDownloadUrlRequest, _context: Any
    ) -> GetFileDownloadUrlResponse:
        study_id, file_id = parse_file_name(request.name, "name")
        download = await self._studies.file_download_url(current_identity(), study_id, file_id)
        return GetFileDownloadUrlResponse(
            url=download.url,
            expire_time=download.expire_time,
            content_type=download.content_type,
            size_bytes=download.size_bytes,
        )

    async def list_study_audit_events(
        self, request: ListStudyAuditEventsRequest, _context: Any
    ) -> ListStudyAuditEventsResponse:
        study_id = parse_study_name(request.parent, "parent")
        records, token = await self._trail.list_events(
            current_identity(),
            study_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ListStudyAuditEventsResponse(
            audit_events=[audit_event(r, study_id) for r in records], next_page_token=token
        )

    async def upload_file(
        self, requests: AsyncIterator[UploadFileRequest | ChunkMessage], _context: Any
    ) -> UploadFileResponse:
        identity = current_identity()
        iterator = aiter(requests)
        first = await anext(iterator, None)
        if first is None or first.metadata is None:
            raise InvalidArgument.for_field(
                "metadata",
                "the first message must be the metadata" + (", not a chunk" if first else ""),
            )
        meta = first.metadata
        study_id = parse_study_name(meta.parent, "metadata.parent")
        declaration = check_declaration(
            kind=meta.kind,
            file_name=meta.file_name,
            content_type=meta.content_type,
            size_bytes=meta.size_bytes,
            sha256=meta.sha256,
            config=self._config,
            prefix="metadata.",
            stream_limit=self._config.max_stream_bytes,
        )
        accepted = await self._uploads.upload(
            identity, study_id, declaration, _chunks(iterator, self._config.max_chunk_bytes)
        )
        return UploadFileResponse(
            file=messages.study_file(accepted.file), deduplicated=accepted.deduplicated
        )

    async def create_text_note(
        self, request: CreateTextNoteRequest, _context: Any
    ) -> CreateTextNoteResponse:
        accepted = await self._uploads.create_text_note(
            current_identity(),
            parse_study_name(request.parent, "parent"),
            request.text,
            request.file_name,
        )
        return CreateTextNoteResponse(
            file=messages.study_file(accepted.file), deduplicated=accepted.deduplicated
        )

    async def create_upload_url(
        self, request: CreateUploadUrlRequest, _context: Any
    ) -> CreateUploadUrlResponse:
        identity = current_identity()
        study_id = parse_study_name(request.parent, "parent")
        declaration = check_declaration(
            kind=request.kind,
            file_name=request.file_name,
            content_type=request.content_type,
            size_bytes=request.size_bytes,
            sha256=request.sha256,
            config=self._config,
        )
        started = now_utc()
        upload = await self._presigned.create_upload_url(identity, study_id, declaration)
        return CreateUploadUrlResponse(
            url=upload.url,
            required_headers={},
            expire_time=started + upload.expires_in,
            file=messages.study_file(upload.file),
        )

    async def complete_upload(
        self, request: CompleteUploadRequest, _context: Any
    ) -> CompleteUploadResponse:
        study_id, file_id = parse_file_name(request.name, "name")
        accepted = await self._presigned.complete_upload(current_identity(), study_id, file_id)
        return CompleteUploadResponse(
            file=messages.study_file(accepted.file), deduplicated=accepted.deduplicated
        )

    async def watch_study(
        self, request: WatchStudyRequest, _context: Any
    ) -> AsyncIterator[WatchStudyResponse]:
        study_id = parse_study_name(request.name, "name")
        async for update in self._studies.watch(current_identity(), study_id):
            yield messages.watch_response(update)
