"""Checks of the numbers users pass to layers and builders.

Each check names the argument, says what it received and what it expects,
and returns the value as a plain Python number, so that NumPy scalars
(`np.int64(3)`, `np.float32(0.1)`) are accepted and configs stay
JSON-serializable. A value of the wrong kind (a string, `None`, a bool) is
a `TypeError`; a number out of range is a `ValueError`.
"""

import numbers

import numpy as np


def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def check_int(name, value, minimum=1):
    """`value` as an `int` of at least `minimum`.

    Example:

    >>> import numpy as np
    >>> check_int("classes", np.int64(10))
    10
    >>> check_int("classes", 0)
    Traceback (most recent call last):
    ...
    ValueError: `classes` must be an integer >= 1. Received: classes=0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise TypeError(f"`{name}` must be an integer >= {minimum}. Received: {name}={_describe(value)}")
    if not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_float(name, value, expected, low=None, high=None, low_open=False, high_open=False):
    """`value` as a `float` within the given bounds.

    Args:
        name: the argument's name, for the message.
        value: what the user passed.
        expected: the valid range in words, e.g. `"in [0, 1)"`.
        low, high: bounds, or `None` for none.
        low_open, high_open: whether the bound itself is excluded.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number {expected}. Received: {name}={_describe(value)}")
    number = float(value)
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above or number != number:  # NaN compares false with everything
        raise ValueError(f"`{name}` must be a number {expected}. Received: {name}={value!r}")
    return number


def check_rate(name, value):
    """A probability of dropping: a float in `[0, 1)`.

    Example:

    >>> check_rate("drop_path_rate", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: `drop_path_rate` must be a number in [0, 1). Received: drop_path_rate=1.0
    """
    return check_float(name, value, "in [0, 1)", low=0.0, high=1.0, high_open=True)


def check_probability(name, value):
    """A probability: a float in `[0, 1]`."""
    return check_float(name, value, "in [0, 1]", low=0.0, high=1.0)


def check_non_negative(name, value):
    """A float of at least 0 (alphas, weight decay)."""
    return check_float(name, value, ">= 0", low=0.0)


def check_positive(name, value):
    """A float above 0 (ratios, epsilons)."""
    return check_float(name, value, "> 0", low=0.0, low_open=True)


def check_finite(name, value):
    """Any finite float (initial values of scales)."""
    infinity = float("inf")
    return check_float(name, value, "(finite)", low=-infinity, high=infinity, low_open=True, high_open=True)


def check_optional_float(name, value):
    """`None`, or any finite float."""
    return None if value is None else check_finite(name, value)


def check_int_sequence(name, values, minimum=1):
    """A non-empty list or tuple of ints, each at least `minimum`, as a tuple."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
        raise TypeError(
            f"`{name}` must be a non-empty list of integers >= {minimum}, one per stage. "
            f"Received: {name}={_describe(values)}"
        )
    return tuple(check_int(f"{name}[{index}]", value, minimum) for index, value in enumerate(values))


def check_bool(name, value, expected="True or False"):
    """`value` as a `bool`; NumPy's bools count, numbers and strings do not."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={_describe(value)}")
    return bool(value)
