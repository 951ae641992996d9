-- The transactional outbox (medmesh/outbox.py): ResultReady, StudyResultsReady and
-- InferenceFailed events written in the transaction that stores the result (or indexes the
-- dead letter); the relay publishes them with Nats-Msg-Id = id.
CREATE TABLE outbox (
    id           uuid        PRIMARY KEY,
    seq          bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    subject      text        NOT NULL,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (seq) WHERE published_at IS NULL;
