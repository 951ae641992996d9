// How a server error looks: a localized sentence for its code, the server's message, and
// field violations no form field claimed. UNAVAILABLE reads "service unavailable, retrying".
import { Code } from "@connectrpc/connect";
import { unclaimedViolations, type DisplayError } from "../api/errors";
import { useI18n, type MessageKey } from "../i18n";

const KNOWN_CODES = new Set([3, 5, 6, 7, 8, 9, 13, 14, 16]);

export function ErrorNotice({
  error,
  retrying = false,
  claimed = [],
}: {
  error?: DisplayError | null;
  retrying?: boolean;
  claimed?: readonly string[];
}) {
  const { t } = useI18n();
  if (retrying || error?.code === Code.Unavailable) {
    return (
      <div className="notice notice-warn" role="status" data-testid="unavailable">
        <span className="spinner" aria-hidden="true" /> {t("status.unavailable")}
      </div>
    );
  }
  if (!error) return null;
  const quotas = error.quotas ?? [];
  if (quotas.length > 0) {
    // A clinic quota, not a rate limit: waiting a moment will not help, so say which quota.
    return (
      <div className="notice notice-error" role="alert" data-testid="error">
        <strong>{t("error.quota")}</strong>
        <ul className="notice-list">
          {quotas.map((line) => (
            <li key={line}>{line}</li>
          ))}
        </ul>
      </div>
    );
  }
  const key = (KNOWN_CODES.has(error.code) ? `error.code.${error.code}` : "error.code.other") as MessageKey;
  const extra = unclaimedViolations(error, claimed);
  return (
    <div className="notice notice-error" role="alert" data-testid="error">
      <strong>{t(key)}</strong>
      {error.message && error.code !== Code.InvalidArgument ? <div className="notice-detail">{error.message}</div> : null}
      {extra.length > 0 ? (
        <ul className="notice-list">
          {extra.map((line) => (
            <li key={line}>{line}</li>
          ))}
        </ul>
      ) : error.code === Code.InvalidArgument && Object.keys(error.fields).length === 0 && error.message ? (
        <div className="notice-detail">{error.message}</div>
      ) : null}
    </div>
  );
}
