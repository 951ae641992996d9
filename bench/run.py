"""Run every benchmark and write bench/report.json and bench/report.md.

    .venv/bin/python bench/run.py [--quick] [--only NAME ...] [--out-dir bench]

Each benchmark runs as its own process (`bench/bench_*.py` with the arguments below) and
reports its headline rows through `bench/_results.py`: the figure, the floor measured in the
same run, their ratio (or difference), the goal and whether this run met it. The report also
records the machine (CPU model, cores, memory), the date, the git commit, and the load average
right before and right after each benchmark: on a machine shared with other work, a figure
measured under a load of 6 on 2 cores is not the figure of an idle machine, and the report
says which it was.

`--quick` runs small sizes with one repeat: a check that every benchmark still runs, not a
measurement (its report says so in its title). A bench script added to bench/ without an
entry below is run with no arguments (full) or `--quick` (quick), and listed in the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from _results import RESULTS_ENV  # noqa: E402


@dataclass(frozen=True)
class Bench:
    """One benchmark process: the script, its arguments for a full run and a quick one."""

    name: str
    script: str
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)


# Fast ones first, the long P1 runs last. The P1 layouts are two processes so that each gets
# its own load-average bracket. Full sizes are bounded so that the whole run takes about 20
# minutes on the 2-core development machine (the scripts' own defaults go further).
BENCHES: list[Bench] = [
    Bench("auth", "bench_auth.py", [], ["--verifications", "2000", "--calls", "200"]),
    Bench("edge", "bench_edge.py", ["--calls", "4000"], ["--calls", "400", "--warmup", "40"]),
    Bench("get_result", "bench_get_result.py", [], ["--calls", "300"]),
    Bench("report", "bench_report.py", ["--repeat", "3"], ["--repeat", "1"]),
    Bench("queue", "bench_queue.py", [], ["--sizes", "100,1000"]),
    Bench(
        "ingest_upload",
        "bench_ingest_upload.py",
        ["--sizes", "16,64", "--repeat", "3", "--servers", "localbucket,moto"],
        ["--sizes", "16", "--repeat", "1", "--writers", "put", "--servers", "localbucket,moto"],
    ),
    Bench("models", "bench_models.py", ["--rounds", "2"], ["--seconds", "0.5", "--rounds", "1"]),
    # The whole product under 200 concurrent clients through the edge (issue 12, Load).
    Bench(
        "load",
        "bench_load.py",
        ["--clients", "200", "--seconds", "60"],
        ["--clients", "20", "--seconds", "10"],
    ),
    # No report rows of its own: its printed table goes into the report as it is.
    Bench(
        "ingest_validation",
        "bench_ingest_validation.py",
        [],
        ["--size-kib", "64", "--repeat", "1"],
    ),
    Bench(
        "infer_pipeline_shared",
        "bench_infer_pipeline.py",
        ["--jobs", "128", "--rounds", "2"],
        ["--jobs", "32", "--rounds", "1", "--image-size", "256"],
    ),
    Bench(
        "infer_pipeline_dedicated",
        "bench_infer_pipeline.py",
        ["--jobs", "128", "--rounds", "2", "--model-cpus", "1"],
        ["--jobs", "32", "--rounds", "1", "--image-size", "256", "--model-cpus", "1"],
    ),
]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_gib, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def git_commit() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    dirty = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_paths": len(dirty)}


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def planned(quick: bool, only: list[str]) -> list[Bench]:
    """The table above, plus any bench script it does not name."""
    known = {bench.script for bench in BENCHES}
    extra = [
        Bench(path.stem.removeprefix("bench_"), path.name, [], ["--quick"])
        for path in sorted(BENCH.glob("bench_*.py"))
        if path.name not in known
    ]
    chosen = [bench for bench in BENCHES + extra if (BENCH / bench.script).exists()]
    if only:
        chosen = [bench for bench in chosen if bench.name in only]
    return chosen


def run_one(bench: Bench, quick: bool, timeout_s: float) -> dict[str, Any]:
    """Run one benchmark process; its rows, its output's tail, its load bracket."""
    args = bench.quick if quick else bench.full
    with tempfile.NamedTemporaryFile("w+", suffix=".jsonl", delete=False) as rows_file:
        rows_path = Path(rows_file.name)
    env = {**os.environ, RESULTS_ENV: str(rows_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(BENCH / bench.script), *args]
    print(f"\n=== {bench.name}: {' '.join(command[1:])}", flush=True)
    load_before, started = load(), time.monotonic()
    try:
        process = subprocess.run(
            command,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        # stderr first: the figures a script prints (stdout) are what the tail should keep.
        output, code = process.stderr + process.stdout, process.returncode
    except subprocess.TimeoutExpired as exc:
        parts = [
            part.decode(errors="replace") if isinstance(part, bytes) else part or ""
            for part in (exc.stderr, exc.stdout)
        ]
        output = "".join(parts) + f"\n(timed out after {timeout_s:.0f} s)"
        code = -1
    seconds, load_after = time.monotonic() - started, load()
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    rows_path.unlink(missing_ok=True)
    tail = output.splitlines()[-40:]
    print("\n".join(tail), flush=True)
    print(
        f"--- {bench.name}: exit {code}, {seconds:.0f} s, load {load_before} -> {load_after}",
        flush=True,
    )
    return {
        "name": bench.name,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", f"bench/{bench.script}", *args]),
        "exit_code": code,
        "seconds": round(seconds, 1),
        "load_before": load_before,
        "load_after": load_after,
        "rows": rows,
        "output_tail": tail,
    }


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        text = text.replace(",", " ")
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def markdown(report: dict[str, Any]) -> str:
    """The table the README shows."""
    m, g = report["machine"], report["git"]
    title = "Benchmark report" + (
        " (QUICK: small sizes, 1 repeat; not a measurement)" if report["quick"] else ""
    )
    lines = [
        f"# {title}",
        "",
        f"Generated by `{report['command']}` on {report['date']} "
        f"(commit `{g['commit'][:10]}`"
        + (
            f", {g['uncommitted_paths']} uncommitted paths in the tree"
            if g["uncommitted_paths"]
            else ""
        )
        + f"), {report['seconds']:.0f} s in all.",
        "",
        *(
            [
                "Re-run since (`--merge`), their rows replaced: "
                + "; ".join(f"`{r['names']}` on {r['date']}" for r in report["merged"])
                + ". The load column shows each benchmark's own load.",
                "",
            ]
            if report.get("merged")
            else []
        ),
        f"Machine: {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{m['memory_gib']} GiB memory, Python {m['python']}, Linux {m['kernel']}. "
        f"Load average (1/5/15 min) {report['load_start']} at the start, "
        f"{report['load_end']} at the end.",
        "",
        "| benchmark | figure | floor (same run) | ratio | goal | met "
        "| load 1 min before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for bench in report["benchmarks"]:
        bracket = f"{bench['load_before'][0]} → {bench['load_after'][0]}"
        if not bench["rows"]:
            outcome = (
                "no report rows: its output is below"
                if bench["exit_code"] == 0
                else (f"FAILED (exit {bench['exit_code']})")
            )
            lines.append(f"| `{bench['command']}` | {outcome} | | | | | {bracket} |")
            continue
        for row in bench["rows"]:
            met = {True: "**met**", False: "**not met**", None: "—"}[row["met"]]
            floor = (
                f"{row['floor_name']}: {_number(row['floor'], row['unit'])}"
                if row["floor"] is not None
                else (row["floor_name"] or "—")
            )
            ratio = _number(row["ratio"])
            if (
                row["ratio"] is not None
                and row["ratio_name"]
                and row["ratio_name"] != "figure / floor"
            ):
                ratio += f" ({row['ratio_name']})"
            figure = f"{row['figure_name']}: {_number(row['figure'], row['unit'])}"
            if row.get("note"):
                figure += f" — {row['note']}"
            lines.append(
                f"| {row['benchmark']} | {figure} | {floor} | {ratio} | {row['goal'] or '—'} "
                f"| {met} | {bracket} |"
            )
    for bench in report["benchmarks"]:
        if not bench["rows"]:
            lines += ["", f"`{bench['command']}` (exit {bench['exit_code']}), its output:", ""]
            lines += ["```", *bench["output_tail"][-25:], "```"]
    lines += [
        "",
        "Ratios are figure / floor unless the column says otherwise. Per benchmark: "
        + "; ".join(
            f"`{b['name']}` {b['seconds']:.0f} s (exit {b['exit_code']})"
            for b in report["benchmarks"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with the benchmarks of `new` replacing those of the same name (new ones appended,
    in the order of the table above); the header stays the old full run's, and a line says
    which benchmarks were re-run when."""
    fresh = {b["name"]: b for b in new["benchmarks"]}
    benchmarks = [fresh.pop(b["name"], b) for b in old["benchmarks"]]
    order = [b.name for b in BENCHES]
    for bench in fresh.values():
        position = order.index(bench["name"]) if bench["name"] in order else len(order)
        after = [i for i, b in enumerate(benchmarks) if b["name"] in order[:position]]
        benchmarks.insert(after[-1] + 1 if after else len(benchmarks), bench)
    names = ", ".join(b["name"] for b in new["benchmarks"])
    return {
        **old,
        "benchmarks": benchmarks,
        "merged": [
            *old.get("merged", []),
            {"names": names, "date": new["date"], "git": new["git"]},
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--only", nargs="*", default=[], help="benchmark names to run")
    parser.add_argument("--out-dir", type=Path, default=BENCH)
    parser.add_argument("--timeout-s", type=float, default=1800, help="per benchmark")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the benchmarks run in the existing report (with --only)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": "python bench/run.py" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "git": git_commit(),
        "load_start": load(),
        "benchmarks": [],
    }
    for bench in planned(args.quick, args.only):
        report["benchmarks"].append(run_one(bench, args.quick, args.timeout_s))
    report["load_end"] = load()
    report["seconds"] = round(time.monotonic() - started, 1)
    if args.merge and (args.out_dir / "report.json").exists():
        report = merged(json.loads((args.out_dir / "report.json").read_text()), report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "report.md").write_text(markdown(report))
    print(f"\nwrote {args.out_dir / 'report.json'} and {args.out_dir / 'report.md'}")
    failed = [b["name"] for b in report["benchmarks"] if b["exit_code"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
