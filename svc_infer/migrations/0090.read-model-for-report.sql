-- Read model for svc_report (a contract, owned by svc_infer): what a report needs of a
-- result, and nothing else. svc_report reads this view, never infer.results; svc_infer may
-- change its tables freely as long as this view keeps these columns and their meaning.
-- Every svc_report query filters by clinic_id.
CREATE VIEW report_results AS
SELECT
    result_id::text       AS result_id,
    clinic_id,
    study_id,
    file_id,
    kind,                  -- medmesh.common.v1.AnalysisKind by number
    model_name,            -- registry name, without the `models/` prefix
    model_version,
    preprocessing_version,
    arm,                   -- medmesh.infer.v1.TrafficArm by number
    analysis,              -- {"top_k": [{label, score}]} or {"findings": [...], "urgency": {...}, "summary": "..."}
    processed_key,         -- object key in `medical-images-processed`; '' for notes
    create_time
FROM results;

COMMENT ON VIEW report_results IS
    'Contract for svc_report: one row per stored result (medmesh.infer.v1.Result fields plus '
    'the processed image key). Read-only; keep the columns when changing infer.results.';
