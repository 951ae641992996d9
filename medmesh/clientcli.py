"""The client commands of `medmesh`, for integrators and clinic staff, on the SDK
(`medmesh.client.MedmeshClient`): login, logout, study create, upload, watch, results, report.

The server address comes from `--addr`, else MEDMESH_ADDR, else the one `login` stored: a
gateway `host:port`, `auth=HOST:PORT,ingest=...` per service, or the JSON file that
`medmesh up --status-file` writes. The session (tokens, never printed) lives in
`$XDG_CONFIG_HOME/medmesh/credentials.json` (0600); each refresh rewrites it. Answers go to
stdout, progress bars and errors to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gen.medmesh.common.v1 import StudyStatus
from gen.medmesh.ingest.v1 import FileStatus
from medmesh.client import (
    ChecksumMismatch,
    Endpoints,
    LocalFile,
    MedmeshClient,
    NotLoggedIn,
    ReportNotReady,
    UnknownFileKind,
    describe_file,
    files_under,
)
from medmesh.client.credentials import CredentialStore, Session, credentials_path
from medmesh.client.tokens import Tokens

COMMANDS = ("login", "logout", "study", "upload", "watch", "results", "report")
_NOT_STORED = {FileStatus.PENDING_UPLOAD, FileStatus.REJECTED}


class UsageError(Exception):
    """A mistake the user can fix (no address, not logged in, a bad file)."""


def add_client_commands(commands: Any) -> None:
    """Add the client commands to `medmesh`'s subcommands."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--addr", help="server address (default MEDMESH_ADDR, else the login's)")
    server.add_argument("--tls", action="store_true", default=None, help="connect with TLS")
    server.add_argument("--ca-file", type=Path, help="PEM roots to trust instead of the system's")

    login = commands.add_parser("login", parents=[server], help="sign in; stores the session")
    login.add_argument("--email", help="account e-mail (asked when not given)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    commands.add_parser("logout", parents=[server], help="end the session; forget the tokens")

    study = commands.add_parser("study", help="studies")
    study_actions = study.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    create = study_actions.add_parser("create", parents=[server], help="create a study")
    create.add_argument("--patient", required=True, help="the clinic's pseudonymous patient id")
    create.add_argument("--description", default="", help="what the examination is")

    upload = commands.add_parser(
        "upload", parents=[server], help="upload files or folders; already stored files are skipped"
    )
    upload.add_argument("study", help="studies/ID or ID")
    upload.add_argument("paths", nargs="*", type=Path, help="PNG, JPEG, DICOM, .txt, folders")
    upload.add_argument("--note", action="append", default=[], help="a clinical note (repeatable)")

    watch = commands.add_parser("watch", parents=[server], help="follow a study until its report")
    watch.add_argument("study", help="studies/ID or ID")

    results = commands.add_parser("results", parents=[server], help="a study's results")
    results.add_argument("study", help="studies/ID or ID")
    results.add_argument("--json", action="store_true", help="proto-JSON, one result a line")

    report = commands.add_parser("report", parents=[server], help="download a study's report PDF")
    report.add_argument("study", help="studies/ID, ID, or reports/ID")
    report.add_argument("-o", "--output", type=Path, required=True, help="where to write the PDF")


def run_client_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run one client command; the process exit code."""
    err = Console(stderr=True)
    try:
        return asyncio.run(_dispatch(args, environ, err))
    except (UsageError, NotLoggedIn, UnknownFileKind, ReportNotReady, ChecksumMismatch) as exc:
        err.print(f"medmesh {args.command}: {exc}", markup=False)
    except grpc.aio.AioRpcError as exc:
        err.print(f"medmesh {args.command}: {exc.code().name}: {exc.details()}", markup=False)
    return 1


async def _dispatch(args: argparse.Namespace, environ: Mapping[str, str], err: Console) -> int:
    store = CredentialStore(credentials_path(environ))
    if args.command == "login":
        return await _login(args, environ, store, err)
    session = store.load()
    async with _client(args, environ, store, session) as client:
        if args.command == "logout":
            await client.logout()
            store.clear()
            err.print("logged out")
            return 0
        handler: Callable[..., Awaitable[int]] = {
            "study": _study_create,
            "upload": _upload,
            "watch": _watch,
            "results": _results,
            "report": _report,
        }[args.command]
        return await handler(client, args, err)


def _address(args: argparse.Namespace, environ: Mapping[str, str], session: Session | None) -> str:
    address = args.addr or environ.get("MEDMESH_ADDR") or (session.address if session else "")
    if not address:
        raise UsageError("no server address: pass --addr or set MEDMESH_ADDR")
    return address


def _endpoints(address: str) -> Endpoints:
    try:
        return Endpoints.parse(address)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _client(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    store: CredentialStore,
    session: Session | None,
) -> MedmeshClient:
    if session is None:
        raise NotLoggedIn("not logged in: run `medmesh login` first")
    address = _address(args, environ, session)
    tls = _tls(args, environ, session)

    def keep(tokens: Tokens) -> None:
        store.save(Session(address, tls, session.email, tokens))

    return MedmeshClient(
        _endpoints(address),
        tls=tls,
        root_certificates=args.ca_file.read_bytes() if args.ca_file else None,
        tokens=session.tokens,
        on_tokens=keep,
    )


def _tls(args: argparse.Namespace, environ: Mapping[str, str], session: Session | None) -> bool:
    if args.tls is not None:
        return True
    if "MEDMESH_TLS" in environ:
        return environ["MEDMESH_TLS"].lower() in {"1", "true", "yes"}
    return bool(session and session.tls)


async def _login(
    args: argparse.Namespace, environ: Mapping[str, str], store: CredentialStore, err: Console
) -> int:
    previous = store.load()
    address = _address(args, environ, previous)
    if Path(address).is_file():  # a status file: later runs may start in another folder
        address = str(Path(address).resolve())
    tls = _tls(args, environ, previous)
    email = args.email or input("e-mail: ").strip()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
    async with MedmeshClient(
        _endpoints(address),
        tls=tls,
        root_certificates=args.ca_file.read_bytes() if args.ca_file else None,
        on_tokens=lambda tokens: store.save(Session(address, tls, email, tokens)),
    ) as client:
        response = await client.login(email, password)
    user = response.user
    roles = ", ".join(r.name.lower() for r in user.roles) if user else ""
    err.print(f"logged in as {email} ({roles}) of {user.clinic_id if user else '?'}")
    err.print(f"session stored in {store.path}", markup=False)
    return 0


async def _study_create(client: MedmeshClient, args: argparse.Namespace, _err: Console) -> int:
    study = await client.create_study(args.patient, args.description)
    print(study.name)
    return 0


async def _upload(client: MedmeshClient, args: argparse.Namespace, err: Console) -> int:
    if not args.paths and not args.note:
        raise UsageError("nothing to upload: give files, folders or --note")
    folders = {p for p in args.paths if p.is_dir()}
    candidates = files_under(list(args.paths))
    local: list[LocalFile] = []
    for path in candidates:
        try:
            local.append(await describe_file(path))
        except UnknownFileKind as exc:
            if not any(path.is_relative_to(folder) for folder in folders):
                raise
            err.print(f"skipped {path}: {exc}", markup=False)  # a stray file in a folder
    study = await client.get_study(args.study)
    stored = {f.sha256 for f in study.files if f.status not in _NOT_STORED}
    todo = [f for f in local if f.sha256 not in stored]
    for file in local:
        if file.sha256 in stored:
            print(f"skipped  {file.file_name} (already in {study.name})")
    for line in await _upload_with_progress(client, study.name, todo, err):
        print(line)
    for note in args.note:
        created = await client.create_text_note(study.name, note)
        verb = "skipped " if created.deduplicated else "stored  "
        print(f"{verb} note {created.file.name if created.file else '?'}")
    return 0


async def _upload_with_progress(
    client: MedmeshClient, study: str, files: list[LocalFile], err: Console
) -> list[str]:
    """Upload `files` with a bar per file and one overall (on stderr); what happened to
    each, as lines for stdout."""
    if not files:
        return []
    progress = Progress(
        TextColumn("{task.description:<28}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    lines = []
    with progress:
        overall = progress.add_task(f"{len(files)} files", total=sum(f.size_bytes for f in files))
        finished = 0
        for file in files:
            task = progress.add_task(file.file_name[:28], total=file.size_bytes)

            def show(done: int, _total: int, task: Any = task, base: int = finished) -> None:
                progress.update(task, completed=done)
                progress.update(overall, completed=base + done)

            uploaded = await client.upload_file(study, file, progress=show)
            finished += file.size_bytes
            verb = "skipped " if uploaded.deduplicated else "stored  "
            stored_as = uploaded.file.name if uploaded.file else "?"
            lines.append(f"{verb} {file.file_name} → {stored_as}")
    return lines


async def _watch(client: MedmeshClient, args: argparse.Namespace, _err: Console) -> int:
    last = StudyStatus.UNSPECIFIED
    async for event in client.watch_study(args.study):
        last = event.status
        when = event.event_time.strftime("%H:%M:%S") if event.event_time else "--:--:--"
        about = f" {event.file.file_name}: {event.file.status.name}" if event.file else ""
        reason = f" — {event.reason}" if event.reason else ""
        print(f"{when} {event.status.name:<12}{about}{reason}".rstrip(), flush=True)
    return 1 if last == StudyStatus.FAILED else 0


async def _results(client: MedmeshClient, args: argparse.Namespace, _err: Console) -> int:
    results = await client.list_results(args.study)
    if args.json:
        for result in results:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    file_names = {f.name: f.file_name for f in (await client.get_study(args.study)).files}
    for result in results:
        model = f"{result.model_name.removeprefix('models/')} v{result.model_version}"
        if result.image is not None:
            found = ", ".join(f"{s.label} {s.score:.2f}" for s in result.image.top_k[:3])
        elif result.text is not None:
            found = ", ".join(f"{s.label} {s.score:.2f}" for s in result.text.findings[:3])
            if result.text.outside_model_languages:
                languages = ", ".join(result.text.model_languages)
                found += (
                    f" [note in {result.text.language or '?'}: outside the model's"
                    f" languages ({languages}); scores unreliable]"
                )
        else:
            found = ""
        print(f"{file_names.get(result.file, result.file)}\t{model}\t{found}")
    return 0


async def _report(client: MedmeshClient, args: argparse.Namespace, err: Console) -> int:
    report = await client.get_report(args.study)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(report.name, total=report.size_bytes or None)
        await client.download_report(
            report,
            args.output,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    print(f"{args.output} ({report.name} v{report.version}, {report.size_bytes} bytes)")
    return 0
