"""Key-encryption keys (medmesh.keyring): no published default, and `medmesh up` keeps one
per data directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from medmesh import keyring
from medmesh.devstack import local_secrets
from medmesh.keyring import SecretBox, require_key_encryption_keys
from medmesh.settings import Settings, SettingsError
from svc_auth.config import AuthConfig

KEK_VARIABLES = ("MEDMESH_AUTH_KEY_ENCRYPTION_KEY", "MEDMESH_REPORT_KEY_ENCRYPTION_KEY")


def test_the_keyring_publishes_no_default_key() -> None:
    assert not [name for name in vars(keyring) if "DEV" in name.upper()]


def test_a_secret_box_without_a_key_refuses_to_exist_and_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="MEDMESH_REPORT_KEY_ENCRYPTION_KEY is not set"):
        SecretBox((), variable="MEDMESH_REPORT_KEY_ENCRYPTION_KEY")


def test_a_bad_key_is_refused_with_how_to_make_a_good_one() -> None:
    with pytest.raises(SettingsError, match="Fernet.generate_key"):
        require_key_encryption_keys("MEDMESH_AUTH_KEY_ENCRYPTION_KEY", ["not-a-key"])


def test_a_sealed_secret_opens_with_an_older_key_kept_after_rotation() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = SecretBox([old]).seal("bearer-token")

    assert SecretBox([new, old]).open(sealed) == "bearer-token"


def test_svc_auth_settings_without_a_key_encryption_key_are_refused() -> None:
    settings = Settings.from_env({}, service="auth")

    with pytest.raises(SettingsError, match="MEDMESH_AUTH_KEY_ENCRYPTION_KEY is not set"):
        AuthConfig.from_settings(settings)


def test_medmesh_up_generates_key_encryption_keys_once_per_data_dir_and_keeps_them(
    tmp_path: Path,
) -> None:
    first: dict[str, str] = {}
    again: dict[str, str] = {}
    other: dict[str, str] = {}
    local_secrets(first, tmp_path / "a")
    local_secrets(again, tmp_path / "a")
    local_secrets(other, tmp_path / "b")

    for variable in KEK_VARIABLES:
        require_key_encryption_keys(variable, [first[variable]])
        assert again[variable] == first[variable]
        assert other[variable] != first[variable]
    assert first[KEK_VARIABLES[0]] != first[KEK_VARIABLES[1]]
    secrets = list((tmp_path / "a" / "secrets").iterdir())
    assert secrets
    assert all(p.stat().st_mode & 0o077 == 0 for p in secrets)


def test_a_key_given_to_medmesh_up_is_passed_through_untouched(tmp_path: Path) -> None:
    mine = Fernet.generate_key().decode()
    env = {"MEDMESH_AUTH_KEY_ENCRYPTION_KEY": mine}

    local_secrets(env, tmp_path)

    assert env["MEDMESH_AUTH_KEY_ENCRYPTION_KEY"] == mine
