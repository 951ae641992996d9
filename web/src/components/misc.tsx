// Small shared pieces: progress bar, status badges, page frame, error boundary.
import { Component, type ErrorInfo, type ReactNode } from "react";
import { StudyStatus } from "@gen/medmesh/common/v1/common_pb";
import { FileStatus } from "@gen/medmesh/ingest/v1/study_pb";
import { useI18n, type MessageKey } from "../i18n";
import { translator, detectLocale } from "../i18n";

export function ProgressBar({ value, label }: { value: number; label: string }) {
  const percent = Math.max(0, Math.min(100, Math.round(value * 100)));
  return (
    <div className="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={percent}>
      <div className="progress-fill" style={{ width: `${percent}%` }} />
    </div>
  );
}

const STUDY_TONE: Record<number, string> = {
  [StudyStatus.REPORT_READY]: "ok",
  [StudyStatus.RESULT_READY]: "ok",
  [StudyStatus.FAILED]: "bad",
  [StudyStatus.ANALYSING]: "busy",
  [StudyStatus.QUEUED]: "busy",
};

export function StudyStatusBadge({ status }: { status: StudyStatus }) {
  const { t } = useI18n();
  return (
    <span className={`badge badge-${STUDY_TONE[status] ?? "neutral"}`} data-testid="study-status" data-status={StudyStatus[status]}>
      {t(`study.status.${status}` as MessageKey)}
    </span>
  );
}

const FILE_TONE: Record<number, string> = {
  [FileStatus.ANALYSED]: "ok",
  [FileStatus.FAILED]: "bad",
  [FileStatus.REJECTED]: "bad",
  [FileStatus.ANALYSING]: "busy",
  [FileStatus.QUEUED]: "busy",
};

export function FileStatusBadge({ status }: { status: FileStatus }) {
  const { t } = useI18n();
  return <span className={`badge badge-${FILE_TONE[status] ?? "neutral"}`}>{t(`file.status.${status}` as MessageKey)}</span>;
}

export function Page({ title, actions, children }: { title: string; actions?: ReactNode; children: ReactNode }) {
  return (
    <section className="page">
      <header className="page-header">
        <h1>{title}</h1>
        {actions ? <div className="page-actions">{actions}</div> : null}
      </header>
      {children}
    </section>
  );
}

/** "More" under a paged list: shown only while the server has another page. */
export function MoreButton({ list, label }: { list: { hasMore: boolean; more(): void }; label: string }) {
  if (!list.hasMore) return null;
  return (
    <p>
      <button type="button" className="button" onClick={list.more}>
        {label}
      </button>
    </p>
  );
}

export function Loading() {
  const { t } = useI18n();
  return (
    <div className="loading" role="status">
      <span className="spinner" aria-hidden="true" /> {t("status.loading")}
    </div>
  );
}

/** A rendering bug shows a message and a reload button, never a blank page. */
export class ErrorBoundary extends Component<{ children: ReactNode }, { failed: boolean }> {
  state = { failed: false };

  static getDerivedStateFromError() {
    return { failed: true };
  }

  componentDidCatch(_error: unknown, _info: ErrorInfo) {
    // Deliberately not logged: component state may hold patient data.
  }

  render() {
    if (!this.state.failed) return this.props.children;
    const t = translator(detectLocale());
    return (
      <div className="notice notice-error boundary" role="alert">
        <strong>{t("error.title")}</strong>
        <button type="button" className="button" onClick={() => window.location.reload()}>
          {t("error.reload")}
        </button>
      </div>
    );
  }
}
