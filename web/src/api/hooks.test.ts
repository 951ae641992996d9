// usePagedList: "More" appends the next page; a filter change starts again from page one
// with one load, not a load of the old pages followed by another.
import { act, renderHook, waitFor } from "@testing-library/react";
import { usePagedList, type ListPage } from "./hooks";

/** A server of 5 rows per filter, 2 per page; the token is the next row's index. */
function fakeServer() {
  const calls: Array<{ filter: string; token: string }> = [];
  const load = async (filter: string, token: string): Promise<ListPage<string>> => {
    calls.push({ filter, token });
    const start = token ? Number(token) : 0;
    const rows = Array.from({ length: 5 }, (_, i) => `${filter}-${i}`).slice(start, start + 2);
    const next = start + 2 < 5 ? String(start + 2) : "";
    return { items: rows, next };
  };
  return { calls, load };
}

describe("usePagedList", () => {
  it("appends the next page when asked for more, and says when there is no more", async () => {
    const server = fakeServer();
    const { result } = renderHook(() => usePagedList((token) => server.load("a", token), ["a"]));
    await waitFor(() => expect(result.current.items).toEqual(["a-0", "a-1"]));
    expect(result.current.hasMore).toBe(true);
    act(() => result.current.more());
    await waitFor(() => expect(result.current.items).toEqual(["a-0", "a-1", "a-2", "a-3"]));
    act(() => result.current.more());
    await waitFor(() => expect(result.current.items).toHaveLength(5));
    expect(result.current.hasMore).toBe(false);
  });

  it("starts from the first page with a single load when a filter changes", async () => {
    const server = fakeServer();
    const { result, rerender } = renderHook(({ filter }) => usePagedList((token) => server.load(filter, token), [filter]), {
      initialProps: { filter: "a" },
    });
    await waitFor(() => expect(result.current.items).toHaveLength(2));
    act(() => result.current.more());
    await waitFor(() => expect(result.current.items).toHaveLength(4));
    server.calls.length = 0;
    rerender({ filter: "b" });
    await waitFor(() => expect(result.current.items).toEqual(["b-0", "b-1"]));
    expect(server.calls).toEqual([{ filter: "b", token: "" }]);
  });
});
