// Data loading and form actions with the app's error policy: UNAVAILABLE is retried with
// backoff while the UI says "service unavailable, retrying"; any other error is shown as a
// DisplayError (with its field violations).
import { useCallback, useEffect, useRef, useState, type DependencyList } from "react";
import { backoffDelay, sleep } from "./backoff";
import { isUnavailable, toDisplayError, type DisplayError } from "./errors";

export interface QueryState<T> {
  data: T | undefined;
  error: DisplayError | null;
  loading: boolean;
  retrying: boolean;
  reload(): void;
}

export function useQuery<T>(load: (signal: AbortSignal) => Promise<T>, deps: DependencyList): QueryState<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<DisplayError | null>(null);
  const [loading, setLoading] = useState(true);
  const [retrying, setRetrying] = useState(false);
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    setLoading(true);
    setError(null);
    (async () => {
      for (let attempt = 0; !signal.aborted; attempt += 1) {
        try {
          const value = await load(signal);
          if (signal.aborted) return;
          setData(value);
          setRetrying(false);
          setLoading(false);
          return;
        } catch (caught) {
          if (signal.aborted) return;
          if (isUnavailable(caught)) {
            setRetrying(true);
            await sleep(backoffDelay(attempt), signal).catch(() => undefined);
            continue;
          }
          setRetrying(false);
          setError(toDisplayError(caught));
          setLoading(false);
          return;
        }
      }
    })();
    return () => controller.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, generation]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { data, error, loading, retrying, reload };
}

export interface ActionState<A extends unknown[], T> {
  run(...args: A): Promise<T | undefined>;
  pending: boolean;
  retrying: boolean;
  error: DisplayError | null;
  setError(error: DisplayError | null): void;
}

/** A form action: retried on UNAVAILABLE (the request was not processed) up to `attempts` times. */
export function useAction<A extends unknown[], T>(
  action: (...args: A) => Promise<T>,
  attempts = 6,
): ActionState<A, T> {
  const [pending, setPending] = useState(false);
  const [retrying, setRetrying] = useState(false);
  const [error, setError] = useState<DisplayError | null>(null);
  const mounted = useRef(true);
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);
  const run = useCallback(
    async (...args: A) => {
      setPending(true);
      setError(null);
      try {
        for (let attempt = 0; ; attempt += 1) {
          try {
            const value = await action(...args);
            return value;
          } catch (caught) {
            if (isUnavailable(caught) && attempt + 1 < attempts && mounted.current) {
              setRetrying(true);
              await sleep(backoffDelay(attempt));
              continue;
            }
            if (mounted.current) setError(toDisplayError(caught));
            return undefined;
          }
        }
      } finally {
        if (mounted.current) {
          setPending(false);
          setRetrying(false);
        }
      }
    },
    [action, attempts],
  );
  return { run, pending, retrying, error, setError };
}

export interface ListPage<T> {
  items: T[];
  next: string;
}

export interface PagedListState<T> extends QueryState<ListPage<T>> {
  /** Every row of the pages loaded so far, in order. */
  items: T[];
  /** True when the server said there is another page. */
  hasMore: boolean;
  /** Load one more page (the pages so far are reloaded with it, so rows stay consistent). */
  more(): void;
}

/**
 * A list read page by page ("More" appends the next page). A change in `deps` (a filter)
 * starts again from the first page in the same render, so a filter change is one load, not two.
 */
export function usePagedList<T>(
  loadPage: (pageToken: string, signal: AbortSignal) => Promise<ListPage<T>>,
  deps: DependencyList,
): PagedListState<T> {
  const [tokens, setTokens] = useState<string[]>([""]);
  const [seenDeps, setSeenDeps] = useState<DependencyList>(deps);
  let current = tokens;
  if (seenDeps.length !== deps.length || seenDeps.some((value, i) => !Object.is(value, deps[i]))) {
    // React's "adjust state while rendering" pattern: re-renders before any effect runs.
    setSeenDeps(deps);
    setTokens([""]);
    current = [""];
  }
  const query = useQuery(
    async (signal) => {
      const items: T[] = [];
      let next = "";
      for (const token of current) {
        const page = await loadPage(token, signal);
        items.push(...page.items);
        next = page.next;
      }
      return { items, next };
    },
    [...deps, current],
  );
  const next = query.data?.next ?? "";
  const more = useCallback(() => {
    if (next) setTokens((previous) => [...previous, next]);
  }, [next]);
  return { ...query, items: query.data?.items ?? [], hasMore: next !== "", more };
}
