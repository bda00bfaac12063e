"""TF Serving's side files and requests: warm-up records, models.config, REST and gRPC bodies.

The gRPC request and warm-up records use tensorflow-serving-api's protos.
That package requires the full `tensorflow` wheel, so next to
`tensorflow-cpu` install it with `pip install --no-deps tensorflow-serving-api`
(it needs only TensorFlow's protos and grpcio, which TensorFlow brings).
"""

import base64
import os

import numpy as np

from keras_metaformer.export.signatures import CLASSIFY
from keras_metaformer.export.signatures import IMAGE_BYTES
from keras_metaformer.export.signatures import IMAGES
from keras_metaformer.export.signatures import SERVING_DEFAULT

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


MISSING_SERVING_APIS = (
    "Warm-up files and gRPC requests need tensorflow-serving-api's protos. "
    "Install them with `pip install --no-deps tensorflow-serving-api` "
    "(--no-deps: the package asks for the full `tensorflow` wheel, which "
    "would clash with tensorflow-cpu)."
)


def _serving_apis():
    try:
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as error:
        raise ImportError(MISSING_SERVING_APIS, name="tensorflow_serving") from error
    return predict_pb2, prediction_log_pb2


def grpc_request(model_name, signature_name, inputs):
    """A `PredictRequest` for TF Serving's gRPC API (port 8500).

    Args:
        model_name: the name the server knows the model by.
        signature_name: `"serving_default"` or `"classify_images"`.
        inputs: `{input_name: array}`, e.g. `{"images": float32 batch}` or
            `{"image_bytes": [jpeg_bytes, ...]}`.

    Example (with a running server):

        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:8500"))
        request = grpc_request("poolformer_s12", "classify_images", {"image_bytes": [open("cat.jpg", "rb").read()]})
        response = stub.Predict(request, timeout=10.0)
    """
    import tensorflow as tf

    predict_pb2, _ = _serving_apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def rest_request(signature_name, inputs):
    """The JSON body of a TF Serving REST predict request (port 8501), as a dict.

    POST it to `http://HOST:8501/v1/models/NAME:predict`. Row format
    ("instances"): one entry per image; bytes are sent as `{"b64": ...}`, as
    the REST API requires for binary strings.

    Example:

    >>> import numpy as np
    >>> rest_request("classify_images", {"image_bytes": [b"\\xff\\xd8"]})
    {'signature_name': 'classify_images', 'instances': [{'b64': '/9g='}]}
    >>> body = rest_request("serving_default", {"images": np.zeros((1, 2, 2, 3))})
    >>> len(body["instances"]), np.shape(body["instances"][0])
    (1, (2, 2, 3))
    """
    if len(inputs) != 1:
        raise ValueError(f"Both signatures take one input; received {sorted(inputs)}.")
    (value,) = inputs.values()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
        instances = [{"b64": base64.b64encode(item).decode("ascii")} for item in value]
    else:
        instances = np.asarray(value, dtype="float32").tolist()
    return {"signature_name": signature_name, "instances": instances}


def warmup_images(image_size, seed=0):
    """One smooth RGB test image, float32 `[0, 255]`, and its JPEG and PNG encodings."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, image_size, dtype="float32")
    image = np.stack(
        [
            ramp[None, :].repeat(image_size, 0),
            ramp[:, None].repeat(image_size, 1),
            rng.uniform(0, 255, (image_size, image_size)).astype("float32"),
        ],
        axis=-1,
    )
    image = np.round(image)
    import tensorflow as tf

    pixels = tf.constant(image.astype("uint8"))
    return image, tf.io.encode_jpeg(pixels, quality=95).numpy(), tf.io.encode_png(pixels).numpy()


def write_warmup_requests(saved_model_dir, model_name, image_size):
    """Writes `assets.extra/tf_serving_warmup_requests`: one request per signature.

    TF Serving replays these `PredictionLog` records when it loads a version,
    so the first user request does not pay for graph compilation.
    """
    import tensorflow as tf

    _, prediction_log_pb2 = _serving_apis()
    image, jpeg, png = warmup_images(image_size)
    requests = [
        grpc_request(model_name, SERVING_DEFAULT, {IMAGES: image[None]}),
        grpc_request(model_name, CLASSIFY, {IMAGE_BYTES: [jpeg, png]}),
    ]
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def write_models_config(directory, model_name, base_path=None):
    """Writes `<directory>/models.config`, TF Serving's model list, for this model.

    `base_path` is where the server sees `directory`; by default
    `/models/<model_name>`, the path the README's container command mounts.
    """
    base_path = base_path or f"/models/{model_name}"
    text = (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )
    path = os.path.join(directory, "models.config")
    with open(path, "w") as f:
        f.write(text)
    return path
