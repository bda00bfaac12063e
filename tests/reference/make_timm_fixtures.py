"""Generates the PyTorch-reference fixtures of the parity tests, with timm.

For every MetaFormer architecture (PoolFormer v1 and v2, IdentityFormer,
RandFormer, ConvFormer, CAFormer; all sizes) this writes, from timm's own
modules:
- `tests/fixtures/timm_keys.json`: the full-size model's checkpoint keys
  and shapes, its parameter count, the authors' original key of every
  tensor (checked by running timm's `checkpoint_filter_fn` on it), and the
  keys and shapes of a reduced-width model of the same depths and names;
- `tests/fixtures/<arch>_tiny_io.npz`: input images and timm's logits and
  final feature map for them (`_tiny_384_io.npz`: at 384x384), with the
  reduced model's weights from `reference_weights.py`: every tensor
  pseudo-random (layer scales, residual scales, StarReLU scalars and norm
  affines included), recomputed by the tests rather than committed.

Architectures are built with the arguments of timm's registered functions
(captured, not copied). timm has no IdentityFormer or RandFormer: they are
timm's `MetaFormer` with the authors' mixers (identity; a frozen softmax of
a uniform random matrix, per sail-sg/metaformer), with PoolFormerV2's
arguments otherwise.

With `--full DIR` it instead writes full-size weights and outputs of every
timm architecture at 224x224 (and ConvFormer/CAFormer-S18 at 384x384) into
DIR, for `recipes/check_parity.py` (about 3 GB; `--archs` picks some).

Set-up (REFERENCE.md §5: timm's torchvision import is stubbed below, as the
MetaFormer models never use torchvision):
    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 \
        safetensors pyyaml huggingface_hub pillow && \
        /tmp/ref/bin/pip install --no-deps timm==1.0.31
Commands:
    /tmp/ref/bin/python tests/reference/make_timm_fixtures.py
    /tmp/ref/bin/python tests/reference/make_timm_fixtures.py --full /tmp/parity
"""

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import re
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_weights import reference_weights

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
VARIANTS = ("s12", "s24", "s36", "m36", "m48")
SIZES = {
    "poolformer": VARIANTS,
    "poolformerv2": VARIANTS,
    "identityformer": VARIANTS,
    "randformer": VARIANTS,
    "convformer": ("s18", "s36", "m36", "b36"),
    "caformer": ("s18", "s36", "m36", "b36"),
}
# Widths of the reduced models: they must grow (timm drops the downsampling
# of a stage that keeps its width) and attention needs multiples of 32 (one
# head in stage 3, two in stage 4).
TINY_DIMS = (8, 16, 32, 64)
TINY_CLASSES = 10
TINY_IMAGE_SHAPE = (2, 67, 93, 3)  # odd, non-square: exercises the padding
LARGE_IMAGE_SHAPE = (1, 384, 384, 3)
LARGE_INPUT_ARCHS = ("convformer_s18", "caformer_s18")
FULL_IMAGE_SHAPE = (2, 224, 224, 3)
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


class _StubType(type):
    """A stand-in class whose class attributes are their own names."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name, (), {})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every `torchvision.*` import with an empty stand-in module."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_timm():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.append(_TorchvisionStub())
    import timm
    import torch
    from timm.models import metaformer

    return timm, torch, metaformer


def timm_to_authors_key(key, v1):
    """The authors' name of a timm key (the inverse of timm's filter)."""
    if v1:  # sail-sg/poolformer
        rules = (
            (r"^stem\.conv\.", "patch_embed.proj."),
            (r"^stages\.(\d+)\.downsample\.conv\.", lambda m: f"network.{2 * int(m[1]) - 1}.proj."),
            (r"\.layer_scale(\d)\.scale$", r".layer_scale_\1"),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"network.{2 * int(m[1])}.{m[2]}."),
        )
    else:  # sail-sg/metaformer
        rules = (
            (r"^stem\.conv\.", "downsample_layers.0.conv."),
            (r"^stem\.norm\.", "downsample_layers.0.post_norm."),
            (r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm."),
            (r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
        )
    rules += ((r"^head\.norm\.", "norm."), (r"^head\.fc\.", "head."))
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _random_mixing_class(torch, num_tokens):
    """The authors' RandomMixing for `num_tokens` positions, NCHW like timm."""

    class RandomMixing(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.random_matrix = torch.nn.Parameter(
                torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1), requires_grad=False
            )

        def forward(self, x):
            batch, channels, height, width = x.shape
            tokens = x.reshape(batch, channels, height * width)
            mixed = torch.einsum("mn,bcn->bcm", self.random_matrix, tokens)
            return mixed.reshape(batch, channels, height, width)

    return RandomMixing


def _stage_tokens(image_shape):
    """Positions in stages 3 and 4 for an input of `image_shape`."""
    sizes = [(side + 4 - 7) // 4 + 1 for side in image_shape[1:3]]
    tokens = []
    for _ in range(3):
        sizes = [(side + 2 - 3) // 2 + 1 for side in sizes]
        tokens.append(sizes[0] * sizes[1])
    return tokens[1:]


def timm_arguments(metaformer, torch, family, size, image_shape):
    """timm's `MetaFormer` arguments for an architecture, captured from its
    registered function."""
    captured = {}
    original = metaformer._create_metaformer
    metaformer._create_metaformer = lambda variant, pretrained=False, **kw: captured.update(kw)
    try:
        source = "poolformerv2" if family in ("identityformer", "randformer") else family
        getattr(metaformer, f"{source}_{size}")()
    finally:
        metaformer._create_metaformer = original
    if family == "identityformer":
        captured["token_mixers"] = torch.nn.Identity
    if family == "randformer":
        stage3, stage4 = _stage_tokens(image_shape)
        captured["token_mixers"] = [
            torch.nn.Identity,
            torch.nn.Identity,
            _random_mixing_class(torch, stage3),
            _random_mixing_class(torch, stage4),
        ]
    return captured


def set_reference_weights(model, torch, arch):
    """Loads `reference_weights.py`'s tensors into a timm model."""
    shapes = [(k, list(t.shape)) for k, t in model.state_dict().items()]
    state = reference_weights(arch, shapes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return shapes


def reference_outputs(model, torch, images):
    """timm's logits and final feature map (NHWC) for [0, 255] NHWC images."""
    normalized = ((images.astype("float32") / 255.0 - MEAN) / STD).astype("float32")
    x = torch.from_numpy(normalized.transpose(0, 3, 1, 2).copy())
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    return {
        "images": images,
        "features": features.numpy().transpose(0, 2, 3, 1).copy(),
        "logits": logits.numpy(),
    }


def _images(shape, seed):
    # Integer pixel values, as decoded images have: stored exactly as uint8.
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape).astype("uint8")


def _check_authors_keys(metaformer, model, v1):
    """Maps authors' keys to timm's, checked against timm's own converter."""
    state = model.state_dict()
    authors = {timm_to_authors_key(k, v1): v for k, v in state.items()}
    # The filter renames key by key, in order: the i-th authors' key must
    # come back as the i-th timm key.
    back = metaformer.checkpoint_filter_fn(authors, model)
    assert list(back) == list(state), "timm does not invert the authors' keys"
    return dict(zip(authors, back))


def write_fixtures():
    timm, torch, metaformer = import_timm()
    keys = {}
    seed = 0
    for family, sizes in SIZES.items():
        for size in sizes:
            arch = f"{family}_{size}"
            full = metaformer.MetaFormer(**timm_arguments(metaformer, torch, family, size, FULL_IMAGE_SHAPE))
            arguments = timm_arguments(metaformer, torch, family, size, TINY_IMAGE_SHAPE)
            arguments.update(dims=TINY_DIMS, num_classes=TINY_CLASSES)
            tiny = metaformer.MetaFormer(**arguments)
            assert list(tiny.state_dict()) == list(full.state_dict()), "key lists differ"
            tiny_shapes = set_reference_weights(tiny, torch, arch)
            keys[arch] = {
                "params": int(sum(t.numel() for t in full.parameters() if t.requires_grad)),
                "timm": [[k, list(t.shape)] for k, t in full.state_dict().items()],
                "tiny": tiny_shapes,
                "authors_to_timm": _check_authors_keys(metaformer, tiny, family == "poolformer"),
            }
            outputs = reference_outputs(tiny, torch, _images(TINY_IMAGE_SHAPE, seed))
            outputs["dims"] = np.array(arguments["dims"])
            np.savez_compressed(os.path.join(FIXTURES, f"{arch}_tiny_io.npz"), **outputs)
            if arch in LARGE_INPUT_ARCHS:
                large = reference_outputs(tiny, torch, _images(LARGE_IMAGE_SHAPE, seed))
                np.savez_compressed(os.path.join(FIXTURES, f"{arch}_tiny_384_io.npz"), **large)
            print(f"{arch}: {len(tiny_shapes)} tensors, {keys[arch]['params']:,} trainable params (full size)")
            seed += 1
    with open(os.path.join(FIXTURES, "timm_keys.json"), "w") as f:
        json.dump(keys, f, indent=1)
    print(f"torch {torch.__version__}, timm {timm.__version__}")


def write_full(directory, archs):
    """Full-size references of `archs` (timm names, `@384` for 384x384)."""
    from safetensors.numpy import save_file

    timm, torch, _ = import_timm()
    os.makedirs(directory, exist_ok=True)
    for seed, name in enumerate(archs):
        arch, _, size = name.partition("@")
        shape = (2, int(size), int(size), 3) if size else FULL_IMAGE_SHAPE
        model = timm.create_model(arch, pretrained=False)
        set_reference_weights(model, torch, arch)
        weights = os.path.join(directory, f"{arch}.safetensors")
        if not os.path.exists(weights):
            save_file({k: t.numpy() for k, t in model.state_dict().items()}, weights)
        outputs = reference_outputs(model, torch, _images(shape, 100 + seed))
        np.savez(os.path.join(directory, f"{arch}{'_' + size if size else ''}_io.npz"), **outputs)
        print(f"{name}: wrote full-size reference to {directory}")
    print(f"torch {torch.__version__}, timm {timm.__version__}")


FULL_ARCHS = [
    *[f"{family}_{size}" for family in ("poolformer", "poolformerv2") for size in VARIANTS],
    *[f"{family}_{size}" for family in ("convformer", "caformer") for size in ("s18", "s36", "m36", "b36")],
    "convformer_s18@384",
    "caformer_s18@384",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", metavar="DIR", help="write full-size references to DIR")
    parser.add_argument(
        "--archs",
        nargs="+",
        default=FULL_ARCHS,
        help="with --full: timm names, NAME@384 for 384x384 input (default: all timm families)",
    )
    args = parser.parse_args()
    if args.full:
        write_full(args.full, args.archs)
    else:
        write_fixtures()


if __name__ == "__main__":
    main()
