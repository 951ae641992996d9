"""The model tests use the session's built models and model server (`model_base_dir`,
`model_server_address`), defined once in `tests/conftest.py` from `support.models`."""

from svc_infer.models import quiet_tensorflow

# Before the test modules import TensorFlow: hides the harmless cuInit error without a GPU.
quiet_tensorflow()
