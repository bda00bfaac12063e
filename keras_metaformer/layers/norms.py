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

NORMS = ("group", "layer", "batch")


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
        return keras.layers.GroupNormalization(
            groups=1, epsilon=epsilon, center=center, name=name, dtype=dtype
        )
    if norm == "layer":
        return keras.layers.LayerNormalization(
            epsilon=epsilon, center=center, name=name, dtype=dtype
        )
    if norm == "batch":
        return keras.layers.BatchNormalization(
            epsilon=epsilon, center=center, name=name, dtype=dtype
        )
    raise ValueError(
        f"Unknown norm {norm!r}. Expected one of {list(NORMS)}: 'group' "
        "(GroupNorm with one group, PoolFormer's default), 'layer' or 'batch'."
    )
