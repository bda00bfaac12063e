"""The argument checks shared by layers, builders and training helpers."""

import math

import numpy as np
import pytest

from keras_metaformer import arguments
from keras_metaformer import training


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integers_of_any_type_become_python_ints(value):
    checked = arguments.check_int("depth", value)
    assert checked == 3 and type(checked) is int


@pytest.mark.parametrize(
    "value, error",
    [(True, TypeError), (None, TypeError), ("3", TypeError), ([3], TypeError), (3.0, ValueError), (0, ValueError)],
)
def test_non_integers_and_small_integers_are_refused(value, error):
    with pytest.raises(error, match=r"`depth` must be an integer >= 1. Received: depth="):
        arguments.check_int("depth", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, 1.0, -1e-9])
def test_rates_outside_zero_to_one_and_nan_are_refused(value):
    with pytest.raises(ValueError, match=r"`rate` must be a number in \[0, 1\)"):
        arguments.check_rate("rate", value)


def test_rates_keep_their_value_as_python_floats():
    checked = arguments.check_rate("rate", np.float32(0.5))
    assert checked == 0.5 and type(checked) is float


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: training.scaled_learning_rate(0), r"`batch_size` must be an integer >= 1"),
        (lambda: training.scaled_learning_rate("256"), r"`batch_size` must be an integer >= 1. Received: "),
        (lambda: training.warmup_cosine(1e-3, total_steps=0, warmup_steps=0), r"`total_steps` must be an integer"),
        (lambda: training.warmup_cosine(1e-3, total_steps=10, warmup_steps=-1), r"`warmup_steps` must be an inte"),
        (lambda: training.warmup_cosine(0.0, total_steps=10, warmup_steps=1), r"`peak` must be a number > 0"),
    ],
)
def test_training_helpers_check_their_arguments(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def test_adamw_refuses_negative_weight_decay():
    import keras_metaformer

    model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), weights=None)
    with pytest.raises(ValueError, match=r"`weight_decay` must be a number >= 0. Received: weight_decay=-0.05"):
        training.adamw(model, 1e-3, weight_decay=-0.05)
