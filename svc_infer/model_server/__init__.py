"""medmesh's own implementation of TensorFlow Serving's gRPC API, for machines without TF Serving.

`tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and
`tensorflow.serving.ModelService` (GetModelStatus, HandleReloadConfigRequest) over TF Serving's
directory layout and `ModelServerConfig`, with the same messages (tensorflow-serving-api) and
the same status codes and error texts. svc_infer's client code is therefore identical against
this server and against a real TF Serving. Importing this package imports no TensorFlow.
"""
