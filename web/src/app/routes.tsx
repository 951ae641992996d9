// The route table. A screen is one entry: its path pattern, who may open it, and (optionally)
// its place in the navigation bar. Admin screens add entries here with `access: "admin"`.
import type { ComponentType } from "react";
import { Role } from "@gen/medmesh/common/v1/common_pb";
import type { MessageKey } from "../i18n";
import { matchPath as matchRoute, type Params } from "./router";
import { AcceptInvitationPage } from "../pages/AcceptInvitation";
import { NewStudyPage } from "../pages/NewStudy";
import { ReportPage } from "../pages/Report";
import { ResetPasswordPage } from "../pages/ResetPassword";
import { SignInPage } from "../pages/SignIn";
import { StudiesPage } from "../pages/Studies";
import { StudyDetailPage } from "../pages/StudyDetail";
import { VerifyEmailPage } from "../pages/VerifyEmail";
import { ADMIN_ROUTES } from "../admin/routes";

/** public: anyone; user: any signed-in user; admin: users with one of `roles`. */
export type Access = "public" | "user" | "roles";

export interface RouteDef {
  path: string;
  page: ComponentType<{ params: Params }>;
  access: Access;
  /** With access "roles": the roles that may open it. */
  roles?: readonly Role[];
  /** Shown in the navigation bar under this label. */
  nav?: MessageKey;
  /** The navigation entry is also marked current on addresses under this prefix. */
  navSection?: string;
}

export const ROUTES: RouteDef[] = [
  { path: "/sign-in", page: SignInPage, access: "public" },
  { path: "/verify-email", page: VerifyEmailPage, access: "public" },
  { path: "/reset-password", page: ResetPasswordPage, access: "public" },
  { path: "/accept-invitation", page: AcceptInvitationPage, access: "public" },
  { path: "/studies", page: StudiesPage, access: "user", nav: "nav.studies" },
  { path: "/studies/new", page: NewStudyPage, access: "user", nav: "nav.newStudy" },
  { path: "/studies/:studyId", page: StudyDetailPage, access: "user" },
  { path: "/reports/:reportId", page: ReportPage, access: "user" },
  ...ADMIN_ROUTES,
];

/** Where a signed-in user lands ("/" and after sign-in). */
export const HOME = "/studies";

export function canOpen(route: RouteDef, roles: readonly Role[] | undefined): boolean {
  if (route.access === "public") return true;
  if (!roles) return false;
  if (route.access === "user") return true;
  return (route.roles ?? [Role.ADMIN]).some((r) => roles.includes(r));
}

export function findRoute(pathname: string): { route: RouteDef; params: Params } | null {
  // Literal paths win over patterns (`/studies/new` before `/studies/:studyId`).
  const ordered = [...ROUTES].sort((a, b) => Number(a.path.includes(":")) - Number(b.path.includes(":")));
  for (const route of ordered) {
    const params = matchRoute(route.path, pathname);
    if (params) return { route, params };
  }
  return null;
}
