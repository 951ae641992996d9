"""Post-processing of protoc-gen-swagger's output (`python -m medmesh.codegen` runs it).

Debian's protoc-gen-swagger 1.6.4 copies a google.api.http template with a multi-segment
variable verbatim into the path (`/v1/{name=studies/*}`) while naming the parameter `name`,
which is not valid Swagger 2.0 (a path parameter must appear as `{name}`), and a client cannot
put `studies/123` in one path segment anyway: the edge and Envoy match segment by segment. So
each such variable is spelled out as its literal segments and one parameter per wildcard,
named after the collection segment before it: `/v1/studies/{studies}/files/{files}`.

The generator titles the merged document after its first file (`medmesh/common/v1/common.proto`,
version "version not set"), so `info` is replaced by the product's: its title, the package
summary and version from the installed package metadata (pyproject.toml). The server URL is the
one place that depends on where the document is served: the committed file has no `host`
(Swagger 2.0: the host serving the document), and the edge fills in `host` and `schemes` from
the request it answers (`with_server`).
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

_VARIABLE = re.compile(r"\{([^}=]+)=([^}]+)\}")
PRODUCT_TITLE = "medmesh API"
DISTRIBUTION = "medmesh"
# host[:port] as Swagger 2.0's `host` allows it (a name or an IPv4/IPv6 literal, no path).
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_SCHEMES = frozenset({"http", "https"})


class OpenApiError(ValueError):
    """The document cannot be rewritten (a template shape this module does not handle)."""


def _spell_out(path: str) -> tuple[str, dict[str, list[str]]]:
    """The path with every `{field=pattern}` spelled out, and field → its new parameter names."""
    names: dict[str, list[str]] = {}

    def replace(match: re.Match[str]) -> str:
        field, pattern = match.group(1), match.group(2)
        segments = pattern.split("/")
        out: list[str] = []
        for index, segment in enumerate(segments):
            if segment == "**" or (segment == "*" and index == 0):
                raise OpenApiError(f"cannot spell out {match.group(0)} in {path}")
            if segment == "*":
                name = segments[index - 1]
                names.setdefault(field, []).append(name)
                out.append(f"{{{name}}}")
            else:
                out.append(segment)
        return "/".join(out)

    return _VARIABLE.sub(replace, path), names


def _operation_parameters(params: list[dict[str, Any]], fields: dict[str, list[str]]) -> list:
    rewritten: list[dict[str, Any]] = []
    for param in params:
        new_names = fields.get(param["name"]) if param.get("in") == "path" else None
        if not new_names:
            rewritten.append(param)
            continue
        for name in new_names:
            described = f"`{name}` in `{param['name']}`. {param.get('description', '')}".strip()
            rewritten.append({**param, "name": name, "description": described})
    taken = [p["name"] for p in rewritten if p.get("in") != "body"]
    if len(taken) != len(set(taken)):
        raise OpenApiError(f"parameter names collide after spelling out the path: {taken}")
    return rewritten


def spell_out_path_templates(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every path template valid Swagger 2.0 (see the module docstring)."""
    paths: dict[str, Any] = {}
    for path, operations in document["paths"].items():
        new_path, fields = _spell_out(path)
        # GET /v1/{name=clinics/*/x} and PUT /v1/{x.name=clinics/*/x} meet at one path.
        merged = paths.setdefault(new_path, {})
        for verb, op in operations.items():
            if verb in merged:
                raise OpenApiError(f"{verb} {path} collides with another path once spelled out")
            params = op.get("parameters")
            merged[verb] = (
                op
                if params is None
                else {**op, "parameters": _operation_parameters(params, fields)}
            )
    return {**document, "paths": paths}


def product_info() -> dict[str, str]:
    """The document's `info`: the product title, the package's summary and version."""
    meta = metadata.metadata(DISTRIBUTION)
    return {"title": PRODUCT_TITLE, "description": meta["Summary"], "version": meta["Version"]}


def with_product_info(document: dict[str, Any], info: dict[str, str]) -> dict[str, Any]:
    """The document with `info` replaced (in its place: a key keeps its position)."""
    return {**document, "info": info}


def with_server(document: bytes, host: str | None, scheme: str | None) -> bytes:
    """The served document: `host` and `schemes` of the request that asked for it.

    A Host header that is not a plain host[:port] (or a scheme other than http/https) is left
    out, and the document then names no host, which Swagger 2.0 reads as the serving one.
    """
    parsed = json.loads(document)
    if host and _HOST.fullmatch(host) and scheme in _SCHEMES:
        head = {key: parsed.pop(key) for key in ("swagger", "info") if key in parsed}
        parsed = {**head, "host": host, **parsed, "schemes": [scheme]}
    return json.dumps(parsed, separators=(",", ":")).encode()


def rewrite_file(path: Path, info: dict[str, str] | None = None) -> None:
    """Rewrite one generated swagger file in place (same JSON layout as the generator's)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    fixed = with_product_info(spell_out_path_templates(document), info or product_info())
    path.write_text(json.dumps(fixed, indent=2) + "\n", encoding="utf-8")
