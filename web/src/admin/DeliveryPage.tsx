// `/admin/delivery`: the clinic's MIS delivery target (GetDeliveryTarget/SetDeliveryTarget,
// each field violation under its input, e.g. a refused private URL) and the reports with
// their delivery status and receipts (ListReports), with RedeliverReport.
import { useEffect, useState, type FormEvent } from "react";
import { ConnectError } from "@connectrpc/connect";
import { DeliveryStatus, ReportStatus, type DeliveryTarget, type Report } from "@gen/medmesh/report/v1/report_pb";
import { Code, type DisplayError } from "../api/errors";
import { useAction, usePagedList, useQuery } from "../api/hooks";
import { Link } from "../app/router";
import { useApi, useSession } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { TextAreaField, TextField } from "../components/Field";
import { Loading, MoreButton, Page } from "../components/misc";
import { useI18n, type MessageKey } from "../i18n";
import { AdminTabs, Done, type Notice } from "./common";

const URL_FIELD = "fhir_base_url";
const EMAILS = /(^|\.)notify_emails(\[(\d+)\])?$/;

/** Violations of the e-mail list, each naming the address it is about. */
function emailProblems(error: DisplayError | null, emails: readonly string[]): { problems: string[]; claimed: string[] } {
  const problems: string[] = [];
  const claimed: string[] = [];
  for (const [name, descriptions] of Object.entries(error?.fields ?? {})) {
    const match = EMAILS.exec(name);
    if (!match) continue;
    claimed.push(name);
    const address = match[3] !== undefined ? emails[Number(match[3])] : undefined;
    for (const d of descriptions) problems.push(address ? `${address}: ${d}` : d);
  }
  return { problems, claimed };
}

function TargetForm() {
  const { t, fmt } = useI18n();
  const api = useApi();
  const { user } = useSession();
  const name = `clinics/${user?.clinicId ?? ""}/deliveryTarget`;
  const loaded = useQuery(
    async (signal) => {
      try {
        return (await api.report.getDeliveryTarget({ name }, { signal })).deliveryTarget ?? null;
      } catch (error) {
        // NOT_FOUND: the clinic has no target yet; the form starts empty.
        if (ConnectError.from(error).code === Code.NotFound) return null;
        throw error;
      }
    },
    [api, name],
  );
  const [stored, setStored] = useState<DeliveryTarget | null>(null);
  const [url, setUrl] = useState("");
  const [token, setToken] = useState("");
  const [enabled, setEnabled] = useState(true);
  const [emails, setEmails] = useState("");
  const [done, setDone] = useState<Notice | null>(null);
  useEffect(() => {
    if (loaded.data === undefined) return;
    const target = loaded.data;
    setStored(target);
    setUrl(target?.fhirBaseUrl ?? "");
    setEnabled(target?.enabled ?? true);
    setEmails(target?.notifyEmails.join("\n") ?? "");
  }, [loaded.data]);
  const list = emails.split(/[\n,;]+/).map((e) => e.trim()).filter(Boolean);
  const save = useAction(() =>
    api.report.setDeliveryTarget({
      deliveryTarget: { name, fhirBaseUrl: url.trim(), bearerToken: token, enabled, notifyEmails: list },
    }),
  );
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setDone(null);
    const response = await save.run();
    if (response?.deliveryTarget) {
      setStored(response.deliveryTarget);
      setToken("");
      setDone(["admin.saved"]);
    }
  };
  const mails = emailProblems(save.error, list);
  if (loaded.data === undefined) {
    return (
      <div className="card">
        <ErrorNotice error={loaded.error} retrying={loaded.retrying} />
        {loaded.loading && !loaded.retrying ? <Loading /> : null}
      </div>
    );
  }
  return (
    <form className="card" onSubmit={submit} noValidate data-testid="delivery-target">
      <h2>{t("delivery.targetTitle")}</h2>
      <p className="muted">{stored ? t("delivery.targetHint") : t("delivery.none")}</p>
      <TextField label={t("delivery.url")} field={URL_FIELD} type="url" placeholder="https://mis.example.org/fhir" autoComplete="off" value={url} onChange={(e) => setUrl(e.target.value)} error={save.error} hint={t("delivery.urlHint")} />
      <TextField
        label={t("delivery.token")}
        field="bearer_token"
        type="password"
        autoComplete="new-password"
        value={token}
        onChange={(e) => setToken(e.target.value)}
        error={save.error}
        hint={stored?.bearerTokenSet ? t("delivery.tokenSet") : t("delivery.tokenUnset")}
      />
      <div className="field">
        <label className="check">
          <input type="checkbox" checked={enabled} onChange={(e) => setEnabled(e.target.checked)} data-testid="delivery-enabled" />
          {t("delivery.enabled")}
        </label>
      </div>
      <TextAreaField label={t("delivery.emails")} field="delivery_target.notify_emails" rows={3} value={emails} onChange={(e) => setEmails(e.target.value)} problems={mails.problems} hint={t("delivery.emailsHint")} />
      <ErrorNotice error={save.error} retrying={save.retrying} claimed={[URL_FIELD, "bearer_token", ...mails.claimed]} />
      <Done notice={done} />
      <div className="form-actions">
        <button type="submit" className="button button-primary" disabled={save.pending}>
          {save.pending ? t("status.saving") : t("admin.save")}
        </button>
        {stored?.updateTime ? (
          <span className="muted">
            {t("delivery.updated")}: {fmt.dateTime(stored.updateTime)}
          </span>
        ) : null}
      </div>
    </form>
  );
}

const DELIVERY_TONE: Record<number, string> = {
  [DeliveryStatus.DELIVERED]: "ok",
  [DeliveryStatus.FAILED]: "bad",
  [DeliveryStatus.PENDING]: "busy",
};

function ReportRow({ report: initial }: { report: Report }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const [report, setReport] = useState(initial);
  const [done, setDone] = useState<Notice | null>(null);
  const redeliver = useAction(() => api.report.redeliverReport({ name: report.name }));
  const last = report.receipts.at(-1);
  const studyId = report.study.split("/")[1] ?? "";
  const canRedeliver = report.status === ReportStatus.READY && report.deliveryStatus !== DeliveryStatus.PENDING;
  return (
    <tr data-testid="report-row" data-report={report.reportId}>
      <td>
        <Link to={`/reports/${report.reportId}`}>{t("report.version", { version: report.version })}</Link>
        <div className="muted">{fmt.dateTime(report.readyTime ?? report.createTime)}</div>
      </td>
      <td>
        <Link to={`/studies/${studyId}`} className="mono">
          {studyId.slice(0, 8)}
        </Link>
      </td>
      <td>{t(`report.status.${report.status}` as MessageKey)}</td>
      <td>
        <span className={`badge badge-${DELIVERY_TONE[report.deliveryStatus] ?? "neutral"}`} data-testid="delivery-status" data-status={DeliveryStatus[report.deliveryStatus]}>
          {t(`report.delivery.${report.deliveryStatus}` as MessageKey)}
        </span>
      </td>
      <td>
        {last ? (
          <>
            <div className="nowrap">{fmt.dateTime(last.attemptTime)}</div>
            <div className="muted">{last.httpStatus ? t("delivery.http", { status: last.httpStatus }) : t("delivery.noResponse")}</div>
          </>
        ) : (
          <span className="muted">—</span>
        )}
        {report.receipts.length > 0 ? (
          <details>
            <summary>{t("delivery.receipts", { count: fmt.number(report.receipts.length) })}</summary>
            <ul className="receipts" data-testid="receipts">
              {report.receipts.map((r, i) => (
                <li key={i}>
                  <span>{fmt.dateTime(r.attemptTime)}</span>
                  <span className={r.error ? "field-errors" : undefined}>{r.httpStatus ? t("delivery.http", { status: r.httpStatus }) : t("delivery.noResponse")}</span>
                  <span className="wrap-anywhere">
                    {r.error || (r.misId ? `${t("delivery.misId")}: ${r.misId}` : "")}
                    <div className="muted mono" title={t("delivery.key")}>
                      {r.idempotencyKey}
                    </div>
                  </span>
                </li>
              ))}
            </ul>
          </details>
        ) : null}
      </td>
      <td className="actions">
        <button
          type="button"
          className="button button-small"
          disabled={!canRedeliver || redeliver.pending}
          data-testid="redeliver"
          onClick={async () => {
            const response = await redeliver.run();
            if (response?.report) {
              setReport(response.report);
              setDone(["delivery.redelivered", { version: report.version }]);
            }
          }}
        >
          {t("delivery.redeliver")}
        </button>
        <ErrorNotice error={redeliver.error} retrying={redeliver.retrying} />
        <Done notice={done} />
      </td>
    </tr>
  );
}

function Reports() {
  const { t } = useI18n();
  const api = useApi();
  const query = usePagedList<Report>(
    async (pageToken, signal) => {
      const response = await api.report.listReports({ pageSize: 25, pageToken }, { signal });
      return { items: response.reports, next: response.nextPageToken };
    },
    [api],
  );
  const reports = query.items;
  return (
    <>
      <h2>{t("delivery.reportsTitle")}</h2>
      <ErrorNotice error={query.error} retrying={query.retrying} />
      {query.loading && !query.data && !query.retrying ? <Loading /> : null}
      {query.data && reports.length === 0 ? <p className="muted">{t("delivery.noReports")}</p> : null}
      {reports.length > 0 ? (
        <div className="table-wrap">
          <table className="table" data-testid="reports">
            <thead>
              <tr>
                <th>{t("delivery.report")}</th>
                <th>{t("delivery.study")}</th>
                <th>{t("delivery.status")}</th>
                <th>{t("delivery.delivery")}</th>
                <th>{t("delivery.lastAttempt")}</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {reports.map((r) => (
                <ReportRow key={r.reportId} report={r} />
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      <MoreButton list={query} label={t("admin.more")} />
    </>
  );
}

export function DeliveryPage() {
  const { t } = useI18n();
  return (
    <Page title={t("delivery.title")}>
      <AdminTabs />
      <TargetForm />
      <Reports />
    </Page>
  );
}
