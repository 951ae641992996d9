"""svc_infer: inference workers, results and the model registry."""
