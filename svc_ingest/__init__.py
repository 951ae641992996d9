"""svc_ingest: studies and their files: upload, validation, storage, outbox."""
