"""Keras' rematerialization (`keras.RematScope`) for layers with keyword call arguments.

Keras rematerializes a layer by wrapping its `call` in `jax.checkpoint` or
`tf.recompute_grad` and passing every argument through. Two things then
fail, so that a model built inside `keras.RematScope(mode="full")` could not
be trained:

- JAX traces `training=False` into an array, and `if training:` raises;
- `tf.recompute_grad` takes no keyword arguments in a graph.

Layers that mix `Rematerializable` in bind their Python-valued keyword
arguments (booleans, numbers, strings, `None`) before Keras wraps the call,
and hand their tensor keyword arguments (`output_scale=...`) to it by
position. Random draws are a third case: a draw inside `jax.checkpoint`
updates the seed generator's state from within the transformation, which
JAX rejects, so layers that draw (`DropPath`) draw before the checkpoint
and pass the result in (`with_drawn`).
"""

import functools

_STATIC_TYPES = (bool, int, float, str, type(None))


class Rematerializable:
    """Mixin for `keras.layers.Layer` subclasses whose `call` takes keyword arguments."""

    def rematerialized_call(self, layer_call, *args, **kwargs):
        if not kwargs:
            return super().rematerialized_call(layer_call, *args, **kwargs)
        static = {name: value for name, value in kwargs.items() if isinstance(value, _STATIC_TYPES)}
        tensor_names = [name for name in kwargs if name not in static]
        positions = len(args)

        def positional_call(*values):
            tensors = dict(zip(tensor_names, values[positions:]))
            return layer_call(*values[:positions], **static, **tensors)

        rematerialized = super().rematerialized_call(positional_call, *args, **kwargs)
        if rematerialized is positional_call:  # this layer is not rematerialized
            return layer_call

        @functools.wraps(layer_call)
        def call(*call_args, **call_kwargs):
            return rematerialized(*call_args, *(call_kwargs[name] for name in tensor_names))

        return call


def with_drawn(rematerialized_call, layer_call, args, kwargs, **drawn):
    """`rematerialized_call(layer_call, ...)`, with the tensors `drawn` outside it
    added to its keyword arguments at every call."""
    inner = rematerialized_call(layer_call, *args, **kwargs, **drawn)

    def call(*call_args, **call_kwargs):
        return inner(*call_args, **call_kwargs, **drawn)

    return call
