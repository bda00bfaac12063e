"""Inference with every weight a constant of the TensorFlow graph.

TensorFlow's oneDNN kernels pack the weights of a matrix product into the
blocked layout their fastest (brgemm) kernels read only when the weights are
graph constants: read from variables, each product runs a slower kernel on
the plain layout. On a 2-core AVX-512 BF16 CPU, a PoolFormer-S12 forward
pass under the `mixed_bfloat16` policy took 16.7 instead of 25.0 ms at batch
1 and 410 instead of 456 ms at batch 32 this way (float32: 25.0 instead of
27.8 ms, and 2-5% at batch 32).
"""

import keras


def frozen_function(model):
    """Returns `model`'s inference as a TensorFlow function with constant weights.

    The function takes a batch of inputs as the model does (any batch size)
    and returns what `model(inputs, training=False)` returns, computed in the
    model's dtype policy. The weights are copied when this is called: later
    changes to the model do not reach the function, so call it again after
    loading or training.

    Freeze trained weights, not a model fresh from its initialisers: with
    zero biases, TensorFlow's graph optimiser drops the bias adds, and the
    GELU no longer fuses into the matrix product before it (in bfloat16 it
    is then also computed in bfloat16). PoolFormer-S12 under
    `mixed_bfloat16` then ran at 44 img/s at batch 32 on a 2-core Intel
    Xeon, against 86 with variables and 132 frozen with nonzero biases,
    whose constant weights oneDNN packs for its kernels once.

    Args:
        model: a built Keras model with one input, on the TensorFlow backend.

    Returns:
        A callable taking a tensor or NumPy array, returning a `tf.Tensor`.

    Example:

    >>> import numpy as np, keras_metaformer
    >>> from keras_metaformer.export import frozen_function
    >>> model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16),
    ...     input_shape=(32, 32, 3), classes=3, weights=None)
    >>> predict = frozen_function(model)  # doctest: +SKIP
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    >>> predict(images).shape  # doctest: +SKIP
    TensorShape([2, 3])
    """
    graph = frozen_graph(model)
    dtype = graph.inputs[0].dtype
    import tensorflow as tf

    def predict(inputs):
        return graph(tf.convert_to_tensor(inputs, dtype))[0]

    return predict


def frozen_graph(model):
    """`model`'s inference as a TensorFlow `ConcreteFunction` with constant weights.

    It takes one tensor, a batch of any size in the model's input dtype, and
    returns a list holding the output. `frozen_function` and
    `export_saved_model` build on it; see `frozen_function` for the
    requirements on `model`.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "frozen_function builds a TensorFlow graph and needs the TensorFlow "
            f"backend; this process runs Keras on {keras.backend.backend()!r}. Set "
            "KERAS_BACKEND=tensorflow before importing Keras, or load the model's "
            ".keras file in a process that does."
        )
    inputs, outputs = (len(getattr(model, name, None) or ()) for name in ("inputs", "outputs"))
    if not model.built or inputs != 1 or outputs != 1:
        raise ValueError(
            "frozen_function needs a built model with exactly one input and one "
            f"output, like the builders' models. Received a model with {inputs} inputs "
            f"and {outputs} outputs; build it with an `input_shape`, or wrap the "
            "output you need in `keras.Model(inputs, output)`."
        )
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = model.inputs[0]
    signature = tf.TensorSpec((None, *tuple(spec.shape[1:])), spec.dtype)
    graph = tf.function(lambda inputs: model(inputs, training=False))
    return convert_variables_to_constants_v2(graph.get_concrete_function(signature))
