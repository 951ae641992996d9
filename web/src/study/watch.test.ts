import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { StudyStatus } from "@gen/medmesh/common/v1/common_pb";
import { WatchStudyResponseSchema, type WatchStudyResponse } from "@gen/medmesh/ingest/v1/ingest_service_pb";
import { watchStudy, type WatchState } from "./watch";

const NO_WAIT = { initialMs: 0, maxMs: 0, factor: 2 };

function update(status: StudyStatus): WatchStudyResponse {
  return create(WatchStudyResponseSchema, { study: "studies/s1", status });
}

/** A scripted server: each call of `open` plays the next connection's messages, then its end. */
function script(connections: { send: StudyStatus[]; end?: ConnectError }[]) {
  let calls = 0;
  const open = vi.fn(async function* () {
    const connection = connections[calls++];
    if (!connection) throw new ConnectError("no more connections scripted", Code.Internal);
    for (const status of connection.send) yield update(status);
    if (connection.end) throw connection.end;
  });
  return open;
}

async function run(open: ReturnType<typeof script>, refreshAuth?: () => Promise<boolean>) {
  const states: WatchState[] = [];
  const seen: StudyStatus[] = [];
  await watchStudy({
    open,
    onUpdate: (u) => seen.push(u.status),
    onState: (s) => states.push(s),
    refreshAuth,
    signal: new AbortController().signal,
    backoff: NO_WAIT,
  });
  return { states, seen };
}

describe("watchStudy", () => {
  it("reconnects after a dropped stream and follows the study to its final state", async () => {
    const open = script([
      { send: [StudyStatus.UPLOADED, StudyStatus.QUEUED], end: new ConnectError("connection reset", Code.Unavailable) },
      { send: [StudyStatus.ANALYSING, StudyStatus.RESULT_READY, StudyStatus.REPORT_READY] },
    ]);
    const { states, seen } = await run(open);
    expect(open).toHaveBeenCalledTimes(2);
    expect(seen).toEqual([
      StudyStatus.UPLOADED,
      StudyStatus.QUEUED,
      StudyStatus.ANALYSING,
      StudyStatus.RESULT_READY,
      StudyStatus.REPORT_READY,
    ]);
    expect(states).toEqual(["connecting", "live", "reconnecting", "live", "ended"]);
  });

  it("watches again when a stream ends cleanly before a final state", async () => {
    const open = script([{ send: [StudyStatus.ANALYSING] }, { send: [StudyStatus.FAILED] }]);
    const { states, seen } = await run(open);
    expect(seen).toEqual([StudyStatus.ANALYSING, StudyStatus.FAILED]);
    expect(states.at(-1)).toBe("ended");
  });

  it("keeps retrying while the service stays unavailable", async () => {
    const down = new ConnectError("unavailable", Code.Unavailable);
    const open = script([{ send: [], end: down }, { send: [], end: down }, { send: [], end: down }, { send: [StudyStatus.REPORT_READY] }]);
    const { states } = await run(open);
    expect(open).toHaveBeenCalledTimes(4);
    expect(states).toEqual(["connecting", "reconnecting", "reconnecting", "reconnecting", "live", "ended"]);
  });

  it.each([
    [Code.NotFound, "a study of another clinic"],
    [Code.PermissionDenied, "a pending account"],
  ])("gives up at once on code %s (%s)", async (code) => {
    const open = script([{ send: [], end: new ConnectError("no", code) }]);
    const { states } = await run(open);
    expect(open).toHaveBeenCalledTimes(1);
    expect(states).toEqual(["connecting", "failed"]);
  });

  it("refreshes the access token after UNAUTHENTICATED, then watches again", async () => {
    const refresh = vi.fn(async () => true);
    const open = script([
      { send: [], end: new ConnectError("token expired", Code.Unauthenticated) },
      { send: [StudyStatus.REPORT_READY] },
    ]);
    const { states } = await run(open, refresh);
    expect(refresh).toHaveBeenCalledTimes(1);
    expect(states.at(-1)).toBe("ended");
  });

  it("stops when the screen is left (aborted), without reconnecting", async () => {
    const controller = new AbortController();
    const open = vi.fn(async function* () {
      yield update(StudyStatus.ANALYSING);
      controller.abort();
      throw new ConnectError("aborted", Code.Canceled);
    });
    const states: WatchState[] = [];
    await watchStudy({ open, onUpdate: () => undefined, onState: (s) => states.push(s), signal: controller.signal, backoff: NO_WAIT });
    expect(open).toHaveBeenCalledTimes(1);
    expect(states).toEqual(["connecting", "live"]);
  });
});
