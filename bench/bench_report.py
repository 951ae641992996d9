"""Report rendering time: a 1-page report, and how PDF time grows with the number of findings.

    python bench/bench_report.py [--repeat 5]

All figures are in-process (svc_report.render: jinja2 HTML, then xhtml2pdf), median of
`--repeat` runs, on the same machine in the same run:

1. A 1-page report (an image with a thumbnail and 5 findings, a note with 3) against the
   floor of xhtml2pdf rendering a bare one-line HTML page: ratio = what the report's content
   and layout cost over the renderer's fixed cost.
2. P5, linearity: the time per finding at 100 and at 500 findings (one image result with that
   many labels), each with the fixed cost subtracted (the same report with 0 findings, same
   run): (t(N) - t(0)) / N. Linear means the same time per finding at both sizes; the goal
   is that 500 costs at most 1.2x per finding what 100 does. Also the same 500 findings laid
   out as ONE table instead of tables of `table_rows`, to show what the split buys.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pypdf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import record  # noqa: E402

from gen.medmesh.common.v1 import AnalysisKind, FileKind  # noqa: E402
from svc_report.model import AnalysisResult, Score, Study, StudyFile  # noqa: E402
from svc_report.render import ReportFacts, make_thumbnail, render_html, render_pdf  # noqa: E402

NOW = datetime.now(UTC)


def _facts(findings: int, *, with_note: bool = True) -> ReportFacts:
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    study = Study("3f8c0d5e-0000-4000-8000-000000000001", "clinic-a", "PAT-0042", "Chest", NOW)
    files = [
        StudyFile("f-image", FileKind.IMAGE_PNG, "chest.png", "image/png", 5, NOW),
        StudyFile("f-note", FileKind.TEXT_NOTE, "note.txt", "text/plain", 5, NOW),
    ]
    results = [
        AnalysisResult(
            "r-image", "clinic-a", study.study_id, "f-image", AnalysisKind.IMAGE_CLASSIFICATION,
            "resnet50", 3, "img-pre-2", NOW,
            top_k=tuple(Score(f"label {i}", 1.0 / (i + 1)) for i in range(findings)),
        ),
    ]  # fmt: skip
    if with_note:
        results.append(
            AnalysisResult(
                "r-note", "clinic-a", study.study_id, "f-note", AnalysisKind.TEXT_ANALYSIS,
                "minilm", 2, "txt-pre-7", NOW,
                findings=(Score("pneumonia", 0.73), Score("fever", 0.42), Score("cough", 0.3)),
                urgency=Score("urgent", 0.66), summary="Fever and productive cough.",
            )
        )  # fmt: skip
    return ReportFacts(
        "rep-1", 1, study, files, results, NOW, {"r-image": make_thumbnail(buffer.getvalue(), 160)}
    )


def _median_s(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: fonts, CSS parser, imports
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _pages(pdf: bytes) -> int:
    return len(pypdf.PdfReader(io.BytesIO(pdf)).pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    bare = "<html><body><p>medmesh</p></body></html>"
    floor = _median_s(lambda: render_pdf(bare), args.repeat)
    one_page_html = render_html(_facts(5))
    one_page = _median_s(lambda: render_pdf(one_page_html), args.repeat)
    html_time = _median_s(lambda: render_html(_facts(5)), args.repeat)
    print("1-page report (image + thumbnail, 5 + 3 findings)")
    print(f"  pages                         {_pages(render_pdf(one_page_html))}")
    print(f"  floor: bare 1-line PDF        {floor * 1000:8.1f} ms")
    print(
        f"  report PDF                    {one_page * 1000:8.1f} ms  ratio {one_page / floor:5.1f}x"
    )
    print(f"  report HTML (jinja2)          {html_time * 1000:8.1f} ms")

    html_0 = render_html(_facts(0, with_note=False))
    html_100 = render_html(_facts(100, with_note=False))
    html_500 = render_html(_facts(500, with_note=False))
    html_500_one_table = render_html(_facts(500, with_note=False), table_rows=10_000)
    t0 = _median_s(lambda: render_pdf(html_0), args.repeat)
    t100 = _median_s(lambda: render_pdf(html_100), args.repeat)
    t500 = _median_s(lambda: render_pdf(html_500), args.repeat)
    t500_one = _median_s(lambda: render_pdf(html_500_one_table), args.repeat)
    ratio = t500 / t100
    print("findings scaling (tables of 40 rows)")
    pages_100, pages_500 = _pages(render_pdf(html_100)), _pages(render_pdf(html_500))
    print(f"  100 findings PDF              {t100 * 1000:8.1f} ms  ({pages_100} pages)")
    print(f"  500 findings PDF              {t500 * 1000:8.1f} ms  ({pages_500} pages)")
    print(
        f"  ratio 500/100                 {ratio:8.2f}   vs linear 5.00: {ratio / 5:4.2f}x linear"
    )
    print(
        f"  500 findings, ONE table       {t500_one * 1000:8.1f} ms  "
        f"ratio to split {t500_one / t500:4.2f}x"
    )
    per_100, per_500 = (t100 - t0) / 100, (t500 - t0) / 500
    linearity = per_500 / per_100
    print(f"  fixed cost: 0 findings PDF    {t0 * 1000:8.1f} ms")
    print(
        f"  per finding, fixed cost out   100: {per_100 * 1e3:6.3f} ms"
        f"   500: {per_500 * 1e3:6.3f} ms"
        f"   500/100 {linearity:4.2f} (linear 1.00, goal <= 1.20)"
    )
    record(
        "bench_report.py",
        "1-page report PDF",
        round(one_page * 1000, 1),
        "ms",
        floor=round(floor * 1000, 1),
        floor_name="bare 1-line PDF",
        ratio=round(one_page / floor, 1),
    )
    record(
        "bench_report.py",
        f"P5: PDF time per finding at 500 (fixed cost {t0 * 1000:.0f} ms subtracted)",
        round(per_500 * 1000, 3),
        "ms",
        floor=round(per_100 * 1000, 3),
        floor_name="per finding at 100",
        ratio=round(linearity, 2),
        goal="<= 1.2 (linear: 1.0)",
        met=linearity <= 1.2,
    )


if __name__ == "__main__":
    main()
