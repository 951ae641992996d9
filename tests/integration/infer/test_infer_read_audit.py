"""Reading results is audited: GetResult, ListResults and GetResultImageUrl each leave one
`audit.events` row (caller, clinic, action, resource); a refused read leaves an
`access.denied` row under the caller's clinic and says nothing about the other clinic's data.
The service runs without a model server: results are stored the way the workers store them."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.rows import dict_row
from support.infer import CLINIC, OTHER_CLINIC, InferHarness, png_bytes

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import (
    GetResultImageUrlRequest,
    GetResultRequest,
    ListResultsRequest,
    TrafficArm,
)
from medmesh.objects import PROCESSED_IMAGES
from svc_infer import reads, store
from svc_infer.postprocess import ScoredLabel, TextFindings
from svc_infer.results import ResultDraft, image_analysis, text_analysis


@pytest.fixture
def infer_extra() -> dict[str, str]:
    """No model server: the workers do not start, results are inserted by the test."""
    return {}


async def _store(infer: InferHarness, draft: ResultDraft) -> str:
    async with await psycopg.AsyncConnection.connect(
        infer.database_url, row_factory=dict_row
    ) as conn:
        [stored] = await store.insert_results(conn, [draft])
    return f"studies/{draft.study_id}/results/{stored.result_id}"


async def stored_image_result(infer: InferHarness, clinic: str = CLINIC) -> tuple[str, bytes]:
    """An image result of a new study, stored like the workers store one, and its
    processed PNG in the processed bucket: (result name, PNG bytes)."""
    study_id, file_id = str(uuid.uuid4()), str(uuid.uuid4())
    key = f"{clinic}/{study_id}/{file_id}/resnet50-v2.png"
    picture = png_bytes(seed=5, size=224)
    await infer.objects.put_bytes(PROCESSED_IMAGES, key, picture, content_type="image/png")
    draft = ResultDraft(
        job_id=str(uuid.uuid4()),
        clinic_id=clinic,
        study_id=study_id,
        file_id=file_id,
        kind=AnalysisKind.IMAGE_CLASSIFICATION,
        model_name="resnet50",
        model_version=2,
        preprocessing_version="img-v1",
        arm=TrafficArm.STABLE,
        analysis=image_analysis([ScoredLabel("pneumonia", 0.7)]),
        processed_key=key,
    )
    return await _store(infer, draft), picture


async def stored_text_result(infer: InferHarness, clinic: str = CLINIC) -> str:
    """A note's result (no processed image) of a new study."""
    findings = TextFindings([ScoredLabel("pneumonia", 0.6)], ScoredLabel("urgent", 0.8), "Fever.")
    draft = ResultDraft(
        job_id=str(uuid.uuid4()),
        clinic_id=clinic,
        study_id=str(uuid.uuid4()),
        file_id=str(uuid.uuid4()),
        kind=AnalysisKind.TEXT_ANALYSIS,
        model_name="minilm",
        model_version=1,
        preprocessing_version="text-v1",
        arm=TrafficArm.STABLE,
        analysis=text_analysis(findings),
    )
    return await _store(infer, draft)


def _as(infer: InferHarness, clinic: str = CLINIC, *roles: str, user: str = "u-1") -> Any:
    return infer.tokens.metadata_for(
        user_id=user, clinic_id=clinic, roles=list(roles or ("clinician",))
    )


async def _audit_rows(infer: InferHarness, where: str, *params: Any) -> list[tuple[Any, ...]]:
    rows = await infer.query(
        "SELECT clinic_id, actor_user_id, actor_roles, action, resource, study_id, detail"
        f" FROM audit.events WHERE {where} ORDER BY id",
        params,
    )
    return [tuple(r.values()) for r in rows]


async def _written_audit_rows(
    infer: InferHarness, count: int, where: str, *params: Any
) -> list[tuple[Any, ...]]:
    """The rows of `_audit_rows` once at least `count` are there: `result.read` and
    `result.list` rows are committed by the background writer a few ms after the answer."""
    await infer.wait_for_rows(
        f"SELECT id FROM audit.events WHERE {where}", params, count=count, timeout_s=10
    )
    return await _audit_rows(infer, where, *params)


async def _rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await awaitable
    return failure.value


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _study_of(name: str) -> str:
    return name.split("/")[1]


async def test_each_get_result_leaves_one_read_row_from_the_database_and_from_the_cache(
    infer: InferHarness,
) -> None:
    name, _ = await stored_image_result(infer)

    for _ in range(2):  # the first read fills the cache, the second is served from it
        response = await infer.inference.get_result(
            GetResultRequest(name=name), metadata=_as(infer, CLINIC, "viewer", user="u-v")
        )
        assert response.result.name == name

    rows = await _written_audit_rows(infer, 2, "action <> 'result.store'")
    expected = (CLINIC, "u-v", ["viewer"], "result.read", name, _study_of(name), {})
    assert rows == [expected, expected]


async def test_list_results_leaves_one_list_row_with_the_number_returned(
    infer: InferHarness,
) -> None:
    name, _ = await stored_image_result(infer)
    parent = f"studies/{_study_of(name)}"

    response = await infer.inference.list_results(
        ListResultsRequest(parent=parent), metadata=_as(infer)
    )

    assert [r.name for r in response.results] == [name]
    assert await _written_audit_rows(infer, 1, "true") == [
        (CLINIC, "u-1", ["clinician"], "result.list", parent, _study_of(name), {"returned": 1})
    ]


async def test_the_image_url_serves_the_processed_png_and_is_audited_once(
    infer: InferHarness,
) -> None:
    name, picture = await stored_image_result(infer)

    response = await infer.inference.get_result_image_url(
        GetResultImageUrlRequest(name=name), metadata=_as(infer)
    )

    assert await asyncio.to_thread(_http_get, response.url) == picture
    assert response.content_type == "image/png"
    assert response.expire_time is not None
    assert await _audit_rows(infer, "true") == [
        (CLINIC, "u-1", ["clinician"], "result.image_url", name, _study_of(name), {})
    ]


async def test_a_note_result_has_no_image_url(infer: InferHarness) -> None:
    name = await stored_text_result(infer)

    error = await _rpc_error(
        infer.inference.get_result_image_url(
            GetResultImageUrlRequest(name=name), metadata=_as(infer)
        )
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await _audit_rows(infer, "true") == []


CrossCall = Callable[[InferHarness, str, Any], Awaitable[Any]]
CROSS_CLINIC_READS: dict[str, CrossCall] = {
    "GetResult": lambda i, n, m: i.inference.get_result(GetResultRequest(name=n), metadata=m),
    "GetResultImageUrl": lambda i, n, m: i.inference.get_result_image_url(
        GetResultImageUrlRequest(name=n), metadata=m
    ),
}


@pytest.mark.parametrize("rpc", sorted(CROSS_CLINIC_READS))
@pytest.mark.parametrize("cached", [False, True])
async def test_another_clinics_result_is_not_found_and_audited_under_the_callers_clinic(
    infer: InferHarness, rpc: str, cached: bool
) -> None:
    name, _ = await stored_image_result(infer)
    if cached:
        await infer.inference.get_result(GetResultRequest(name=name), metadata=_as(infer))
        await _written_audit_rows(infer, 1, "action = 'result.read'")
    before = await _audit_rows(infer, "clinic_id = %s", CLINIC)
    call = CROSS_CLINIC_READS[rpc]

    error = await _rpc_error(call(infer, name, _as(infer, OTHER_CLINIC, "admin", user="u-b")))
    missing = await _rpc_error(
        call(
            infer,
            f"studies/{uuid.uuid4()}/results/{uuid.uuid4()}",
            _as(infer, OTHER_CLINIC, "admin", user="u-b"),
        )
    )

    assert error.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    for leaked in (CLINIC, "pneumonia", "resnet50"):
        assert leaked not in (error.details() or "")
    denied = await _audit_rows(infer, "clinic_id = %s", OTHER_CLINIC)
    assert denied[0] == (
        OTHER_CLINIC,
        "u-b",
        ["admin"],
        "access.denied",
        name,
        None,
        {"rpc": rpc, "code": "NOT_FOUND"},
    )
    assert len(denied) == 2
    assert await _audit_rows(infer, "clinic_id = %s", CLINIC) == before


async def test_another_clinics_study_lists_no_results(infer: InferHarness) -> None:
    name, _ = await stored_image_result(infer)

    response = await infer.inference.list_results(
        ListResultsRequest(parent=f"studies/{_study_of(name)}"),
        metadata=_as(infer, OTHER_CLINIC, "admin"),
    )

    assert response.results == []
    assert [r[0] for r in await _written_audit_rows(infer, 1, "true")] == [OTHER_CLINIC]


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        (("admin",), True),
        (("clinician",), True),
        (("technician",), True),
        (("viewer",), True),
        (("service",), True),
        ((), False),  # an account with no role yet (not approved): nothing
    ],
)
async def test_the_image_url_follows_the_role_table_and_refusals_are_audited(
    infer: InferHarness, roles: tuple[str, ...], allowed: bool
) -> None:
    name, _ = await stored_image_result(infer)
    metadata = infer.tokens.metadata_for(user_id="u-r", clinic_id=CLINIC, roles=list(roles))
    call = infer.inference.get_result_image_url(
        GetResultImageUrlRequest(name=name), metadata=metadata
    )

    if allowed:
        assert (await call).url
        assert [r[3] for r in await _audit_rows(infer, "true")] == ["result.image_url"]
        return
    error = await _rpc_error(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await _audit_rows(infer, "true") == [
        (
            CLINIC,
            "u-r",
            [],
            "access.denied",
            name,
            None,
            {"rpc": "GetResultImageUrl", "code": "PERMISSION_DENIED"},
        )
    ]


def _percentile(sorted_ms: list[float], fraction: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * fraction))]


@pytest.mark.skipif(not os.environ.get("MEDMESH_MEASURE"), reason="a measurement, not a test")
async def test_measure_cached_get_result_latency_with_and_without_the_audit_row(
    infer: InferHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MEDMESH_MEASURE=<calls> [MEDMESH_MEASURE_OUT=<file>]: client-side latency of GetResult
    served from the cache (the path that pays for the audit INSERT), in interleaved blocks
    with the audit row and with it patched out, so both halves see the same machine load."""
    name, _ = await stored_image_result(infer)
    metadata = _as(infer)
    real_record = reads.ResultReader._record_read

    async def no_record(*_args: Any, **_kwargs: Any) -> None:
        return None

    inside: list[float] = []

    async def timed_record(*args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        await real_record(*args, **kwargs)
        inside.append((time.perf_counter() - t) * 1000)

    samples: dict[str, list[float]] = {"audited": [], "unaudited": []}
    for _ in range(20):
        await infer.inference.get_result(GetResultRequest(name=name), metadata=metadata)
    blocks = max(1, int(os.environ["MEDMESH_MEASURE"]) // 200)
    for block in range(blocks * 2):
        mode = "audited" if block % 2 == 0 else "unaudited"
        monkeypatch.setattr(
            reads.ResultReader,
            "_record_read",
            timed_record if mode == "audited" else no_record,
        )
        for _ in range(100):
            started = time.perf_counter()
            await infer.inference.get_result(GetResultRequest(name=name), metadata=metadata)
            samples[mode].append((time.perf_counter() - started) * 1000)
    lines = ""
    for mode, values in samples.items():
        values.sort()
        lines += (
            f"GetResult cached, {mode}: n={len(values)} p50={_percentile(values, 0.5):.3f} ms"
            f" p90={_percentile(values, 0.9):.3f} ms p99={_percentile(values, 0.99):.3f} ms"
            f" mean={sum(values) / len(values):.3f} ms\n"
        )
    inside.sort()
    lines += (
        f"  of which recording the audit row (queued for the background writer):"
        f" p50={_percentile(inside, 0.5):.3f}"
        f" ms p90={_percentile(inside, 0.9):.3f} ms\n"
    )
    out = os.environ.get("MEDMESH_MEASURE_OUT")
    if out:
        await asyncio.to_thread(_append, out, lines)
    rows = await infer.wait_for_rows(
        "SELECT id FROM audit.events WHERE action = 'result.read'",
        count=20 + len(samples["audited"]),
        timeout_s=30,
    )
    assert len(rows) == 20 + len(samples["audited"])


def _append(path: str, text: str) -> None:
    with open(path, "a") as out:
        out.write(text)
