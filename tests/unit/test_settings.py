"""Settings: read once from the environment; service configs parsed by field type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from medmesh.settings import Settings, SettingsError, config_from_env


@dataclass(frozen=True)
class ExampleConfig:
    """A service config with one field of each supported type."""

    name: str = "x"
    count: int = 1
    ratio: float = 0.5
    enabled: bool = False
    delays_s: tuple[float, ...] = (1.0,)
    tags: tuple[str, ...] = ()


def test_service_config_fields_are_parsed_by_their_declared_types() -> None:
    environ = {
        "MEDMESH_EX_NAME": "y",
        "MEDMESH_EX_COUNT": "3",
        "MEDMESH_EX_RATIO": "0.25",
        "MEDMESH_EX_ENABLED": "true",
        "MEDMESH_EX_DELAYS_S": "0.1, 0.2",
        "MEDMESH_EX_TAGS": "a,b",
        "MEDMESH_OTHER_COUNT": "9",
    }
    assert config_from_env(ExampleConfig, environ, "MEDMESH_EX_") == ExampleConfig(
        name="y", count=3, ratio=0.25, enabled=True, delays_s=(0.1, 0.2), tags=("a", "b")
    )


def test_unset_or_empty_variables_keep_the_defaults() -> None:
    assert config_from_env(ExampleConfig, {"MEDMESH_EX_COUNT": " "}, "MEDMESH_EX_") == (
        ExampleConfig()
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MEDMESH_EX_COUNT", "three"),
        ("MEDMESH_EX_ENABLED", "maybe"),
        ("MEDMESH_EX_DELAYS_S", "1,x"),
    ],
)
def test_a_value_that_does_not_parse_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        config_from_env(ExampleConfig, {variable: value}, "MEDMESH_EX_")


def test_a_missing_dependency_url_fails_naming_its_variable() -> None:
    settings = Settings.from_env({}, service="ingest")
    with pytest.raises(SettingsError, match="MEDMESH_NATS_URL"):
        settings.require("nats_url")


def test_service_specific_variables_reach_the_service_and_only_its_own() -> None:
    settings = Settings.from_env(
        {"MEDMESH_INGEST_PART_SIZE_BYTES": "1", "MEDMESH_AUTH_X": "2"}, service="ingest"
    )
    assert settings.extra == {"MEDMESH_INGEST_PART_SIZE_BYTES": "1"}
