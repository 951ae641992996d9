import { sanitizeReport } from "./ReportHtml";

const REPORT = `<!DOCTYPE html><html><head><title>r</title>
<style>
  @page { size: a4 portrait; @frame footer { -pdf-frame-content: page-footer; } }
  body { font-size: 9pt; }
  th, td { border: 0.5px solid #bbb; }
</style></head>
<body onload="steal()">
<h1 style="color:red">Diagnostic report</h1>
<script>steal()</script>
<img src="data:image/png;base64,iVBORw0KGgo=" onerror="steal()" alt="thumb">
<a href="javascript:steal()">x</a><iframe src="https://evil.example"></iframe>
<div id="page-footer">page <pdf:pagenumber></div>
</body></html>`;

describe("sanitizeReport", () => {
  it("keeps the report's content and styles, and nothing that could run", () => {
    const { body, css } = sanitizeReport(REPORT);
    const holder = document.createElement("div");
    holder.append(body);
    expect(holder.querySelector("h1")?.textContent).toBe("Diagnostic report");
    expect(holder.querySelector("h1")?.hasAttribute("style")).toBe(false);
    expect(holder.querySelector("script, iframe")).toBeNull();
    expect(holder.querySelector("img")?.getAttribute("src")).toMatch(/^data:image\/png/);
    expect(holder.querySelector("img")?.hasAttribute("onerror")).toBe(false);
    expect(holder.querySelector("a")?.hasAttribute("href")).toBe(false);
    expect(holder.querySelector("#page-footer")).toBeNull();
    expect(holder.innerHTML).not.toContain("steal");
    expect(css).toContain(".report-body { font-size: 9pt; }");
    expect(css).toContain("th, td { border: 0.5px solid #bbb; }");
    expect(css).not.toContain("@page");
  });
});
