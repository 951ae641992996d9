"""The models svc_infer serves: reproducible builds into TF Serving's directory layout.

`build` (TensorFlow) exports ResNet-50 and all-MiniLM-L6-v2; `card` and `text` (no
TensorFlow) are what clients need to call them; `artifacts` moves versions to and from the
`ml-models` bucket. Importing this package imports no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def quiet_tensorflow(environ: MutableMapping[str, str] | None = None) -> None:
    """Hide TensorFlow's C++ info logs (among them a harmless cuInit error on machines
    without a GPU). Entry points call it before their first TensorFlow import; a value the
    user set wins."""
    (os.environ if environ is None else environ).setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
