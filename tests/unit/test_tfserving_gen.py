"""gen/tfserving/: TF Serving's gRPC API without TensorFlow (medmesh/codegen_tfserving.py). Every
directory is a regular package (setuptools installs only those), importing it imports no
TensorFlow, and its descriptors are byte for byte those of tensorflow-serving-api (the
`models` extra), so a process that loads both shares one set of message classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "gen" / "tfserving"

# Upstream's descriptors first (tensorflow-serving-api alone in the pool), compared with the
# bytes our modules would add; then ours imported beside theirs: one class per message.
COMPARE = """
import ast, json, sys
from pathlib import Path
from google.protobuf import descriptor_pb2
from medmesh.codegen_tfserving import tfserving_descriptors
theirs = {}
for serialized in tfserving_descriptors():
    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
    theirs[name] = serialized
ours = {}
for path in Path("gen/tfserving").rglob("*_pb2.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            data = node.args[0].value
            ours[descriptor_pb2.FileDescriptorProto.FromString(data).name] = data
from tensorflow_serving.apis import predict_pb2 as upstream
from gen.tfserving.tensorflow_serving.apis import predict_pb2 as generated
print(json.dumps({
    "names": sorted(n for n in theirs if not n.startswith("google/protobuf/")) == sorted(ours),
    "differ": sorted(n for n in ours if ours[n] != theirs.get(n)),
    "one_class": generated.PredictRequest is upstream.PredictRequest,
}))
"""

NO_TENSORFLOW = """
import sys
from gen.tfserving.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
import svc_infer.tfserving
print(sorted(m for m in sys.modules if m.partition(".")[0] in ("tensorflow", "tensorflow_serving")))
"""


def _run(script: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def generated_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(GENERATED).with_suffix("").parts)
        for path in GENERATED.rglob("*_pb2.py")
    )


def test_every_directory_of_gen_tfserving_is_a_package() -> None:
    directories = [
        GENERATED,
        *(p for p in GENERATED.rglob("*") if p.is_dir() and p.name != "__pycache__"),
    ]
    missing = [str(d) for d in directories if not (d / "__init__.py").is_file()]
    assert missing == []


def test_the_services_api_and_every_file_it_imports_are_generated() -> None:
    modules = generated_modules()
    for name in (
        "tensorflow_serving.apis.predict_pb2",
        "tensorflow_serving.apis.prediction_service_pb2",
        "tensorflow_serving.apis.model_service_pb2",
        "tensorflow.core.framework.tensor_pb2",
        "tensorflow.core.protobuf.meta_graph_pb2",
    ):
        assert name in modules
    assert (GENERATED / "tensorflow_serving/apis/prediction_service_pb2_grpc.py").is_file()


def test_importing_the_generated_api_imports_no_tensorflow() -> None:
    assert _run(NO_TENSORFLOW) == "[]"


def test_generated_descriptors_are_tensorflow_servings_own_byte_for_byte() -> None:
    assert json.loads(_run(COMPARE)) == {"names": True, "differ": [], "one_class": True}
