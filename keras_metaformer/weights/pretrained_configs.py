"""Pretrained weight tags: where each lives and how its inputs were prepared.

Keys follow timm's `arch.tag` convention (`poolformer_s12.sail_in1k`). The
first tag listed for an architecture is its default, which
`weights="imagenet"` selects.
"""

import dataclasses
import math
import os

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_HUB_URL = "https://huggingface.co"


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    """How a set of pretrained weights expects its inputs.

    Attributes:
        arch: architecture name, e.g. `"poolformer_s12"`.
        tag: weight tag, e.g. `"sail_in1k"`.
        hub_id: Hugging Face Hub repository holding `model.safetensors`.
        num_classes: number of output classes of the head.
        input_size: `(height, width)` the weights were evaluated at.
        crop_pct: evaluation crop ratio; the shorter side is first resized to
            `floor(input_size / crop_pct)`, then the centre is cropped.
        interpolation: resize interpolation used in evaluation.
        mean: per-channel RGB mean of `[0, 1]` pixels.
        std: per-channel RGB standard deviation of `[0, 1]` pixels.
    """

    arch: str
    tag: str
    hub_id: str
    num_classes: int = 1000
    input_size: tuple = (224, 224)
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    @property
    def name(self):
        return f"{self.arch}.{self.tag}"

    @property
    def resize_size(self):
        """Side the shorter image edge is resized to before the centre crop."""
        return math.floor(self.input_size[0] / self.crop_pct)

    @property
    def url(self):
        """Download URL; `$HF_ENDPOINT` selects a Hub mirror, as in timm."""
        endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_HUB_URL).rstrip("/")
        return f"{endpoint}/{self.hub_id}/resolve/main/model.safetensors"


def _timm(arch, tag, **kwargs):
    return PretrainedConfig(arch, tag, hub_id=f"timm/{arch}.{tag}", **kwargs)


def _baseline_tags(arch):
    """The five timm tags of a ConvFormer or CAFormer size."""
    return [
        _timm(arch, "sail_in1k", crop_pct=1.0),
        _timm(arch, "sail_in1k_384", crop_pct=1.0, input_size=(384, 384)),
        _timm(arch, "sail_in22k_ft_in1k", crop_pct=1.0),
        _timm(arch, "sail_in22k_ft_in1k_384", crop_pct=1.0, input_size=(384, 384)),
        _timm(arch, "sail_in22k", crop_pct=1.0, num_classes=21841),
    ]


_CONFIGS = [
    _timm("poolformer_s12", "sail_in1k", crop_pct=0.9),
    _timm("poolformer_s24", "sail_in1k", crop_pct=0.9),
    _timm("poolformer_s36", "sail_in1k", crop_pct=0.9),
    _timm("poolformer_m36", "sail_in1k", crop_pct=0.95),
    _timm("poolformer_m48", "sail_in1k", crop_pct=0.95),
    *[_timm(f"poolformerv2_{size}", "sail_in1k", crop_pct=1.0) for size in ("s12", "s24", "s36", "m36", "m48")],
    *[config for size in ("s18", "s36", "m36", "b36") for config in _baseline_tags(f"convformer_{size}")],
    *[config for size in ("s18", "s36", "m36", "b36") for config in _baseline_tags(f"caformer_{size}")],
]

# Published by the authors only, as PyTorch pickles: they need torch to read
# (recipes/convert_authors_checkpoint.py), so no builder downloads them.
AUTHORS_ONLY_WEIGHTS = {
    f"{family}_{size}": f"https://huggingface.co/sail/dl/resolve/main/{family}/{family}_{size}.pth"
    for family in ("identityformer", "randformer")
    for size in ("s12", "s24", "s36", "m36", "m48")
}

PRETRAINED_CONFIGS = {config.name: config for config in _CONFIGS}

# The alias users know from keras.applications.
IMAGENET_ALIAS = "imagenet"


def available_weights(arch):
    """Returns the weight tags of an architecture, default first."""
    return [c.tag for c in _CONFIGS if c.arch == arch]


def get_pretrained_config(arch, tag=IMAGENET_ALIAS):
    """Returns the `PretrainedConfig` of `arch` with weight `tag`.

    Example:

    >>> config = get_pretrained_config("poolformer_s12")
    >>> config.name, config.input_size, config.resize_size, config.mean
    ('poolformer_s12.sail_in1k', (224, 224), 248, (0.485, 0.456, 0.406))
    """
    tags = available_weights(arch)
    if not tags:
        archs = sorted({c.arch for c in _CONFIGS})
        raise ValueError(
            f"No pretrained weights are known for architecture {arch!r}. Architectures with weights: {archs}."
        )
    if tag == IMAGENET_ALIAS:
        tag = tags[0]
    if tag not in tags:
        raise ValueError(f"Unknown weight tag {tag!r} for {arch}. Expected {IMAGENET_ALIAS!r} or one of {tags}.")
    return PRETRAINED_CONFIGS[f"{arch}.{tag}"]
