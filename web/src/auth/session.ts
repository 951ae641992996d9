// The signed-in session. The access token lives in memory only (gone on reload); the refresh
// token in sessionStorage, so a reload or a new page in the same tab stays signed in, while
// closing the tab ends the session and other tabs/sites cannot see it (see README: tokens).
// Never localStorage, never a cookie, never the URL.
import { Code, ConnectError } from "@connectrpc/connect";
import type { User } from "@gen/medmesh/auth/v1/user_pb";
import type { Api, TokenSource } from "../api/client";

const REFRESH_KEY = "medmesh.refreshToken";

export type SessionStatus = "restoring" | "signedOut" | "signedIn";

export interface SessionSnapshot {
  status: SessionStatus;
  user: User | null;
}

interface TokenPair {
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
}

export class Session implements TokenSource {
  private access = "";
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private inflight: Promise<boolean> | null = null;
  private api: Api | null = null;
  private snapshot: SessionSnapshot = { status: "restoring", user: null };
  private readonly listeners = new Set<() => void>();

  constructor(private readonly storage: Storage = window.sessionStorage) {}

  attach(api: Api): void {
    this.api = api;
  }

  private get client(): Api {
    if (!this.api) throw new Error("Session.attach(api) first");
    return this.api;
  }

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getSnapshot = (): SessionSnapshot => this.snapshot;

  private set(next: SessionSnapshot): void {
    this.snapshot = next;
    this.listeners.forEach((listener) => listener());
  }

  accessToken(): string {
    return this.access;
  }

  hasRole(role: number): boolean {
    return this.snapshot.user?.roles.includes(role) ?? false;
  }

  /** On start: sign back in from the tab's refresh token, if there is one. */
  async restore(): Promise<void> {
    if (!this.storage.getItem(REFRESH_KEY)) {
      this.set({ status: "signedOut", user: null });
      return;
    }
    try {
      if (await this.refresh()) {
        await this.loadUser();
        return;
      }
    } catch {
      // Unreachable service: stay signed out; the sign-in page shows its own errors.
    }
    this.set({ status: "signedOut", user: null });
  }

  async login(email: string, password: string): Promise<void> {
    const response = await this.client.auth.login({ email, password });
    this.keep(response);
    await this.loadUser();
  }

  async logout(): Promise<void> {
    const refreshToken = this.storage.getItem(REFRESH_KEY) ?? "";
    try {
      if (refreshToken) await this.client.auth.logout({ refreshToken });
    } finally {
      this.clear();
    }
  }

  /** Exchange the refresh token for new tokens; concurrent callers share one request. */
  refresh(): Promise<boolean> {
    this.inflight ??= this.doRefresh().finally(() => {
      this.inflight = null;
    });
    return this.inflight;
  }

  private async doRefresh(): Promise<boolean> {
    const refreshToken = this.storage.getItem(REFRESH_KEY);
    if (!refreshToken) return false;
    try {
      this.keep(await this.client.auth.refreshToken({ refreshToken }));
      return true;
    } catch (error) {
      // Revoked or expired: the session is over. Anything else (UNAVAILABLE): keep trying later.
      const code = ConnectError.from(error).code;
      if (code === Code.Unauthenticated || code === Code.PermissionDenied || code === Code.InvalidArgument) {
        this.clear();
        return false;
      }
      throw error;
    }
  }

  private async loadUser(): Promise<void> {
    const { user } = await this.client.auth.getMe({});
    this.set({ status: "signedIn", user: user ?? null });
  }

  private keep(tokens: TokenPair): void {
    this.access = tokens.accessToken;
    if (tokens.refreshToken) this.storage.setItem(REFRESH_KEY, tokens.refreshToken);
    clearTimeout(this.refreshTimer);
    // Refresh a little before the access token expires, so streams and calls never see it lapse.
    const inMs = Math.max(5_000, tokens.expiresIn * 1000 * 0.8);
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch(() => undefined);
    }, inMs);
  }

  private clear(): void {
    clearTimeout(this.refreshTimer);
    this.access = "";
    this.storage.removeItem(REFRESH_KEY);
    this.set({ status: "signedOut", user: null });
  }
}
