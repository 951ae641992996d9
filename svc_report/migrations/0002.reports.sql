-- svc_report's tables: the reports of each study (history by version), the clinics' MIS
-- delivery targets, deliveries with their attempt receipts, and the outbox.
-- Unqualified names land in the `report` schema (search_path set by the migration runner).

-- One rendered report of one study from one set of results. A new result set makes a new
-- version; the same set never makes a second one (result_set is the sorted ids' SHA-256).
-- status is medmesh.report.v1.ReportStatus by number, delivery_status DeliveryStatus.
CREATE TABLE reports (
    report_id       uuid        PRIMARY KEY,
    clinic_id       text        NOT NULL,
    study_id        text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    status          smallint    NOT NULL,
    failure_reason  text        NOT NULL DEFAULT '',
    result_ids      text[]      NOT NULL,
    result_set      text        NOT NULL,
    requested_by    text        NOT NULL DEFAULT '',
    html            text        NOT NULL DEFAULT '',
    archive_key     text        NOT NULL DEFAULT '',
    sha256          text        NOT NULL DEFAULT '',
    size_bytes      bigint      NOT NULL DEFAULT 0,
    delivery_status smallint    NOT NULL DEFAULT 1,
    notified_at     timestamptz,
    notify_error    text        NOT NULL DEFAULT '',
    create_time     timestamptz NOT NULL DEFAULT now(),
    ready_time      timestamptz,
    update_time     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT reports_study_version_key UNIQUE (study_id, version)
);

-- ListReports: clinic-scoped, newest first, keyset on (create_time, report_id).
CREATE INDEX reports_clinic_order_idx ON reports (clinic_id, create_time DESC, report_id DESC);
CREATE INDEX reports_clinic_study_idx ON reports (clinic_id, study_id, create_time DESC);
-- At most one live (not FAILED = 3) report per study and result set: the idempotency rule.
CREATE UNIQUE INDEX reports_one_per_result_set_idx ON reports (study_id, result_set)
    WHERE status <> 3;

-- Where a clinic's reports are pushed (its MIS's FHIR R4 base URL) and who is mailed.
CREATE TABLE delivery_targets (
    clinic_id     text        PRIMARY KEY,
    fhir_base_url text        NOT NULL,
    bearer_token  text        NOT NULL DEFAULT '',
    enabled       boolean     NOT NULL DEFAULT true,
    notify_emails text[]      NOT NULL DEFAULT '{}',
    updated_by    text        NOT NULL DEFAULT '',
    update_time   timestamptz NOT NULL DEFAULT now()
);

-- One push of one report (DeliverReport, RedeliverReport, or the automatic one after
-- generation). Retries of a delivery share its idempotency key; a redelivery gets a new one.
-- status is medmesh.report.v1.DeliveryStatus by number.
CREATE TABLE deliveries (
    delivery_id     uuid        PRIMARY KEY,
    report_id       uuid        NOT NULL REFERENCES reports (report_id),
    clinic_id       text        NOT NULL,
    idempotency_key text        NOT NULL UNIQUE,
    redelivery      boolean     NOT NULL DEFAULT false,
    status          smallint    NOT NULL,
    mis_id          text        NOT NULL DEFAULT '',
    error           text        NOT NULL DEFAULT '',
    create_time     timestamptz NOT NULL DEFAULT now(),
    finish_time     timestamptz
);

CREATE INDEX deliveries_report_idx ON deliveries (report_id, create_time);

-- One HTTP attempt of a delivery: what the MIS answered (0 when nothing came back).
CREATE TABLE delivery_receipts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     uuid        NOT NULL REFERENCES deliveries (delivery_id),
    report_id       uuid        NOT NULL REFERENCES reports (report_id),
    clinic_id       text        NOT NULL,
    attempt_time    timestamptz NOT NULL,
    http_status     integer     NOT NULL,
    mis_id          text        NOT NULL DEFAULT '',
    error           text        NOT NULL DEFAULT '',
    idempotency_key text        NOT NULL
);

CREATE INDEX delivery_receipts_report_idx ON delivery_receipts (report_id, id);

-- Events from other services already applied (StudyResultsReady): JetStream delivers at
-- least once, so each event id is recorded with its effect.
CREATE TABLE processed_events (
    event_id     text        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- The transactional outbox (medmesh/outbox.py).
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
