// One gRPC-Web transport to the edge (same origin as the app) and one typed client per
// service, all generated from proto/ (gen/ts). Every call carries the in-memory access token;
// a unary call refused with UNAUTHENTICATED refreshes the token once and is retried.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "@gen/medmesh/auth/v1/auth_service_pb";
import { InferenceService } from "@gen/medmesh/infer/v1/inference_service_pb";
import { ModelRegistryService } from "@gen/medmesh/infer/v1/model_registry_service_pb";
import { IngestService } from "@gen/medmesh/ingest/v1/ingest_service_pb";
import { ReportService } from "@gen/medmesh/report/v1/report_service_pb";

/** Where the transport gets the bearer token, and how it asks for a fresh one. */
export interface TokenSource {
  accessToken(): string;
  /** Refresh the access token; false when the session is gone (signed out). */
  refresh(): Promise<boolean>;
}

// Calls that must never trigger a refresh (they are how a token is obtained or dropped).
const NO_REFRESH = new Set(["Login", "RefreshToken", "Logout"]);

export function bearerInterceptor(tokens: TokenSource): Interceptor {
  return (next) => async (request) => {
    const token = tokens.accessToken();
    if (token) request.header.set("authorization", `Bearer ${token}`);
    try {
      return await next(request);
    } catch (error) {
      const retry =
        !request.stream &&
        token !== "" &&
        !NO_REFRESH.has(request.method.name) &&
        ConnectError.from(error).code === Code.Unauthenticated &&
        (await tokens.refresh());
      if (!retry) throw error;
      request.header.set("authorization", `Bearer ${tokens.accessToken()}`);
      return await next(request);
    }
  };
}

export interface Api {
  auth: Client<typeof AuthService>;
  ingest: Client<typeof IngestService>;
  infer: Client<typeof InferenceService>;
  models: Client<typeof ModelRegistryService>;
  report: Client<typeof ReportService>;
}

export function createApi(
  tokens: TokenSource,
  baseUrl: string = window.location.origin,
  fetchImpl?: typeof globalThis.fetch,
): Api {
  const transport = createGrpcWebTransport({
    baseUrl,
    interceptors: [bearerInterceptor(tokens)],
    ...(fetchImpl ? { fetch: fetchImpl } : {}),
  });
  return {
    auth: createClient(AuthService, transport),
    ingest: createClient(IngestService, transport),
    infer: createClient(InferenceService, transport),
    models: createClient(ModelRegistryService, transport),
    report: createClient(ReportService, transport),
  };
}
