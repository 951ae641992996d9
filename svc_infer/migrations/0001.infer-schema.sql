-- The infer schema belongs to svc_infer alone: inference workers, results and the model registry.
-- Other services never read it; they learn what they need from events and RPCs.
COMMENT ON SCHEMA infer IS 'svc_infer: inference workers, results and the model registry';
