"""A short load run as a smoke test: `bench/bench_load.py` with 20 clients for 10 s against a
fresh `medmesh up` (its own accounts and loopback source addresses, default limits). It must
end with no error (429s excepted) and every uploaded study with its results and a READY
report. No timing is asserted: the figures belong to the benchmark report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from medmesh.launcher import DEPENDENCY_ENV

REPO = Path(__file__).resolve().parents[2]


def test_twenty_clients_for_ten_seconds_get_no_errors_and_lose_no_study(
    model_base_dir: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in DEPENDENCY_ENV.values()}
    env["MEDMESH_MODEL_BASE_DIR"] = str(model_base_dir)
    env.pop("MEDMESH_BENCH_RESULTS", None)

    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_load.py"),
            "--clients",
            "20",
            "--seconds",
            "10",
            "--drain-s",
            "300",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "ramp-up: 20 of 20 clients signed in" in out
    requests = re.search(r"(\d+) requests \(\d+/s\), (\d+) answered 429, (\d+) errors", out)
    assert requests is not None, out
    assert int(requests[1]) > 20
    assert int(requests[3]) == 0
    studies = re.search(
        r"uploaded studies (\d+): complete \(results \+ READY report\) (\d+), lost (\d+),"
        r" duplicated results (\d+), dead letters (\d+)",
        out,
    )
    assert studies is not None, out
    uploaded, complete, lost, duplicated, dead = (int(x) for x in studies.groups())
    assert uploaded >= 1
    assert (complete, lost, duplicated, dead) == (uploaded, 0, 0, 0)
