// Server errors as the UI shows them: a status code, a message, and google.rpc.BadRequest
// field violations (decoded from grpc-status-details-bin) keyed by the request field they
// name, so that a form can put each one next to its input, and google.rpc.QuotaFailure
// violations (which clinic quota a RESOURCE_EXHAUSTED hit).
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, QuotaFailureSchema } from "@gen/google/rpc/error_details_pb";

export interface DisplayError {
  code: Code;
  /** The server's message (or the client's, for errors raised in the browser). */
  message: string;
  /** Field path (`email`, `metadata.size_bytes`) → descriptions, from BadRequest. */
  fields: Readonly<Record<string, readonly string[]>>;
  /** Quotas exceeded (`clinics/x/pendingUploads: at most 50 …`); absent when none. */
  quotas?: readonly string[];
}

export function toDisplayError(error: unknown): DisplayError {
  const connectError = ConnectError.from(error);
  const fields: Record<string, string[]> = {};
  for (const detail of connectError.findDetails(BadRequestSchema)) {
    for (const violation of detail.fieldViolations) {
      (fields[violation.field] ??= []).push(violation.description);
    }
  }
  const quotas = connectError
    .findDetails(QuotaFailureSchema)
    .flatMap((detail) => detail.violations.map((v) => `${v.subject}: ${v.description}`));
  const shown: DisplayError = { code: connectError.code, message: connectError.rawMessage, fields };
  return quotas.length > 0 ? { ...shown, quotas } : shown;
}

/** True for errors worth retrying by themselves: the service is (briefly) unreachable. */
export function isUnavailable(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unavailable;
}

/** Violations of `field` and of its sub-fields (`metadata` also takes `metadata.kind`). */
export function violationsOf(error: DisplayError | null | undefined, field: string): string[] {
  if (!error) return [];
  return Object.entries(error.fields)
    .filter(([name]) => name === field || name.endsWith(`.${field}`) || name.startsWith(`${field}.`))
    .flatMap(([, descriptions]) => descriptions);
}

/** Violations no field of the form claims (shown with the form's general error). */
export function unclaimedViolations(
  error: DisplayError | null | undefined,
  claimed: readonly string[],
): string[] {
  if (!error) return [];
  return Object.entries(error.fields)
    .filter(([name]) => !claimed.some((f) => name === f || name.endsWith(`.${f}`) || name.startsWith(`${f}.`)))
    .map(([name, descriptions]) => `${name}: ${descriptions.join("; ")}`);
}

export { Code };
