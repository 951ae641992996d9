import { useState, type FormEvent } from "react";
import { Code } from "@connectrpc/connect";
import { useAction } from "../api/hooks";
import { Link, useRouter } from "../app/router";
import { HOME } from "../app/routes";
import { useSession } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { TextField } from "../components/Field";
import { useI18n } from "../i18n";

export function SignInPage() {
  const { t } = useI18n();
  const { session } = useSession();
  const { navigate } = useRouter();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const login = useAction((e: string, p: string) => session.login(e, p).then(() => true));
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (await login.run(email, password)) navigate(HOME, { replace: true });
  };
  const wrongCredentials = login.error?.code === Code.Unauthenticated;
  return (
    <div className="auth-card">
      <h1>{t("signIn.title")}</h1>
      <form onSubmit={submit} noValidate>
        <TextField label={t("signIn.email")} field="email" type="email" autoComplete="username" required value={email} onChange={(e) => setEmail(e.target.value)} error={login.error} />
        <TextField label={t("signIn.password")} field="password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} error={login.error} />
        {wrongCredentials ? (
          <div className="notice notice-error" role="alert">
            {t("signIn.failed")}
          </div>
        ) : (
          <ErrorNotice error={login.error} retrying={login.retrying} claimed={["email", "password"]} />
        )}
        <button type="submit" className="button button-primary" disabled={login.pending}>
          {t("signIn.submit")}
        </button>
      </form>
      <p className="auth-links">
        <Link to="/reset-password">{t("signIn.forgot")}</Link>
      </p>
    </div>
  );
}
