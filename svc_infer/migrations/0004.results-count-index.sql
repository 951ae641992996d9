-- The registry's per-version result counts (GetModel, ListModels) are one grouped count of a
-- clinic's results per model: this index answers it from the index alone, without scanning
-- every clinic's results.
CREATE INDEX results_model_count_idx ON results (clinic_id, model_name, model_version, arm);
