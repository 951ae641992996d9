"""Rendering a report: the facts → an HTML document (jinja2, auto-escaped) → a PDF (xhtml2pdf).

Everything a clinic typed (patient reference, description, file names) and everything a
model produced (labels, summaries) is text to escape, never markup: the environment escapes
every variable, and nothing is marked safe. Thumbnails are embedded as `data:` URIs of PNGs
we encode ourselves, so the HTML stands alone and the PDF renderer fetches nothing.

Fonts: xhtml2pdf's built-in faces (Helvetica and the other PDF base-14 fonts) have no
Cyrillic, Greek or most symbols, so a Russian note came out as black boxes. The PDF embeds
DejaVu Sans (regular and bold, `svc_report/fonts/`, kept in the repository with its licence
so a fresh machine and the service image need no system font package) through `@font-face`
rules given to xhtml2pdf as part of its default style sheet: the stored HTML does not carry
server file paths, and a browser showing it uses its own fonts from the same family list.

Findings tables are split into tables of `table_rows` rows: xhtml2pdf lays out a table as one
flowable and splits it across pages by re-measuring what is left, which grows faster than
linearly with one very long table; many short tables keep the time linear (bench/bench_report).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image
from xhtml2pdf import pisa
from xhtml2pdf.default import DEFAULT_CSS

from gen.medmesh.common.v1 import AnalysisKind, FileKind
from svc_report.model import AnalysisResult, Study, StudyFile

AI_NOTICE = "AI-assisted result, to be reviewed by a clinician."

# A note the text model cannot read (svc_infer flags it: TextAnalysis.outside_model_languages)
# gets this warning next to its findings and at the top of the report, in English and, where
# a translation exists, in the note's own language too.
_LANGUAGE_WARNINGS = {
    "en": (
        "Note language ({language}) is outside the model's languages ({model}): "
        "findings are unreliable.",
        "undetermined",
    ),
    "ru": (
        "Язык заметки ({language}) не входит в языки модели ({model}): "
        "результаты ненадёжны.",
        "не определён",
    ),
}


def language_warnings(result: AnalysisResult) -> list[str]:
    """The warnings a flagged note's result carries (none for a note the model reads)."""
    if not result.outside_model_languages:
        return []
    code = result.language or "und"
    model = ", ".join(result.model_languages) or "?"
    warnings = []
    for lang in dict.fromkeys(("en", code)):
        if lang in _LANGUAGE_WARNINGS:
            text, undetermined = _LANGUAGE_WARNINGS[lang]
            shown = undetermined if code == "und" else code
            warnings.append(text.format(language=shown, model=model))
    return warnings


FONT_DIR = Path(__file__).resolve().parent / "fonts"
PDF_FONT_FAMILY = "DejaVu Sans"
_PDF_FONT_FILES = {
    "normal": FONT_DIR / "DejaVuSans.ttf",
    "bold": FONT_DIR / "DejaVuSans-Bold.ttf",
}
_PDF_FONT_CSS = "".join(
    f'@font-face {{ font-family: "{PDF_FONT_FAMILY}"; src: url("{path.as_uri()}"); '
    f"font-weight: {weight}; }}\n"
    for weight, path in _PDF_FONT_FILES.items()
)
_PDF_FONT_URIS = frozenset(path.as_uri() for path in _PDF_FONT_FILES.values()) | frozenset(
    str(path) for path in _PDF_FONT_FILES.values()
)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("svc_report", "templates"),
    autoescape=True,  # every template, whatever its name: report content is untrusted text
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)

_FILE_KINDS = {
    FileKind.IMAGE_PNG: "PNG image",
    FileKind.IMAGE_JPEG: "JPEG image",
    FileKind.IMAGE_DICOM: "DICOM image",
    FileKind.TEXT_NOTE: "clinical note",
}
_FILE_STATUSES = {
    1: "pending upload",
    2: "stored",
    3: "queued",
    4: "analysing",
    5: "analysed",
    6: "analysis failed",
    7: "rejected",
}
_ANALYSES = {
    AnalysisKind.IMAGE_CLASSIFICATION: "Image classification",
    AnalysisKind.TEXT_ANALYSIS: "Text analysis",
}


class RenderError(Exception):
    """xhtml2pdf could not turn the HTML into a PDF."""


@dataclass(frozen=True)
class Thumbnail:
    """A small PNG of a processed image, ready to embed."""

    data_uri: str
    width: int
    height: int


def make_thumbnail(image_bytes: bytes, max_px: int) -> Thumbnail:
    """Scale an image down (never up) to `max_px` on its longest side, as an RGB PNG."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        picture = image.convert("RGB")
    picture.thumbnail((max_px, max_px))
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    encoded = base64.b64encode(out.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/png;base64,{encoded}", picture.width, picture.height)


@dataclass(frozen=True)
class ReportFacts:
    """Everything one report shows."""

    report_id: str
    version: int
    study: Study
    files: Sequence[StudyFile]
    results: Sequence[AnalysisResult]
    generated_at: datetime
    thumbnails: Mapping[str, Thumbnail]
    """By result id (each image result has its own processed picture)."""


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _result_context(result: AnalysisResult, table_rows: int) -> dict[str, Any]:
    rows = [{"label": s.label, "score": f"{s.score:.3f}"} for s in result.scores]
    urgency = result.urgency
    return {
        "result_id": result.result_id,
        "kind": _ANALYSES.get(result.kind, "Analysis"),
        "model": result.model_name,
        "version": result.model_version,
        "preprocessing": result.preprocessing_version,
        "create_time": _time(result.create_time),
        "summary": result.summary,
        "language_warnings": language_warnings(result),
        "urgency": {"label": urgency.label, "score": f"{urgency.score:.3f}"} if urgency else None,
        "tables": _chunks(rows, table_rows),
    }


def report_context(facts: ReportFacts, *, table_rows: int) -> dict[str, Any]:
    """The template's context: plain strings and numbers, nothing pre-rendered."""
    by_file: dict[str, list[AnalysisResult]] = {}
    for result in facts.results:
        by_file.setdefault(result.file_id, []).append(result)
    known = {f.file_id for f in facts.files}
    # A result whose file the read model no longer shows still belongs in the report.
    files = list(facts.files) + [
        StudyFile(fid, FileKind.UNSPECIFIED, f"file {fid}", "", 5, facts.generated_at)
        for fid in by_file
        if fid not in known
    ]
    file_contexts = []
    for study_file in files:
        results = by_file.get(study_file.file_id, [])
        thumb = next(
            (facts.thumbnails[r.result_id] for r in results if r.result_id in facts.thumbnails),
            None,
        )
        file_contexts.append(
            {
                "file_name": study_file.file_name,
                "kind": _FILE_KINDS.get(study_file.kind, "file"),
                "status": _FILE_STATUSES.get(study_file.status, "unknown"),
                "thumbnail": thumb.data_uri if thumb else "",
                "thumbnail_width": thumb.width if thumb else 0,
                "thumbnail_height": thumb.height if thumb else 0,
                "results": [_result_context(r, table_rows) for r in results],
            }
        )
    provenance = sorted(
        {
            (r.model_name, r.model_version, r.preprocessing_version, _ANALYSES.get(r.kind, ""))
            for r in facts.results
        }
    )
    study = facts.study
    warnings = [w for r in facts.results for w in language_warnings(r)]
    return {
        "notice": AI_NOTICE,
        "language_warnings": list(dict.fromkeys(warnings)),
        "report": {
            "report_id": facts.report_id,
            "version": facts.version,
            "clinic_id": study.clinic_id,
            "study_id": study.study_id,
            "patient_ref": study.patient_ref,
            "description": study.description,
            "study_time": _time(study.create_time),
            "generated_at": _time(facts.generated_at),
            "total_findings": sum(len(r.scores) for r in facts.results),
            "files": file_contexts,
            "provenance": [
                {"model": m, "version": v, "preprocessing": p, "kind": k}
                for m, v, p, k in provenance
            ],
        },
    }


def render_html(facts: ReportFacts, *, table_rows: int = 40) -> str:
    """The report as a standalone HTML document."""
    context = report_context(facts, table_rows=table_rows)
    return _templates.get_template("report.html").render(context)


def _refuse_fetch(uri: str, rel: str | None = None) -> str:
    """xhtml2pdf's link callback: the HTML embeds everything; never fetch a URL or a file
    other than the report's own fonts."""
    if uri.startswith("data:"):
        return uri
    if uri in _PDF_FONT_URIS:
        return uri.removeprefix("file://")
    raise RenderError(f"the report refers to an external resource: {uri[:80]!r}")


def render_pdf(html: str) -> bytes:
    """The PDF of `html`. CPU-bound (tens of ms per page): call it in a worker thread."""
    out = io.BytesIO()
    status = pisa.CreatePDF(
        html,
        dest=out,
        encoding="utf-8",
        link_callback=_refuse_fetch,
        capacity=-1,
        default_css=DEFAULT_CSS + _PDF_FONT_CSS,
    )
    if status.err:
        raise RenderError(f"xhtml2pdf reported {status.err} error(s)")
    return out.getvalue()
