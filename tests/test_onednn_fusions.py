"""TensorFlow graphs (`model.predict` on a CPU, SavedModel, frozen exports)
get their speed from TensorFlow's remapper, which fuses op patterns into
oneDNN kernels. These tests run the remapper on the layers' graphs and read
what it made of them: no timing, the lowering itself.

The remapper runs in a fresh process with `TF_ENABLE_ONEDNN_OPTS=1`, which
TensorFlow reads once, at import (it is off by default on AMD CPUs).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import numpy_reference as ref
import pytest

from keras_metaformer import layers

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graphs only")

# Prints, as JSON, each MatMul-like op of the Mlp's inference and training
# graphs after the remapper, with its fused ops and dtype, the dtypes its
# GELU maths (`Erfc`) runs in where that was not fused, and how many
# weights it casts.
_REMAPPED_MLP = textwrap.dedent(
    """
    import json, sys
    import keras
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer

    from keras_metaformer import layers

    def remapped(fn, shape):
        # The graph of `fn` on float32 inputs of `shape`, after Grappler.
        graph = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
        meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
        for output in graph.outputs:
            meta_graph.collection_def["train_op"].node_list.value.append(output.op.name)
        for node in meta_graph.graph_def.node:  # the remapper rewrites CPU ops only
            node.device = "/device:CPU:0"
        return tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta_graph)

    def dtype(node):
        return tf.dtypes.as_dtype(node.attr["T"].type).name

    def summary(graph):
        ops = {node.name: node.op for node in graph.node}
        return {
            "products": [
                [node.op, [op.decode() for op in node.attr["fused_ops"].list.s], dtype(node)]
                for node in graph.node
                if "MatMul" in node.op
            ],
            "erfc": [dtype(node) for node in graph.node if node.op == "Erfc"],
            "weight casts": sum(
                node.op == "Cast" and ops.get(node.input[0].split(":")[0]) == "ReadVariableOp" for node in graph.node
            ),
        }

    result = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        mlp = layers.Mlp(mlp_ratio=4, dtype=policy)
        # 288 positions; `few rows` has 32, below `mlp._FLOAT32_MAX_ROWS`.
        mlp.build((2, 12, 12, 8))
        for training in (False, True):
            optimized = remapped(lambda x: mlp(x, training=training), (2, 12, 12, 8))
            result[f"{policy} training={training}"] = summary(optimized)
        result[f"{policy} few rows"] = summary(remapped(lambda x: mlp(x, training=False), (2, 4, 4, 8)))
        # Enough positions (1 x 32 x 32) for fc2 as a 1x1 convolution.
        block = layers.MetaFormerBlock(dtype=policy)
        block.build((1, 32, 32, 8))
        optimized = remapped(lambda x: block(x, training=False), (1, 32, 32, 8))
        result[f"{policy} block"] = [
            [node.op, [op.decode() for op in node.attr["fused_ops"].list.s]]
            for node in optimized.node
            if "MatMul" in node.op or "Conv2D" in node.op
        ]
    print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def remapped_mlp():
    environment = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c", _REMAPPED_MLP], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("policy, dtype", [("float32", "float32"), ("mixed_bfloat16", "bfloat16")])
def test_inference_mlp_is_two_fused_products_with_the_gelu_inside_the_first(remapped_mlp, policy, dtype):
    graph = remapped_mlp[f"{policy} training=False"]
    assert graph["products"] == [
        ["_FusedMatMul", ["BiasAdd", "GeluExact"], dtype],
        ["_FusedMatMul", ["BiasAdd"], dtype],
    ]
    assert graph["erfc"] == []


def test_bfloat16_inference_on_few_rows_multiplies_the_float32_weights(remapped_mlp):
    # No weight is cast on each call: the products, with the GELU fused into
    # the first, run in float32 on the variables themselves.
    graph = remapped_mlp["mixed_bfloat16 few rows"]
    assert graph["products"] == [
        ["_FusedMatMul", ["BiasAdd", "GeluExact"], "float32"],
        ["_FusedMatMul", ["BiasAdd"], "float32"],
    ]
    assert graph["weight casts"] == 0
    assert remapped_mlp["mixed_bfloat16 training=False"]["weight casts"] == 4


def test_bfloat16_training_keeps_the_gelu_in_float32(remapped_mlp):
    # The gradient needs the product's sums, so nothing is fused; the GELU
    # is then computed in float32 and rounded once, as `exact_gelu` does.
    graph = remapped_mlp["mixed_bfloat16 training=True"]
    assert [(fused, dtype) for _, fused, dtype in graph["products"]] == [(["BiasAdd"], "bfloat16")] * 2
    assert graph["erfc"] == ["float32"]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_inference_block_runs_fc2_as_a_convolution_with_its_bias_fused(remapped_mlp, policy):
    # oneDNN reorders a convolution's variable filter for its kernels (a
    # product reads it in its plain layout), and fuses its bias.
    (fc1, fc2) = remapped_mlp[f"{policy} block"]
    assert fc1 == ["_FusedMatMul", ["BiasAdd", "GeluExact"]]
    assert fc2[0] == "_FusedConv2D" and fc2[1][0] == "BiasAdd"


@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-4), ("mixed_bfloat16", 0.05)])
def test_block_with_fc2_as_a_convolution_matches_numpy(monkeypatch, policy, tolerance):
    # The convolution is chosen when tracing for oneDNN, whatever runs the
    # graph; forced here, so that the numbers are checked on any CPU.
    import tensorflow as tf

    from keras_metaformer.layers import mlp as mlp_module

    monkeypatch.setattr(mlp_module, "traced_for_onednn", lambda: not tf.executing_eagerly())
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 24, 24, 8)).astype("float32") + 1.0
    block = layers.MetaFormerBlock(dtype=policy, norm_epsilon=1e-5)
    block.build(x.shape)
    for weight in block.weights:
        weight.assign(rng.normal(0.0, 0.3, weight.shape) + (1.0 if "gamma" in weight.path else 0.0))
    values = {w.path.split("/", 1)[1]: keras.ops.convert_to_numpy(w) for w in block.weights}
    params = {
        "norm1": (values["norm1/gamma"], values["norm1/beta"], 1e-5),
        "norm2": (values["norm2/gamma"], values["norm2/beta"], 1e-5),
        "fc1": (values["mlp/fc1/kernel"], values["mlp/fc1/bias"]),
        "fc2": (values["mlp/fc2/kernel"], values["mlp/fc2/bias"]),
        "layer_scale1": values["layer_scale1/scale"],
        "layer_scale2": values["layer_scale2/scale"],
    }
    expected = ref.metaformer_block(x.astype("float64"), params)
    infer = tf.function(lambda x: block(x, training=False))
    assert "Conv2D" in {op.type for op in infer.get_concrete_function(x).graph.get_operations()}
    actual = infer(x)
    actual = keras.ops.convert_to_numpy(keras.ops.cast(actual, "float32"))
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(
    "channels, activation, use_bias",
    [(16, "gelu", True), (8, "gelu", True), (16, "star_relu", False)],
    ids=["scaled output", "scale folded into fc2", "star_relu"],
)
def test_bfloat16_mlp_on_few_rows_matches_float32_numpy_rounded_once(monkeypatch, channels, activation, use_bias):
    # 49 positions, below `_FLOAT32_MAX_ROWS`; with 16 channels, fewer than
    # the 64 hidden ones, so the output scale multiplies fc2's output, and
    # with 8, more than 32, so it is folded into fc2's weights.
    import tensorflow as tf

    from keras_metaformer.layers import mlp as mlp_module

    monkeypatch.setattr(mlp_module, "traced_for_onednn", lambda: not tf.executing_eagerly())
    rng = np.random.default_rng(4)
    mlp = layers.Mlp(mlp_ratio=4, activation=activation, use_bias=use_bias, dtype="mixed_bfloat16")
    mlp.build((1, 7, 7, channels))
    for weight in mlp.weights:
        weight.assign(rng.normal(0.0, 0.5, weight.shape))
    scale = keras.Variable(rng.normal(0.0, 0.5, channels).astype("float32"))
    x = keras.ops.cast(rng.normal(size=(1, 7, 7, channels)), "bfloat16")
    infer = tf.function(lambda x: mlp(x, training=False, output_scale=scale))
    graph = infer.get_concrete_function(x).graph
    assert {op.get_attr("T") for op in graph.get_operations() if op.type == "MatMul"} == {tf.float32}
    actual = keras.ops.convert_to_numpy(keras.ops.cast(infer(x), "float32"))

    def bfloat16_rounded(value):
        rounded = keras.ops.cast(keras.ops.cast(value, "bfloat16"), "float32")
        return keras.ops.convert_to_numpy(rounded).astype("float64")

    values = {w.path.split("/", 1)[1]: keras.ops.convert_to_numpy(w).astype("float64") for w in mlp.weights}
    inputs = bfloat16_rounded(x)
    zero = np.zeros(())
    hidden = inputs @ values["fc1/kernel"] + values.get("fc1/bias", zero)
    if activation == "gelu":
        hidden = ref.gelu(hidden)
    else:  # its scalars are read in the compute dtype, as Keras gives them
        hidden = ref.star_relu(hidden, *(bfloat16_rounded(values[f"act/{name}"]) for name in ("scale", "bias")))
    # Keras casts the layer's tensor arguments, the scale too, to bfloat16.
    expected = (hidden @ values["fc2/kernel"] + values.get("fc2/bias", zero)) * bfloat16_rounded(scale)
    # One rounding to bfloat16 errs by up to 2**-8 of the value; the 16-bit
    # path, which rounds the weights and hidden values too, missed twice
    # this bound by 50-350 times.
    np.testing.assert_allclose(actual, expected, rtol=2**-7, atol=1e-6)


def test_bfloat16_weights_on_few_rows_are_multiplied_as_they_are(monkeypatch):
    # Under a "bfloat16" policy the variables are bfloat16: float32 products
    # would cast every weight, the cost the float32 path avoids.
    import tensorflow as tf

    from keras_metaformer.layers import mlp as mlp_module

    monkeypatch.setattr(mlp_module, "traced_for_onednn", lambda: not tf.executing_eagerly())
    mlp = layers.Mlp(mlp_ratio=4, dtype="bfloat16")
    mlp.build((1, 7, 7, 16))
    infer = tf.function(lambda x: mlp(x, training=False))
    graph = infer.get_concrete_function(tf.TensorSpec((1, 7, 7, 16), tf.bfloat16)).graph
    assert {op.get_attr("T") for op in graph.get_operations() if op.type == "MatMul"} == {tf.bfloat16}
    assert not [op for op in graph.get_operations() if op.type == "Cast" and op.get_attr("DstT") == tf.float32]


def test_bfloat16_block_inference_converts_the_residual_stream_three_times():
    # One float32 copy of the block's input feeds norm1's statistics, the
    # pooling and the residual sum, whose float32 result norm2 reads; the
    # sum and norm2's output are rounded once each. Layer by layer, it took
    # five conversions of the whole tensor, and the sum was in bfloat16.
    import tensorflow as tf

    block = layers.MetaFormerBlock(dtype="mixed_bfloat16")
    block.build((2, 8, 8, 16))
    infer = tf.function(lambda x: block(x, training=False))
    graph = infer.get_concrete_function(tf.TensorSpec((2, 8, 8, 16), tf.bfloat16)).graph
    whole = [op for op in graph.get_operations() if op.outputs and op.outputs[0].shape == (2, 8, 8, 16)]
    casts = [(op.get_attr("SrcT").name, op.get_attr("DstT").name) for op in whole if op.type == "Cast"]
    assert sorted(casts) == [("bfloat16", "float32"), ("float32", "bfloat16"), ("float32", "bfloat16")]
    sums = [op.outputs[0].dtype.name for op in whole if op.type == "AddV2"]
    assert sums[0] == "float32"
