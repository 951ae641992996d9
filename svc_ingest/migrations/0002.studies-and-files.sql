-- studies: one examination of one patient in one clinic. patient_ref is the clinic's
-- pseudonymous id (never a name). status is medmesh.common.v1.StudyStatus by number.
CREATE TABLE studies (
    study_id       uuid        PRIMARY KEY,
    clinic_id      text        NOT NULL,
    patient_ref    text        NOT NULL,
    description    text        NOT NULL DEFAULT '',
    status         smallint    NOT NULL,
    failure_reason text        NOT NULL DEFAULT '',
    creator        text        NOT NULL,
    create_time    timestamptz NOT NULL,
    update_time    timestamptz NOT NULL
);

-- ListStudies: clinic-scoped, newest first, keyset pagination on (create_time, study_id).
CREATE INDEX studies_clinic_order_idx ON studies (clinic_id, create_time DESC, study_id DESC);
CREATE INDEX studies_clinic_patient_idx ON studies (clinic_id, patient_ref, create_time DESC);

-- medical_data: the files of a study (images, DICOM, clinical notes). Objects are shared per
-- clinic by content: a second upload of the same bytes to another study of the clinic points
-- at the first upload's object_key instead of storing a copy. status is
-- medmesh.ingest.v1.FileStatus by number, kind medmesh.common.v1.FileKind.
CREATE TABLE medical_data (
    file_id        uuid        PRIMARY KEY,
    study_id       uuid        NOT NULL REFERENCES studies (study_id) ON DELETE CASCADE,
    clinic_id      text        NOT NULL,
    kind           smallint    NOT NULL,
    file_name      text        NOT NULL,
    content_type   text        NOT NULL,
    size_bytes     bigint      NOT NULL,
    sha256         text        NOT NULL DEFAULT '',
    object_key     text        NOT NULL,
    status         smallint    NOT NULL,
    image_width    integer,
    image_height   integer,
    failure_reason text        NOT NULL DEFAULT '',
    job_id         uuid,
    result_id      text        NOT NULL DEFAULT '',
    create_time    timestamptz NOT NULL,
    update_time    timestamptz NOT NULL
);

CREATE INDEX medical_data_study_idx ON medical_data (study_id, create_time, file_id);

-- One stored copy of given bytes per study (1 = PENDING_UPLOAD and 7 = REJECTED hold no
-- accepted bytes yet / any more).
CREATE UNIQUE INDEX medical_data_study_sha_idx ON medical_data (study_id, sha256)
    WHERE status NOT IN (1, 7);

-- De-duplication across the clinic's studies, and "is this object still referenced".
CREATE INDEX medical_data_clinic_sha_idx ON medical_data (clinic_id, sha256) WHERE status NOT IN (1, 7);
CREATE INDEX medical_data_object_idx ON medical_data (object_key);

-- Events from other services already applied (ResultReady, InferenceFailed, ReportReady):
-- JetStream delivers at least once, so the consumer records each event id with its effect.
CREATE TABLE processed_events (
    event_id     text        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
