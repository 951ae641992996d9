// The clinic's studies, newest first, with filters (status; patient reference — sent in the
// request body, never in the address) and live status for the studies still in progress.
import { useCallback, useState, type FormEvent } from "react";
import { StudyStatus } from "@gen/medmesh/common/v1/common_pb";
import type { Study } from "@gen/medmesh/ingest/v1/study_pb";
import { usePagedList } from "../api/hooks";
import { Link } from "../app/router";
import { useApi } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { LiveIndicator } from "../components/LiveIndicator";
import { Loading, MoreButton, Page, StudyStatusBadge } from "../components/misc";
import { useI18n, type MessageKey } from "../i18n";
import { useStudyWatch } from "../study/useWatch";
import { FINAL_STATUSES } from "../study/watch";

/**
 * Streams open at once on this page. Over HTTP/1.1 a browser keeps at most 6 connections to
 * an origin and each stream holds one; the rest of the rows show their listed status.
 */
export const MAX_LIVE_ROWS = 3;

const FILTERABLE = [
  StudyStatus.CREATED,
  StudyStatus.UPLOADED,
  StudyStatus.QUEUED,
  StudyStatus.ANALYSING,
  StudyStatus.RESULT_READY,
  StudyStatus.REPORT_READY,
  StudyStatus.FAILED,
];

function StudyRow({ study, live }: { study: Study; live: boolean }) {
  const { fmt } = useI18n();
  const [status, setStatus] = useState(study.status);
  const onUpdate = useCallback((u: { status: StudyStatus }) => setStatus(u.status), []);
  const watch = useStudyWatch(study.name, onUpdate, live);
  const id = study.studyId;
  return (
    <tr data-testid="study-row" data-study={id}>
      <td>
        <Link to={`/studies/${id}`} className="mono">
          {id.slice(0, 8)}
        </Link>
        {study.description ? <div className="muted">{study.description}</div> : null}
      </td>
      <td>{study.patientRef || "—"}</td>
      <td>
        <StudyStatusBadge status={status} /> {live ? <LiveIndicator state={watch.state} /> : null}
      </td>
      <td>{fmt.dateTime(study.createTime)}</td>
      <td>{fmt.dateTime(study.updateTime)}</td>
    </tr>
  );
}

export function StudiesPage() {
  const { t } = useI18n();
  const api = useApi();
  const [statusFilter, setStatusFilter] = useState<StudyStatus>(StudyStatus.UNSPECIFIED);
  const [patientDraft, setPatientDraft] = useState("");
  const [patientFilter, setPatientFilter] = useState("");
  const query = usePagedList<Study>(
    async (pageToken, signal) => {
      const response = await api.ingest.listStudies(
        { pageSize: 25, pageToken, status: statusFilter, patientRef: patientFilter },
        { signal },
      );
      return { items: response.studies, next: response.nextPageToken };
    },
    [api, statusFilter, patientFilter],
  );
  const apply = (event: FormEvent) => {
    event.preventDefault();
    setPatientFilter(patientDraft.trim());
  };
  const studies = query.items;
  const liveIds = new Set(
    studies.filter((s) => !FINAL_STATUSES.has(s.status)).slice(0, MAX_LIVE_ROWS).map((s) => s.studyId),
  );
  return (
    <Page
      title={t("studies.title")}
      actions={
        <Link to="/studies/new" className="button button-primary">
          {t("nav.newStudy")}
        </Link>
      }
    >
      <form className="filters" onSubmit={apply}>
        <label>
          {t("studies.filterStatus")}
          <select
            value={statusFilter}
            onChange={(e) => {
              setStatusFilter(Number(e.target.value) as StudyStatus);
            }}
            data-testid="status-filter"
          >
            <option value={StudyStatus.UNSPECIFIED}>{t("studies.filterAny")}</option>
            {FILTERABLE.map((s) => (
              <option key={s} value={s}>
                {t(`study.status.${s}` as MessageKey)}
              </option>
            ))}
          </select>
        </label>
        <label>
          {t("studies.filterPatient")}
          <input value={patientDraft} onChange={(e) => setPatientDraft(e.target.value)} autoComplete="off" />
        </label>
        <button type="submit" className="button">
          {t("studies.apply")}
        </button>
      </form>
      <ErrorNotice error={query.error} retrying={query.retrying} />
      {query.loading && !query.data && !query.retrying ? <Loading /> : null}
      {query.data && studies.length === 0 ? <p className="muted">{t("studies.empty")}</p> : null}
      {studies.length > 0 ? (
        <div className="table-wrap">
          <table className="table">
            <thead>
              <tr>
                <th>{t("studies.study")}</th>
                <th>{t("studies.filterPatient")}</th>
                <th>{t("studies.filterStatus")}</th>
                <th>{t("studies.created")}</th>
                <th>{t("studies.updated")}</th>
              </tr>
            </thead>
            <tbody>
              {studies.map((s) => (
                <StudyRow key={s.studyId} study={s} live={liveIds.has(s.studyId)} />
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      <MoreButton list={query} label={t("studies.more")} />
    </Page>
  );
}
