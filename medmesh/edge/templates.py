"""`google.api.http` path templates: parsing and matching, as Envoy's transcoder does them.

Grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

A request path is split on "/" *before* percent-decoding, so an encoded slash (%2F) never
creates a segment. A variable that spans one segment is fully decoded; one that spans several
keeps %2F encoded, as the spec says. A custom verb is split off the last segment only when some
template registers that verb (Envoy's default), so `/v1/studies/a:b` still reaches GetStudy
with `name = "studies/a:b"` while `/v1/studies/a:watch` reaches WatchStudy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

_LITERAL = re.compile(r"^[^/{}*:=]+$")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class TemplateError(ValueError):
    """A path template in the contract does not follow the google.api.http grammar."""


@dataclass(frozen=True)
class Variable:
    """`{name=studies/*}`: the field it sets and the segments [start, end) it captures."""

    field_path: str
    start: int
    end: int | None
    """Exclusive; None when the variable ends in `**` (captures the rest of the path)."""


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template: segments (literal, `*` or `**`), variables and the custom verb."""

    source: str
    segments: tuple[str, ...]
    variables: tuple[Variable, ...]
    verb: str

    @property
    def specificity(self) -> tuple[int, ...]:
        """Sort key: at each position a literal beats `*`, which beats `**` (smaller first)."""
        rank = {"*": 1, "**": 2}
        return tuple(rank.get(segment, 0) for segment in self.segments)

    def match(self, segments: list[str], verb: str) -> dict[str, str] | None:
        """Field path → decoded value for a request split by `split_path`, or None."""
        if verb != self.verb:
            return None
        if self.segments and self.segments[-1] == "**":
            if len(segments) < len(self.segments):
                return None
        elif len(segments) != len(self.segments):
            return None
        for pattern, segment in zip(self.segments, segments, strict=False):
            if pattern == "**":
                break
            if not segment or (pattern != "*" and pattern != unquote(segment)):
                return None
        bindings: dict[str, str] = {}
        for variable in self.variables:
            captured = segments[variable.start : variable.end]
            if len(captured) == 1:
                bindings[variable.field_path] = unquote(captured[0])
            else:
                bindings[variable.field_path] = "/".join(_unquote_keep_slash(s) for s in captured)
        return bindings


def _unquote_keep_slash(segment: str) -> str:
    parts = re.split(r"(%2[Ff])", segment)
    return "".join(part if part.lower() == "%2f" else unquote(part) for part in parts)


def _split_verb(template: str) -> tuple[str, str]:
    depth = 0
    for index, char in enumerate(template):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == ":" and depth == 0:
            return template[:index], template[index + 1 :]
    return template, ""


def _split_segments(path: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in path:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "/" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_template(template: str) -> PathTemplate:
    """Parse one template; TemplateError names what is wrong with it."""
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a template starts with '/'")
    path, verb = _split_verb(template)
    if verb and not _LITERAL.match(verb):
        raise TemplateError(f"{template!r}: bad custom verb {verb!r}")
    segments: list[str] = []
    variables: list[Variable] = []
    for part in _split_segments(path[1:]):
        if part.startswith("{") and part.endswith("}"):
            field_path, _, inner = part[1:-1].partition("=")
            if not _FIELD_PATH.match(field_path):
                raise TemplateError(f"{template!r}: bad field path {field_path!r}")
            inner_segments = inner.split("/") if inner else ["*"]
            start = len(segments)
            for segment in inner_segments:
                _check_segment(template, segment)
                segments.append(segment)
            end = None if segments[-1] == "**" else len(segments)
            variables.append(Variable(field_path, start, end))
        else:
            _check_segment(template, part)
            segments.append(part)
    if "**" in segments[:-1]:
        raise TemplateError(f"{template!r}: '**' may only end a template")
    return PathTemplate(template, tuple(segments), tuple(variables), verb)


def _check_segment(template: str, segment: str) -> None:
    if segment not in ("*", "**") and not _LITERAL.match(segment):
        raise TemplateError(f"{template!r}: bad segment {segment!r}")


def split_path(raw_path: str, verbs: Iterable[str]) -> tuple[list[str], str]:
    """A request path (still percent-encoded, no query) as segments and a registered verb."""
    segments = raw_path[1:].split("/") if raw_path.startswith("/") else [raw_path]
    last, _, verb = segments[-1].rpartition(":")
    if last and verb in set(verbs):
        segments[-1] = last
        return segments, verb
    return segments, ""
