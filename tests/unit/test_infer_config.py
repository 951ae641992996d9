"""svc_infer's MEDMESH_INFER_* settings."""

from __future__ import annotations

import pytest

from medmesh.settings import SettingsError
from svc_infer.config import InferConfig


def test_unset_variables_keep_the_defaults() -> None:
    config = InferConfig.from_extra({})
    assert (config.batch_size, config.retry_backoff_s, config.result_ttl_s) == (
        8,
        (30.0, 120.0),
        3600,
    )


def test_variables_are_parsed_by_the_type_of_their_field() -> None:
    config = InferConfig.from_extra(
        {
            "MEDMESH_INFER_TF_SERVING_ADDR": "tfs:8500",
            "MEDMESH_INFER_BATCH_SIZE": "16",
            "MEDMESH_INFER_BATCH_WAIT_MS": "2.5",
            "MEDMESH_INFER_RETRY_BACKOFF_S": "0.2, 0.4",
        }
    )
    assert config.tf_serving_addr == "tfs:8500"
    assert config.batch_size == 16
    assert config.batch_wait_ms == 2.5
    assert config.retry_backoff_s == (0.2, 0.4)


@pytest.mark.parametrize(
    "extra",
    [
        {"MEDMESH_INFER_BATCH_SIZE": "many"},
        {"MEDMESH_INFER_BATCH_SIZE": "0"},
        {"MEDMESH_INFER_RETRY_BACKOFF_S": "-1"},
        {"MEDMESH_INFER_RESULT_TTL_S": "7200"},
    ],
)
def test_bad_values_fail_at_start_up(extra: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        InferConfig.from_extra(extra)
