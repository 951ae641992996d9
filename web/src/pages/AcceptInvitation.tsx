// `/accept-invitation#token=T`, the page an invitation e-mail links to: choose a name and a
// password; the account is verified and approved with the invitation's roles.
import { useState, type FormEvent } from "react";
import { useAction } from "../api/hooks";
import { Link, useFragmentToken } from "../app/router";
import { useApi } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { TextField } from "../components/Field";
import { useI18n } from "../i18n";

export function AcceptInvitationPage() {
  const token = useFragmentToken();
  return <AcceptInvitationForm key={token} token={token} />;
}

function AcceptInvitationForm({ token }: { token: string }) {
  const { t } = useI18n();
  const api = useApi();
  const [displayName, setDisplayName] = useState("");
  const [password, setPassword] = useState("");
  const [confirm, setConfirm] = useState("");
  const [mismatch, setMismatch] = useState(false);
  const [done, setDone] = useState(false);
  const accept = useAction((p: string) =>
    api.auth.acceptInvitation({ token, password: p, displayName }).then(() => true),
  );
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setMismatch(password !== confirm);
    if (password !== confirm) return;
    if (await accept.run(password)) setDone(true);
  };
  return (
    <div className="auth-card">
      <h1>{t("invite.title")}</h1>
      {!token ? <div className="notice notice-error">{t("verify.missingToken")}</div> : null}
      {done ? (
        <div className="notice notice-ok" role="status" data-testid="invitation-accepted">
          {t("invite.done")}
        </div>
      ) : token ? (
        <form onSubmit={submit} noValidate>
          <p className="muted">{t("invite.hint")}</p>
          <TextField label={t("invite.displayName")} field="display_name" autoComplete="name" value={displayName} onChange={(e) => setDisplayName(e.target.value)} error={accept.error} />
          <TextField label={t("reset.newPassword")} field="password" type="password" autoComplete="new-password" required value={password} onChange={(e) => setPassword(e.target.value)} error={accept.error} />
          <TextField label={t("reset.confirmPassword")} field="confirm_password" type="password" autoComplete="new-password" required value={confirm} onChange={(e) => setConfirm(e.target.value)} problems={mismatch ? [t("reset.mismatch")] : []} />
          <ErrorNotice error={accept.error} retrying={accept.retrying} claimed={["password", "display_name"]} />
          <button type="submit" className="button button-primary" disabled={accept.pending}>
            {t("invite.submit")}
          </button>
        </form>
      ) : null}
      <p className="auth-links">
        <Link to="/sign-in">{t("verify.continue")}</Link>
      </p>
    </div>
  );
}
