// Tokens: the access token only in memory, the refresh token only in sessionStorage,
// a refused call refreshed once and retried, sign-out revoking the refresh token.
import { create, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import {
  GetMeResponseSchema,
  LoginResponseSchema,
  LogoutResponseSchema,
  RefreshTokenResponseSchema,
} from "@gen/medmesh/auth/v1/auth_service_pb";
import { ListStudiesResponseSchema } from "@gen/medmesh/ingest/v1/ingest_service_pb";
import { createApi } from "../api/client";
import { Session } from "./session";

/** One gRPC-Web frame: flag byte, big-endian length, payload. */
function framed(flag: number, payload: Uint8Array): number[] {
  const n = payload.length;
  return [flag, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff, ...payload];
}

function reply<D extends DescMessage>(schema: D, init: MessageInitShape<D>, status = 0): Response {
  const trailer = new TextEncoder().encode(`grpc-status: ${status}\r\n`);
  const message = status === 0 ? framed(0, toBinary(schema, create(schema, init))) : [];
  return new Response(new Uint8Array([...message, ...framed(0x80, trailer)]), {
    status: 200,
    headers: { "content-type": "application/grpc-web+proto" },
  });
}

interface Call {
  method: string;
  authorization: string | null;
}

function fakeEdge() {
  const calls: Call[] = [];
  let accessTokens = 0;
  const fetchImpl = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const method = String(input).split("/").pop() ?? "";
    const authorization = new Headers(init?.headers).get("authorization");
    calls.push({ method, authorization });
    switch (method) {
      case "Login":
        return reply(LoginResponseSchema, { accessToken: `access-${++accessTokens}`, refreshToken: "refresh-1", expiresIn: 900 });
      case "RefreshToken":
        return reply(RefreshTokenResponseSchema, { accessToken: `access-${++accessTokens}`, refreshToken: "refresh-2", expiresIn: 900 });
      case "GetMe":
        return reply(GetMeResponseSchema, { user: { email: "a@clinic.example" } });
      case "Logout":
        return reply(LogoutResponseSchema, {});
      case "ListStudies":
        // The first access token has "expired".
        return authorization === "Bearer access-1"
          ? reply(ListStudiesResponseSchema, {}, 16)
          : reply(ListStudiesResponseSchema, {});
      default:
        throw new Error(`unexpected ${method}`);
    }
  });
  return { calls, fetchImpl };
}

describe("the session", () => {
  beforeEach(() => {
    window.sessionStorage.clear();
    window.localStorage.clear();
  });

  it("keeps the access token in memory and the refresh token in sessionStorage only", async () => {
    const edge = fakeEdge();
    const session = new Session(window.sessionStorage);
    session.attach(createApi(session, "http://edge.test", edge.fetchImpl));
    await session.login("a@clinic.example", "pw");
    expect(session.getSnapshot().status).toBe("signedIn");
    expect(window.sessionStorage.getItem("medmesh.refreshToken")).toBe("refresh-1");
    expect(JSON.stringify(window.sessionStorage)).not.toContain("access-");
    expect(window.localStorage.length).toBe(0);
    expect(window.location.href).not.toContain("refresh");
  });

  it("refreshes once after UNAUTHENTICATED and retries the call with the new token", async () => {
    const edge = fakeEdge();
    const session = new Session(window.sessionStorage);
    const api = createApi(session, "http://edge.test", edge.fetchImpl);
    session.attach(api);
    await session.login("a@clinic.example", "pw");
    await api.ingest.listStudies({});
    expect(edge.calls.map((c) => [c.method, c.authorization])).toEqual([
      ["Login", null],
      ["GetMe", "Bearer access-1"],
      ["ListStudies", "Bearer access-1"],
      ["RefreshToken", "Bearer access-1"],
      ["ListStudies", "Bearer access-2"],
    ]);
    expect(window.sessionStorage.getItem("medmesh.refreshToken")).toBe("refresh-2");
  });

  it("restores a session from the tab's refresh token after a reload", async () => {
    window.sessionStorage.setItem("medmesh.refreshToken", "refresh-1");
    const edge = fakeEdge();
    const session = new Session(window.sessionStorage);
    session.attach(createApi(session, "http://edge.test", edge.fetchImpl));
    await session.restore();
    expect(session.getSnapshot().status).toBe("signedIn");
    expect(session.accessToken()).toBe("access-1");
  });

  it("signs out by revoking the refresh token and forgetting both tokens", async () => {
    const edge = fakeEdge();
    const session = new Session(window.sessionStorage);
    session.attach(createApi(session, "http://edge.test", edge.fetchImpl));
    await session.login("a@clinic.example", "pw");
    await session.logout();
    expect(edge.calls.at(-1)?.method).toBe("Logout");
    expect(session.accessToken()).toBe("");
    expect(window.sessionStorage.getItem("medmesh.refreshToken")).toBeNull();
    expect(session.getSnapshot().status).toBe("signedOut");
  });
});
