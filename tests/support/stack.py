"""`medmesh up` as a user runs it, for the tests that need the whole product."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medmesh.launcher import DEPENDENCY_ENV


@dataclass
class Stack:
    """A running `medmesh up`: its process, its --status-file JSON, the lines it printed."""

    process: subprocess.Popen[str]
    status: dict[str, str]
    printed: list[str]
    data_dir: Path

    def printed_value(self, name: str) -> str:
        """What `medmesh up` printed after `name ` (e.g. the postgres URL)."""
        return next(x for x in self.printed if x.startswith(f"{name} ")).split(" ", 1)[1]


@contextmanager
def running_stack(tmp_path: Path, model_base_dir: Path) -> Iterator[Stack]:
    """`medmesh up` in a fresh data dir with no MEDMESH_* URL set, once it says it is ready.

    The session's models (built once per code version) are served instead of a build per
    run; everything else starts embedded, exactly as on a fresh machine."""
    env = {k: v for k, v in os.environ.items() if k not in DEPENDENCY_ENV.values()}
    env["MEDMESH_MODEL_BASE_DIR"] = str(model_base_dir)
    status_file = tmp_path / "status.json"
    data_dir = tmp_path / "data"
    command = [
        sys.executable,
        "-m",
        "medmesh.cli",
        "up",
        "--data-dir",
        str(data_dir),
        "--status-file",
        str(status_file),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    printed: list[str] = []
    try:
        while not printed or "Ctrl-C" not in printed[-1]:
            line = process.stdout.readline()
            assert line, "medmesh up exited before it was ready"
            printed.append(line.rstrip("\n"))
        yield Stack(process, json.loads(status_file.read_text()), printed, data_dir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # as a user's Ctrl-C: services stop gracefully
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
