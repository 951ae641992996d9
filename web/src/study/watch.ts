// A study's live status: the WatchStudy server stream (gRPC-Web), re-opened with backoff when
// it drops (UNAVAILABLE when a service restarts, a network blip, a token that expired), until
// the server ends it after the study's final state or the caller aborts. No polling: each
// reconnect starts with the study's current state, so nothing is missed.
import { Code, ConnectError } from "@connectrpc/connect";
import { StudyStatus } from "@gen/medmesh/common/v1/common_pb";
import type { WatchStudyResponse } from "@gen/medmesh/ingest/v1/ingest_service_pb";
import { DEFAULT_BACKOFF, backoffDelay, sleep, type BackoffPolicy } from "../api/backoff";
import { toDisplayError, type DisplayError } from "../api/errors";

export type WatchState = "connecting" | "live" | "reconnecting" | "ended" | "failed";

export interface WatchOptions {
  /** Opens one stream (e.g. `api.ingest.watchStudy({ name }, { signal })`). */
  open(signal: AbortSignal): AsyncIterable<WatchStudyResponse>;
  onUpdate(update: WatchStudyResponse): void;
  onState(state: WatchState, error?: DisplayError): void;
  /** Called after UNAUTHENTICATED, before reconnecting; false ends the watch. */
  refreshAuth?(): Promise<boolean>;
  signal: AbortSignal;
  backoff?: BackoffPolicy;
}

export const FINAL_STATUSES: ReadonlySet<StudyStatus> = new Set([
  StudyStatus.REPORT_READY,
  StudyStatus.FAILED,
]);

// Errors that another attempt cannot fix.
const PERMANENT = new Set([Code.NotFound, Code.PermissionDenied, Code.InvalidArgument, Code.Unimplemented]);

export async function watchStudy(options: WatchOptions): Promise<void> {
  const { signal } = options;
  const policy = options.backoff ?? DEFAULT_BACKOFF;
  let attempt = 0;
  options.onState("connecting");
  while (!signal.aborted) {
    let lastStatus: StudyStatus | undefined;
    try {
      for await (const update of options.open(signal)) {
        if (attempt > 0 || lastStatus === undefined) options.onState("live");
        attempt = 0;
        lastStatus = update.status;
        options.onUpdate(update);
      }
      if (signal.aborted) return;
      if (lastStatus !== undefined && FINAL_STATUSES.has(lastStatus)) {
        options.onState("ended");
        return;
      }
      // Ended early without a final state (a proxy closed it): watch again.
    } catch (error) {
      if (signal.aborted) return;
      const code = ConnectError.from(error).code;
      if (PERMANENT.has(code)) {
        options.onState("failed", toDisplayError(error));
        return;
      }
      if (code === Code.Unauthenticated && !(await options.refreshAuth?.().catch(() => false))) {
        options.onState("failed", toDisplayError(error));
        return;
      }
    }
    options.onState("reconnecting");
    try {
      await sleep(backoffDelay(attempt, policy), signal);
    } catch {
      return;
    }
    attempt += 1;
  }
}
