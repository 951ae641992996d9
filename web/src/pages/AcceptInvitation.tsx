// `/accept-invitation#token=T`, the page an invitation e-mail links to.
import { useFragmentToken } from "../app/router";
import { useI18n } from "../i18n";

export function AcceptInvitationPage() {
  const { t } = useI18n();
  useFragmentToken();
  return (
    <div className="auth-card">
      <h1>{t("invite.title")}</h1>
      <div className="notice notice-warn">{t("invite.unsupported")}</div>
    </div>
  );
}
