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
import pytest

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

    result = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        mlp = layers.Mlp(mlp_ratio=4, dtype=policy)
        mlp.build((2, 4, 4, 8))
        for training in (False, True):
            function = tf.function(lambda x: mlp(x, training=training))
            graph = function.get_concrete_function(tf.TensorSpec((2, 4, 4, 8), tf.float32)).graph
            meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
            for output in graph.outputs:
                meta_graph.collection_def["train_op"].node_list.value.append(output.op.name)
            for node in meta_graph.graph_def.node:  # the remapper rewrites CPU ops only
                node.device = "/device:CPU:0"
            optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta_graph)
            result[f"{policy} training={training}"] = {
                "products": [
                    [node.op, [op.decode() for op in node.attr["fused_ops"].list.s]]
                    for node in optimized.node
                    if "MatMul" in node.op
                ],
                "erfc": [tf.dtypes.as_dtype(node.attr["T"].type).name for node in optimized.node if node.op == "Erfc"],
            }
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
