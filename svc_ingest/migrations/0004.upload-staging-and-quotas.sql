-- Presigned uploads (issue 11, item 9). A pending file's object_key is its staging key
-- (staging/<clinic>/<study>/<file>), the only key a client ever gets a presigned PUT URL for.
-- CompleteUpload copies the staged object server-side to a key of its own, recorded here
-- before the copy starts (completion_key, completion_started: a lease, so that a crashed or
-- concurrent completion never leaves an object nobody knows about), validates that copy and
-- makes it the file's object_key. The sweeper deletes pending files older than
-- MEDMESH_INGEST_PENDING_UPLOAD_MAX_AGE_S with both objects.
ALTER TABLE medical_data
    ADD COLUMN completion_key     text,
    ADD COLUMN completion_started timestamptz;

-- Pending uploads per clinic (quota) and the sweeper's scan for abandoned ones.
CREATE INDEX medical_data_pending_idx ON medical_data (clinic_id, create_time) WHERE status = 1;

-- Per-clinic usage (issue 11, item 15): bytes of the distinct objects a clinic stores
-- (de-duplicated copies count once). Changed only in the transaction that commits a new
-- object or deletes a study; its row is also the clinic's lock for the quota checks.
CREATE TABLE clinic_usage (
    clinic_id    text   PRIMARY KEY,
    stored_bytes bigint NOT NULL DEFAULT 0 CHECK (stored_bytes >= 0)
);

INSERT INTO clinic_usage (clinic_id, stored_bytes)
SELECT clinic_id, sum(size_bytes)
FROM (
    SELECT DISTINCT ON (object_key) clinic_id, size_bytes
    FROM medical_data
    WHERE status NOT IN (1, 7)
    ORDER BY object_key
) AS objects
GROUP BY clinic_id;
