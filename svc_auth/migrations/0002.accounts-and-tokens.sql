-- Accounts, roles, one-time e-mail tokens, refresh tokens, signing keys and the mail outbox.
-- Unqualified names land in the auth schema (yoyo sets search_path).

-- clinics: the tenants. A user belongs to exactly one; every query filters by it. Clinics are
-- created by the bootstrap (MEDMESH_AUTH_BOOTSTRAP_* or `python -m svc_auth.bootstrap`),
-- never by Register, so a stranger cannot mint a clinic and make themselves its admin.
CREATE TABLE clinics (
    clinic_id    text        PRIMARY KEY CHECK (clinic_id ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    display_name text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- roles: the fixed set of role names that tokens carry (medmesh.identity).
CREATE TABLE roles (
    role        text PRIMARY KEY,
    description text NOT NULL
);

INSERT INTO roles (role, description) VALUES
    ('admin', 'manages the clinic''s users, delivery target, models and dead letters'),
    ('clinician', 'creates and deletes studies, reads results and generates reports'),
    ('technician', 'creates studies and uploads files; reads results and reports'),
    ('viewer', 'reads studies, results and reports and changes nothing'),
    ('service', 'machine clients: integrations and other services');

CREATE TABLE users (
    user_id        uuid        PRIMARY KEY,
    clinic_id      text        NOT NULL REFERENCES clinics (clinic_id),
    email          text        NOT NULL CHECK (email = lower(email)),
    display_name   text        NOT NULL,
    password_hash  text        NOT NULL,
    email_verified boolean     NOT NULL DEFAULT false,
    disabled       boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- ListUsers pages through one clinic oldest first (keyset on created_at, user_id).
CREATE INDEX users_clinic_created_idx ON users (clinic_id, created_at, user_id);

CREATE TABLE user_roles (
    user_id uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    role    text NOT NULL REFERENCES roles (role),
    PRIMARY KEY (user_id, role)
);

-- One-time tokens sent by e-mail (verification, password reset), stored as SHA-256 hashes:
-- a database leak does not hand out working links.
CREATE TABLE email_tokens (
    token_hash bytea       PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    purpose    text        NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE INDEX email_tokens_user_idx ON email_tokens (user_id, purpose);

-- Refresh tokens, stored hashed. Every login starts a family; each RefreshToken marks the
-- presented token rotated and adds its successor to the family. Presenting a rotated token
-- again means it was stolen (or replayed): the whole family is revoked.
CREATE TABLE refresh_tokens (
    token_id      uuid        PRIMARY KEY,
    family_id     uuid        NOT NULL,
    user_id       uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    token_hash    bytea       NOT NULL UNIQUE,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    rotated_at    timestamptz,
    revoked_at    timestamptz,
    revoke_reason text
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_live_idx ON refresh_tokens (user_id) WHERE revoked_at IS NULL;

-- Token signing keys. The private key is encrypted with the key-encryption key from
-- configuration (MEDMESH_AUTH_KEY_ENCRYPTION_KEY) and erased when the key retires; the public
-- key stays in the JWKS until publish_until, when every token it signed has expired.
CREATE TABLE signing_keys (
    kid                   text        PRIMARY KEY,
    alg                   text        NOT NULL CHECK (alg IN ('EdDSA', 'RS256')),
    public_jwk            jsonb       NOT NULL,
    private_key_encrypted bytea,
    created_at            timestamptz NOT NULL DEFAULT now(),
    retired_at            timestamptz,
    publish_until         timestamptz,
    CHECK ((retired_at IS NULL) = (private_key_encrypted IS NOT NULL))
);

-- At most one active key.
CREATE UNIQUE INDEX signing_keys_one_active_idx ON signing_keys ((true)) WHERE retired_at IS NULL;

-- Mail waiting to be sent. Written in the transaction that creates the token it carries, so a
-- registration never commits without its mail (nor the reverse); the sender deletes each row
-- once the SMTP server has accepted it, so plaintext tokens do not linger.
CREATE TABLE mail_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient       text        NOT NULL,
    subject         text        NOT NULL,
    body_text       text        NOT NULL,
    body_html       text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text,
    failed_at       timestamptz
);

CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE failed_at IS NULL;
