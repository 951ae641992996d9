-- Self-registration no longer reaches clinic data: a registered account is pending until an
-- admin of its clinic approves it; an admin's invitation creates an approved account.

-- Existing accounts keep the access they have: the column is added with 'approved' filled
-- in. svc_auth always names the state when it inserts a user (svc_auth.store.insert_user
-- has no default), so the column default only serves rows seeded by hand.
ALTER TABLE users
    ADD COLUMN approval_state text NOT NULL DEFAULT 'approved'
        CHECK (approval_state IN ('pending', 'approved')),
    ADD COLUMN approved_at timestamptz;
UPDATE users SET approved_at = created_at;

-- ListUsers filtered to the accounts waiting for approval.
CREATE INDEX users_clinic_pending_idx ON users (clinic_id, created_at, user_id)
    WHERE approval_state = 'pending';

-- Invitations: an admin offers an address a place in the clinic with given roles. The token
-- in the mail is stored as its SHA-256 (a database leak hands out no working links), works
-- once, until expires_at; a newer invitation to the same address revokes the older ones.
CREATE TABLE invitations (
    invitation_id uuid        PRIMARY KEY,
    token_hash    bytea       NOT NULL UNIQUE,
    clinic_id     text        NOT NULL REFERENCES clinics (clinic_id),
    email         text        NOT NULL CHECK (email = lower(email)),
    display_name  text        NOT NULL,
    roles         text[]      NOT NULL CHECK (cardinality(roles) > 0),
    invited_by    uuid        REFERENCES users (user_id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    accepted_user uuid        REFERENCES users (user_id) ON DELETE SET NULL,
    revoked_at    timestamptz
);

CREATE INDEX invitations_open_email_idx ON invitations (email)
    WHERE accepted_at IS NULL AND revoked_at IS NULL;

-- Report-ready mails go to approved accounts only (a pending account may hold the clinician
-- role if an admin set it before approving; it still must not receive patient news).
CREATE OR REPLACE VIEW report_recipients AS
SELECT
    u.clinic_id,
    u.email,
    u.display_name,
    array(
        SELECT r.role FROM user_roles r
        WHERE r.user_id = u.user_id AND r.role IN ('admin', 'clinician')
        ORDER BY r.role
    ) AS roles
FROM users u
WHERE u.email_verified
  AND NOT u.disabled
  AND u.approval_state = 'approved'
  AND EXISTS (
      SELECT 1 FROM user_roles r
      WHERE r.user_id = u.user_id AND r.role IN ('admin', 'clinician')
  );
