"""The model registry's rules without a database: validation, sticky assignment by hash,
the split's tolerance, promotion and rollback."""

from __future__ import annotations

from collections import Counter

import pytest

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import ModelVersionState, TrafficArm
from medmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from svc_infer.registry import (
    Assignment,
    InputSpec,
    Model,
    ModelVersion,
    TrafficWeight,
    keep_or_reassign,
    model_id,
    pick_version,
    promote,
    rollback,
    validate_registration,
    validate_split,
)

SPEC = InputSpec(input_name="image", output_name="probabilities", shape=(224, 224, 3))


def version(number: int, state: ModelVersionState = ModelVersionState.REGISTERED) -> ModelVersion:
    return ModelVersion(
        model="resnet50",
        version=number,
        state=state,
        labels=("a", "b"),
        artifact_uri=f"s3://ml-models/resnet50/{number}/",
        input_spec=SPEC,
        preprocessing_version="img-opencv-v1",
    )


def model(
    stable: int = 1,
    previous: int = 0,
    split: tuple[TrafficWeight, ...] = (),
    versions: tuple[ModelVersion, ...] = (),
) -> Model:
    return Model(
        name="resnet50",
        kind=AnalysisKind.IMAGE_CLASSIFICATION,
        stable_version=stable,
        previous_stable_version=previous,
        traffic_split=split,
        versions=versions or (version(1, ModelVersionState.STABLE), version(2), version(3)),
    )


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("models/resnet50", True),
        ("models/mini-lm_2", True),
        ("resnet50", False),
        ("models/", False),
        ("models/A", False),
        ("studies/x", False),
    ],
)
def test_model_names_must_look_like_models_slash_id(name: str, ok: bool) -> None:
    if ok:
        assert model_id(name) == name.removeprefix("models/")
    else:
        with pytest.raises(InvalidArgument):
            model_id(name)


def test_a_valid_registration_returns_the_artifact_prefix() -> None:
    prefix = validate_registration(
        "resnet50",
        version=4,
        kind=AnalysisKind.IMAGE_CLASSIFICATION,
        artifact_uri="s3://ml-models/resnet50/4/",
        labels=["a"],
        input_spec=SPEC,
        preprocessing_version="img-opencv-v1",
        existing=model(),
    )
    assert prefix == "resnet50/4/"


def test_a_bad_registration_names_every_bad_field() -> None:
    with pytest.raises(InvalidArgument) as failure:
        validate_registration(
            "resnet50",
            version=0,
            kind=AnalysisKind.TEXT_ANALYSIS,
            artifact_uri="s3://other-bucket/resnet50/4/",
            labels=[],
            input_spec=InputSpec(),
            preprocessing_version="",
            existing=model(),
        )
    fields = sorted(v.field for v in failure.value.violations)
    assert fields == [
        "artifact_uri",
        "input_spec",
        "kind",
        "labels",
        "preprocessing_version",
        "version",
    ]


def test_a_70_30_split_over_400_studies_lands_within_tolerance() -> None:
    split = (TrafficWeight(1, 70), TrafficWeight(2, 30))
    routed = model(split=split)
    arms = Counter(pick_version(routed, f"study-{i}").version for i in range(400))
    # Binomial(400, 0.3): sd ≈ 9.2; 4 sd either side.
    assert 120 - 37 <= arms[2] <= 120 + 37
    assert arms[1] + arms[2] == 400


def test_the_same_study_always_gets_the_same_version_and_arm() -> None:
    routed = model(split=(TrafficWeight(1, 50), TrafficWeight(2, 50)))
    first = pick_version(routed, "study-x")
    assert all(pick_version(routed, "study-x") == first for _ in range(10))
    assert first.arm == (TrafficArm.STABLE if first.version == 1 else TrafficArm.CANARY)


def test_a_stored_assignment_survives_a_split_change_while_its_version_serves() -> None:
    after = model(split=(TrafficWeight(1, 10), TrafficWeight(2, 90)))
    kept = keep_or_reassign(after, "s", Assignment(1, TrafficArm.STABLE))
    assert kept == Assignment(1, TrafficArm.STABLE)


def test_a_stored_assignment_to_a_version_without_traffic_is_replaced() -> None:
    after = model(stable=1)
    assert keep_or_reassign(after, "s", Assignment(3, TrafficArm.CANARY)) == Assignment(
        1, TrafficArm.STABLE
    )


def test_without_stable_version_or_split_nothing_can_be_assigned() -> None:
    with pytest.raises(FailedPrecondition):
        pick_version(model(stable=0, versions=(version(1),)), "s")


@pytest.mark.parametrize(
    ("split", "bad_field"),
    [
        ((TrafficWeight(1, 70), TrafficWeight(2, 20)), "traffic_split"),
        ((TrafficWeight(1, 110), TrafficWeight(2, -10)), "traffic_split[0].weight"),
        ((TrafficWeight(1, 50), TrafficWeight(1, 50)), "traffic_split[1].version"),
        ((TrafficWeight(1, 50), TrafficWeight(9, 50)), "traffic_split[1].version"),
        ((), "traffic_split"),
    ],
)
def test_a_bad_split_is_invalid(split: tuple[TrafficWeight, ...], bad_field: str) -> None:
    with pytest.raises(InvalidArgument) as failure:
        validate_split(model(), split)
    assert bad_field in [v.field for v in failure.value.violations]


def test_a_split_makes_weighted_versions_canaries_and_demotes_former_ones() -> None:
    current = model(
        versions=(
            version(1, ModelVersionState.STABLE),
            version(2, ModelVersionState.CANARY),
            version(3),
        )
    )
    change = validate_split(current, (TrafficWeight(1, 70), TrafficWeight(3, 30)))
    assert change.states == {2: ModelVersionState.REGISTERED, 3: ModelVersionState.CANARY}
    assert change.stable_version == 1


def test_promotion_retires_the_old_stable_and_remembers_it_for_rollback() -> None:
    change = promote(model(split=(TrafficWeight(1, 70), TrafficWeight(2, 30))), 2)
    assert change.stable_version == 2
    assert change.previous_stable_version == 1
    assert change.traffic_split == ()
    assert change.states[2] == ModelVersionState.STABLE
    assert change.states[1] == ModelVersionState.RETIRED


def test_promoting_the_stable_version_again_changes_nothing() -> None:
    change = promote(model(stable=1, previous=0), 1)
    assert (change.stable_version, change.previous_stable_version, change.states) == (1, 0, {})


def test_promoting_an_unknown_version_is_not_found() -> None:
    with pytest.raises(NotFound):
        promote(model(), 42)


def test_rollback_restores_the_previous_stable_with_all_traffic() -> None:
    current = model(
        stable=2,
        previous=1,
        versions=(version(1, ModelVersionState.RETIRED), version(2, ModelVersionState.STABLE)),
    )
    change = rollback(current)
    assert change.stable_version == 1
    assert change.previous_stable_version == 0
    assert change.states == {1: ModelVersionState.STABLE, 2: ModelVersionState.RETIRED}
    rolled_back = Model(**{**current.__dict__, "stable_version": 1, "previous_stable_version": 0})
    assert pick_version(rolled_back, "any-new-study") == Assignment(1, TrafficArm.STABLE)


def test_rollback_without_a_previous_stable_version_fails() -> None:
    with pytest.raises(FailedPrecondition):
        rollback(model(stable=1, previous=0))
