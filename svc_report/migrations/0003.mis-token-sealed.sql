-- The MIS bearer token is a credential: encrypted at rest with svc_report's key-encryption
-- key (medmesh.keyring, MEDMESH_REPORT_KEY_ENCRYPTION_KEY), like svc_auth's signing keys.
-- SQL cannot encrypt (the key is not in the database), so tokens stored in plain text before
-- this migration are sealed by svc_report at start-up (delivery_store.seal_plaintext_tokens),
-- which blanks the old column; every write blanks it too.
ALTER TABLE delivery_targets ADD COLUMN bearer_token_sealed bytea;
COMMENT ON COLUMN delivery_targets.bearer_token IS
    'Legacy plain-text token: always empty once svc_report has started (sealed instead)';
COMMENT ON COLUMN delivery_targets.bearer_token_sealed IS
    'The MIS bearer token, Fernet-encrypted with the key-encryption key; NULL: none';
