"""The one table of MetaFormer families and sizes that every builder reads.

A family fixes the architecture arguments of `MetaFormer` shared by all its
sizes; a size adds depths, widths and, for PoolFormer v1, its layer-scale
initial value. Values follow timm's `metaformer.py` (the weights we load)
and the papers.
"""

import collections
import dataclasses

Size = collections.namedtuple(
    "Size",
    ["depths", "dims", "layer_scale_init_value", "train_drop_path_rate"],
    defaults=[None, None],
)
Size.__doc__ = """Depths and widths of one size of a family.

`train_drop_path_rate` is the stochastic depth of the authors' ImageNet
training where REFERENCE.md records it; builders default to 0 (inference
and fine-tuning), as timm does, and training recipes pass it explicitly.
"""


@dataclasses.dataclass(frozen=True)
class Family:
    """A MetaFormer family: public name, one-line summary, shared arguments."""

    public_name: str
    summary: str
    architecture: dict
    sizes: dict


_POOLFORMER_V1_SIZES = {
    "s12": Size((2, 2, 6, 2), (64, 128, 320, 512), 1e-5, 0.1),
    "s24": Size((4, 4, 12, 4), (64, 128, 320, 512), 1e-5, 0.1),
    "s36": Size((6, 6, 18, 6), (64, 128, 320, 512), 1e-6, 0.2),
    "m36": Size((6, 6, 18, 6), (96, 192, 384, 768), 1e-6, 0.3),
    "m48": Size((8, 8, 24, 8), (96, 192, 384, 768), 1e-6, 0.4),
}
_V1_SHAPED_SIZES = {name: Size(s.depths, s.dims) for name, s in _POOLFORMER_V1_SIZES.items()}
_CONVFORMER_SIZES = {
    "s18": Size((3, 3, 9, 3), (64, 128, 320, 512)),
    "s36": Size((3, 12, 18, 3), (64, 128, 320, 512)),
    "m36": Size((3, 12, 18, 3), (96, 192, 384, 576)),
    "b36": Size((3, 12, 18, 3), (128, 256, 512, 768)),
}

_POOLFORMER_V1 = dict(
    token_mixers="pool",
    activation="gelu",
    norm="group",
    norm_epsilon=1e-5,
    norm_use_bias=True,
    use_bias=True,
    res_scale_init_value=None,
    downsample_norm=False,
    head="linear",
)
# The MetaFormer baselines: StarReLU, no biases in blocks, residual scales
# in the last two stages, LayerNorm in the stem and downsampling layers.
_BASELINE = dict(
    activation="star_relu",
    norm_epsilon=1e-6,
    norm_use_bias=False,
    use_bias=False,
    layer_scale_init_value=None,
    res_scale_init_value=(None, None, 1.0, 1.0),
    downsample_norm=True,
)

FAMILIES = {
    "poolformer": Family(
        "PoolFormer",
        "PoolFormer is a MetaFormer whose token mixer is plain average pooling "
        '(Yu et al., "MetaFormer is Actually What You Need for Vision", CVPR 2022).',
        _POOLFORMER_V1,
        _POOLFORMER_V1_SIZES,
    ),
    "poolformerv2": Family(
        "PoolFormerV2",
        "PoolFormerV2 is PoolFormer with the MetaFormer baselines' StarReLU, "
        "residual scales and normalised downsampling (Yu et al., "
        '"MetaFormer Baselines for Vision", TPAMI 2024).',
        dict(_BASELINE, token_mixers="pool", norm="group", head="linear"),
        _V1_SHAPED_SIZES,
    ),
    "identityformer": Family(
        "IdentityFormer",
        "IdentityFormer is a MetaFormer with no token mixing at all, a lower "
        'bound of the general block (Yu et al., "MetaFormer Baselines for '
        'Vision", TPAMI 2024).',
        dict(_BASELINE, token_mixers="identity", norm="group", head="linear"),
        _V1_SHAPED_SIZES,
    ),
    "randformer": Family(
        "RandFormer",
        "RandFormer mixes tokens with a frozen random matrix in its last two "
        "stages and not at all in the first two; its input size is fixed "
        '(Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024).',
        dict(
            _BASELINE,
            token_mixers=("identity", "identity", "random", "random"),
            norm="group",
            head="linear",
        ),
        _V1_SHAPED_SIZES,
    ),
    "convformer": Family(
        "ConvFormer",
        "ConvFormer is a MetaFormer whose token mixer is an inverted separable "
        'convolution (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024).',
        dict(_BASELINE, token_mixers="sepconv", norm="layer", head="mlp"),
        _CONVFORMER_SIZES,
    ),
    "caformer": Family(
        "CAFormer",
        "CAFormer is a MetaFormer with separable convolutions in its first two "
        'stages and self-attention in the last two (Yu et al., "MetaFormer '
        'Baselines for Vision", TPAMI 2024).',
        dict(
            _BASELINE,
            token_mixers=("sepconv", "sepconv", "attention", "attention"),
            norm="layer",
            head="mlp",
        ),
        _CONVFORMER_SIZES,
    ),
}


def architecture(family, size):
    """The `MetaFormer` architecture arguments of `family` at `size`."""
    spec = FAMILIES[family]
    arguments = dict(spec.architecture)
    chosen = spec.sizes[size]
    arguments.update(depths=chosen.depths, dims=chosen.dims)
    if chosen.layer_scale_init_value is not None:
        arguments["layer_scale_init_value"] = chosen.layer_scale_init_value
    return arguments


def all_variants():
    """`(family, size)` of every named model, in table order."""
    return [(family, size) for family, spec in FAMILIES.items() for size in spec.sizes]
