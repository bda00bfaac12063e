"""A Keras-style layer test built on the public `keras` API only."""

import keras
import numpy as np


def _weights_by_path(layer):
    return {w.path.split("/", 1)[-1]: keras.ops.convert_to_numpy(w) for w in layer.trainable_weights}


def check_layer(
    layer_cls,
    init_kwargs,
    input_shape,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights=0,
    run_training=True,
    constant_under_training=(),
):
    """Runs the checks every public layer must pass.

    - config round-trip through `get_config` / `from_config`;
    - serialization by registered name (`keras_metaformer>ClassName`);
    - symbolic call and `compute_output_shape` agree with the expected shape;
    - weight counts after building;
    - eager call on NumPy data gives the expected shape and finite values;
    - one training step in a model changes every trainable weight, except
      those in `constant_under_training`, which must keep their values;
    - under the `mixed_float16` policy, float16 outputs, float32 variables.
    """
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_metaformer>{layer_cls.__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is layer_cls
    assert restored.get_config() == config

    symbolic = layer(keras.KerasTensor(input_shape))
    assert tuple(symbolic.shape) == tuple(expected_output_shape)
    assert tuple(layer.compute_output_shape(input_shape)) == tuple(expected_output_shape)
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights

    rng = np.random.default_rng(0)
    data = rng.normal(size=input_shape).astype("float32")
    eager = keras.ops.convert_to_numpy(layer_cls(**init_kwargs)(data))
    assert eager.shape == tuple(expected_output_shape)
    assert np.isfinite(eager).all()

    if run_training:
        inputs = keras.Input(input_shape[1:], batch_size=input_shape[0])
        trained = layer_cls(**init_kwargs)
        model = keras.Model(inputs, trained(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = _weights_by_path(trained)
        target = rng.normal(size=expected_output_shape).astype("float32")
        history = model.fit(data, target, batch_size=input_shape[0], epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        after = _weights_by_path(trained)
        for path, value in before.items():
            if path in constant_under_training:
                np.testing.assert_allclose(after[path], value, atol=1e-6, err_msg=path)
            else:
                assert not np.allclose(value, after[path]), f"{path} was not trained"

    mixed = layer_cls(**init_kwargs, dtype="mixed_float16")
    output = mixed(data)
    assert keras.backend.standardize_dtype(output.dtype) == "float16"
    assert np.isfinite(keras.ops.convert_to_numpy(output)).all()
    for weight in mixed.weights:
        assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight.path
    return layer


def set_sepconv_weights(mixer, pw1, dw, pw2, act_scale, act_bias):
    """Builds a `SepConvMixer` for `pw1`'s input width and gives it these
    kernels and StarReLU parameters (the order of `numpy_reference.sepconv`)."""
    mixer.build((None, None, None, pw1.shape[0]))
    for variable, value in [
        (mixer.pwconv1.kernel, pw1),
        (mixer.dwconv.kernel, dw),
        (mixer.pwconv2.kernel, pw2),
        (mixer.act1.scale, [act_scale]),
        (mixer.act1.bias, [act_bias]),
    ]:
        variable.assign(value)
