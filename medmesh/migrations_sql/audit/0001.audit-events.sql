-- audit.events: the append-only record of who did what to which study, and which model
-- version produced which result. Shared by all services; written in the same transaction as
-- the change it records (medmesh.audit.record_audit_event). Ids are text because they come
-- from tokens and proto fields as strings.

CREATE TABLE events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    clinic_id     text        NOT NULL,
    actor_user_id text        NOT NULL,
    actor_roles   text[]      NOT NULL DEFAULT '{}',
    action        text        NOT NULL,
    resource      text        NOT NULL,
    study_id      text,
    detail        jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- "What happened in this clinic lately" (every query filters by clinic).
CREATE INDEX events_clinic_time_idx ON events (clinic_id, occurred_at DESC);

-- "The history of this study".
CREATE INDEX events_study_idx ON events (study_id, occurred_at) WHERE study_id IS NOT NULL;

-- Append-only, enforced by the database so that no code path (or operator) can rewrite history.
CREATE FUNCTION reject_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION reject_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION reject_event_change();
