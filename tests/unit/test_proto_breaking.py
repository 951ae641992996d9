"""`buf breaking` against the last release (`./dev check` runs `python -m medmesh.codegen
--breaking`): a copy of the contract with a change that breaks clients of the release is
reported, an unchanged copy passes, and the newest release image is the one compared with."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from medmesh import codegen

REPO = codegen.REPO_ROOT
LAST_RELEASE = codegen.releases()[-1]


def _copy_of_the_contract(root: Path) -> Path:
    shutil.copytree(REPO / "proto" / "medmesh", root / "proto" / "medmesh")
    shutil.copyfile(REPO / "buf.yaml", root / "buf.yaml")
    return root


def _delete_first(path: Path, pattern: str) -> str:
    text = path.read_text()
    match = re.search(pattern, text, re.M)
    assert match, pattern
    path.write_text(text[: match.start()] + text[match.end() :])
    return match.group(0)


def test_the_committed_release_images_are_named_by_version() -> None:
    assert LAST_RELEASE.parent == REPO / "proto" / "releases"
    assert re.fullmatch(r"v\d+\.\d+\.\d+\.binpb", LAST_RELEASE.name)


def test_an_unchanged_contract_is_not_breaking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_of_the_contract(tmp_path)
    assert codegen.breaking(root, LAST_RELEASE) == 0
    assert f"no breaking changes against {LAST_RELEASE.stem}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("file", "pattern", "reported"),
    [
        (
            "common/v1/common.proto",
            r"^  string label = 1;\n",
            r'Previously present field "1" with name "label" on message "LabelScore" was deleted',
        ),
        (
            "auth/v1/auth_service.proto",
            r"(?s)^  rpc GetJwks\(.*?\n  \}\n",
            r'Previously present RPC "GetJwks" on service "AuthService" was deleted',
        ),
    ],
    ids=["a deleted field", "a deleted rpc"],
)
def test_a_breaking_change_to_the_contract_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str, pattern: str, reported: str
) -> None:
    root = _copy_of_the_contract(tmp_path)
    _delete_first(root / "proto" / "medmesh" / file, pattern)
    assert codegen.breaking(root, LAST_RELEASE) == 1
    assert re.search(reported, capsys.readouterr().err)


def test_the_newest_release_is_compared_with(tmp_path: Path) -> None:
    for name in ("v0.9.0.binpb", "v0.10.0.binpb", "v0.2.1.binpb", "notes.binpb", "v1.binpb"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in codegen.releases(tmp_path)] == [
        "v0.2.1.binpb",
        "v0.9.0.binpb",
        "v0.10.0.binpb",
    ]


@pytest.mark.parametrize("version", ["0.1.0", "v1", "v1.2.3-rc1", "../v1.2.3"])
def test_a_release_needs_a_plain_version_name(tmp_path: Path, version: str) -> None:
    with pytest.raises(codegen.CodegenError, match="vMAJOR.MINOR.PATCH"):
        codegen.build_release(version, tmp_path)


def test_a_release_image_is_never_rebuilt() -> None:
    with pytest.raises(codegen.CodegenError, match="never rebuilt"):
        codegen.build_release(LAST_RELEASE.stem)
