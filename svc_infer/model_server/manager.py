"""The servables: which SavedModel versions are loaded, resolving a ModelSpec to one of them.

It follows TF Serving's ServerCore/AspiredVersionsManager: the config names models and their
base paths; the version directories found on disk, filtered by each model's version policy,
are the aspired versions; a reconcile (at start, on every file-system poll, on a config
reload) loads what is aspired and missing and unloads what is no longer aspired. Version
labels may only point at versions that are loaded. Errors carry TF Serving's status codes and
messages, so a client cannot tell the two servers apart by their failures.

Loading runs in a worker thread; the maps are replaced, never mutated in place, so a Predict
in flight keeps the version it resolved.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from svc_infer.model_server import config as server_config

_log = structlog.get_logger("svc_infer.model_server")

State = get_model_status_pb2.ModelVersionStatus.State
SERVE_TAG = "serve"


class ServingError(Exception):
    """A request the server refuses, with the gRPC status code TF Serving would use."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Servable:
    """One loaded model version."""

    name: str
    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    signatures: dict[str, Any]
    loaded: Any = field(repr=False)


@dataclass(frozen=True)
class VersionState:
    """What GetModelStatus reports for a version that is not (or no longer) loaded."""

    state: int
    error_code: int = 0
    error_message: str = ""


def _read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the `serve` meta graph, as stored (what GetModelMetadata returns)."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path}: no meta graph tagged {SERVE_TAG!r}")


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Load one SavedModel version (blocking; call it in a thread)."""
    signature_defs = _read_signature_defs(path)
    loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    return Servable(name, version, path, signature_defs, dict(loaded.signatures), loaded)


def model_spec_of(request: Any) -> model_pb2.ModelSpec:
    """The request's ModelSpec; INVALID_ARGUMENT "Missing ModelSpec" when it has none."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    return request.model_spec


def servable_request_text(name: str, version: int | None) -> str:
    """TF Serving's ServableRequest::DebugString: `Specific(name, 7)` or `Latest(name)`."""
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


class ServableManager:
    """Loaded versions per model, version labels, and the states GetModelStatus reports."""

    def __init__(self, config: server_config.ModelServerConfig) -> None:
        server_config.validate(config)
        self._config = config
        self._servables: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._ended: dict[str, dict[int, VersionState]] = {}
        self._reconcile_lock = asyncio.Lock()

    @property
    def config(self) -> server_config.ModelServerConfig:
        """The configuration in force."""
        return self._config

    def available(self) -> dict[str, list[int]]:
        """Model name → loaded versions (ascending): for logs and the ready file."""
        return {name: sorted(versions) for name, versions in self._servables.items()}

    async def reload(self, config: server_config.ModelServerConfig) -> None:
        """Switch to a new configuration (HandleReloadConfigRequest) and reconcile."""
        server_config.validate(config)
        async with self._reconcile_lock:
            previous = self._config
            self._config = config
            try:
                await self._reconcile_locked()
            except ServingError:
                self._config = previous
                await self._reconcile_locked()
                raise

    async def reconcile(self) -> None:
        """Load aspired versions, unload the others, apply labels (a file-system poll)."""
        async with self._reconcile_lock:
            await self._reconcile_locked()

    async def _reconcile_locked(self) -> None:
        configs = {c.name: c for c in self._config.model_config_list.config}
        servables = {name: dict(v) for name, v in self._servables.items() if name in configs}
        for name in set(self._servables) - set(configs):
            self._end_versions(name, self._servables[name])
        for name, config in configs.items():
            on_disk = server_config.versions_on_disk(Path(config.base_path))
            aspired = server_config.aspired_versions(config, on_disk)
            current = servables.setdefault(name, {})
            for version in sorted(aspired - set(current)):
                if self._ended.get(name, {}).get(version, VersionState(0)).error_code:
                    continue  # failed before: TF Serving does not retry a failed version either
                path = Path(config.base_path) / str(version)
                try:
                    current[version] = await asyncio.to_thread(load_servable, name, version, path)
                except Exception as exc:  # noqa: BLE001 - any load failure is a version state
                    _log.warning(
                        "model version failed to load", model=name, version=version, error=str(exc)
                    )
                    self._ended.setdefault(name, {})[version] = VersionState(
                        State.END, grpc.StatusCode.UNKNOWN.value[0], str(exc)
                    )
                else:
                    self._ended.get(name, {}).pop(version, None)
                    _log.info("model version loaded", model=name, version=version)
            stale = {v: s for v, s in current.items() if v not in aspired}
            self._end_versions(name, stale)
            for version in stale:
                del current[version]
        self._servables = {name: versions for name, versions in servables.items() if versions}
        self._labels = self._labels_for(configs)

    def _end_versions(self, name: str, versions: dict[int, Servable]) -> None:
        for version in versions:
            self._ended.setdefault(name, {})[version] = VersionState(State.END)
            _log.info("model version unloaded", model=name, version=version)

    def _labels_for(
        self, configs: dict[str, server_config.ModelConfig]
    ) -> dict[str, dict[str, int]]:
        labels: dict[str, dict[str, int]] = {}
        for name, config in configs.items():
            for label, version in config.version_labels.items():
                if version not in self._servables_of(name):
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {name}, "
                        "which is not currently available for inference",
                    )
                labels.setdefault(name, {})[label] = version
        return labels

    def _servables_of(self, name: str) -> dict[int, Servable]:
        return self._servables.get(name, {})

    def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable a ModelSpec asks for (ServerCore::GetServableHandle)."""
        if not spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        version = self.requested_version(spec)
        versions = self._servables_of(spec.name)
        servable = (
            versions.get(version)
            if version is not None
            else (versions[max(versions)] if versions else None)
        )
        if servable is None:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: {servable_request_text(spec.name, version)}",
            )
        return servable

    def requested_version(self, spec: model_pb2.ModelSpec) -> int | None:
        """The explicit version or the labelled one; None means the latest."""
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return spec.version.value
        if choice == "version_label":
            version = self._labels.get(spec.name, {}).get(spec.version_label)
            if version is None:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {spec.version_label}",
                )
            return version
        return None

    def status(self, spec: model_pb2.ModelSpec) -> list[tuple[int, VersionState]]:
        """(version, state) pairs, newest first (GetModelStatusImpl)."""
        known: dict[int, VersionState] = dict(self._ended.get(spec.name, {}))
        known.update({v: VersionState(State.AVAILABLE) for v in self._servables_of(spec.name)})
        version = self.requested_version(spec)
        if version is not None:
            if version not in known:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {spec.name}",
                )
            return [(version, known[version])]
        if not known:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        return sorted(known.items(), reverse=True)
