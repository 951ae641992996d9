"""Version policies, version labels, config reloads and file-system polling, as in TF Serving;
and the `python -m svc_infer.model_server` entry point that `medmesh up` starts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from svc_infer.model_server.client import fetch_model_card, open_channel
from svc_infer.model_server.config import (
    ModelServerConfig,
    config_for_base_dir,
    read_config_file,
    validate,
)
from svc_infer.model_server.server import running_model_server

REPO = Path(__file__).resolve().parents[3]
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def link_versions(model_base_dir: Path, target: Path, versions: dict[int, int]) -> Path:
    """`target/resnet50/<new>` → a built version (symlinks: no copying of 90 MB models)."""
    for new, built in versions.items():
        link = target / "resnet50" / str(new)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(model_base_dir / "resnet50" / str(built), target_is_directory=True)
    return target


async def loaded_versions(channel: grpc.aio.Channel, model: str = "resnet50") -> list[int]:
    """Versions GetModelStatus reports AVAILABLE, newest first."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    response = await stub.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": model})
    )
    return [s.version for s in response.model_version_status if s.state == AVAILABLE]


async def served_version(channel: grpc.aio.Channel, **model_spec: object) -> int:
    """The version that answers a Predict with `model_spec` (resnet50, one blank image)."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest(
        model_spec={"name": "resnet50", **model_spec},
        inputs={"image": tf.make_tensor_proto(np.zeros((1, 224, 224, 3), np.float32))},
    )
    return (await stub.Predict(request)).model_spec.version.value


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("latest", [3]), ("latest:2", [3, 2]), ("all", [3, 2, 1]), ("specific:1,3", [3, 1])],
)
async def test_version_policy_selects_the_versions_tf_serving_would_load(
    model_base_dir: Path, tmp_path: Path, policy: str, expected: list[int]
) -> None:
    base = link_versions(model_base_dir, tmp_path, {1: 1, 2: 2, 3: 1})
    config = config_for_base_dir(base, version_policy=policy)
    async with (
        running_model_server(config, poll_seconds=0) as server,
        open_channel(server.address) as channel,
    ):
        assert await loaded_versions(channel) == expected
        assert await served_version(channel) == expected[0]


CONFIG_WITH_LABELS = """
model_config_list {
  config {
    name: "resnet50"
    base_path: "%s"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""


@pytest.fixture
async def labelled_server(model_base_dir: Path, tmp_path: Path) -> AsyncIterator[str]:
    """A server configured by a TF Serving model config file with stable→1, canary→2."""
    config_file = tmp_path / "models.config"
    config_file.write_text(CONFIG_WITH_LABELS % (model_base_dir / "resnet50"))
    async with running_model_server(read_config_file(config_file), poll_seconds=0) as server:
        yield server.address


async def test_version_labels_route_to_their_versions_and_a_reload_moves_them(
    labelled_server: str, model_base_dir: Path
) -> None:
    async with open_channel(labelled_server) as channel:
        assert await served_version(channel, version_label="stable") == 1
        assert await served_version(channel, version_label="canary") == 2
        card = await fetch_model_card(
            prediction_service_pb2_grpc.PredictionServiceStub(channel), "resnet50", label="canary"
        )
        assert card.version == 2

        # Promote: both labels on version 2 (HandleReloadConfigRequest, as with TF Serving).
        config = text_format.Parse(
            CONFIG_WITH_LABELS % (model_base_dir / "resnet50"), ModelServerConfig()
        )
        config.model_config_list.config[0].version_labels["stable"] = 2
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        response = await models.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config)
        )
        assert response.status.error_code == 0
        assert await served_version(channel, version_label="stable") == 2


async def test_a_label_on_a_version_that_is_not_loaded_is_refused_and_nothing_changes(
    labelled_server: str, model_base_dir: Path
) -> None:
    config = text_format.Parse(
        CONFIG_WITH_LABELS % (model_base_dir / "resnet50"), ModelServerConfig()
    )
    config.model_config_list.config[0].version_labels["canary"] = 5
    async with open_channel(labelled_server) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await models.HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=config)
            )
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.value.details() == (
            "Request to assign label to version 5 of model resnet50, "
            "which is not currently available for inference"
        )
        assert await served_version(channel, version_label="canary") == 2


async def test_a_new_version_directory_is_loaded_by_the_poll_and_a_removed_one_unloaded(
    model_base_dir: Path, tmp_path: Path
) -> None:
    base = link_versions(model_base_dir, tmp_path, {1: 1})
    config = config_for_base_dir(base, version_policy="all")
    async with (
        running_model_server(config, poll_seconds=0.2) as server,
        open_channel(server.address) as channel,
    ):
        assert await loaded_versions(channel) == [1]
        link_versions(model_base_dir, tmp_path, {2: 2})
        await wait_until(lambda: loaded_versions(channel), [2, 1])
        (base / "resnet50" / "1").unlink()
        await wait_until(lambda: loaded_versions(channel), [2])
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        status = await stub.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(
                model_spec={"name": "resnet50", "version": {"value": 1}}
            )
        )
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, END)]


async def wait_until(probe, expected, timeout_s: float = 20.0) -> None:
    """Poll `probe()` until it returns `expected` (the server polls the disk itself)."""
    deadline = time.monotonic() + timeout_s
    while (value := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {value}, expected {expected}"
        await asyncio.sleep(0.1)


def test_entry_point_serves_until_sigterm_and_writes_its_ready_file(
    model_base_dir: Path, tmp_path: Path
) -> None:
    base = link_versions(model_base_dir, tmp_path / "models", {1: 1})
    ready = tmp_path / "ready.json"
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
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "model server not ready after 60 s"
            time.sleep(0.1)
        document = json.loads(ready.read_text())
        assert document["models"] == {"resnet50": [1]}
        assert document["pid"] == process.pid

        async def status() -> list[int]:
            async with open_channel(document["grpc"]) as channel:
                return await loaded_versions(channel)

        assert asyncio.run(status()) == [1]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "cuInit" not in output  # TensorFlow's C++ noise is silenced by the entry point


def test_the_deployment_model_config_is_one_this_server_accepts() -> None:
    config = read_config_file(REPO / "deploy" / "tfserving" / "models.config")
    models = {c.name: c.model_version_policy.WhichOneof("policy_choice") for c in validate(config)}
    assert models == {"resnet50": "all", "minilm": "all"}
