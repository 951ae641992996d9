// One study: status (live), files, every result with the processed image, scores and the
// model/version/preprocessing that produced it, the note's analysis, reports, audit trail.
import { useCallback, useState } from "react";
import { Code } from "@connectrpc/connect";
import { Role, StudyStatus, type LabelScore } from "@gen/medmesh/common/v1/common_pb";
import type { Result } from "@gen/medmesh/infer/v1/result_pb";
import { TrafficArm } from "@gen/medmesh/infer/v1/result_pb";
import type { WatchStudyResponse } from "@gen/medmesh/ingest/v1/ingest_service_pb";
import { FileStatus, type Study } from "@gen/medmesh/ingest/v1/study_pb";
import { useQuery } from "../api/hooks";
import { Link, type Params } from "../app/router";
import { useApi, useSession } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { LiveIndicator } from "../components/LiveIndicator";
import { FileStatusBadge, Loading, Page, StudyStatusBadge } from "../components/misc";
import { useI18n, type MessageKey } from "../i18n";
import { useStudyWatch } from "../study/useWatch";
import { FINAL_STATUSES } from "../study/watch";

const RESULT_STATUSES: ReadonlySet<StudyStatus> = new Set([StudyStatus.RESULT_READY, StudyStatus.REPORT_READY]);

function Scores({ scores }: { scores: readonly LabelScore[] }) {
  const { fmt } = useI18n();
  return (
    <ul className="scores">
      {scores.map((s) => (
        <li key={s.label}>
          <span>{s.label}</span>
          <span className="num">{fmt.percent(s.score)}</span>
          <div className="score-bar">
            <div style={{ width: `${Math.round(Math.max(0, Math.min(1, s.score)) * 100)}%` }} />
          </div>
        </li>
      ))}
    </ul>
  );
}

function ProcessedImage({ result }: { result: Result }) {
  const { t } = useI18n();
  const api = useApi();
  const image = useQuery((signal) => api.infer.getResultImageUrl({ name: result.name }, { signal }), [api, result.name]);
  if (image.data?.url) return <img src={image.data.url} alt={t("detail.image")} data-testid="processed-image" />;
  return (
    <div className="noimage">
      {image.loading || image.retrying ? t("status.loading") : t("detail.imageUnavailable")}
    </div>
  );
}

function Provenance({ result }: { result: Result }) {
  const { t, fmt } = useI18n();
  return (
    <div className="provenance" data-testid="provenance">
      {t("detail.model")}: <strong>{result.modelName.replace(/^models\//, "")}</strong> {t("detail.version")}{" "}
      {result.modelVersion.toString()} · {t("detail.preprocessing")}: {result.preprocessingVersion}
      {result.arm !== TrafficArm.UNSPECIFIED ? ` · ${t("detail.arm")}: ${TrafficArm[result.arm].toLowerCase()}` : ""}
      {result.timings ? ` · ${t("detail.timings")}: ${fmt.number(result.timings.totalMs, { maximumFractionDigits: 0 })} ms` : ""}
      {" · "}
      {fmt.dateTime(result.createTime)}
    </div>
  );
}

function ResultCard({ result, fileName }: { result: Result; fileName: string }) {
  const { t } = useI18n();
  if (result.analysis.case === "image") {
    return (
      <article className="card result" data-testid="result" data-kind="image">
        <ProcessedImage result={result} />
        <div>
          <h3>
            {t("detail.image")}: {fileName}
          </h3>
          <div className="muted">{t("detail.topK")}</div>
          <Scores scores={result.analysis.value.topK} />
          <Provenance result={result} />
        </div>
      </article>
    );
  }
  if (result.analysis.case === "text") {
    const text = result.analysis.value;
    return (
      <article className="card" data-testid="result" data-kind="text">
        <h3>{t("detail.note")}</h3>
        {text.summary ? (
          <p>
            <strong>{t("detail.summary")}:</strong> {text.summary}
          </p>
        ) : null}
        {text.urgency ? (
          <p>
            <strong>{t("detail.urgency")}:</strong> {text.urgency.label}
          </p>
        ) : null}
        <div className="muted">{t("detail.findings")}</div>
        <Scores scores={text.findings} />
        <Provenance result={result} />
      </article>
    );
  }
  return null;
}

function AuditTrail({ studyName, version }: { studyName: string; version: number }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const audit = useQuery(
    (signal) => api.ingest.listStudyAuditEvents({ parent: studyName, pageSize: 200 }, { signal }),
    [api, studyName, version],
  );
  if (audit.error?.code === Code.PermissionDenied || audit.error?.code === Code.Unimplemented) {
    return <p className="muted">{audit.error.code === Code.Unimplemented ? t("detail.auditUnavailable") : t("error.code.7")}</p>;
  }
  const events = audit.data?.auditEvents ?? [];
  return (
    <>
      <ErrorNotice error={audit.error} retrying={audit.retrying} />
      {audit.data && events.length === 0 ? <p className="muted">{t("detail.auditEmpty")}</p> : null}
      {events.length > 0 ? (
        <div className="table-wrap">
          <table className="table" data-testid="audit">
            <thead>
              <tr>
                <th>{t("detail.auditWhen")}</th>
                <th>{t("detail.auditWho")}</th>
                <th>{t("detail.auditWhat")}</th>
                <th>{t("detail.auditDetail")}</th>
              </tr>
            </thead>
            <tbody>
              {events.map((e) => (
                <tr key={e.auditEventId}>
                  <td className="nowrap">{fmt.dateTime(e.eventTime)}</td>
                  <td>
                    <span className="mono nowrap" title={e.actor}>
                      {e.actor.startsWith("users/") ? e.actor.slice(6, 14) : e.actor.replace(/^services\//, "")}
                    </span>
                    <div className="muted">{e.actorRoles.map((r) => Role[r].toLowerCase()).join(", ")}</div>
                  </td>
                  <td className="mono nowrap">{e.action}</td>
                  <td className="mono wrap-anywhere">
                    {Object.entries(e.detail)
                      .map(([k, v]) => `${k}=${v}`)
                      .join(" ")}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </>
  );
}

export function StudyDetailPage({ params }: { params: Params }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const { user } = useSession();
  const name = `studies/${params.studyId}`;
  // Bumped by streamed changes that bring something new to read. Reads of results and of the
  // audit trail are themselves audited, so they are re-read only when they can have changed.
  const [resultsVersion, setResultsVersion] = useState(0);
  const [reportsVersion, setReportsVersion] = useState(0);
  const [auditVersion, setAuditVersion] = useState(0);
  const [live, setLive] = useState<Study | null>(null);
  const studyQuery = useQuery((signal) => api.ingest.getStudy({ name }, { signal }), [api, name]);
  const onUpdate = useCallback((update: WatchStudyResponse) => {
    setLive((base) => {
      if (!base) return base;
      const changed = update.file;
      const files = changed
        ? base.files.some((f) => f.name === changed.name)
          ? base.files.map((f) => (f.name === changed.name ? changed : f))
          : [...base.files, changed]
        : base.files;
      return { ...base, status: update.status, files };
    });
    if (update.file?.status === FileStatus.ANALYSED || RESULT_STATUSES.has(update.status)) {
      setResultsVersion((v) => v + 1);
    }
    if (update.status !== update.previousStatus) setReportsVersion((v) => v + 1);
    if (FINAL_STATUSES.has(update.status)) setAuditVersion((v) => v + 1);
  }, []);
  const study = live ?? studyQuery.data?.study ?? null;
  if (!live && studyQuery.data?.study) setLive(studyQuery.data.study);
  const watch = useStudyWatch(name, onUpdate, studyQuery.data !== undefined);
  const results = useQuery((signal) => api.infer.listResults({ parent: name }, { signal }), [api, name, resultsVersion]);
  const reports = useQuery((signal) => api.report.listReports({ study: name }, { signal }), [api, name, reportsVersion]);
  const canAudit = user?.roles.some((r) => r === Role.ADMIN || r === Role.CLINICIAN) ?? false;

  if (studyQuery.error || (studyQuery.loading && !study) || studyQuery.retrying) {
    return (
      <Page title={t("detail.title")}>
        <ErrorNotice error={studyQuery.error} retrying={studyQuery.retrying} />
        {studyQuery.loading && !studyQuery.retrying ? <Loading /> : null}
      </Page>
    );
  }
  if (!study) return null;
  const fileName = (file: string) => study.files.find((f) => f.name === file)?.fileName ?? file.split("/").pop() ?? "";
  return (
    <Page
      title={`${t("detail.title")} ${study.studyId.slice(0, 8)}`}
      actions={
        <>
          <StudyStatusBadge status={study.status} /> <LiveIndicator state={watch.state} />
        </>
      }
    >
      <ErrorNotice error={watch.error} />
      <div className="grid grid-2">
        <section className="card">
          <dl className="kv">
            <dt>{t("detail.patientRef")}</dt>
            <dd>{study.patientRef || "—"}</dd>
            <dt>{t("new.description")}</dt>
            <dd>{study.description || "—"}</dd>
            <dt>{t("studies.created")}</dt>
            <dd>{fmt.dateTime(study.createTime)}</dd>
            <dt>{t("detail.status")}</dt>
            <dd>
              <StudyStatusBadge status={study.status} />
            </dd>
            {study.status === StudyStatus.FAILED && study.failureReason ? (
              <>
                <dt>{t("detail.failure")}</dt>
                <dd>{study.failureReason}</dd>
              </>
            ) : null}
          </dl>
        </section>
        <section className="card">
          <h3>{t("detail.files")}</h3>
          <ul className="scores">
            {study.files.map((f) => (
              <li key={f.name}>
                <span>
                  {f.fileName}
                  <span className="muted">
                    {" "}
                    · {t(`file.kind.${f.kind}` as MessageKey)} · {fmt.bytes(f.sizeBytes)}
                  </span>
                </span>
                <FileStatusBadge status={f.status} />
              </li>
            ))}
          </ul>
        </section>
      </div>

      <h2>{t("detail.reports")}</h2>
      <ErrorNotice error={reports.error} retrying={reports.retrying} />
      {reports.data && reports.data.reports.length === 0 ? <p className="muted">{t("detail.noReports")}</p> : null}
      {reports.data && reports.data.reports.length > 0 ? (
        <div className="table-wrap">
          <table className="table" data-testid="reports">
            <tbody>
              {reports.data.reports.map((r) => (
                <tr key={r.reportId}>
                  <td>{t("report.version", { version: r.version })}</td>
                  <td>{t(`report.status.${r.status}` as MessageKey)}</td>
                  <td>{fmt.dateTime(r.createTime)}</td>
                  <td>
                    <Link to={`/reports/${r.reportId}`} data-testid="open-report">
                      {t("detail.openReport")}
                    </Link>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}

      <h2>{t("detail.results")}</h2>
      <ErrorNotice error={results.error} retrying={results.retrying} />
      {results.data && results.data.results.length === 0 ? <p className="muted">{t("detail.noResults")}</p> : null}
      {results.data?.results.map((r) => <ResultCard key={r.resultId} result={r} fileName={fileName(r.file)} />)}

      {canAudit ? (
        <>
          <h2>{t("detail.audit")}</h2>
          <AuditTrail studyName={name} version={auditVersion} />
        </>
      ) : null}
    </Page>
  );
}
