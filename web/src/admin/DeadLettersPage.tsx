// `/admin/dead-letters`: the clinic's jobs that failed their last attempt (ListDeadLetters,
// newest first, optionally one subject), each inspectable (error, attempts, times, the
// payload decoded where it is a known medmesh.events.v1 message) and replayable.
import { Fragment, useMemo, useState, type FormEvent } from "react";
import type { DeadLetter } from "@gen/medmesh/infer/v1/result_pb";
import { useAction, usePagedList } from "../api/hooks";
import { useApi } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { Loading, MoreButton, Page } from "../components/misc";
import { useI18n } from "../i18n";
import { AdminTabs, Done, type Notice } from "./common";
import { decodePayload } from "./payload";

function Inspect({ letter }: { letter: DeadLetter }) {
  const { t, fmt } = useI18n();
  const decoded = useMemo(() => decodePayload(letter.subject, letter.payload), [letter.subject, letter.payload]);
  return (
    <div data-testid="dead-letter-detail">
      <dl className="kv">
        <dt>{t("dead.id")}</dt>
        <dd className="mono">{letter.deadLetterId}</dd>
        <dt>{t("dead.clinic")}</dt>
        <dd className="mono">{letter.clinicId}</dd>
        <dt>{t("dead.error")}</dt>
        <dd className="wrap-anywhere">{letter.error || "—"}</dd>
        <dt>{t("dead.payload")}</dt>
        <dd>
          {decoded ? (
            <>
              <span className="mono">{decoded.typeName}</span>
              <pre className="payload" data-testid="payload">
                {decoded.json}
              </pre>
            </>
          ) : (
            <span className="muted">{t("dead.payloadUnknown", { size: fmt.bytes(letter.payload.length) })}</span>
          )}
        </dd>
      </dl>
    </div>
  );
}

function LetterRow({ letter: initial }: { letter: DeadLetter }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const [letter, setLetter] = useState(initial);
  const [open, setOpen] = useState(false);
  const [done, setDone] = useState<Notice | null>(null);
  const replay = useAction(() => api.infer.replayDeadLetter({ name: letter.name }));
  return (
    <Fragment>
      <tr data-testid="dead-letter" data-id={letter.deadLetterId} className={open ? "expanded" : undefined}>
        <td className="mono">
          {/* Break long subjects after their dots only. */}
          {letter.subject.split(".").map((part, i) => (
            <Fragment key={i}>
              {i > 0 ? "." : null}
              {i > 0 ? <wbr /> : null}
              {part}
            </Fragment>
          ))}
        </td>
        <td className="error-cell">{letter.error.length > 140 ? `${letter.error.slice(0, 140)}…` : letter.error}</td>
        <td className="num">{fmt.number(letter.attempts)}</td>
        <td className="nowrap">{fmt.dateTime(letter.firstFailureTime)}</td>
        <td className="nowrap">{fmt.dateTime(letter.lastFailureTime)}</td>
        <td>
          {letter.replayTime ? (
            <span className="badge badge-ok" data-testid="replayed">
              {t("dead.replayedAt", { time: fmt.dateTime(letter.replayTime) })}
            </span>
          ) : (
            <span className="badge badge-neutral">{t("dead.waiting")}</span>
          )}
        </td>
        <td className="actions">
          <div className="row-actions">
            <button type="button" className="button button-small" aria-expanded={open} onClick={() => setOpen((o) => !o)} data-testid="inspect">
              {open ? t("dead.hide") : t("dead.inspect")}
            </button>
            {letter.replayTime ? null : (
              <button
                type="button"
                className="button button-small button-primary"
                disabled={replay.pending}
                data-testid="replay"
                onClick={async () => {
                  const response = await replay.run();
                  if (response?.deadLetter) {
                    setLetter(response.deadLetter);
                    setDone(["dead.replayed", { subject: response.deadLetter.subject }]);
                  }
                }}
              >
                {t("dead.replay")}
              </button>
            )}
          </div>
          <ErrorNotice error={replay.error} retrying={replay.retrying} />
          <Done notice={done} />
        </td>
      </tr>
      {open ? (
        <tr className="expanded">
          <td colSpan={7}>
            <Inspect letter={letter} />
          </td>
        </tr>
      ) : null}
    </Fragment>
  );
}

export function DeadLettersPage() {
  const { t } = useI18n();
  const api = useApi();
  const [draft, setDraft] = useState("");
  const [subject, setSubject] = useState("");
  const query = usePagedList<DeadLetter>(
    async (pageToken, signal) => {
      const response = await api.infer.listDeadLetters({ pageSize: 50, pageToken, subject }, { signal });
      return { items: response.deadLetters, next: response.nextPageToken };
    },
    [api, subject],
  );
  const apply = (event: FormEvent) => {
    event.preventDefault();
    setSubject(draft.trim());
  };
  const letters = query.items;
  return (
    <Page title={t("dead.title")}>
      <AdminTabs />
      <p className="muted">{t("dead.hint")}</p>
      <form className="filters" onSubmit={apply}>
        <label>
          {t("dead.filter")}
          <input value={draft} onChange={(e) => setDraft(e.target.value)} placeholder={t("dead.filterHint")} autoComplete="off" data-testid="subject-filter" />
        </label>
        <button type="submit" className="button">
          {t("dead.apply")}
        </button>
      </form>
      <ErrorNotice error={query.error} retrying={query.retrying} />
      {query.loading && !query.data && !query.retrying ? <Loading /> : null}
      {query.data && letters.length === 0 ? <p className="muted">{t("dead.empty")}</p> : null}
      {letters.length > 0 ? (
        <div className="table-wrap">
          <table className="table" data-testid="dead-letters">
            <thead>
              <tr>
                <th>{t("dead.subject")}</th>
                <th>{t("dead.error")}</th>
                <th className="num">{t("dead.attempts")}</th>
                <th>{t("dead.first")}</th>
                <th>{t("dead.last")}</th>
                <th>{t("dead.state")}</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {letters.map((l) => (
                <LetterRow key={l.deadLetterId} letter={l} />
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      <MoreButton list={query} label={t("admin.more")} />
    </Page>
  );
}
