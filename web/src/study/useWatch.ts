// React side of watchStudy: the latest update and the stream's state for one study.
import { useEffect, useState } from "react";
import type { WatchStudyResponse } from "@gen/medmesh/ingest/v1/ingest_service_pb";
import type { DisplayError } from "../api/errors";
import { useServices } from "../app/services";
import { watchStudy, type WatchState } from "./watch";

export function useStudyWatch(
  studyName: string,
  onUpdate?: (update: WatchStudyResponse) => void,
  enabled = true,
): { state: WatchState; error: DisplayError | null; last: WatchStudyResponse | null } {
  const { api, session } = useServices();
  const [state, setState] = useState<WatchState>("connecting");
  const [error, setError] = useState<DisplayError | null>(null);
  const [last, setLast] = useState<WatchStudyResponse | null>(null);
  useEffect(() => {
    if (!enabled || !studyName) return;
    const controller = new AbortController();
    void watchStudy({
      open: (signal) => api.ingest.watchStudy({ name: studyName }, { signal }),
      onUpdate: (update) => {
        setLast(update);
        onUpdate?.(update);
      },
      onState: (next, err) => {
        setState(next);
        setError(err ?? null);
      },
      refreshAuth: () => session.refresh(),
      signal: controller.signal,
    });
    return () => controller.abort();
    // onUpdate is read at call time; re-subscribing on each render would restart the stream.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [api, session, studyName, enabled]);
  return { state, error, last };
}
