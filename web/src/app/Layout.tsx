// The frame around every screen: brand, navigation (by the route table and the user's roles),
// language switch, the signed-in user and sign-out.
import type { ReactNode } from "react";
import { ApprovalState } from "@gen/medmesh/auth/v1/user_pb";
import { LOCALES, useI18n, type Locale } from "../i18n";
import { Link, useRouter } from "./router";
import { ROUTES, canOpen } from "./routes";
import { useSession } from "./services";

export function Layout({ children }: { children: ReactNode }) {
  const { t, locale, setLocale } = useI18n();
  const { user, session, status } = useSession();
  const { pathname, navigate } = useRouter();
  const signOut = async () => {
    await session.logout().catch(() => undefined);
    navigate("/sign-in", { replace: true });
  };
  const nav = ROUTES.filter((r) => r.nav && canOpen(r, user?.roles));
  return (
    <div className="shell">
      <a className="skip" href="#main">
        {t("nav.skip")}
      </a>
      <header className="topbar">
        <Link to="/" className="brand">
          <span className="brand-mark" aria-hidden="true">
            ✚
          </span>
          <span>{t("app.name")}</span>
          <span className="brand-tagline">{t("app.tagline")}</span>
        </Link>
        {status === "signedIn" ? (
          <nav className="nav" aria-label="main">
            {nav.map((r) => {
              const current = pathname === r.path || (r.navSection !== undefined && pathname.startsWith(r.navSection));
              return (
                <Link key={r.path} to={r.path} className={current ? "active" : undefined} aria-current={current ? "page" : undefined}>
                  {t(r.nav!)}
                </Link>
              );
            })}
          </nav>
        ) : (
          <span className="nav" />
        )}
        <div className="topbar-right">
          <label className="lang">
            <span className="visually-hidden">{t("nav.language")}</span>
            <select value={locale} onChange={(e) => setLocale(e.target.value as Locale)} data-testid="language">
              {LOCALES.map((l) => (
                <option key={l} value={l}>
                  {l === "ru" ? "Русский" : "English"}
                </option>
              ))}
            </select>
          </label>
          {user ? (
            <>
              <span className="user" title={user.email}>
                {user.displayName || user.email}
              </span>
              <button type="button" className="button button-quiet" onClick={signOut}>
                {t("nav.signOut")}
              </button>
            </>
          ) : null}
        </div>
      </header>
      <main id="main" className="main">
        {user?.approvalState === ApprovalState.PENDING ? (
          <div className="notice notice-warn" role="status" data-testid="pending-approval">
            {t("nav.pendingApproval")}
          </div>
        ) : null}
        {children}
      </main>
    </div>
  );
}
