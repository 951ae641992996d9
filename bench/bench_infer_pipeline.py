"""P1: image jobs/s end to end (JetStream → svc_infer workers → model server → PostgreSQL,
Redis, S3) against the bare ResNet-50 SavedModel called in-process at the same batch size, in
the same run; and the pipeline's gain from micro-batching next to the model's own gain from
batch 8 over batch 1.

    python bench/bench_infer_pipeline.py [--jobs 192] [--image-size 512] [--rounds 3]
                                         [--inflight 2] [--model-cpus 1]

Everything runs on this machine: embedded PostgreSQL, Redis, NATS and S3 (or the MEDMESH_*
URLs when set), the model server as its own process (as TF Serving would be), svc_infer
in this process. The bare model is measured on the same preprocessed tensors the pipeline
sends, with as many batches in flight as svc_infer keeps (`--inflight`, its
MEDMESH_INFER_CONCURRENCY, 2 by default: threads each running batches through the signature),
so the pipeline's extra work (PNG download, SHA-256 check and decode, resize, the gRPC hop,
the database transaction, events, the cache, acks) is exactly what the ratio charges for.
Every job carries the file's sha256, as the jobs svc_ingest publishes do.

Two layouts. By default every process shares all CPUs (the headline, P1: what this machine
does with everything on it): the pipeline's own work then takes CPU from the model, and the
ratio is bounded by the model's share of the machine. With
`--model-cpus 1` the model runs on the CPUs listed, for both figures (the bare model and the
model server), and everything else on the other CPUs: the production layout, where TF
Serving has its own cores or GPU; the ratio then says whether the pipeline keeps the model
as busy as a bare loop does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svc_infer.models import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from _results import record  # noqa: E402
from psycopg import sql  # noqa: E402

from gen.medmesh.common.v1 import FileKind  # noqa: E402
from gen.medmesh.events.v1 import InferenceJob  # noqa: E402
from medmesh.jetstream import Topology, connect_nats, publish_message  # noqa: E402
from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies  # noqa: E402
from medmesh.migrate import service_migrations  # noqa: E402
from medmesh.objects import RAW_IMAGES, ObjectStore  # noqa: E402
from medmesh.runtime import ServiceParts, serve  # noqa: E402
from medmesh.settings import Settings  # noqa: E402
from svc_infer import app  # noqa: E402
from svc_infer.preprocess import ImageSpec, prepare_image  # noqa: E402

BATCH = 8
MODEL_ROOT = REPO / ".data" / "bench-models"


def build_model() -> Path:
    """ResNet-50 version 1 under .data/bench-models/<code hash>/ (built once)."""
    from svc_infer.models.build import build_code_hash, build_resnet50

    base = MODEL_ROOT / build_code_hash()
    if not (base / "resnet50" / "1" / "saved_model.pb").exists():
        build_resnet50(base, 1)
    return base


def make_images(count: int, size: int) -> list[bytes]:
    """Distinct gray PNGs, like a downsampled radiograph."""
    rng = np.random.default_rng(7)
    images = []
    for _ in range(count):
        pixels = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (9, 9), 3)
        ok, buffer = cv2.imencode(".png", pixels)
        assert ok
        images.append(buffer.tobytes())
    return images


class BareModel:
    """The SavedModel's serving signature, called in-process: in a process of its own, so
    that it can run on the same CPUs as the model server (`--model-cpus`)."""

    def __init__(self, base: Path, tensors: np.ndarray, workdir: Path, cpus: set[int]) -> None:
        path = workdir / "tensors.npy"
        np.save(path, tensors)
        self._process = subprocess.Popen(
            [sys.executable, __file__, "bare", str(base), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(cpus),  # noqa: PLW1509 - only sets the CPU affinity
        )

    def rate(self, batch: int, inflight: int) -> float:
        """Images/s at `batch`, `inflight` batches at a time, over all of the tensors."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(f"{batch} {inflight}\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline()
        if not answer:
            raise RuntimeError("the bare model process exited")
        return float(answer)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=60)


def bare_child(base: Path, tensors_path: Path) -> None:
    """Child: load the SavedModel, then answer each "batch inflight" line on stdin with
    images/s: `inflight` threads, each taking the next batch until all are done."""
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    tensors = np.load(tensors_path)
    serve = tf.saved_model.load(str(base / "resnet50" / "1")).signatures["serving_default"]
    for batch in (1, BATCH):  # graph tracing and allocations, per batch shape
        serve(image=tf.constant(tensors[:batch]))

    def one(start: int, batch: int) -> int:
        serve(image=tf.constant(tensors[start : start + batch]))["probabilities"].numpy()
        return batch

    for line in sys.stdin:
        batch, inflight = (int(part) for part in line.split())
        starts = range(0, len(tensors) - batch + 1, batch)
        with ThreadPoolExecutor(inflight) as pool:
            started = time.perf_counter()
            done = sum(pool.map(one, starts, [batch] * len(starts)))
            elapsed = time.perf_counter() - started
        print(done / elapsed, flush=True)


def pinned(cpus: set[int]) -> Callable[[], None] | None:
    """A preexec_fn that confines a child to `cpus` (None: no confinement)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_model_server(
    base: Path, workdir: Path, cpus: set[int]
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m svc_infer.model_server` in its own process, as TF Serving would run."""
    ready = workdir / "model-server.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "svc_infer.model_server",
            "--model-base",
            str(base),
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--file-system-poll-wait-seconds",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pinned(cpus),  # noqa: PLW1509 - only sets the CPU affinity
    )
    for _ in range(1200):
        if ready.exists():
            return process, json.loads(ready.read_text())["grpc"]
        if process.poll() is not None:
            raise RuntimeError("the model server exited")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the model server did not start")


def fresh_database(postgres_url: str) -> str:
    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlsplit(postgres_url)._replace(path=f"/{name}").geturl()


_GROUPS = (
    ("model server", "svc_infer.model_server"),
    ("S3", "medmesh.launcher.bucket"),
    ("PostgreSQL", "postgres"),
    ("NATS", "nats-server"),
    ("Redis", "redis-server"),
)


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of this process (svc_infer + the bench's publisher) and of each
    child group (the model server, the embedded dependencies, PostgreSQL's backends)."""
    me = psutil.Process()
    totals = {"svc_infer + bench": sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            seconds = sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
        for name, marker in _GROUPS:
            if marker in command:
                totals[name] = totals.get(name, 0.0) + seconds
                break
    return totals


async def pipeline_rate(
    urls: dict[str, str],
    model_server: str,
    images: Sequence[bytes],
    *,
    batch_size: int,
    inflight: int,
    cpu: dict[str, float] | None = None,
) -> float:
    """Jobs/s from the first publish to the last stored result, after a warm-up batch;
    `cpu`, if given, receives each process group's CPU seconds during the measured run."""
    prefix = f"b{secrets.token_hex(3)}"
    database_url = fresh_database(urls[DEPENDENCY_ENV["postgres"]])
    settings = Settings(
        service="infer",
        postgres_url=database_url,
        redis_url=urls[DEPENDENCY_ENV["redis"]],
        nats_url=urls[DEPENDENCY_ENV["nats"]],
        s3_url=urls[DEPENDENCY_ENV["s3"]],
        s3_bucket_prefix=f"{prefix}-",
        subject_root=prefix,
        stream_prefix=prefix.upper(),
        metrics_addr="",
        grace_period_s=1,
        extra={
            "MEDMESH_INFER_TF_SERVING_ADDR": model_server,
            "MEDMESH_INFER_BATCH_SIZE": str(batch_size),
            "MEDMESH_INFER_CONCURRENCY": str(inflight),
            "MEDMESH_INFER_BATCH_WAIT_MS": "20",
            "MEDMESH_INFER_PREDICT_TIMEOUT_S": "300",
        },
    )
    started_event = asyncio.Event()

    async def setup(s: Settings, stack: AsyncExitStack) -> ServiceParts:
        from medmesh.auth import StaticJwks, TokenVerifier

        parts = await app.setup(s, stack)
        parts.verifier = TokenVerifier(StaticJwks({"keys": []}), issuer="x", audience="x")
        started_event.set()
        return parts

    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(settings, setup, migrations=service_migrations("infer"), stop=stop)
    )
    await started_event.wait()
    topology = Topology(subject_root=prefix, stream_prefix=prefix.upper())
    objects = ObjectStore(settings.s3_url, bucket_prefix=settings.s3_bucket_prefix)
    nc, js = await connect_nats(settings.nats_url, name="bench")
    try:
        keys, digests = [], []
        for index, data in enumerate(images):
            key = f"bench/{index}.png"
            await objects.put_bytes(RAW_IMAGES, key, data, content_type="image/png")
            keys.append(key)
            digests.append(hashlib.sha256(data).hexdigest())  # the client's, at upload

        async def run(indices: Sequence[int]) -> float:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as db:
                before = await _count(db)
                started = time.perf_counter()
                for index in indices:
                    job = InferenceJob(
                        job_id=str(uuid.uuid4()),
                        clinic_id="bench",
                        study_id=str(uuid.uuid4()),
                        file_id=str(uuid.uuid4()),
                        kind=FileKind.IMAGE_PNG,
                        bucket=RAW_IMAGES,
                        object_key=keys[index],
                        sha256=digests[index],
                        content_type="image/png",
                        enqueue_time=datetime.now(UTC),
                        study_file_count=1,
                    )
                    await publish_message(js, topology.infer_image_subject, job, msg_id=job.job_id)
                # Every 50 ms: at most 0.5 % of a run's time, and little of its CPU.
                while await _count(db) < before + len(indices):  # noqa: ASYNC110 - polls the DB
                    await asyncio.sleep(0.05)
                return len(indices) / (time.perf_counter() - started)

        await run(range(min(BATCH * 2, len(images))))  # warm-up: registry, cards, TF graphs
        before = cpu_by_process()
        rate = await run(range(len(images)))
        if cpu is not None:
            after = cpu_by_process()
            cpu.update({name: after[name] - before.get(name, 0.0) for name in after})
        return rate
    finally:
        await nc.drain()
        objects.close()
        stop.set()
        await task


async def _count(db: psycopg.AsyncConnection) -> int:
    cur = await db.execute("SELECT count(*) FROM infer.results")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def line(name: str, value: float, floor_name: str, floor: float, goal: float) -> None:
    ratio = value / floor if floor else float("nan")
    verdict = "ok" if ratio >= goal else "below goal"
    print(
        f"{name:<44} {value:8.2f}   vs {floor_name:<34} {floor:8.2f}   "
        f"ratio {ratio:5.2f} (goal >= {goal:.2f}, {verdict})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=192)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--inflight", type=int, default=2, help="batches in flight, pipeline and floor alike"
    )
    parser.add_argument(
        "--model-cpus", default="", help="CPU ids for the model (bare and served), e.g. 1"
    )
    args = parser.parse_args()
    jobs = max(BATCH * 2, args.jobs - args.jobs % BATCH)
    model_cpus = {int(c) for c in args.model_cpus.split(",") if c}
    if model_cpus:
        others = os.sched_getaffinity(0) - model_cpus
        if not others or not model_cpus <= os.sched_getaffinity(0):
            parser.error("--model-cpus must leave at least one of this machine's CPUs free")
        # This thread, and so every thread and child started from here on (svc_infer, the
        # embedded dependencies), runs on the other CPUs.
        os.sched_setaffinity(0, others)

    base = build_model()
    images = make_images(jobs, args.image_size)
    spec = ImageSpec(color_order="BGR", mean=(0.406, 0.458, 0.485), std=(1 / 255,) * 3)
    tensors = np.stack([prepare_image(data, FileKind.IMAGE_PNG, spec).tensor for data in images])

    # The machine is shared: each pipeline run is measured between two runs of the bare
    # model at the same batch size, and each figure is the best of its rounds.
    figures: dict[str, list[float]] = {"bare8": [], "pipe8": [], "bare1": [], "pipe1": []}
    cpu_rounds: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory() as workdir,
        EmbeddedDependencies(Path(workdir) / "deps", os.environ) as urls,
    ):
        bare = BareModel(base, tensors, Path(workdir), model_cpus)
        process, address = start_model_server(base, Path(workdir), model_cpus)
        try:
            for _ in range(args.rounds):
                # The bare model right before AND right after each pipeline run: the floor
                # is the best of those, so a quiet moment never flatters the pipeline.
                figures["bare8"].append(bare.rate(BATCH, args.inflight))
                cpu_rounds.append({})
                figures["pipe8"].append(
                    await pipeline_rate(
                        urls,
                        address,
                        images,
                        batch_size=BATCH,
                        inflight=args.inflight,
                        cpu=cpu_rounds[-1],
                    )
                )
                figures["bare8"].append(bare.rate(BATCH, args.inflight))
                figures["bare1"].append(bare.rate(1, args.inflight))
                figures["pipe1"].append(
                    await pipeline_rate(urls, address, images, batch_size=1, inflight=args.inflight)
                )
                figures["bare1"].append(bare.rate(1, args.inflight))
        finally:
            process.terminate()
            process.wait(timeout=30)
            bare.close()
    bare_8, pipe_8, bare_1, pipe_1 = (max(figures[k]) for k in ("bare8", "pipe8", "bare1", "pipe1"))
    print("\nrounds:", {k: [round(v, 2) for v in values] for k, values in figures.items()})
    # Under outside load the best-of figures can come from different moments; the ratio of
    # each pipeline run to the better of the two bare runs around it compares like with like.
    paired_of: dict[str, list[float]] = {}
    for size in ("8", "1"):
        pipe, bare_runs = figures[f"pipe{size}"], figures[f"bare{size}"]
        paired = [p / max(bare_runs[2 * i], bare_runs[2 * i + 1]) for i, p in enumerate(pipe)]
        paired_of[size] = paired
        print(
            f"batch {size}: per-round pipeline / max(bare before, bare after):",
            [round(r, 2) for r in paired],
        )

    print(f"\nCPU seconds per process during each batch-8 pipeline run ({jobs} jobs):")
    for name in cpu_rounds[0]:
        print(f"  {name:18} " + "  ".join(f"{r.get(name, 0.0):6.2f}" for r in cpu_rounds))
    beside = [sum(v for k, v in r.items() if k != "model server") for r in cpu_rounds]
    print(f"  {'all but the model':18} " + "  ".join(f"{v:6.2f}" for v in beside))
    layout = (
        f"the model on CPUs {sorted(model_cpus)}, the rest on {sorted(others)}"
        if model_cpus
        else f"{os.cpu_count()} CPUs shared by all"
    )
    print(
        f"\nResNet-50 (untrained, real cost), {jobs} PNG jobs of {args.image_size}px, "
        f"{layout}, {args.inflight} batches in flight, best of {args.rounds} rounds\n"
    )
    line("P1 pipeline jobs/s, micro-batch 8", pipe_8, "bare SavedModel img/s, batch 8", bare_8, 0.9)
    line(
        "pipeline jobs/s, micro-batching off (1)",
        pipe_1,
        "bare SavedModel img/s, batch 1",
        bare_1,
        0.9,
    )
    bare_gain = bare_8 / bare_1
    pipe_gain = pipe_8 / pipe_1
    line(
        "batching gain kept by the pipeline (8 vs 1)",
        pipe_gain,
        "bare model gain (8 vs 1)",
        bare_gain,
        0.9,
    )
    headline = not model_cpus
    what = (
        "P1 (headline): everything sharing the machine"
        if headline
        else f"P1, second row: model on CPU {','.join(map(str, sorted(model_cpus)))}, rest apart"
    )
    rounds8 = ", ".join(f"{r:.2f}" for r in paired_of["8"])
    record(
        "bench_infer_pipeline.py",
        f"{what}; image jobs/s, batch 8, {args.inflight} in flight",
        round(pipe_8, 2),
        "jobs/s",
        floor=round(bare_8, 2),
        floor_name=f"bare SavedModel, batch 8, {args.inflight} in flight (img/s)",
        ratio=round(pipe_8 / bare_8, 2),
        goal=">= 0.9",
        met=pipe_8 / bare_8 >= 0.9,
        note=f"per round vs the bare runs around it: {rounds8}; {jobs} jobs, sha256 checked",
    )
    record(
        "bench_infer_pipeline.py",
        f"{'P1' if headline else 'P1 dedicated'}: micro-batching gain kept (8 vs 1)",
        round(pipe_gain, 2),
        "x",
        floor=round(bare_gain, 2),
        floor_name="bare model's own 8 vs 1 gain",
        ratio=round(pipe_gain / bare_gain, 2),
        goal=">= 0.9",
        met=pipe_gain / bare_gain >= 0.9,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "bare":
        bare_child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        asyncio.run(main())
