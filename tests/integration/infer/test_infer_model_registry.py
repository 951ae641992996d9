"""The model registry against the real database, bucket and model server: registration, a
70/30 split over 400 studies, sticky arms, promotion and rollback for new jobs, and who may
change what."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support.infer import CLINIC, OTHER_CLINIC, InferHarness, png_bytes

from gen.medmesh.common.v1 import AnalysisKind, FileKind
from gen.medmesh.infer.v1 import (
    GetModelRequest,
    InputSpec,
    ListModelsRequest,
    ModelVersionState,
    PromoteModelVersionRequest,
    RegisterModelVersionRequest,
    RollbackModelRequest,
    SetTrafficSplitRequest,
    TrafficArm,
    TrafficWeight,
)
from medmesh.contract import snake_case
from medmesh.db import Database
from medmesh.objects import ML_MODELS
from svc_infer.models.artifacts import upload_model_version
from svc_infer.preprocess import IMAGE_PREPROCESSING_VERSION
from svc_infer.routing import Registry

RESNET = "models/resnet50"


async def bootstrapped(infer: InferHarness) -> None:
    """Run one image job, so the workers register what the model server serves."""
    job = await infer.publish_job(png_bytes(), FileKind.IMAGE_PNG)
    await infer.wait_for_result(job.file_id)


async def result_of_new_study(infer: InferHarness, study_id: str | None = None) -> dict:
    job = await infer.publish_job(png_bytes(), FileKind.IMAGE_PNG, study_id=study_id)
    return await infer.wait_for_result(job.file_id)


async def test_the_first_job_registers_the_served_versions_with_the_newest_stable(
    infer: InferHarness,
) -> None:
    await bootstrapped(infer)
    listed = await infer.registry.list_models(ListModelsRequest(), metadata=infer.metadata())
    assert [m.name for m in listed.models] == ["models/resnet50"]
    model = listed.models[0]
    assert model.kind == AnalysisKind.IMAGE_CLASSIFICATION
    assert [(v.version, v.state) for v in model.versions] == [
        (1, ModelVersionState.REGISTERED),
        (2, ModelVersionState.STABLE),
    ]
    assert model.stable_version == 2
    spec = model.versions[0].input_spec
    assert (spec.input_name, spec.output_name, list(spec.shape)) == (
        "image",
        "probabilities",
        [224, 224, 3],
    )
    assert model.versions[0].preprocessing_version == IMAGE_PREPROCESSING_VERSION


async def test_a_70_30_split_over_400_studies_lands_within_tolerance_each_study_on_one_arm(
    infer: InferHarness,
) -> None:
    await bootstrapped(infer)
    split = await infer.registry.set_traffic_split(
        SetTrafficSplitRequest(
            name=RESNET,
            traffic_split=[
                TrafficWeight(version=2, weight=70),
                TrafficWeight(version=1, weight=30),
            ],
        ),
        metadata=infer.admin(),
    )
    states = {v.version: v.state for v in split.model.versions}
    assert states == {1: ModelVersionState.CANARY, 2: ModelVersionState.STABLE}

    async with Database(infer.database_url) as database:
        registry = Registry(database, infer.objects)
        studies = [(f"split-{i}", "clinic-a") for i in range(400)]
        _, first = await registry.route("resnet50", AnalysisKind.IMAGE_CLASSIFICATION, studies)
        _, second = await registry.route("resnet50", AnalysisKind.IMAGE_CLASSIFICATION, studies)
        arms = Counter(a.version for a in first.values())
        # Binomial(400, 0.3): standard deviation 9.2; four of them either side.
        assert 120 - 37 <= arms[1] <= 120 + 37
        assert second == first  # a study's second file lands on the same arm
        assert {a.arm for a in first.values() if a.version == 1} == {TrafficArm.CANARY}

        await infer.registry.set_traffic_split(
            SetTrafficSplitRequest(
                name=RESNET,
                traffic_split=[
                    TrafficWeight(version=2, weight=10),
                    TrafficWeight(version=1, weight=90),
                ],
            ),
            metadata=infer.admin(),
        )
        _, after_change = await registry.route(
            "resnet50", AnalysisKind.IMAGE_CLASSIFICATION, studies
        )
        assert after_change == first  # assigned studies keep their version

    # And through the workers: both files of a study are served by the same version.
    study_id = str(uuid.uuid4())
    rows = [await result_of_new_study(infer, study_id) for _ in range(2)]
    assert rows[0]["model_version"] == rows[1]["model_version"]
    assert rows[0]["arm"] == rows[1]["arm"]
    assigned = await infer.query(
        "SELECT version FROM infer.study_assignments WHERE study_id = %s", (study_id,)
    )
    assert assigned == [{"version": rows[0]["model_version"]}]


async def test_rollback_restores_the_previous_version_for_new_jobs(infer: InferHarness) -> None:
    await bootstrapped(infer)
    promoted = await infer.registry.promote_model_version(
        PromoteModelVersionRequest(name=RESNET, version=1), metadata=infer.admin()
    )
    assert (promoted.model.stable_version, promoted.model.previous_stable_version) == (1, 2)
    on_one = await result_of_new_study(infer)
    assert (on_one["model_version"], on_one["arm"]) == (1, TrafficArm.STABLE)

    rolled = await infer.registry.rollback_model(
        RollbackModelRequest(name=RESNET), metadata=infer.admin()
    )
    assert (rolled.model.stable_version, rolled.model.previous_stable_version) == (2, 0)
    assert {v.version: v.state for v in rolled.model.versions}[1] == ModelVersionState.RETIRED
    fresh = await result_of_new_study(infer)
    assert (fresh["model_version"], fresh["arm"]) == (2, TrafficArm.STABLE)
    # A new file of the study that was on the rolled-back version moves too.
    moved = await result_of_new_study(infer, on_one["study_id"])
    assert moved["model_version"] == 2

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await infer.registry.rollback_model(
            RollbackModelRequest(name=RESNET), metadata=infer.admin()
        )
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_get_and_list_models_count_each_versions_results_per_arm_in_the_callers_clinic_only(
    infer: InferHarness,
) -> None:
    await bootstrapped(infer)  # v2, the stable arm
    await result_of_new_study(infer)  # v2 again
    other = await infer.publish_job(png_bytes(1), FileKind.IMAGE_PNG, clinic_id=OTHER_CLINIC)
    await infer.wait_for_result(other.file_id)  # v2, another clinic: not ours to count
    await infer.registry.set_traffic_split(
        SetTrafficSplitRequest(
            name=RESNET,
            traffic_split=[
                TrafficWeight(version=2, weight=0),
                TrafficWeight(version=1, weight=100),
            ],
        ),
        metadata=infer.admin(),
    )
    canary = await result_of_new_study(infer)
    assert (canary["model_version"], canary["arm"]) == (1, TrafficArm.CANARY)

    # version: (all, stable arm, canary arm), as each clinic sees it
    expected = {CLINIC: {1: (1, 0, 1), 2: (2, 2, 0)}, OTHER_CLINIC: {1: (0, 0, 0), 2: (1, 1, 0)}}
    for clinic, clinic_counts in expected.items():
        metadata = infer.metadata(clinic_id=clinic)
        got = await infer.registry.get_model(GetModelRequest(name=RESNET), metadata=metadata)
        listed = await infer.registry.list_models(ListModelsRequest(), metadata=metadata)
        for model in (got.model, listed.models[0]):
            counts = {
                v.version: (v.result_count, v.stable_result_count, v.canary_result_count)
                for v in model.versions
            }
            assert counts == clinic_counts, clinic


async def test_registering_a_version_needs_its_saved_model_in_the_bucket(
    infer: InferHarness, model_base_dir: Path, tmp_path: Path
) -> None:
    spec = InputSpec(
        input_name="image",
        output_name="probabilities",
        shape=[224, 224, 3],
        dtype="float32",
        mean=[0.406, 0.458, 0.485],
        std=[1 / 255] * 3,
        color_order="BGR",
    )
    request = RegisterModelVersionRequest(
        parent="models/chest-xray",
        kind=AnalysisKind.IMAGE_CLASSIFICATION,
        version=1,
        artifact_uri=f"s3://{ML_MODELS}/chest-xray/1/",
        labels=["normal", "abnormal"],
        input_spec=spec,
        preprocessing_version=IMAGE_PREPROCESSING_VERSION,
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await infer.registry.register_model_version(request, metadata=infer.admin())
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A real SavedModel directory uploaded the way `medmesh models` does.
    (tmp_path / "chest-xray").mkdir()
    (tmp_path / "chest-xray" / "1").symlink_to(model_base_dir / "resnet50" / "1")
    await upload_model_version(infer.objects, tmp_path, "chest-xray", 1)
    registered = await infer.registry.register_model_version(request, metadata=infer.admin())
    assert registered.model_version.state == ModelVersionState.REGISTERED
    assert registered.model_version.name == "models/chest-xray/versions/1"

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await infer.registry.register_model_version(request, metadata=infer.admin())
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    model = await infer.registry.get_model(
        GetModelRequest(name="models/chest-xray"), metadata=infer.metadata(roles=("viewer",))
    )
    assert model.model.stable_version == 0  # registered versions get no traffic by themselves


REGISTRY_CHANGES = {
    "RegisterModelVersion": lambda: RegisterModelVersionRequest(parent="models/nothing-here"),
    "SetTrafficSplit": lambda: SetTrafficSplitRequest(name="models/nothing-here"),
    "PromoteModelVersion": lambda: PromoteModelVersionRequest(
        name="models/nothing-here", version=1
    ),
    "RollbackModel": lambda: RollbackModelRequest(name="models/nothing-here"),
}


@pytest.mark.parametrize(
    ("clinic", "role", "allowed"),
    [
        (CLINIC, "admin", True),  # clinic-a is the operator clinic (conftest)
        (CLINIC, "service", True),  # the operator's model build pipeline
        (CLINIC, "clinician", False),
        (CLINIC, "technician", False),
        (CLINIC, "viewer", False),
        (OTHER_CLINIC, "admin", False),  # a clinic's admin cannot change what serves all
        (OTHER_CLINIC, "service", False),
    ],
)
@pytest.mark.parametrize("rpc", list(REGISTRY_CHANGES))
async def test_only_the_operator_clinics_admins_and_services_may_change_the_registry(
    infer: InferHarness, rpc: str, clinic: str, role: str, allowed: bool
) -> None:
    call = getattr(infer.registry, snake_case(rpc))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call(
            REGISTRY_CHANGES[rpc](), metadata=infer.metadata(clinic_id=clinic, roles=(role,))
        )
    if allowed:  # reaches the registry, which finds nothing to change
        assert failure.value.code() in {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
    else:
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_registry_change_is_audited_under_the_operator_clinic(infer: InferHarness) -> None:
    await bootstrapped(infer)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await infer.registry.promote_model_version(
            PromoteModelVersionRequest(name=RESNET, version=1), metadata=infer.admin(OTHER_CLINIC)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await infer.registry.promote_model_version(
        PromoteModelVersionRequest(name=RESNET, version=1),
        metadata=infer.metadata(clinic_id=CLINIC, roles=("admin",)),
    )
    rows = await infer.query(
        "SELECT clinic_id, action FROM audit.events WHERE resource = %s AND clinic_id <> %s "
        "ORDER BY id",
        (RESNET, "system"),
    )
    # The refused attempt is on record in the caller's clinic; the change in the operator's.
    assert [(r["clinic_id"], r["action"]) for r in rows] == [
        (OTHER_CLINIC, "access.denied"),
        (CLINIC, "model.promote"),
    ]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SetTrafficSplitRequest(name="resnet50"), "name"),
        (
            SetTrafficSplitRequest(
                name=RESNET, traffic_split=[TrafficWeight(version=2, weight=60)]
            ),
            "traffic_split",
        ),
    ],
)
async def test_a_bad_split_request_is_invalid_argument(
    infer: InferHarness, request_: SetTrafficSplitRequest, field: str
) -> None:
    await bootstrapped(infer)
    call = infer.registry.set_traffic_split(request_, metadata=infer.admin())
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert field in [v.field for v in bad_request.field_violations]
