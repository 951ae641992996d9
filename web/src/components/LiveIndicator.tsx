import { useI18n } from "../i18n";
import type { WatchState } from "../study/watch";

export function LiveIndicator({ state }: { state: WatchState }) {
  const { t } = useI18n();
  if (state === "ended" || state === "failed") return null;
  const live = state === "live";
  return (
    <span className="live" data-testid="live" data-state={state}>
      <span className={`live-dot${live ? "" : " off"}`} aria-hidden="true" />
      {live ? t("studies.live") : t("studies.reconnecting")}
    </span>
  );
}
