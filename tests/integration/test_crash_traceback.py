"""A service process that dies in native code leaves a Python traceback on stderr (which
`medmesh up` sends to the service's log): `run_service` enables faulthandler before anything
else. Without it a segfault in grpc's cygrpc left an empty log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from medmesh.launcher import DEPENDENCY_ENV

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_a_service_process_that_segfaults_leaves_a_python_traceback_on_stderr() -> None:
    env = {k: v for k, v in os.environ.items() if k not in DEPENDENCY_ENV.values()}
    env.pop("PYTHONFAULTHANDLER", None)
    env["PYTHONPATH"] = str(REPO)
    env["MEDMESH_GRPC_ADDR"] = "127.0.0.1:0"

    run = subprocess.run(
        [sys.executable, str(HERE / "crashing_server.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == -signal.SIGSEGV, run.stderr[-3000:]
    assert "Fatal Python error: Segmentation fault" in run.stderr
    assert "setup_that_segfaults" in run.stderr
    assert "crashing_server.py" in run.stderr
