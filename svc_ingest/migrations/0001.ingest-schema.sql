-- The ingest schema belongs to svc_ingest alone: studies and their files: upload, validation, storage, outbox.
-- Other services never read it; they learn what they need from events and RPCs.
COMMENT ON SCHEMA ingest IS 'svc_ingest: studies and their files: upload, validation, storage, outbox';
