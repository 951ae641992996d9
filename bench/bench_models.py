"""Model throughput: the bare SavedModel called in-process (the floor) vs the same model
behind `svc_infer.model_server` over gRPC Predict, at batch 1 and batch 8, same run.

    .venv/bin/python bench/bench_models.py [--base-dir .data/models] [--seconds 5]

The server runs as its own process (as in production), requests go one at a time, so the
ratio is what the protocol costs: serialising tensors, gRPC, the hop to a worker thread.
Models are built into --base-dir first if missing (`medmesh models build`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow's first import

import numpy as np
import tensorflow as tf
from _results import record
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from svc_infer.model_server.client import open_channel
from svc_infer.models.build import build_all
from svc_infer.models.sources import default_cache_dir
from svc_infer.models.text import encode, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
NOTE = (
    "Five days of productive cough and fever of 39 degrees; crackles at the right base and the "
    "chest film shows right lower lobe consolidation. Started on oral antibiotics."
)


def rate(run: Callable[[], object], batch: int, seconds: float) -> float:
    """Items per second of a blocking call, after two warm-up calls."""
    run()
    run()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        run()
        calls += 1
    return calls * batch / elapsed


async def async_rate(run: Callable[[], Awaitable[object]], batch: int, seconds: float) -> float:
    """Items per second of an awaited call, one in flight at a time, after warm-up."""
    await run()
    await run()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        await run()
        calls += 1
    return calls * batch / elapsed


def inputs_for(model: str, batch: int, base_dir: Path) -> dict[str, np.ndarray]:
    """A realistic input batch for `model`."""
    if model == "resnet50":
        rng = np.random.default_rng(0)
        return {"image": rng.uniform(-120, 120, (batch, 224, 224, 3)).astype(np.float32)}
    tokenizer = load_tokenizer((base_dir / "minilm/1/assets/tokenizer.json").read_text())
    ids, mask = encode(tokenizer, [NOTE] * batch)
    return {"input_ids": ids, "attention_mask": mask}


def start_server(base_dir: Path, ready: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The model server as a child process; returns it and its address once ready."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "svc_infer.model_server", "--model-base", str(base_dir)),
            *("--port", "0", "--ready-file", str(ready), "--file-system-poll-wait-seconds", "0"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("model server did not start")
        time.sleep(0.1)
    return process, json.loads(ready.read_text())["grpc"]


def bare_call(base_dir: Path, model: str, arrays: dict[str, np.ndarray]) -> Callable[[], None]:
    """The SavedModel's serving signature called in this process: the floor."""
    signature = tf.saved_model.load(str(base_dir / model / "1")).signatures["serving_default"]
    tensors = {k: tf.constant(v) for k, v in arrays.items()}

    def call() -> None:
        for output in signature(**tensors).values():
            output.numpy()

    return call


def served_call(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    model: str,
    arrays: dict[str, np.ndarray],
) -> Callable[[], Awaitable[None]]:
    """The same batch as a Predict through the model server."""
    request = predict_pb2.PredictRequest(
        model_spec={"name": model},
        inputs={k: tf.make_tensor_proto(v) for k, v in arrays.items()},
    )

    async def call() -> None:
        response = await stub.Predict(request)
        for output in response.outputs.values():
            tf.make_ndarray(output)

    return call


async def measure(base_dir: Path, address: str, seconds: float, rounds: int):
    """Best of `rounds` alternating bare/served measurements per case (the machine is
    shared; alternating keeps background load from favouring one side)."""
    results = []
    async with open_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for model in ("resnet50", "minilm"):
            for batch in (1, 8):
                arrays = inputs_for(model, batch, base_dir)
                bare, served = bare_call(base_dir, model, arrays), served_call(stub, model, arrays)
                best_bare = best_served = 0.0
                for _ in range(rounds):
                    best_bare = max(best_bare, rate(bare, batch, seconds))
                    best_served = max(best_served, await async_rate(served, batch, seconds))
                results.append((model, batch, best_bare, best_served))
    return results


def main() -> None:
    """Build if needed, measure bare and served, print figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", type=Path, default=REPO / ".data" / "models")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations; the best counts")
    args = parser.parse_args()
    build_all(args.base_dir, cache_dir=default_cache_dir())

    with tempfile.TemporaryDirectory() as scratch:
        process, address = start_server(args.base_dir, Path(scratch) / "ready.json")
        try:
            results = asyncio.run(measure(args.base_dir, address, args.seconds, args.rounds))
        finally:
            process.terminate()
            process.wait(timeout=30)

    unit = {"resnet50": "images/s", "minilm": "notes/s"}
    print(f"cpu cores: {os.cpu_count()}, tensorflow {tf.__version__}")
    for model, batch, floor, figure in results:
        print(
            f"{model:8} batch {batch}: served {figure:8.1f} {unit[model]:9} "
            f"bare SavedModel {floor:8.1f}  ratio {figure / floor:.2f}"
        )
        record(
            "bench_models.py",
            f"{model} via the model server, batch {batch}",
            round(figure, 1),
            unit[model],
            floor=round(floor, 1),
            floor_name="bare SavedModel in-process",
            ratio=round(figure / floor, 2),
        )
    for model in unit:
        (_, _, b1, s1), (_, _, b8, s8) = [r for r in results if r[0] == model]
        print(f"{model:8} batch-8 gain: bare {b8 / b1:.2f}x, served {s8 / s1:.2f}x")


if __name__ == "__main__":
    main()
