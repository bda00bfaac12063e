"""Whether the ops being traced will be compiled by XLA.

Some layers have two implementations of the same maths: one made of few,
large kernels (best when each op runs on its own, as in a TensorFlow graph
or a TFLite model), and one made of many small element-wise ops that XLA
fuses into a single loop (best under `jax.jit`, or TensorFlow's
`jit_compile=True`, which Keras' `fit`, `evaluate` and `predict` use by
default except on CPU-only TensorFlow). Both give the same numbers within
float32 rounding.
"""

import keras


def compiled_by_xla():
    """True when the ops being traced now will be fused by XLA.

    Always true on JAX. On TensorFlow, true inside a function compiled with
    `jit_compile=True`; false eagerly, in plain graphs, and so in SavedModel
    and TFLite exports.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend != "tensorflow":
        return False
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    # TensorFlow has no public test for this. `tf.function(jit_compile=True)`
    # traces its body inside an XLA control-flow context, which this helper
    # finds on the current graph or the graphs it is nested in.
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def compiled_by_xla_for_cpu():
    """True when the ops being traced now will be fused by XLA for a CPU.

    Some fast paths pay off only on a CPU: they trade parallelism for cache
    locality (loops over blocks of the batch), which a GPU, with its own
    fast kernels for the plain ops, does not need. The device is the
    backend's default one: on a machine with a GPU, XLA compiles for it.
    """
    return compiled_by_xla() and not _gpu_is_default()


def compiled_by_jax_for_cpu():
    """True when JAX's XLA compiles the ops being traced now for a CPU.

    XLA's CPU backend differs between the two: the one in JAX 0.10 hands
    convolutions to YNNPACK, whose strided-convolution gradients are slow,
    while the one in TensorFlow 2.21 runs them itself, up to 4x faster
    forward and, with gradients, faster than the matrix-product form.
    Layers that avoid convolutions on a CPU do so only here.
    """
    return keras.backend.backend() == "jax" and not _gpu_is_default()


def _gpu_is_default():
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() != "cpu"
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def traced_for_onednn():
    """True when the ops being traced now form a TensorFlow graph that
    oneDNN runs: not eager, not XLA, on a TensorFlow whose oneDNN
    optimisations are on (the default on Intel CPUs; `TF_ENABLE_ONEDNN_OPTS`
    decides elsewhere). Graph rewrites such as TensorFlow's remapper fusions
    then apply."""
    if keras.backend.backend() != "tensorflow" or compiled_by_xla():
        return False
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    from tensorflow.python.util import _pywrap_util_port

    return _pywrap_util_port.IsMklEnabled()
