"""The client CLI end to end against `medmesh up` (every service, the models, the report
pipeline): login → study create → upload a PNG and a Russian note → watch until the report
is ready → results → report -o file.pdf, which parses as the study's report."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypdf import PdfReader
from support.stack import Stack, running_stack
from test_sdk_flows import NOTE_RU, png_bytes

ADMIN = "admin@demo-clinic.example"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_base_dir: Path) -> Iterator[Stack]:
    """The whole product, started by `medmesh up` in a fresh data directory."""
    with running_stack(tmp_path_factory.mktemp("cli-stack"), model_base_dir) as running:
        yield running


def medmesh(
    stack: Stack, home: Path, *args: str, stdin: str = "", timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """The CLI, addressed with the JSON status file `medmesh up --status-file` wrote."""
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(home),
        "MEDMESH_ADDR": str(stack.data_dir.parent / "status.json"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "medmesh.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def test_login_study_upload_watch_results_and_report_from_the_command_line(
    stack: Stack, tmp_path: Path
) -> None:
    home = tmp_path / "config"
    password = (stack.data_dir / "secrets" / "admin-password").read_text().strip()
    medmesh(stack, home, "login", "--email", ADMIN, "--password-stdin", stdin=password + "\n")
    study = medmesh(
        stack, home, "study", "create", "--patient", "P-cli-e2e", "--description", "грудь"
    ).stdout.strip()
    files = tmp_path / "files"
    files.mkdir()
    (files / "снимок грудной клетки.png").write_bytes(png_bytes(224, seed=11))
    (files / "жалобы.txt").write_text(NOTE_RU, encoding="utf-8")

    uploaded = medmesh(stack, home, "upload", study, str(files))
    assert sorted(line.split(" → ")[0] for line in uploaded.stdout.splitlines()) == [
        "stored   жалобы.txt",
        "stored   снимок грудной клетки.png",
    ]

    watched = medmesh(stack, home, "watch", study, timeout_s=240).stdout.splitlines()
    # The pipeline may be done before the CLI starts: then the first line is the last.
    assert watched[-1].split()[1] == "REPORT_READY", watched

    results = medmesh(stack, home, "results", study).stdout.splitlines()
    models = sorted(line.split("\t")[1].split()[0] for line in results)
    assert models == ["minilm", "resnet50"]
    note_line = next(line for line in results if line.startswith("жалобы.txt\t"))
    assert "note in ru: outside the model's languages (en)" in note_line

    pdf_path = tmp_path / "report.pdf"
    reported = medmesh(stack, home, "report", study, "-o", str(pdf_path))
    assert reported.stdout.startswith(f"{pdf_path} (reports/")
    text = "".join(page.extract_text() for page in PdfReader(pdf_path).pages)
    assert "resnet50" in text
    assert "minilm" in text
    assert "P-cli-e2e" in text
    assert "грудь" in text  # the study's description, in a font with Cyrillic
