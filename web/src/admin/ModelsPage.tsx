// `/admin/models`: the model registry (ListModels, GetModel): versions, their states and the
// traffic split; SetTrafficSplit, PromoteModelVersion and RollbackModel. The registry is
// shared by every clinic and only the operator clinic's admins may change it; the server
// decides, and after its first PERMISSION_DENIED the change controls are hidden.
import { useEffect, useState, useSyncExternalStore } from "react";
import { AnalysisKind } from "@gen/medmesh/common/v1/common_pb";
import { ModelVersionState, type Model } from "@gen/medmesh/infer/v1/model_pb";
import { Code, type DisplayError } from "../api/errors";
import { useAction, useQuery } from "../api/hooks";
import { useApi, useSession } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { Loading, Page } from "../components/misc";
import { useI18n, type MessageKey } from "../i18n";
import { AdminTabs, Done, type Notice } from "./common";

// Users (by id) whose registry changes the server refused in this page's life: kept in memory
// only, so a new sign-in (or a reload) asks the server again.
const refused = new Set<string>();
const listeners = new Set<() => void>();
const readOnlyStore = {
  subscribe(listener: () => void) {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
  mark(userId: string) {
    refused.add(userId);
    listeners.forEach((l) => l());
  },
};

/** Forget every refusal (tests; a fresh page does the same). */
export function forgetRegistryRefusals(): void {
  refused.clear();
  listeners.forEach((l) => l());
}

/** Whether the server refused this user's registry changes; `error` is the latest change's. */
function useReadOnly(error: DisplayError | null): boolean {
  const { user } = useSession();
  const userId = user?.userId ?? "";
  const readOnly = useSyncExternalStore(readOnlyStore.subscribe, () => refused.has(userId));
  useEffect(() => {
    if (error?.code === Code.PermissionDenied) readOnlyStore.mark(userId);
  }, [error, userId]);
  return readOnly;
}

const STATE_TONE: Record<number, string> = {
  [ModelVersionState.STABLE]: "ok",
  [ModelVersionState.CANARY]: "busy",
  [ModelVersionState.RETIRED]: "neutral",
};

function shortName(model: Model): string {
  return model.name.replace(/^models\//, "");
}

function ModelCard({ listed }: { listed: Model }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const detail = useQuery((signal) => api.models.getModel({ name: listed.name }, { signal }), [api, listed.name]);
  const [changed, setChanged] = useState<Model | null>(null);
  const model = changed ?? detail.data?.model ?? listed;
  // No split set: the stable version serves every study (what the registry's routing does).
  const stableOnly = model.trafficSplit.length === 0 && model.stableVersion > 0n;
  const shares = stableOnly ? [{ version: model.stableVersion, weight: 100 }] : model.trafficSplit;
  const weightOf = (version: bigint) => shares.find((w) => w.version === version)?.weight ?? 0;
  const live = model.versions.filter((v) => v.state !== ModelVersionState.RETIRED);
  const [draft, setDraft] = useState<Record<string, string> | null>(null);
  const [confirmRollback, setConfirmRollback] = useState(false);
  const [done, setDone] = useState<Notice | null>(null);
  const weights = live.map((v) => ({ version: v.version, weight: Number(draft?.[String(v.version)] ?? weightOf(v.version)) }));
  const sum = weights.reduce((total, w) => total + (Number.isFinite(w.weight) ? w.weight : 0), 0);
  const splitValid = sum === 100 && weights.every((w) => Number.isInteger(w.weight) && w.weight >= 0 && w.weight <= 100);

  const wrap = <A extends unknown[]>(call: (...args: A) => Promise<{ model?: Model }>) =>
    async (...args: A) => {
      const response = await call(...args);
      if (response.model) setChanged(response.model);
      return response;
    };
  const promote = useAction(wrap((version: bigint) => api.models.promoteModelVersion({ name: model.name, version })));
  const rollback = useAction(wrap(() => api.models.rollbackModel({ name: model.name })));
  const split = useAction(
    wrap(() => api.models.setTrafficSplit({ name: model.name, trafficSplit: weights.filter((w) => w.weight > 0) })),
  );
  const error = promote.error ?? rollback.error ?? split.error;
  const readOnly = useReadOnly(error);
  const busy = promote.pending || rollback.pending || split.pending;
  const clearErrors = () => [promote, rollback, split].forEach((a) => a.setError(null));

  return (
    <section className="card model-card" data-testid="model" data-model={shortName(model)}>
      <div className="model-head">
        <div>
          <h2 className="mono">{shortName(model)}</h2>
          <div className="muted">{t(`models.kind.${model.kind in AnalysisKind ? model.kind : 0}` as MessageKey)}</div>
        </div>
        <dl className="kv">
          <dt>{t("models.stable")}</dt>
          <dd data-testid="stable-version">{model.stableVersion ? `v${fmt.number(Number(model.stableVersion))}` : t("models.none")}</dd>
          <dt>{t("models.previous")}</dt>
          <dd>{model.previousStableVersion ? `v${fmt.number(Number(model.previousStableVersion))}` : t("models.none")}</dd>
          <dt>{t("models.updated")}</dt>
          <dd>{fmt.dateTime(model.updateTime)}</dd>
        </dl>
      </div>
      <ErrorNotice error={detail.error} retrying={detail.retrying} />
      <ErrorNotice error={error} />
      <Done notice={done} />
      <div className="table-wrap">
        <table className="table" data-testid="versions">
          <thead>
            <tr>
              <th>{t("models.version")}</th>
              <th>{t("models.state")}</th>
              <th className="num">{t("models.weight")}</th>
              <th className="num">{t("models.results")}</th>
              <th className="num">{t("models.byArm")}</th>
              <th>{t("models.preprocessing")}</th>
              <th className="num">{t("models.labels")}</th>
              <th>{t("models.created")}</th>
              {readOnly ? null : <th />}
            </tr>
          </thead>
          <tbody>
            {model.versions.map((v) => (
              <tr key={String(v.version)} data-testid="version-row" data-version={String(v.version)}>
                <td className="mono">v{fmt.number(Number(v.version))}</td>
                <td>
                  <span className={`badge badge-${STATE_TONE[v.state] ?? "neutral"}`} data-state={ModelVersionState[v.state]}>
                    {t(`models.state.${v.state}` as MessageKey)}
                  </span>
                </td>
                <td className="num">{fmt.percent(weightOf(v.version) / 100)}</td>
                <td className="num" data-testid="result-count">{fmt.number(Number(v.resultCount))}</td>
                <td className="num nowrap" data-testid="arm-counts">
                  {`${fmt.number(Number(v.stableResultCount))} / ${fmt.number(Number(v.canaryResultCount))}`}
                </td>
                <td className="mono">{v.preprocessingVersion || "—"}</td>
                <td className="num">{fmt.number(v.labels.length)}</td>
                <td className="nowrap">{fmt.dateTime(v.createTime)}</td>
                {readOnly ? null : (
                  <td className="actions">
                    {v.state !== ModelVersionState.STABLE ? (
                      <button
                        type="button"
                        className="button button-small"
                        disabled={busy}
                        data-testid="promote"
                        onClick={async () => {
                          clearErrors();
                          if (await promote.run(v.version)) setDone(["models.promoted", { version: fmt.number(Number(v.version)) }]);
                        }}
                      >
                        {t("models.promote")}
                      </button>
                    ) : null}
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <h3 className="split-title">{t("models.splitTitle")}</h3>
      <div className="split-bar" aria-hidden="true">
        {shares.map((w) => (
          <span key={String(w.version)} style={{ width: `${w.weight}%` }} title={`v${w.version}: ${w.weight}%`} />
        ))}
      </div>
      <p className="muted" data-testid="split">
        {shares.map((w) => `v${fmt.number(Number(w.version))} ${fmt.percent(w.weight / 100)}`).join(" · ") || "—"}
        {stableOnly ? ` (${t("models.stableOnly")})` : null}
      </p>
      <p className="field-hint">{t("models.armCounts")}</p>
      {readOnly ? (
        <div className="notice notice-warn" role="status" data-testid="models-read-only">
          {t("models.readOnly")}
        </div>
      ) : (
        <>
          <p className="field-hint">{t("models.splitHint")}</p>
          <form
            className="split"
            data-testid="split-form"
            onSubmit={async (event) => {
              event.preventDefault();
              clearErrors();
              if (await split.run()) {
                setDraft(null);
                setDone(["models.splitSaved"]);
              }
            }}
          >
            {live.map((v) => (
              <label key={String(v.version)}>
                v{fmt.number(Number(v.version))} (%)
                <input
                  type="number"
                  min={0}
                  max={100}
                  step={1}
                  inputMode="numeric"
                  value={draft?.[String(v.version)] ?? String(weightOf(v.version))}
                  onChange={(e) => {
                    const value = e.target.value;
                    setDraft((d) => ({ ...(d ?? Object.fromEntries(weights.map((w) => [String(w.version), String(w.weight)]))), [String(v.version)]: value }));
                  }}
                />
              </label>
            ))}
            <span className={`split-sum${splitValid ? "" : " bad"}`} data-testid="split-sum">
              {splitValid ? t("models.splitSum", { sum: fmt.number(sum) }) : `${t("models.splitSum", { sum: fmt.number(sum) })} — ${t("models.splitMustBe100")}`}
            </span>
            <button type="submit" className="button button-primary" disabled={!splitValid || busy}>
              {t("models.saveSplit")}
            </button>
            {model.previousStableVersion ? (
              confirmRollback ? (
                <span className="form-actions">
                  <span className="muted">{t("models.confirmRollback", { model: shortName(model), version: fmt.number(Number(model.previousStableVersion)) })}</span>
                  <button
                    type="button"
                    className="button button-danger"
                    disabled={busy}
                    data-testid="confirm-rollback"
                    onClick={async () => {
                      setConfirmRollback(false);
                      clearErrors();
                      const target = fmt.number(Number(model.previousStableVersion));
                      if (await rollback.run()) setDone(["models.rolledBack", { version: target }]);
                    }}
                  >
                    {t("models.confirm")}
                  </button>
                  <button type="button" className="button" onClick={() => setConfirmRollback(false)}>
                    {t("admin.cancel")}
                  </button>
                </span>
              ) : (
                <button type="button" className="button button-danger" disabled={busy} onClick={() => setConfirmRollback(true)} data-testid="rollback">
                  {t("models.rollback", { version: fmt.number(Number(model.previousStableVersion)) })}
                </button>
              )
            ) : null}
          </form>
        </>
      )}
    </section>
  );
}

export function ModelsPage() {
  const { t } = useI18n();
  const api = useApi();
  const query = useQuery((signal) => api.models.listModels({ pageSize: 100 }, { signal }), [api]);
  const models = query.data?.models ?? [];
  return (
    <Page title={t("models.title")}>
      <AdminTabs />
      <ErrorNotice error={query.error} retrying={query.retrying} />
      {query.loading && !query.data && !query.retrying ? <Loading /> : null}
      {query.data && models.length === 0 ? <p className="muted">{t("models.empty")}</p> : null}
      {models.map((m) => (
        <ModelCard key={m.name} listed={m} />
      ))}
    </Page>
  );
}
