// Server errors as the browser receives them from the edge (gRPC-Web, status and
// google.rpc.BadRequest details in grpc-status-details-bin) and as the screens show them.
import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { AnySchema, anyPack, type Any } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { fireEvent, screen, waitFor } from "@testing-library/react";
import { BadRequestSchema, QuotaFailureSchema } from "@gen/google/rpc/error_details_pb";
import { ErrorNotice } from "../components/ErrorNotice";
import { ResetPasswordPage } from "../pages/ResetPassword";
import { StudiesPage } from "../pages/Studies";
import { renderWith } from "../test/render";
import { createApi } from "./client";
import { toDisplayError } from "./errors";

const noTokens = { accessToken: () => "", refresh: async () => false };

/** google.rpc.Status bytes, as the services put them in grpc-status-details-bin. */
function statusBytes(code: number, message: string, detail: Any): string {
  const writer = new BinaryWriter();
  writer.tag(1, WireType.Varint).int32(code);
  writer.tag(2, WireType.LengthDelimited).string(message);
  writer.tag(3, WireType.LengthDelimited).bytes(toBinary(AnySchema, detail));
  return btoa(String.fromCharCode(...writer.finish())).replace(/=+$/, "");
}

function statusDetails(code: number, message: string, violations: [string, string][]): string {
  const badRequest = create(BadRequestSchema, {
    fieldViolations: violations.map(([field, description]) => ({ field, description })),
  });
  return statusBytes(code, message, anyPack(BadRequestSchema, badRequest));
}

function frame(flag: number, payload: Uint8Array): Uint8Array {
  const framed = new Uint8Array(5 + payload.length);
  framed[0] = flag;
  new DataView(framed.buffer).setUint32(1, payload.length);
  framed.set(payload, 5);
  return framed;
}

/** A gRPC-Web response: optionally one (empty) message, then a trailer frame. */
function grpcWebResponse(trailers: Record<string, string>, withMessage = false): Response {
  const text = Object.entries(trailers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join("");
  const trailer = frame(0x80, new TextEncoder().encode(text));
  const body = withMessage ? new Uint8Array([...frame(0, new Uint8Array()), ...trailer]) : trailer;
  return new Response(body as Uint8Array<ArrayBuffer>, { status: 200, headers: { "content-type": "application/grpc-web+proto" } });
}

const grpcWebError = (trailers: Record<string, string>) => grpcWebResponse(trailers);

/** A trailers-only gRPC-Web response (what the edge sends when it refuses by itself). */
function trailersOnly(code: number, message: string): Response {
  return new Response(null, {
    status: 200,
    headers: { "content-type": "application/grpc-web+proto", "grpc-status": String(code), "grpc-message": message },
  });
}

describe("errors from the edge", () => {
  it("decodes BadRequest field violations from grpc-status-details-bin", async () => {
    const details = statusDetails(3, "new_password: too short", [["new_password", "must be at least 12 characters"]]);
    const fetchImpl = vi.fn(async () => grpcWebError({ "grpc-status": "3", "grpc-message": "new_password: too short", "grpc-status-details-bin": details }));
    const api = createApi(noTokens, "http://edge.test", fetchImpl);
    const error = await api.auth.resetPassword({ token: "t", newPassword: "short" }).catch(toDisplayError);
    expect(error).toEqual({
      code: Code.InvalidArgument,
      message: "new_password: too short",
      fields: { new_password: ["must be at least 12 characters"] },
    });
  });

  it("puts each violation next to its field, in the user's language around it", async () => {
    window.history.replaceState(null, "", "/reset-password#token=abc");
    const details = statusDetails(3, "weak", [["new_password", "must be at least 12 characters"]]);
    const fetchImpl = vi.fn(async () => grpcWebError({ "grpc-status": "3", "grpc-message": "weak", "grpc-status-details-bin": details }));
    renderWith(<ResetPasswordPage />, createApi(noTokens, "http://edge.test", fetchImpl), "ru");
    expect(window.location.hash).toBe("");
    for (const label of ["Новый пароль", "Повторите новый пароль"]) {
      fireEvent.change(screen.getByLabelText(label), { target: { value: "short" } });
    }
    fireEvent.click(screen.getByRole("button", { name: "Сохранить пароль" }));
    const fieldError = await screen.findByTestId("field-error");
    expect(fieldError.textContent).toBe("must be at least 12 characters");
    expect(fieldError.closest(".field")?.querySelector("input")?.getAttribute("name")).toBe("new_password");
    expect(screen.getByRole("alert").textContent).toContain("Проверьте отмеченные поля.");
    const sent = fetchImpl.mock.calls[0] as unknown as [string, RequestInit];
    expect(sent[0]).toBe("http://edge.test/medmesh.auth.v1.AuthService/ResetPassword");
  });

  it("names the clinic quota a RESOURCE_EXHAUSTED hit, not 'too many requests'", async () => {
    const quota = create(QuotaFailureSchema, {
      violations: [{ subject: "clinics/demo-clinic/pendingUploads", description: "at most 50 uploads in progress; 50 are" }],
    });
    const details = statusBytes(8, "quota exceeded", anyPack(QuotaFailureSchema, quota));
    const fetchImpl = vi.fn(async () => grpcWebError({ "grpc-status": "8", "grpc-message": "quota exceeded", "grpc-status-details-bin": details }));
    const api = createApi(noTokens, "http://edge.test", fetchImpl);
    const error = await api.ingest.listStudies({}).then(
      () => expect.fail("RESOURCE_EXHAUSTED expected"),
      toDisplayError,
    );
    expect(error.quotas).toEqual(["clinics/demo-clinic/pendingUploads: at most 50 uploads in progress; 50 are"]);
    renderWith(<ErrorNotice error={error} />, api, "ru");
    const alert = screen.getByRole("alert").textContent ?? "";
    expect(alert).toContain("Достигнут лимит клиники");
    expect(alert).toContain("clinics/demo-clinic/pendingUploads: at most 50 uploads in progress; 50 are");
    expect(alert).not.toContain("Слишком много запросов");
  });

  it("lists violations that no field of the form claims", () => {
    renderWith(<ErrorNotice error={{ code: Code.InvalidArgument, message: "x", fields: { page_token: ["is not valid"] } }} />);
    expect(screen.getByRole("alert").textContent).toContain("page_token: is not valid");
  });

  it.each([
    [Code.NotFound, "Not found."],
    [Code.PermissionDenied, "You are not allowed to do this."],
    [Code.Internal, "The server failed. Please try again."],
    [Code.DataLoss, "The request failed."],
  ])("shows code %s as a sentence, never a blank page", (code, sentence) => {
    renderWith(<ErrorNotice error={{ code, message: "detail from the server", fields: {} }} />);
    expect(screen.getByRole("alert").textContent).toBe(`${sentence}detail from the server`);
  });

  it("shows UNAVAILABLE as 'service unavailable, retrying' and retries until the service is back", async () => {
    let calls = 0;
    const fetchImpl = vi.fn(async () => {
      calls += 1;
      if (calls <= 1) return trailersOnly(14, "upstream connect error");
      return grpcWebResponse({ "grpc-status": "0" }, true);
    });
    renderWith(<StudiesPage />, createApi(noTokens, "http://edge.test", fetchImpl));
    expect((await screen.findByTestId("unavailable")).textContent).toContain("Service unavailable, retrying…");
    await waitFor(() => expect(screen.queryByTestId("unavailable")).toBeNull(), { timeout: 3000 });
    expect(screen.getByText("No studies yet.")).toBeTruthy();
    expect(calls).toBe(2);
  });
});
