// `/reset-password`: ask for a reset link; `/reset-password#token=T` (the e-mail's link): set
// the new password.
import { useState, type FormEvent } from "react";
import { useAction } from "../api/hooks";
import { Link, useFragmentToken } from "../app/router";
import { useApi } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { TextField } from "../components/Field";
import { useI18n } from "../i18n";

function RequestReset() {
  const { t } = useI18n();
  const api = useApi();
  const [email, setEmail] = useState("");
  const [sent, setSent] = useState(false);
  const request = useAction((e: string) => api.auth.requestPasswordReset({ email: e }).then(() => true));
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (await request.run(email)) setSent(true);
  };
  return (
    <div className="auth-card">
      <h1>{t("reset.requestTitle")}</h1>
      {sent ? (
        <div className="notice notice-ok" role="status">
          {t("reset.requestSent")}
        </div>
      ) : (
        <form onSubmit={submit} noValidate>
          <p className="muted">{t("reset.requestHint")}</p>
          <TextField label={t("signIn.email")} field="email" type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} error={request.error} />
          <ErrorNotice error={request.error} retrying={request.retrying} claimed={["email"]} />
          <button type="submit" className="button button-primary" disabled={request.pending}>
            {t("reset.requestSubmit")}
          </button>
        </form>
      )}
      <p className="auth-links">
        <Link to="/sign-in">{t("verify.continue")}</Link>
      </p>
    </div>
  );
}

function SetPassword({ token }: { token: string }) {
  const { t } = useI18n();
  const api = useApi();
  const [password, setPassword] = useState("");
  const [confirm, setConfirm] = useState("");
  const [mismatch, setMismatch] = useState(false);
  const [done, setDone] = useState(false);
  const reset = useAction((p: string) => api.auth.resetPassword({ token, newPassword: p }).then(() => true));
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setMismatch(password !== confirm);
    if (password !== confirm) return;
    if (await reset.run(password)) setDone(true);
  };
  return (
    <div className="auth-card">
      <h1>{t("reset.setTitle")}</h1>
      {done ? (
        <div className="notice notice-ok" role="status" data-testid="password-changed">
          {t("reset.done")}
        </div>
      ) : (
        <form onSubmit={submit} noValidate>
          <TextField label={t("reset.newPassword")} field="new_password" type="password" autoComplete="new-password" required value={password} onChange={(e) => setPassword(e.target.value)} error={reset.error} />
          <TextField label={t("reset.confirmPassword")} field="confirm_password" type="password" autoComplete="new-password" required value={confirm} onChange={(e) => setConfirm(e.target.value)} problems={mismatch ? [t("reset.mismatch")] : []} />
          <ErrorNotice error={reset.error} retrying={reset.retrying} claimed={["new_password"]} />
          <button type="submit" className="button button-primary" disabled={reset.pending}>
            {t("reset.setSubmit")}
          </button>
        </form>
      )}
      <p className="auth-links">
        <Link to="/sign-in">{t("verify.continue")}</Link>
      </p>
    </div>
  );
}

export function ResetPasswordPage() {
  const token = useFragmentToken();
  return token ? <SetPassword key={token} token={token} /> : <RequestReset />;
}
