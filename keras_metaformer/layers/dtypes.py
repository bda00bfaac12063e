"""Dtype helpers shared by layers that compute 16-bit floats another way."""

import keras


def is_16_bit(dtype):
    """Whether `dtype` is a 16-bit float (float16 or bfloat16), whose 8- or
    11-bit mantissas lose digits in long sums.

    Example:

    >>> is_16_bit("bfloat16"), is_16_bit("float32")
    (True, False)
    """
    return keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16")


def stored_value(variable):
    """`variable`'s value in the dtype it is stored in, also where Keras
    would cast it.

    Inside the call of a layer with a mixed dtype policy, reading a float
    variable gives it cast to the layer's compute dtype (float32 weights
    read as bfloat16 under `"mixed_bfloat16"`). This reads the float32
    weights themselves, for layers that compute in float32 there. A
    tensor is returned as it is.

    Example:

    >>> layer = keras.layers.Dense(2, dtype="mixed_bfloat16")
    >>> layer.build((None, 3))
    >>> stored_value(layer.kernel).dtype == "float32"
    True
    """
    if not isinstance(variable, keras.Variable):
        return variable
    # Keras has no public way to read a variable uncast in an autocast
    # scope; its own layers open this scope to switch autocasting off.
    try:
        from keras.src.backend.common.variables import AutocastScope
    except ImportError:  # moved in another Keras: the value as Keras gives it
        return variable.value
    with AutocastScope(None):
        return variable.value
