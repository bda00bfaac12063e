"""The registry of token mixers that `MetaFormerBlock` accepts by name.

A token mixer is any Keras layer that maps `(batch, height, width, channels)`
to the same shape and exchanges information between positions. Registering
a class makes it available by name to the block and the model builders:

    @register_token_mixer("my_mixer")
    @keras.saving.register_keras_serializable(package="my_package")
    class MyMixer(keras.layers.Layer):
        ...

    block = MetaFormerBlock(token_mixer="my_mixer")
"""

import keras

_TOKEN_MIXERS = {}


def register_token_mixer(name):
    """Class decorator that makes a token-mixer layer available by `name`."""

    def decorator(cls):
        if name in _TOKEN_MIXERS and _TOKEN_MIXERS[name] is not cls:
            raise ValueError(
                f"A token mixer named {name!r} is already registered "
                f"({_TOKEN_MIXERS[name].__name__}). Choose another name."
            )
        _TOKEN_MIXERS[name] = cls
        return cls

    return decorator


def token_mixer_names():
    """Returns the registered token-mixer names, sorted."""
    return sorted(_TOKEN_MIXERS)


def get_token_mixer(identifier, name=None, **options):
    """Returns a new token-mixer layer for a registered name or a config.

    Args:
        identifier: a registered name (see `token_mixer_names()`), or a dict
            produced by `keras.saving.serialize_keras_object(layer)`.
        name: the name of the new layer.
        **options: constructor arguments, used with a registered name only.
    """
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    check_token_mixer(identifier)
    return _TOKEN_MIXERS[identifier](name=name, **options)


def check_token_mixer(identifier):
    """Raises a `ValueError` listing the registered names unless `identifier` is one."""
    if not (isinstance(identifier, str) and identifier in _TOKEN_MIXERS):
        raise ValueError(
            f"Unknown token mixer {identifier!r}. Expected one of "
            f"{token_mixer_names()}, a Keras layer instance, or the name of a "
            "layer class registered with `register_token_mixer`."
        )
