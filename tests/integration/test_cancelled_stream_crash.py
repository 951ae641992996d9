"""Clients that cancel server streams must not crash the server process. Under load the edge
cancelled WatchStudy/UploadFile streams; the interceptor chain's logging read
`context.peer()` when asyncio finalised the abandoned generator, after grpc had released the
call, and svc_ingest died of a segfault in cygrpc (dmesg, faulthandler). Run in a child
process: a segfault would take pytest down with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_a_server_whose_clients_cancel_streams_mid_write_survives_and_logs_each_rpc() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}

    run = subprocess.run(
        [sys.executable, str(HERE / "cancelled_stream_server.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "Segmentation fault" not in output
    assert "survived" in run.stdout
    # Every cancelled stream was still logged once, with the peer read while it was alive,
    # as CANCELLED (the client went away), not as a server fault.
    assert output.count("method=/test.Streams/Watch peer=ipv4:127.0.0.1:") == 20, output[-4000:]
    assert output.count("code=CANCELLED") == 20, output[-4000:]
    assert "code=UNKNOWN" not in output
    # The abandoned generators are closed by asyncio in other tasks: undoing the identity
    # binding there is skipped quietly, not reported as a never-retrieved ValueError.
    assert "was created in a different Context" not in output
    assert "Task exception was never retrieved" not in output
