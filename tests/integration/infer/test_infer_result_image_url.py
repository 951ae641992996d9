"""GetResultImageUrl against the real workers: the URL of a freshly analysed PNG serves the
224x224 picture the worker stored in the processed bucket."""

from __future__ import annotations

import asyncio
import urllib.request

import cv2
import numpy as np
from support.infer import InferHarness, png_bytes

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.infer.v1 import GetResultImageUrlRequest
from medmesh.objects import PROCESSED_IMAGES


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


async def test_the_image_url_of_a_worker_result_serves_the_processed_picture(
    infer: InferHarness,
) -> None:
    job = await infer.publish_job(png_bytes(3), FileKind.IMAGE_PNG)
    row = await infer.wait_for_result(job.file_id)
    name = f"studies/{job.study_id}/results/{row['result_id']}"

    response = await infer.inference.get_result_image_url(
        GetResultImageUrlRequest(name=name), metadata=infer.metadata(roles=("viewer",))
    )

    served = await asyncio.to_thread(_http_get, response.url)
    assert served == await infer.objects.get_bytes(PROCESSED_IMAGES, row["processed_key"])
    picture = cv2.imdecode(np.frombuffer(served, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (224, 224, 3)
    audit = await infer.query(
        "SELECT action, resource FROM audit.events WHERE action = 'result.image_url'"
    )
    assert audit == [{"action": "result.image_url", "resource": name}]
