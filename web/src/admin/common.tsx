// Pieces every admin screen shares: the tab bar between the four screens, the role
// checkboxes, role badges, and a short-lived "saved" notice.
import { useEffect, useState } from "react";
import { Role } from "@gen/medmesh/common/v1/common_pb";
import { Link, useRouter } from "../app/router";
import { useI18n, type MessageKey } from "../i18n";
import "./admin.css";

export const ADMIN_TABS: readonly { path: string; label: MessageKey }[] = [
  { path: "/admin/users", label: "admin.tab.users" },
  { path: "/admin/delivery", label: "admin.tab.delivery" },
  { path: "/admin/models", label: "admin.tab.models" },
  { path: "/admin/dead-letters", label: "admin.tab.deadLetters" },
];

export function AdminTabs() {
  const { t } = useI18n();
  const { pathname } = useRouter();
  return (
    <nav className="admin-tabs" aria-label={t("admin.tabs")}>
      {ADMIN_TABS.map((tab) => (
        <Link
          key={tab.path}
          to={tab.path}
          className={pathname === tab.path ? "active" : undefined}
          aria-current={pathname === tab.path ? "page" : undefined}
        >
          {t(tab.label)}
        </Link>
      ))}
    </nav>
  );
}

/** The roles an admin grants people; ROLE_SERVICE (machine clients) is shown, not offered. */
export const GRANTABLE_ROLES: readonly Role[] = [Role.ADMIN, Role.CLINICIAN, Role.TECHNICIAN, Role.VIEWER];

export function roleLabel(t: (key: MessageKey) => string, role: Role): string {
  return t(`role.${role}` as MessageKey);
}

export function RoleBadges({ roles }: { roles: readonly Role[] }) {
  const { t } = useI18n();
  return (
    <span className="role-badges">
      {roles.map((r) => (
        <span key={r} className={`badge ${r === Role.ADMIN ? "badge-busy" : "badge-neutral"}`} data-role={Role[r]}>
          {roleLabel(t, r)}
        </span>
      ))}
    </span>
  );
}

export function RoleChecks({
  value,
  onChange,
  legend,
  problems = [],
  disabled = false,
}: {
  value: readonly Role[];
  onChange(next: Role[]): void;
  legend: string;
  problems?: readonly string[];
  disabled?: boolean;
}) {
  const { t } = useI18n();
  const toggle = (role: Role, on: boolean) => {
    const next = on ? [...value, role] : value.filter((r) => r !== role);
    onChange([...new Set(next)].sort((a, b) => a - b));
  };
  return (
    <fieldset className={`role-checks${problems.length ? " field-invalid" : ""}`} disabled={disabled}>
      <legend>{legend}</legend>
      {GRANTABLE_ROLES.map((role) => (
        <label key={role} className="check">
          <input type="checkbox" checked={value.includes(role)} onChange={(e) => toggle(role, e.target.checked)} />
          {roleLabel(t, role)}
        </label>
      ))}
      {problems.length ? (
        <ul className="field-errors" data-testid="field-error">
          {problems.map((p) => (
            <li key={p}>{p}</li>
          ))}
        </ul>
      ) : null}
    </fieldset>
  );
}

/** A success message: its key and values, translated when shown (so it follows a language switch). */
export type Notice = readonly [MessageKey, Record<string, string | number>?];

/** A success line that fades out after a few seconds (role="status" for screen readers). */
export function Done({ notice }: { notice: Notice | null }) {
  const { t } = useI18n();
  const [shown, setShown] = useState(notice);
  useEffect(() => {
    setShown(notice);
    if (!notice) return undefined;
    const timer = setTimeout(() => setShown(null), 8000);
    return () => clearTimeout(timer);
  }, [notice]);
  if (!shown) return null;
  return (
    <div className="notice notice-ok" role="status" data-testid="done">
      {t(shown[0], shown[1])}
    </div>
  );
}
