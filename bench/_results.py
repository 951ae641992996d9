"""Rows for the benchmark report: each bench script calls `record` for its headline figures;
`bench/run.py` collects them (JSON lines in the file named by MEDMESH_BENCH_RESULTS) into
bench/report.json and bench/report.md. Run alone, a script only prints, as before."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS_ENV = "MEDMESH_BENCH_RESULTS"


def record(
    benchmark: str,
    figure_name: str,
    figure: float,
    unit: str,
    *,
    floor: float | None = None,
    floor_name: str = "",
    ratio: float | None = None,
    ratio_name: str = "",
    goal: str = "",
    met: bool | None = None,
    note: str = "",
    **extra: Any,
) -> None:
    """One row: a figure, the floor measured in the same run, their ratio (or difference:
    `ratio_name` says which), the goal and whether this run met it (None: no goal)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    row = {
        "benchmark": benchmark,
        "figure_name": figure_name,
        "figure": figure,
        "unit": unit,
        "floor": floor,
        "floor_name": floor_name,
        "ratio": ratio,
        "ratio_name": ratio_name or ("figure / floor" if ratio is not None else ""),
        "goal": goal,
        "met": met,
        "note": note,
        **extra,
    }
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
