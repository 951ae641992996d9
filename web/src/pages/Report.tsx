// `/reports/{id}` (the report-ready mail links here): the report's HTML, its PDF (streamed by
// DownloadReport over gRPC-Web, saved from memory), delivery status and the study's history.
import { useState } from "react";
import { ReportStatus } from "@gen/medmesh/report/v1/report_pb";
import { useAction, useQuery } from "../api/hooks";
import { Link, type Params } from "../app/router";
import { useApi } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { ReportHtml } from "../components/ReportHtml";
import { Loading, Page } from "../components/misc";
import { useI18n, type MessageKey } from "../i18n";

function saveBlob(blob: Blob, fileName: string) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function ReportPage({ params }: { params: Params }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const name = `reports/${params.reportId}`;
  const query = useQuery((signal) => api.report.getReport({ name }, { signal }), [api, name]);
  const report = query.data?.report;
  const history = useQuery(
    async (signal) => (report ? api.report.listReports({ study: report.study }, { signal }) : undefined),
    [api, report?.study],
  );
  const [downloading, setDownloading] = useState(false);
  const download = useAction(async () => {
    setDownloading(true);
    try {
      const chunks: Uint8Array<ArrayBuffer>[] = [];
      for await (const part of api.report.downloadReport({ name })) chunks.push(part.chunk as Uint8Array<ArrayBuffer>);
      saveBlob(new Blob(chunks, { type: "application/pdf" }), `report-${params.reportId}-v${report?.version ?? 1}.pdf`);
    } finally {
      setDownloading(false);
    }
  });

  if (!report) {
    return (
      <Page title={t("report.title")}>
        <ErrorNotice error={query.error} retrying={query.retrying} />
        {query.loading && !query.retrying ? <Loading /> : null}
      </Page>
    );
  }
  const studyId = report.study.split("/")[1] ?? "";
  const ready = report.status === ReportStatus.READY;
  return (
    <Page
      title={`${t("report.title")} · ${t("report.version", { version: report.version })}`}
      actions={
        <>
          <Link to={`/studies/${studyId}`} className="button">
            {t("report.backToStudy")}
          </Link>
          <button type="button" className="button button-primary" disabled={!ready || downloading} onClick={() => void download.run()} data-testid="download-pdf">
            {downloading ? t("report.downloading") : t("report.download")}
          </button>
        </>
      }
    >
      <ErrorNotice error={download.error} retrying={download.retrying} />
      <div className="card">
        <dl className="kv">
          <dt>{t("detail.status")}</dt>
          <dd data-testid="report-status">{t(`report.status.${report.status}` as MessageKey)}</dd>
          <dt>{t("report.created")}</dt>
          <dd>{fmt.dateTime(report.readyTime ?? report.createTime)}</dd>
          <dt>MIS</dt>
          <dd>{t(`report.delivery.${report.deliveryStatus}` as MessageKey)}</dd>
          {ready ? (
            <>
              <dt>{t("report.size")}</dt>
              <dd>{fmt.bytes(report.sizeBytes)}</dd>
            </>
          ) : null}
        </dl>
      </div>
      <h2>{t("report.frameTitle")}</h2>
      {ready && query.data?.html ? <ReportHtml html={query.data.html} title={t("report.frameTitle")} /> : <p className="muted">{t("report.notReady")}</p>}
      <h2>{t("report.history")}</h2>
      <ErrorNotice error={history.error} retrying={history.retrying} />
      {history.data ? (
        <div className="table-wrap">
          <table className="table" data-testid="report-history">
            <tbody>
              {history.data.reports.map((r) => (
                <tr key={r.reportId}>
                  <td>{r.reportId === report.reportId ? <strong>{t("report.version", { version: r.version })}</strong> : <Link to={`/reports/${r.reportId}`}>{t("report.version", { version: r.version })}</Link>}</td>
                  <td>{t(`report.status.${r.status}` as MessageKey)}</td>
                  <td>{fmt.dateTime(r.readyTime ?? r.createTime)}</td>
                  <td>{t(`report.delivery.${r.deliveryStatus}` as MessageKey)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </Page>
  );
}
