"""Export for serving and phones: TF Serving SavedModels, TFLite files, ONNX
files for ONNX Runtime, and frozen TensorFlow functions for fast CPU inference.

Importing this module does not import TensorFlow; each function imports it
when called (exporting always runs TensorFlow, whatever the Keras backend).

Example:

    import keras_metaformer
    from keras_metaformer import export

    model = keras_metaformer.PoolFormerS12(weights="imagenet")
    export.export_saved_model(model, "serving/poolformer_s12", version=1)
    export.export_tflite(model, "poolformer_s12_fp16.tflite", quantize="float16")
    export.export_onnx(model, "poolformer_s12.onnx")
"""

from keras_metaformer.export.frozen import frozen_function
from keras_metaformer.export.onnx import OPSET
from keras_metaformer.export.onnx import export_onnx
from keras_metaformer.export.onnx import onnx_session
from keras_metaformer.export.onnx import run_onnx
from keras_metaformer.export.saved_model import export_saved_model
from keras_metaformer.export.serving import grpc_request
from keras_metaformer.export.serving import rest_request
from keras_metaformer.export.serving import write_models_config
from keras_metaformer.export.serving import write_warmup_requests
from keras_metaformer.export.signatures import CLASSIFY
from keras_metaformer.export.signatures import SERVING_DEFAULT
from keras_metaformer.export.tflite import QUANTIZATIONS
from keras_metaformer.export.tflite import export_tflite
from keras_metaformer.export.tflite import run_tflite
from keras_metaformer.export.tflite import tflite_ops

__all__ = [
    "CLASSIFY",
    "OPSET",
    "QUANTIZATIONS",
    "SERVING_DEFAULT",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "frozen_function",
    "grpc_request",
    "onnx_session",
    "rest_request",
    "run_onnx",
    "run_tflite",
    "tflite_ops",
    "write_models_config",
    "write_warmup_requests",
]
