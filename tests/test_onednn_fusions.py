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
# graphs after the remapper, with its fused ops, and the dtypes its GELU
# maths (`Erfc`) runs in where that was not fused.
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

    result = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        mlp = layers.Mlp(mlp_ratio=4, dtype=policy)
        mlp.build((2, 4, 4, 8))
        for training in (False, True):
            optimized = remapped(lambda x: mlp(x, training=training), (2, 4, 4, 8))
            result[f"{policy} training={training}"] = {
                "products": [
                    [node.op, [op.decode() for op in node.attr["fused_ops"].list.s]]
                    for node in optimized.node
                    if "MatMul" in node.op
                ],
                "erfc": [tf.dtypes.as_dtype(node.attr["T"].type).name for node in optimized.node if node.op == "Erfc"],
            }
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


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_inference_mlp_is_two_fused_products_with_the_gelu_inside_the_first(remapped_mlp, policy):
    graph = remapped_mlp[f"{policy} training=False"]
    assert graph["products"] == [["_FusedMatMul", ["BiasAdd", "GeluExact"]], ["_FusedMatMul", ["BiasAdd"]]]
    assert graph["erfc"] == []


def test_bfloat16_training_keeps_the_gelu_in_float32(remapped_mlp):
    # The gradient needs the product's sums, so nothing is fused; the GELU
    # is then computed in float32 and rounded once, as `exact_gelu` does.
    graph = remapped_mlp["mixed_bfloat16 training=True"]
    assert [fused for _, fused in graph["products"]] == [["BiasAdd"], ["BiasAdd"]]
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
