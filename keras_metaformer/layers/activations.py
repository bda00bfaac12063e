import keras
from keras import ops

from keras_metaformer.arguments import check_finite
from keras_metaformer.layers.compilation import compiled_by_xla
from keras_metaformer.layers.compilation import compiled_by_xla_for_cpu


@keras.saving.register_keras_serializable(package="keras_metaformer")
def exact_gelu(x):
    """The exact (erf) GELU, `x * Phi(x)`, in the form that runs fastest.

    Under XLA it is written as `x * (0.5 + 0.5 * erf(x / sqrt(2)))`, which
    fuses with the matmul that produced `x` and makes the MLP about 1.2x
    faster on CPU than Keras' GELU. Elsewhere it is Keras' GELU, which the
    TFLite converter turns into its builtin GELU op (TFLite has no erf).
    Both are equal within float32 rounding. A bfloat16 `x` is computed in
    float32 and rounded once: in bfloat16, every step rounds to 8 bits (the
    negative tail becomes 0), and TensorFlow's CPU kernel is slower too (142
    against 82 ms for PoolFormer-S12's first MLP at batch 32, on an Intel
    Xeon). XLA fuses the two casts into the same loop.

    Example:

    >>> round(float(exact_gelu(keras.ops.convert_to_tensor(1.0))), 6)
    0.841345
    """
    return in_float32(_exact_gelu, x)


def _exact_gelu(x):
    if compiled_by_xla():
        return x * (0.5 + 0.5 * ops.erf(x * _SQRT_HALF))
    return ops.gelu(x, approximate=False)


_SQRT_HALF = 0.7071067811865476


def in_float32(fn, x, xla_cpu_only=False):
    """`fn(x)`; for a bfloat16 `x`, computed in float32 and rounded once.

    For bfloat16 maths that would lose digits at each step (GELU's erf,
    softmax's sums); XLA fuses the casts into the same loop.

    With `xla_cpu_only`, only under XLA for a CPU. For layers that scale or
    shift by a small weight (a per-channel or scalar scale): that weight's
    gradient is a sum over the whole tensor, and XLA's CPU backend sums
    bfloat16 values by converting them to float32 first and then in blocks
    (`reduce-window`), about 25 times slower than it sums float32 (6.4M
    values: 10 against 0.4 ms). Computed in float32, the gradient is a
    float32 sum. Elsewhere each cast would be a pass of its own.
    """
    if keras.backend.standardize_dtype(x.dtype) != "bfloat16" or (xla_cpu_only and not compiled_by_xla_for_cpu()):
        return fn(x)
    return ops.cast(fn(ops.cast(x, "float32")), "bfloat16")


@keras.saving.register_keras_serializable(package="keras_metaformer")
def squared_relu(x):
    """`relu(x) ** 2` (So et al., "Primer", NeurIPS 2021).

    Example:

    >>> float(squared_relu(keras.ops.convert_to_tensor(-1.0)))
    0.0
    >>> float(squared_relu(keras.ops.convert_to_tensor(3.0)))
    9.0
    """
    return ops.square(ops.relu(x))


@keras.saving.register_keras_serializable(package="keras_metaformer")
class StarReLU(keras.layers.Layer):
    """StarReLU: `scale * relu(x) ** 2 + bias`, with learnable scalars.

    The MetaFormer baselines' activation. The scalars (initially 1 and 0)
    let the squared ReLU's output distribution be re-centred and rescaled.

    Reference: Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024.

    Args:
        scale_init_value: float, initial `scale`.
        bias_init_value: float, initial `bias`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> y = StarReLU(scale_init_value=2.0, bias_init_value=0.5)(np.array([[-1.0, 3.0]]))
    >>> keras.ops.convert_to_numpy(y).tolist()
    [[0.5, 18.5]]
    """

    def __init__(self, scale_init_value=1.0, bias_init_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale_init_value = check_finite("scale_init_value", scale_init_value)
        self.bias_init_value = check_finite("bias_init_value", bias_init_value)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(1,),
            initializer=keras.initializers.Constant(self.scale_init_value),
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(1,),
            initializer=keras.initializers.Constant(self.bias_init_value),
        )

    def call(self, inputs):
        # In float32 under XLA on a CPU, so that the scalars' gradients are
        # float32 sums (see `in_float32`): in a ConvFormer-S18 bfloat16
        # training step, bfloat16 sums (these and the biases') took about a
        # fifth of the time.
        return in_float32(
            lambda x: ops.cast(self.scale, x.dtype) * squared_relu(x) + ops.cast(self.bias, x.dtype),
            inputs,
            xla_cpu_only=True,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "scale_init_value": self.scale_init_value,
                "bias_init_value": self.bias_init_value,
            }
        )
        return config


def serialize_activation(activation):
    """A config value for `activation`: names stay names, callables are
    serialized."""
    if isinstance(activation, str):
        return activation
    return keras.activations.serialize(activation)


def _keras_activation_names():
    hidden = ("get", "serialize", "deserialize")
    return [name for name in dir(keras.activations) if not name.startswith("_") and name not in hidden]


def check_activation(activation, argument="activation"):
    """Returns `activation` if Keras (or this package) knows it, else raises
    an error that lists the names it accepts.

    `None`, callables and serialized configs (dicts) pass through; strings
    must be `"star_relu"` or a name `keras.activations.get` resolves.

    Example:

    >>> check_activation("gleu")
    Traceback (most recent call last):
    ...
    ValueError: Unknown activation 'gleu'. Expected 'star_relu', one of Keras' activations (celu, elu, ...
    """
    if activation is None or callable(activation) or isinstance(activation, dict) or activation == "star_relu":
        return activation
    if not isinstance(activation, str):
        raise TypeError(
            f"`{argument}` must be an activation name, a callable or None. "
            f"Received: {argument}={activation!r} ({type(activation).__name__})"
        )
    try:
        keras.activations.get(activation)
    except ValueError:
        raise ValueError(
            f"Unknown {argument} {activation!r}. Expected 'star_relu', one of Keras' activations "
            f"({', '.join(_keras_activation_names())}), a callable, or the name of a function "
            "registered with `keras.saving.register_keras_serializable`. 'gelu' is the exact (erf) GELU."
        ) from None
    return activation


def get_activation_layer(activation, name, dtype=None):
    """A layer for `activation`: `StarReLU` for `"star_relu"` (it has
    weights), else a plain `Activation` layer; `"gelu"` is `exact_gelu`."""
    check_activation(activation)
    if activation == "star_relu":
        return StarReLU(name=name, dtype=dtype)
    if activation == "gelu":
        activation = exact_gelu
    return keras.layers.Activation(activation, name=name, dtype=dtype)
