-- Read models for svc_report (a contract, owned by svc_ingest): the study and file facts a
-- report prints. svc_report reads these views, never ingest.studies / ingest.medical_data;
-- svc_ingest may change its tables freely as long as these views keep their columns.
-- Every svc_report query filters by clinic_id.
CREATE VIEW report_studies AS
SELECT
    study_id::text AS study_id,
    clinic_id,
    patient_ref,   -- the clinic's pseudonymous patient id (free text: escape it)
    description,
    status,        -- medmesh.common.v1.StudyStatus by number
    create_time
FROM studies;

CREATE VIEW report_files AS
SELECT
    file_id::text  AS file_id,
    study_id::text AS study_id,
    clinic_id,
    kind,          -- medmesh.common.v1.FileKind by number
    file_name,     -- as uploaded (free text: escape it)
    content_type,
    status,        -- medmesh.ingest.v1.FileStatus by number
    create_time
FROM medical_data;

COMMENT ON VIEW report_studies IS
    'Contract for svc_report: studies (clinic, patient reference, description). Read-only.';
COMMENT ON VIEW report_files IS
    'Contract for svc_report: files of studies (kind, name, status). Read-only.';
