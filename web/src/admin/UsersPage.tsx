// `/admin/users`: the clinic's users (ListUsers, with the approval filter for the accounts
// waiting for an admin), approve, change roles, disable; and the invitation form (InviteUser).
import { useState, type FormEvent } from "react";
import { ApprovalState, type User } from "@gen/medmesh/auth/v1/user_pb";
import { Role } from "@gen/medmesh/common/v1/common_pb";
import { violationsOf } from "../api/errors";
import { useAction, usePagedList } from "../api/hooks";
import { useApi, useSession } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { TextField } from "../components/Field";
import { Loading, MoreButton, Page } from "../components/misc";
import { useI18n } from "../i18n";
import { AdminTabs, Done, type Notice, RoleBadges, RoleChecks } from "./common";

function StateBadge({ user }: { user: User }) {
  const { t } = useI18n();
  if (user.disabled) return <span className="badge badge-bad">{t("users.disabled")}</span>;
  if (user.approvalState === ApprovalState.PENDING) return <span className="badge badge-busy">{t("users.pending")}</span>;
  return <span className="badge badge-ok">{t("users.approved")}</span>;
}

function UserRow({ user, self, onChanged }: { user: User; self: boolean; onChanged(notice: Notice): void }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const [editing, setEditing] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const [roles, setRoles] = useState<Role[]>(user.roles);
  const [empty, setEmpty] = useState(false);
  const name = user.displayName || user.email;
  const setUserRoles = useAction((next: Role[]) => api.auth.setUserRoles({ name: user.name, roles: next }));
  const approve = useAction(() => api.auth.approveUser({ name: user.name }));
  const disable = useAction(() => api.auth.disableUser({ name: user.name }));
  const error = setUserRoles.error ?? approve.error ?? disable.error;
  const busy = setUserRoles.pending || approve.pending || disable.pending;

  const saveRoles = async () => {
    setEmpty(roles.length === 0);
    if (roles.length === 0) return;
    if (await setUserRoles.run(roles)) {
      setEditing(false);
      onChanged(["users.rolesDone", { name }]);
    }
  };
  const startEditing = () => {
    setRoles(user.roles);
    setEmpty(false);
    setUserRoles.setError(null);
    setEditing(true);
  };
  const roleProblems = [...(empty ? [t("users.noRoles")] : []), ...violationsOf(setUserRoles.error, "roles")];
  return (
    <tr data-testid="user-row" data-email={user.email} className={editing ? "editing" : undefined}>
      <td>
        <strong>{user.displayName || "—"}</strong>
        {self ? <span className="muted"> ({t("users.you")})</span> : null}
        <div className="user-email">{user.email}</div>
      </td>
      <td>
        {editing ? (
          <div className="row-editor">
            <RoleChecks legend={t("users.roles")} value={roles} onChange={setRoles} problems={roleProblems} disabled={busy} />
            <div className="field-hint">{t("users.rolesHint")}</div>
          </div>
        ) : (
          <span data-testid="user-roles">
            <RoleBadges roles={user.roles} />
          </span>
        )}
        {error ? <ErrorNotice error={error} claimed={editing ? ["roles"] : []} /> : null}
      </td>
      <td>
        <StateBadge user={user} />
        {!user.emailVerified ? <div className="muted">{t("users.unverified")}</div> : null}
      </td>
      <td>{fmt.dateTime(user.createTime)}</td>
      <td className="actions">
        <div className="row-actions">
          {editing ? (
            <>
              <button type="button" className="button button-small button-primary" disabled={busy} onClick={() => void saveRoles()} data-testid="save-roles">
                {t("users.saveRoles")}
              </button>
              <button type="button" className="button button-small" onClick={() => setEditing(false)}>
                {t("admin.cancel")}
              </button>
            </>
          ) : confirming ? (
            <>
              <span className="muted">{t("users.confirmDisable", { name })}</span>
              <button
                type="button"
                className="button button-small button-danger"
                disabled={busy}
                data-testid="confirm-disable"
                onClick={async () => {
                  setConfirming(false);
                  if (await disable.run()) onChanged(["users.disabledDone", { name }]);
                }}
              >
                {t("users.confirm")}
              </button>
              <button type="button" className="button button-small" onClick={() => setConfirming(false)}>
                {t("admin.cancel")}
              </button>
            </>
          ) : (
            <>
              {user.approvalState === ApprovalState.PENDING && !user.disabled ? (
                <button
                  type="button"
                  className="button button-small button-primary"
                  disabled={busy}
                  data-testid="approve"
                  onClick={async () => {
                    if (await approve.run()) onChanged(["users.approvedDone", { name }]);
                  }}
                >
                  {t("users.approve")}
                </button>
              ) : null}
              {!user.disabled ? (
                <button type="button" className="button button-small" disabled={busy} onClick={startEditing} data-testid="change-roles">
                  {t("users.changeRoles")}
                </button>
              ) : null}
              {!user.disabled && !self ? (
                <button type="button" className="button button-small button-danger" disabled={busy} onClick={() => setConfirming(true)} data-testid="disable">
                  {t("users.disable")}
                </button>
              ) : null}
            </>
          )}
        </div>
      </td>
    </tr>
  );
}

function InviteForm({ onInvited }: { onInvited(notice: Notice): void }) {
  const { t, fmt } = useI18n();
  const api = useApi();
  const [email, setEmail] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [roles, setRoles] = useState<Role[]>([Role.CLINICIAN]);
  const invite = useAction(() => api.auth.inviteUser({ email: email.trim(), displayName: displayName.trim(), roles }));
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const response = await invite.run();
    if (response?.invitation) {
      onInvited(["users.invited", { email: response.invitation.email, until: fmt.dateTime(response.invitation.expireTime) }]);
      setEmail("");
      setDisplayName("");
    }
  };
  return (
    <form className="card" onSubmit={submit} noValidate data-testid="invite-form">
      <h2>{t("users.inviteTitle")}</h2>
      <p className="muted">{t("users.inviteHint")}</p>
      <TextField label={t("users.inviteEmail")} field="email" type="email" autoComplete="off" value={email} onChange={(e) => setEmail(e.target.value)} error={invite.error} />
      <TextField label={t("users.inviteName")} field="display_name" autoComplete="off" value={displayName} onChange={(e) => setDisplayName(e.target.value)} error={invite.error} />
      <RoleChecks legend={t("users.roles")} value={roles} onChange={setRoles} problems={violationsOf(invite.error, "roles")} />
      <ErrorNotice error={invite.error} retrying={invite.retrying} claimed={["email", "display_name", "roles"]} />
      <button type="submit" className="button button-primary" disabled={invite.pending}>
        {t("users.inviteSubmit")}
      </button>
    </form>
  );
}

const FILTERS: readonly [ApprovalState, "users.filterAll" | "users.filterPending" | "users.filterApproved"][] = [
  [ApprovalState.UNSPECIFIED, "users.filterAll"],
  [ApprovalState.PENDING, "users.filterPending"],
  [ApprovalState.APPROVED, "users.filterApproved"],
];

export function UsersPage() {
  const { t } = useI18n();
  const api = useApi();
  const { user: me } = useSession();
  const [approvalState, setApprovalState] = useState(ApprovalState.UNSPECIFIED);
  const [done, setDone] = useState<Notice | null>(null);
  const query = usePagedList<User>(
    async (pageToken, signal) => {
      const response = await api.auth.listUsers({ pageSize: 100, pageToken, approvalState }, { signal });
      return { items: response.users, next: response.nextPageToken };
    },
    [api, approvalState],
  );
  const changed = (notice: Notice) => {
    setDone(notice);
    query.reload();
  };
  const users = query.items;
  return (
    <Page title={t("users.title")}>
      <AdminTabs />
      <Done notice={done} />
      <div className="admin-grid">
        <div>
          <div className="filters">
            <label>
              {t("users.filter")}
              <select
                value={approvalState}
                data-testid="approval-filter"
                onChange={(e) => {
                  setApprovalState(Number(e.target.value) as ApprovalState);
                }}
              >
                {FILTERS.map(([state, label]) => (
                  <option key={state} value={state}>
                    {t(label)}
                  </option>
                ))}
              </select>
            </label>
          </div>
          <ErrorNotice error={query.error} retrying={query.retrying} />
          {query.loading && !query.data && !query.retrying ? <Loading /> : null}
          {query.data && users.length === 0 ? <p className="muted">{t("users.empty")}</p> : null}
          {users.length > 0 ? (
            <div className="table-wrap">
              <table className="table" data-testid="users">
                <thead>
                  <tr>
                    <th>{t("users.user")}</th>
                    <th>{t("users.roles")}</th>
                    <th>{t("users.state")}</th>
                    <th>{t("users.created")}</th>
                    <th className="actions">{t("users.actions")}</th>
                  </tr>
                </thead>
                <tbody>
                  {users.map((u) => (
                    // The key carries update_time: a changed user is a fresh row (no stale editor).
                    <UserRow key={`${u.userId}:${u.updateTime?.seconds ?? 0}:${u.updateTime?.nanos ?? 0}`} user={u} self={u.userId === me?.userId} onChanged={changed} />
                  ))}
                </tbody>
              </table>
            </div>
          ) : null}
          <MoreButton list={query} label={t("admin.more")} />
        </div>
        <InviteForm onInvited={changed} />
      </div>
    </Page>
  );
}
