// The page the verification e-mail links to: `/verify-email#token=T`.
import { useEffect, useRef, useState } from "react";
import { useAction } from "../api/hooks";
import { Link, useFragmentToken } from "../app/router";
import { useApi } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { useI18n } from "../i18n";

export function VerifyEmailPage() {
  const { t } = useI18n();
  const api = useApi();
  const token = useFragmentToken();
  const [done, setDone] = useState(false);
  const verify = useAction((tok: string) => api.auth.verifyEmail({ token: tok }).then(() => true));
  const { run } = verify;
  const sent = useRef("");
  useEffect(() => {
    // Once per token: it is single-use (StrictMode runs effects twice in development).
    if (!token || sent.current === token) return;
    sent.current = token;
    setDone(false);
    void run(token).then((ok) => setDone(Boolean(ok)));
  }, [token, run]);
  return (
    <div className="auth-card" data-testid="verify-email">
      <h1>{t("verify.title")}</h1>
      {!token ? <div className="notice notice-error">{t("verify.missingToken")}</div> : null}
      {token && verify.pending && !verify.retrying ? <p>{t("verify.working")}</p> : null}
      <ErrorNotice error={verify.error} retrying={verify.retrying} />
      {done ? (
        <div className="notice notice-ok" role="status" data-testid="verified">
          {t("verify.done")}
        </div>
      ) : null}
      <p className="auth-links">
        <Link to="/sign-in">{t("verify.continue")}</Link>
      </p>
    </div>
  );
}
