"""Dtype tests shared by layers that compute 16-bit floats another way."""

import keras


def is_16_bit(dtype):
    """Whether `dtype` is a 16-bit float (float16 or bfloat16), whose 8- or
    11-bit mantissas lose digits in long sums.

    Example:

    >>> is_16_bit("bfloat16"), is_16_bit("float32")
    (True, False)
    """
    return keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16")
