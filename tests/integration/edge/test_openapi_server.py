"""The edge serves /openapi.json with the product's title and version, and the server URL the
integrator reached it on (its Host header and scheme), so generated clients call this edge."""

from __future__ import annotations

from importlib import metadata

import httpx


async def test_the_served_document_names_the_product_its_version_and_this_edge(
    http: httpx.AsyncClient, edge: str
) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "medmesh API"
    assert document["info"]["version"] == metadata.version("medmesh")
    url = httpx.URL(edge)
    assert document["host"] == f"{url.host}:{url.port}"
    assert document["schemes"] == [url.scheme]


async def test_the_served_document_follows_the_host_the_caller_used(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/openapi.json", headers={"host": "api.clinic.example"})
    assert response.json()["host"] == "api.clinic.example"
