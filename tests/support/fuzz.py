"""A bounded, derandomized schemathesis run over a gateway's /openapi.json (the CLI in a
subprocess, so a gateway served by the test's own event loop keeps answering)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SEED = 20261204


@dataclass
class FuzzRun:
    """What schemathesis printed, its exit status, and every HTTP status per operation."""

    returncode: int
    output: str
    statuses: dict[str, list[int]]

    def server_errors(self) -> dict[str, list[int]]:
        """`GET /v1/studies` → its 5xx statuses, for operations that answered any."""
        found = {op: [c for c in codes if c >= 500] for op, codes in self.statuses.items()}
        return {op: codes for op, codes in found.items() if codes}


def command(base_url: str, token: str, report: Path, max_examples: int) -> list[str]:
    """The schemathesis CLI line: only the no-5xx check, fixed seed, one worker."""
    return [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json"),
        *("--url", base_url, "--header", f"Authorization: Bearer {token}"),
        *("--checks", "not_a_server_error", "--max-examples", str(max_examples)),
        *("--seed", str(SEED), "--generation-database", "none", "--workers", "1"),
        *("--no-color", "--report", "ndjson", "--report-ndjson-path", str(report)),
    ]


def statuses_by_operation(report: Path) -> dict[str, list[int]]:
    """`GET /v1/studies` → the HTTP statuses of every request schemathesis sent to it."""
    statuses: dict[str, list[int]] = {}
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        codes = statuses.setdefault(recorder["label"], [])
        for interaction in recorder.get("interactions", {}).values():
            if interaction.get("response"):
                codes.append(interaction["response"]["status_code"])
    return statuses


def fuzz(
    base_url: str, token: str, workdir: Path, *, max_examples: int, timeout_s: float
) -> FuzzRun:
    """Run schemathesis to the end (blocking: for gateways in another process)."""
    report = workdir / "schemathesis.ndjson"
    done = subprocess.run(
        command(base_url, token, report, max_examples),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    statuses = statuses_by_operation(report) if report.is_file() else {}
    return FuzzRun(done.returncode, done.stdout + done.stderr, statuses)
