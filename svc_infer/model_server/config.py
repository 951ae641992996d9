"""Which models the server serves: TF Serving's own `ModelServerConfig`.

The configuration is the `tensorflow.serving.ModelServerConfig` message of
tensorflow-serving-api, in the same text format as TF Serving's `--model_config_file`:

    model_config_list {
      config {
        name: "resnet50"  base_path: "/models/resnet50"  model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

so one file configures both servers. `--model-base DIR` is the shorthand that serves every
sub-directory of DIR as a model, all with one version policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

TENSORFLOW_PLATFORM = "tensorflow"


class ConfigError(ValueError):
    """The configuration cannot be served; the message is TF Serving's where one exists."""


def parse_version_policy(text: str, config: ModelConfig) -> None:
    """Set `config.model_version_policy` from `latest`, `latest:N`, `all` or `specific:1,2`."""
    kind, _, argument = text.partition(":")
    policy = config.model_version_policy
    if kind == "latest":
        policy.latest.num_versions = int(argument or 1)
    elif kind == "all":
        policy.all.SetInParent()
    elif kind == "specific" and argument:
        policy.specific.versions.extend(int(v) for v in argument.split(","))
    else:
        raise ConfigError(f"version policy {text!r}: use latest[:N], all or specific:V1,V2")


def config_for_base_dir(
    base_dir: Path,
    *,
    version_policy: str = "latest",
    labels: Mapping[str, Mapping[str, int]] | None = None,
) -> ModelServerConfig:
    """One model per sub-directory of `base_dir` (hidden ones skipped), sorted by name."""
    if not base_dir.is_dir():
        raise ConfigError(f"model base {base_dir} is not a directory")
    server_config = ModelServerConfig()
    names = sorted(p.name for p in base_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        config = server_config.model_config_list.config.add(
            name=name, base_path=str(base_dir.resolve() / name), model_platform=TENSORFLOW_PLATFORM
        )
        parse_version_policy(version_policy, config)
        for label, version in (labels or {}).get(name, {}).items():
            config.version_labels[label] = version
    unknown = set(labels or {}) - set(names)
    if unknown:
        raise ConfigError(f"labels for models that are not under {base_dir}: {sorted(unknown)}")
    return server_config


def read_config_file(path: Path) -> ModelServerConfig:
    """Parse a TF Serving `--model_config_file` (protobuf text format)."""
    try:
        return text_format.Parse(path.read_text(), ModelServerConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def validate(server_config: ModelServerConfig) -> list[ModelConfig]:
    """The model configs, checked as TF Serving checks them."""
    if server_config.WhichOneof("config") != "model_config_list":
        raise ConfigError(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    configs = list(server_config.model_config_list.config)
    seen: set[str] = set()
    for config in configs:
        if config.model_platform != TENSORFLOW_PLATFORM:
            if not config.model_platform:
                raise ConfigError(
                    "Illegal setting neither model_type(deprecated) nor model_platform."
                )
            raise ConfigError(f"Model platform {config.model_platform} not supported")
        if not config.name or not config.base_path:
            raise ConfigError("every model config needs a name and a base_path")
        if config.name in seen:
            raise ConfigError(f"Illegal to list model {config.name} multiple times in config list")
        seen.add(config.name)
    return configs


def aspired_versions(config: ModelConfig, on_disk: Iterable[int]) -> set[int]:
    """The versions the policy wants loaded, among those found on disk (TF Serving's rule:
    `latest` N by number, default 1; `all`; `specific` list)."""
    versions = sorted(set(on_disk), reverse=True)
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(versions)
    if choice == "specific":
        return set(versions) & set(policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" else 1
    return set(versions[: max(count, 1)])


def versions_on_disk(base_path: Path) -> list[int]:
    """Children named by a non-negative integer: TF Serving's version directories."""
    if not base_path.is_dir():
        return []
    return sorted(int(p.name) for p in base_path.iterdir() if p.is_dir() and p.name.isdigit())
