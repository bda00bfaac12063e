"""The normalisations a MetaFormer block can use, by name.

The paper's ablation compares three. All normalise each sample on its own
except batch norm:

- "group": GroupNorm with one group, i.e. statistics over (height, width,
  channels) jointly, with a per-channel scale and shift. PoolFormer's choice.
- "layer": LayerNorm over the channel axis at each position.
- "batch": BatchNorm over (batch, height, width) per channel.

The epsilon is always passed explicitly: Keras defaults (1e-3) differ from
PyTorch's (1e-5) and would break parity with pretrained weights.
"""

import keras
from keras import ops

from keras_metaformer.layers.compilation import compiled_by_xla
from keras_metaformer.layers.remat import Rematerializable

NORMS = ("group", "layer", "batch")


@keras.saving.register_keras_serializable(package="keras_metaformer")
class GroupNormalization(Rematerializable, keras.layers.GroupNormalization):
    """Keras' `GroupNormalization`, with one group computed on the tensor as it is.

    Same variables, arguments and results as the Keras layer. With
    `groups=1`, Keras reshapes the input to 5-D and back through its dynamic
    shape; in a TFLite file those RESHAPE and SHAPE ops are not taken by the
    XNNPACK delegate, so every norm splits the graph into separate delegate
    partitions run between slower builtin kernels. Here the statistics are
    taken over every non-batch axis of the 4-D tensor directly. Other group
    counts use the Keras implementation.

    Example:

    >>> import numpy as np
    >>> norm = GroupNormalization(groups=1, epsilon=1e-5)
    >>> y = keras.ops.convert_to_numpy(norm(np.arange(8, dtype="float32").reshape(1, 2, 2, 2)))
    >>> bool(abs(y.mean()) < 1e-6), round(float(y.std()), 4)
    (True, 1.0)
    """

    def call(self, inputs, output_scale=None):
        """Normalises `inputs`. With `output_scale`, a per-channel vector,
        returns the result times it, the vector folded into the affine
        parameters."""
        if self.groups != 1:
            outputs = super().call(inputs)
            if output_scale is None:
                return outputs
            return outputs * ops.cast(output_scale, outputs.dtype)
        x = _at_least_float32(inputs)
        mean, variance = self._moments(x)
        inv = self._scale(variance, output_scale, x.dtype)
        shift = -mean * inv
        beta = self.beta if self.center else None
        if beta is not None:
            if output_scale is not None:
                beta = beta * output_scale
            shift = shift + ops.cast(ops.reshape(beta, self._broadcast_shape(x)), x.dtype)
        return ops.cast(x * inv + shift, self.compute_dtype)

    def channel_scale(self, inputs, output_scale=None):
        """What this norm multiplies each channel of each sample by.

        With one group the norm is `inputs * scale + shift`, where `scale =
        gamma / sqrt(variance + epsilon)` (times `output_scale`, a vector
        over the channels, if given) and `shift` are constant over each
        channel of each sample. Returns `scale`, shaped `(batch, 1, ..., 1,
        channels)`, in float32 (or the inputs' dtype, if wider).

        Example:

        >>> import numpy as np
        >>> norm = GroupNormalization(groups=1, epsilon=0.0)
        >>> x = np.array([[[[1.0, 5.0]], [[3.0, 7.0]]]], "float32")  # variance 5
        >>> scale = norm.channel_scale(x, output_scale=np.array([1.0, 5.0], "float32"))
        >>> [round(float(value) ** 2, 4) for value in keras.ops.convert_to_numpy(scale).ravel()]
        [0.2, 5.0]
        """
        if self.groups != 1:
            raise ValueError(
                "`channel_scale` needs groups=1: with more groups the scale is not one per channel. "
                f"Received: groups={self.groups}."
            )
        if not self.built:
            self.build(inputs.shape)
        x = _at_least_float32(inputs)
        _, variance = self._moments(x)
        return self._scale(variance, output_scale, x.dtype)

    def _moments(self, x):
        # Statistics over every non-batch axis.
        axes = list(range(1, len(x.shape)))
        if compiled_by_xla():
            return shifted_moments(x, axes)
        return ops.moments(x, axes=axes, keepdims=True)

    def _scale(self, variance, output_scale, dtype):
        gamma = self.gamma if self.scale else None
        if output_scale is not None:
            gamma = output_scale if gamma is None else gamma * output_scale
        inv = ops.rsqrt(variance + self.epsilon)
        if gamma is None:
            return inv
        return inv * ops.cast(ops.reshape(gamma, self._broadcast_shape(variance)), dtype)

    def _broadcast_shape(self, x):
        shape = [1] * len(x.shape)
        shape[self.axis] = -1
        return shape


def _at_least_float32(inputs):
    # Like Keras: statistics in float32 even for float16/bfloat16 inputs, which overflow.
    return ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))


def shifted_moments(x, axes):
    """Mean and variance of `x` over `axes` (kept), from one pass over it.

    The sums of `x - k` and of its squares, with `k` each sample's first
    value, give both: `var = mean((x - k)**2) - mean(x - k)**2`. XLA reads
    the tensor once for the two sums, where `keras.ops.moments` reads it
    twice (the mean, then the squared deviations). The shift keeps the
    subtraction from cancelling: `k` lies within the sample's values, so
    the two terms stay of the order of the variance however far from zero
    the mean is, and the result about as accurate as the two-pass one.

    Example:

    >>> import numpy as np
    >>> x = 1000 + np.arange(8, dtype="float32").reshape(2, 4)
    >>> mean, variance = shifted_moments(x, axes=[1])
    >>> keras.ops.convert_to_numpy(mean).ravel().tolist(), keras.ops.convert_to_numpy(variance).ravel().tolist()
    ([1001.5, 1005.5], [1.25, 1.25])
    """
    first = tuple(slice(None) if axis not in axes else slice(0, 1) for axis in range(len(x.shape)))
    shift = ops.stop_gradient(x[first])
    deviations = x - shift
    mean = ops.mean(deviations, axis=axes, keepdims=True)
    variance = ops.maximum(ops.mean(ops.square(deviations), axis=axes, keepdims=True) - ops.square(mean), 0.0)
    return mean + shift, variance


def get_norm(norm, epsilon, name=None, center=True, dtype=None):
    """Returns a new normalisation layer.

    Args:
        norm: one of `"group"`, `"layer"`, `"batch"`.
        epsilon: float added to the variance.
        name: the layer's name.
        center: whether the layer has a learnable shift (bias).
        dtype: the layer's dtype policy.
    """
    if norm == "group":
        return GroupNormalization(groups=1, epsilon=epsilon, center=center, name=name, dtype=dtype)
    if norm == "layer":
        return keras.layers.LayerNormalization(epsilon=epsilon, center=center, name=name, dtype=dtype)
    check_norm(norm)
    return keras.layers.BatchNormalization(epsilon=epsilon, center=center, name=name, dtype=dtype)


def check_norm(norm):
    """Raises a `ValueError` listing the valid names unless `norm` is one."""
    if norm not in NORMS:
        raise ValueError(
            f"Unknown norm {norm!r}. Expected one of {list(NORMS)}: 'group' "
            "(GroupNorm with one group, PoolFormer's default), 'layer' or 'batch'."
        )
