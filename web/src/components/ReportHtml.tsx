// A report's HTML (rendered by svc_report for xhtml2pdf) shown inside the page. The document
// is parsed inert (DOMParser runs no scripts), stripped of anything active, and attached to a
// shadow root so its styles stay inside. Its <style> goes in as a constructed stylesheet:
// the CSP allows no inline <style>, and a constructed sheet is not markup.
import { useEffect, useRef } from "react";

const ACTIVE = "script, iframe, object, embed, link, meta, base, form";

export function sanitizeReport(html: string): { body: DocumentFragment; css: string } {
  // Styles are taken out before parsing: parsing them, even inert, reports CSP violations.
  const styles = /<style[^>]*>([\s\S]*?)<\/style>/gi;
  const css = Array.from(html.matchAll(styles), (m) => m[1])
    .join("\n")
    // xhtml2pdf's page rules mean nothing on screen; `body` is the shadow root's wrapper.
    .replace(/@page\s*\{(?:[^{}]|\{[^{}]*\})*\}/g, "")
    .replace(/(^|[\s,}])body(?=[\s,{])/g, "$1.report-body");
  const markup = html.replace(styles, "").replace(/\sstyle\s*=\s*("[^"]*"|'[^']*')/gi, "");
  const doc = new DOMParser().parseFromString(markup, "text/html");
  doc.querySelectorAll(`${ACTIVE}, style`).forEach((el) => el.remove());
  doc.querySelectorAll("*").forEach((el) => {
    for (const attr of Array.from(el.attributes)) {
      const value = attr.value.trim().toLowerCase();
      if (attr.name.startsWith("on") || attr.name === "style") el.removeAttribute(attr.name);
      else if ((attr.name === "href" || attr.name === "src") && !/^(data:image\/|#|https?:)/.test(value)) {
        el.removeAttribute(attr.name);
      }
    }
  });
  doc.querySelectorAll("#page-footer, pdf\\:pagenumber, pdf\\:pagecount").forEach((el) => el.remove());
  const body = document.createDocumentFragment();
  body.append(...Array.from(doc.body.childNodes).map((n) => document.importNode(n, true)));
  return { body, css };
}

export function ReportHtml({ html, title }: { html: string; title: string }) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = host.current;
    if (!element) return;
    const root = element.shadowRoot ?? element.attachShadow({ mode: "open" });
    const { body, css } = sanitizeReport(html);
    const wrapper = document.createElement("div");
    wrapper.className = "report-body";
    wrapper.append(body);
    root.replaceChildren(wrapper);
    if ("adoptedStyleSheets" in root && typeof CSSStyleSheet !== "undefined" && "replaceSync" in CSSStyleSheet.prototype) {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(`:host { display: block; } .report-body { padding: 1.5rem 2rem; background: #fff; } ${css}`);
      root.adoptedStyleSheets = [sheet];
    }
  }, [html]);
  return <div ref={host} className="report-frame" role="document" aria-label={title} data-testid="report-html" />;
}
