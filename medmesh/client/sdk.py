"""`MedmeshClient`: the typed async Python SDK of medmesh.

```python
async with MedmeshClient("gateway.example:443", tls=True) as client:
    await client.login("clinician@clinic.example", password)
    study = await client.create_study("P-0001", description="chest")
    await client.upload_file(study, "chest.png")
    await client.create_text_note(study, "Кашель, температура 39 °C")
    async for event in client.watch_study(study):
        print(event.status)
    await client.download_report(study, "report.pdf")
```

Every method returns the contract's betterproto2 messages; any other RPC is one
`client.stub(service)` away, with the same tokens and retries.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import tenacity

from gen.medmesh.auth.v1 import (
    GetMeRequest,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    RefreshTokenRequest,
    User,
)
from gen.medmesh.common.v1 import FileKind
from gen.medmesh.infer.v1 import ListResultsRequest, Result
from gen.medmesh.ingest.v1 import (
    CompleteUploadRequest,
    CreateStudyRequest,
    CreateTextNoteRequest,
    CreateTextNoteResponse,
    CreateUploadUrlRequest,
    GetStudyRequest,
    Study,
    UploadFileMetadata,
    UploadFileRequest,
    UploadFileResponse,
    WatchStudyRequest,
    WatchStudyResponse,
)
from gen.medmesh.report.v1 import (
    DownloadReportRequest,
    GetReportRequest,
    ListReportsRequest,
    Report,
    ReportStatus,
)
from medmesh.client.calls import AuthorizedStub, Caller
from medmesh.client.endpoints import Channels, Endpoints
from medmesh.client.files import LocalFile, describe_file
from medmesh.client.retry import RetryPolicy, retry_delay_of
from medmesh.client.tokens import NotLoggedIn, TokenKeeper, Tokens
from medmesh.contract import DescriptorImage

AUTH = "medmesh.auth.v1.AuthService"
INGEST = "medmesh.ingest.v1.IngestService"
INFERENCE = "medmesh.infer.v1.InferenceService"
REPORT = "medmesh.report.v1.ReportService"
MIB = 1024 * 1024

Progress = Callable[[int, int], None]
"""`progress(done_bytes, total_bytes)`; starts again from 0 when an upload is retried."""


class ReportNotReady(LookupError):
    """The study has no READY report (yet)."""


class ChecksumMismatch(ValueError):
    """Downloaded bytes do not match the SHA-256 the server announced."""


def study_name(study: Study | str) -> str:
    """`studies/{id}` from a Study, a resource name or a bare id."""
    name = study.name if isinstance(study, Study) else study
    return name if name.startswith("studies/") else f"studies/{name}"


def _no_progress(_done: int, _total: int) -> None:
    return None


class MedmeshClient:
    """The SDK; see the module docstring. Use as `async with`, or call `close()`."""

    def __init__(
        self,
        address: str | Endpoints,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        tokens: Tokens | None = None,
        on_tokens: Callable[[Tokens], None] | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        refresh_ahead_s: float = 30.0,
        presigned_above_bytes: int = 32 * MIB,
        clock: Callable[[], float] = time.time,
        image: DescriptorImage | None = None,
    ) -> None:
        """`address`: one gateway `host:port`, or per service (see `Endpoints.parse`).
        `tokens`/`on_tokens`: resume a stored session and hear of every new token (refresh
        tokens are single use: store each one). Files above `presigned_above_bytes` go to
        a presigned S3 URL instead of the gRPC stream."""
        self.endpoints = address if isinstance(address, Endpoints) else Endpoints.parse(address)
        self.presigned_above_bytes = presigned_above_bytes
        self._clock = clock
        self._keeper = TokenKeeper(
            refresh=self._refresh,
            clock=clock,
            refresh_ahead_s=refresh_ahead_s,
            on_tokens=on_tokens,
            tokens=tokens,
        )
        self._caller = Caller(
            self.endpoints,
            Channels(tls=tls, root_certificates=root_certificates),
            image or DescriptorImage(),
            self._keeper,
            retry or RetryPolicy(),
            timeout_s,
        )

    async def __aenter__(self) -> MedmeshClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels."""
        await self._caller.channels.close()

    @property
    def tokens(self) -> Tokens | None:
        """The session's current tokens (None before login)."""
        return self._keeper.tokens

    @property
    def token_refreshes(self) -> int:
        """How many times this client refreshed its access token."""
        return self._keeper.refreshes

    def stub(self, service: str) -> AuthorizedStub:
        """Every RPC of `service` (full name) with this client's token and retries."""
        return AuthorizedStub(self._caller, service)

    # --- auth --------------------------------------------------------------------------

    async def login(self, email: str, password: str) -> LoginResponse:
        """Sign in; the client keeps the tokens and refreshes them from now on."""
        response = await self._caller.unary(
            AUTH, "login", LoginRequest(email=email, password=password), authenticated=False
        )
        self._keeper.set(Tokens.from_response(response, self._clock()))
        return response

    async def _refresh(self, refresh_token: str) -> Any:
        try:
            return await self._caller.unary(
                AUTH,
                "refresh_token",
                RefreshTokenRequest(refresh_token=refresh_token),
                authenticated=False,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise NotLoggedIn(f"the session ended ({exc.details()}); log in again") from exc
            raise

    async def logout(self) -> None:
        """End the session: the refresh token and the access token stop working."""
        tokens = self._keeper.tokens
        if tokens is not None:
            await self._caller.unary(
                AUTH, "logout", LogoutRequest(refresh_token=tokens.refresh_token)
            )
        self._keeper.set(None)

    async def get_me(self) -> User:
        """The signed-in user (roles, clinic)."""
        return (await self._caller.unary(AUTH, "get_me", GetMeRequest())).user

    # --- studies and files -------------------------------------------------------------

    async def create_study(self, patient_ref: str, description: str = "") -> Study:
        """A new, empty study in the caller's clinic."""
        request = CreateStudyRequest(patient_ref=patient_ref, description=description)
        return (await self._caller.unary(INGEST, "create_study", request)).study

    async def get_study(self, study: Study | str) -> Study:
        """A study with its files."""
        request = GetStudyRequest(name=study_name(study))
        return (await self._caller.unary(INGEST, "get_study", request)).study

    async def create_text_note(
        self, study: Study | str, text: str, *, file_name: str = ""
    ) -> CreateTextNoteResponse:
        """Add a clinical note (any language, UTF-8); an identical note is not stored twice."""
        request = CreateTextNoteRequest(parent=study_name(study), text=text, file_name=file_name)
        return await self._caller.unary(INGEST, "create_text_note", request)

    async def upload_file(
        self,
        study: Study | str,
        file: LocalFile | Path | str,
        *,
        kind: FileKind | None = None,
        progress: Progress = _no_progress,
    ) -> UploadFileResponse:
        """Upload one file: streamed over gRPC, or through a presigned URL above
        `presigned_above_bytes` (or when the server's streaming limit refuses it).
        `response.deduplicated` says the study already held these bytes."""
        local = file if isinstance(file, LocalFile) else await describe_file(file, kind)
        if local.size_bytes > self.presigned_above_bytes:
            return await self._upload_presigned(study_name(study), local, progress)
        try:
            return await self._upload_streamed(study_name(study), local, progress)
        except grpc.aio.AioRpcError as exc:
            over_limit = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            if not over_limit or retry_delay_of(exc) is not None:
                raise
        return await self._upload_presigned(study_name(study), local, progress)

    async def _upload_streamed(
        self, study: str, local: LocalFile, progress: Progress
    ) -> UploadFileResponse:
        metadata = UploadFileMetadata(
            parent=study,
            kind=local.kind,
            file_name=local.file_name,
            content_type=local.content_type,
            size_bytes=local.size_bytes,
            sha256=local.sha256,
        )

        async def messages() -> AsyncIterator[UploadFileRequest]:
            yield UploadFileRequest(metadata=metadata)
            sent = 0
            progress(sent, local.size_bytes)
            for chunk in local.chunks():
                yield UploadFileRequest(chunk=chunk)
                sent += len(chunk)
                progress(sent, local.size_bytes)

        # No deadline: a large file on a slow link takes as long as it takes.
        return await self._caller.unary(INGEST, "upload_file", messages, timeout_s=None)

    async def _upload_presigned(
        self, study: str, local: LocalFile, progress: Progress
    ) -> UploadFileResponse:
        announced = await self._caller.unary(
            INGEST,
            "create_upload_url",
            CreateUploadUrlRequest(
                parent=study,
                kind=local.kind,
                file_name=local.file_name,
                content_type=local.content_type,
                size_bytes=local.size_bytes,
                sha256=local.sha256,
            ),
        )
        headers = {**announced.required_headers, "content-length": str(local.size_bytes)}

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            progress(sent, local.size_bytes)
            for chunk in local.chunks():
                yield chunk
                sent += len(chunk)
                progress(sent, local.size_bytes)

        async def put() -> None:
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, write=None)) as http:
                reply = await http.put(announced.url, content=body(), headers=headers)
                reply.raise_for_status()

        policy = self._caller.retry
        await tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_transient_http_error),
            wait=lambda state: policy.backoff_s(state.attempt_number),
            stop=tenacity.stop_after_attempt(policy.attempts),
            reraise=True,
        )(put)
        assert announced.file is not None
        completed = await self._caller.unary(
            INGEST, "complete_upload", CompleteUploadRequest(name=announced.file.name)
        )
        return UploadFileResponse(file=completed.file, deduplicated=completed.deduplicated)

    async def watch_study(self, study: Study | str) -> AsyncIterator[WatchStudyResponse]:
        """The study's status now, then every change, until REPORT_READY or FAILED. A
        dropped stream (UNAVAILABLE) is watched again and resumes from the current state."""
        request = WatchStudyRequest(name=study_name(study))
        async for event in self._caller.server_stream(INGEST, "watch_study", request, resume=True):
            yield event

    # --- results and reports -----------------------------------------------------------

    async def list_results(self, study: Study | str) -> list[Result]:
        """Every result of the study, oldest first (all pages)."""
        results: list[Result] = []
        page_token = ""
        while True:
            request = ListResultsRequest(
                parent=study_name(study), page_size=500, page_token=page_token
            )
            page = await self._caller.unary(INFERENCE, "list_results", request)
            results.extend(page.results)
            page_token = page.next_page_token
            if not page_token:
                return results

    async def list_reports(self, study: Study | str) -> list[Report]:
        """Every report version of the study, newest first (first 500)."""
        request = ListReportsRequest(study=study_name(study), page_size=500)
        return list((await self._caller.unary(REPORT, "list_reports", request)).reports)

    async def get_report(self, report_or_study: Report | Study | str) -> Report:
        """A report by name (`reports/{id}`), or the newest READY report of a study.
        ReportNotReady if the study has none."""
        if isinstance(report_or_study, Report):
            return report_or_study
        if isinstance(report_or_study, str) and report_or_study.startswith("reports/"):
            request = GetReportRequest(name=report_or_study)
            return (await self._caller.unary(REPORT, "get_report", request)).report
        ready = [
            r for r in await self.list_reports(report_or_study) if r.status == ReportStatus.READY
        ]
        if not ready:
            raise ReportNotReady(f"{study_name(report_or_study)} has no ready report yet")
        return ready[0]

    async def download_report(
        self,
        report_or_study: Report | Study | str,
        path: Path | str,
        *,
        progress: Progress = _no_progress,
    ) -> Report:
        """Write a report's PDF to `path` (whole or not at all: a `.part` file is renamed
        once its SHA-256 matches). Which report: as for `get_report`."""
        report = await self.get_report(report_or_study)
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        digest, expected, total, done = hashlib.sha256(), "", report.size_bytes, 0
        request = DownloadReportRequest(name=report.name)
        try:
            with partial.open("wb") as out:
                stream = self._caller.server_stream(REPORT, "download_report", request)
                async for message in stream:
                    if message.sha256:
                        expected, total = message.sha256, message.size_bytes or total
                    digest.update(message.chunk)
                    out.write(message.chunk)
                    done += len(message.chunk)
                    progress(done, total)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if expected and digest.hexdigest() != expected:
            partial.unlink()
            raise ChecksumMismatch(f"{report.name}: downloaded bytes differ from {expected}")
        os.replace(partial, target)
        return report


def _transient_http_error(error: BaseException) -> bool:
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code in {
        429,
        500,
        502,
        503,
        504,
    }
