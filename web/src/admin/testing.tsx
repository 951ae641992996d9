// Test helpers for the admin screens: a signed-in admin (the session's Login and GetMe are
// scripted) around a screen, and gRPC-Web error responses as the edge sends them.
import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { AnySchema, anyPack } from "@bufbuild/protobuf/wkt";
import { act, render } from "@testing-library/react";
import type { ReactElement } from "react";
import { BadRequestSchema } from "@gen/google/rpc/error_details_pb";
import { UserSchema, ApprovalState } from "@gen/medmesh/auth/v1/user_pb";
import { Role } from "@gen/medmesh/common/v1/common_pb";
import type { Api } from "../api/client";
import { RouterProvider } from "../app/router";
import { ServicesProvider } from "../app/services";
import { Session } from "../auth/session";
import { I18nProvider, type Locale } from "../i18n";

export const ADMIN_USER = create(UserSchema, {
  name: "users/admin-1",
  userId: "admin-1",
  email: "admin@demo-clinic.example",
  displayName: "Demo Admin",
  clinicId: "demo-clinic",
  roles: [Role.ADMIN],
  emailVerified: true,
  approvalState: ApprovalState.APPROVED,
});

/** Renders `ui` for ADMIN_USER, signed in through `api.auth` with a scripted Login/GetMe. */
export async function renderAsAdmin(ui: ReactElement, api: Partial<Api>, locale: Locale = "en") {
  const auth = {
    ...api.auth,
    login: async () => ({ accessToken: "access", refreshToken: "", expiresIn: 900 }),
    getMe: async () => ({ user: ADMIN_USER }),
  };
  const full = { ...api, auth } as unknown as Api;
  const session = new Session(window.sessionStorage);
  session.attach(full);
  await session.login(ADMIN_USER.email, "password");
  // Rendered inside an async act, so the screen's first calls settle before the test looks.
  return act(async () =>
    render(
      <I18nProvider initial={locale}>
        <ServicesProvider services={{ api: full, session }}>
          <RouterProvider>{ui}</RouterProvider>
        </ServicesProvider>
      </I18nProvider>,
    ),
  );
}

/** A trailers-only gRPC-Web error with google.rpc.BadRequest field violations in its details. */
export function grpcWebBadRequest(message: string, violations: [string, string][]): Response {
  const badRequest = create(BadRequestSchema, {
    fieldViolations: violations.map(([field, description]) => ({ field, description })),
  });
  const writer = new BinaryWriter();
  writer.tag(1, WireType.Varint).int32(3);
  writer.tag(2, WireType.LengthDelimited).string(message);
  writer.tag(3, WireType.LengthDelimited).bytes(toBinary(AnySchema, anyPack(BadRequestSchema, badRequest)));
  const details = btoa(String.fromCharCode(...writer.finish())).replace(/=+$/, "");
  return grpcWebError(3, message, { "grpc-status-details-bin": details });
}

/** A trailers-only gRPC-Web error response. */
export function grpcWebError(code: number, message: string, extra: Record<string, string> = {}): Response {
  return new Response(null, {
    status: 200,
    headers: { "content-type": "application/grpc-web+proto", "grpc-status": String(code), "grpc-message": message, ...extra },
  });
}

/** A successful gRPC-Web response carrying one empty (all-default) message. */
export function grpcWebEmpty(): Response {
  const trailer = new TextEncoder().encode("grpc-status: 0\r\n");
  const body = new Uint8Array(10 + trailer.length);
  body[5] = 0x80; // message frame: flag 0, length 0 (bytes 0-4); then the trailer frame
  new DataView(body.buffer).setUint32(6, trailer.length);
  body.set(trailer, 10);
  return new Response(body, { status: 200, headers: { "content-type": "application/grpc-web+proto" } });
}
