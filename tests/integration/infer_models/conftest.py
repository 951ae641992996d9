"""Fixtures of the model tests: the built models and the session's model server
(defined in `support.models`, so other test folders can re-export them the same way)."""

from support.models import model_base_dir, model_server_address  # noqa: F401 - fixtures

from svc_infer.models import quiet_tensorflow

# Before the test modules import TensorFlow: hides the harmless cuInit error without a GPU.
quiet_tensorflow()
