"""The client CLI as a user runs it (`python -m medmesh.cli ...` in a subprocess) against real
svc_auth + svc_ingest: the session file, Unicode names, Cyrillic notes, resumable uploads."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ADMIN_EMAIL, PASSWORD, Mesh
from test_sdk_flows import NOTE_RU, png_bytes

from medmesh.client import MedmeshClient, Tokens


async def medmesh(
    home: Path, mesh: Mesh, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `medmesh` CLI with its own config home and MEDMESH_ADDR naming the mesh."""
    environment = {
        **os.environ,
        "XDG_CONFIG_HOME": str(home),
        "MEDMESH_ADDR": mesh.endpoints.describe(),
        "COLUMNS": "100",
        **(env or {}),
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "medmesh.cli", *args],
        input=stdin,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def logged_in(home: Path, mesh: Mesh) -> subprocess.CompletedProcess[str]:
    """`medmesh login` as the clinic admin (password on stdin), asserting it worked."""
    login = await medmesh(
        home, mesh, "login", "--email", ADMIN_EMAIL, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert login.returncode == 0, login.stderr
    return login


def stored_tokens(home: Path) -> Tokens:
    """The tokens in the CLI's credentials file under config home `home`."""
    document = json.loads((home / "medmesh" / "credentials.json").read_text())
    return Tokens(**document["tokens"])


async def test_login_stores_the_session_for_the_owner_only_and_never_prints_it(
    mesh: Mesh, tmp_path: Path
) -> None:
    login = await logged_in(tmp_path, mesh)

    path = tmp_path / "medmesh" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert stored["address"] == mesh.endpoints.describe()
    tokens = Tokens(**stored["tokens"])
    for secret in (tokens.access_token, tokens.refresh_token, PASSWORD):
        assert secret not in login.stdout + login.stderr
    assert f"logged in as {ADMIN_EMAIL}" in login.stderr
    # The stored session works: the SDK resumes it.
    async with MedmeshClient(mesh.endpoints, tokens=tokens) as client:
        assert (await client.get_me()).email == ADMIN_EMAIL


async def test_a_command_without_a_session_says_to_log_in(mesh: Mesh, tmp_path: Path) -> None:
    result = await medmesh(tmp_path, mesh, "study", "create", "--patient", "P-1")
    assert result.returncode == 1
    assert "not logged in: run `medmesh login` first" in result.stderr


async def test_an_upload_run_again_skips_what_the_study_already_holds(
    mesh: Mesh, tmp_path: Path
) -> None:
    await logged_in(tmp_path / "home", mesh)
    folder = tmp_path / "исследование"
    folder.mkdir()
    (folder / "снимок.png").write_bytes(png_bytes(seed=1))
    (folder / "lateral view.png").write_bytes(png_bytes(seed=2))
    (folder / "заметка.txt").write_text(NOTE_RU, encoding="utf-8")
    (folder / "readme.docx").write_bytes(b"PK\x03\x04")  # not a medical file: skipped
    created = await medmesh(tmp_path / "home", mesh, "study", "create", "--patient", "P-cli-1")
    study = created.stdout.strip()
    assert created.returncode == 0, created.stderr
    assert study.startswith("studies/")

    first = await medmesh(tmp_path / "home", mesh, "upload", study, str(folder))
    assert first.returncode == 0, first.stderr
    stored_lines = sorted(line.split(" → ")[0] for line in first.stdout.splitlines() if "→" in line)
    assert stored_lines == [
        "stored   lateral view.png",
        "stored   заметка.txt",
        "stored   снимок.png",
    ]
    assert "skipped " + str(folder / "readme.docx") in first.stderr

    (folder / "second.png").write_bytes(png_bytes(seed=3))
    again = await medmesh(tmp_path / "home", mesh, "upload", study, str(folder))
    assert again.returncode == 0, again.stderr
    assert sorted(line for line in again.stdout.splitlines() if line.startswith("skipped")) == [
        f"skipped  lateral view.png (already in {study})",
        f"skipped  заметка.txt (already in {study})",
        f"skipped  снимок.png (already in {study})",
    ]
    assert [line.split(" → ")[0] for line in again.stdout.splitlines() if "→" in line] == [
        "stored   second.png"
    ]
    assert "1 files" in again.stderr  # the overall bar counted only what was sent

    async with MedmeshClient(mesh.endpoints, tokens=stored_tokens(tmp_path / "home")) as client:
        files = (await client.get_study(study)).files
    assert sorted(f.file_name for f in files) == [
        "lateral view.png",
        "second.png",
        "заметка.txt",
        "снимок.png",
    ]


async def test_a_cyrillic_note_from_the_command_line_is_stored_once(
    mesh: Mesh, tmp_path: Path
) -> None:
    await logged_in(tmp_path, mesh)
    study = (await medmesh(tmp_path, mesh, "study", "create", "--patient", "P-2")).stdout.strip()
    first = await medmesh(tmp_path, mesh, "upload", study, "--note", NOTE_RU)
    second = await medmesh(tmp_path, mesh, "upload", study, "--note", NOTE_RU)
    assert first.stdout.startswith("stored   note studies/")
    assert second.stdout.startswith("skipped  note studies/")


@pytest.fixture
def auth_env() -> dict[str, str]:
    """Access tokens live one second, so every CLI run after the first refreshes."""
    return {"MEDMESH_AUTH_ACCESS_TTL_S": "1", "MEDMESH_AUTH_LEEWAY_S": "1"}


async def test_a_token_refreshed_during_a_command_is_written_back(
    mesh: Mesh, tmp_path: Path
) -> None:
    await logged_in(tmp_path, mesh)
    path = tmp_path / "medmesh" / "credentials.json"
    before = stored_tokens(tmp_path)
    await asyncio.sleep(2.5)  # past expiry and leeway

    created = await medmesh(tmp_path, mesh, "study", "create", "--patient", "P-3")
    assert created.returncode == 0, created.stderr
    after = stored_tokens(tmp_path)
    assert after.refresh_token != before.refresh_token  # single-use: the new one is kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # And the next run uses it (the old refresh token would now be refused as a replay).
    await asyncio.sleep(2.5)
    again = await medmesh(tmp_path, mesh, "study", "create", "--patient", "P-4")
    assert again.returncode == 0, again.stderr
