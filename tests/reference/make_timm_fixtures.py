"""Generates the PyTorch-reference fixtures of the parity tests, with timm.

For each PoolFormer variant this writes, from timm's own modules:
- `tests/fixtures/poolformer_keys.json`: the full-size model's checkpoint
  keys and shapes, its parameter count, and the authors' original key of
  every tensor (checked by running timm's `checkpoint_filter_fn` on it);
- `tests/fixtures/poolformer_<v>_tiny.safetensors`: random weights of a
  reduced-width model of the same depths and key names, every tensor
  randomised (layer scales and norm affines included);
- `tests/fixtures/poolformer_<v>_tiny_io.npz`: input images and timm's
  logits and final feature map for them.

With `--full DIR` it instead writes full-size random weights and outputs at
224x224 into DIR, for `recipes/check_parity.py` (about 1 GB for all five).

Set-up (REFERENCE.md §5: timm's torchvision import is stubbed below, as the
MetaFormer models never use torchvision):
    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 \
        safetensors pyyaml huggingface_hub && \
        /tmp/ref/bin/pip install --no-deps timm==1.0.31
Commands:
    /tmp/ref/bin/python tests/reference/make_timm_fixtures.py
    /tmp/ref/bin/python tests/reference/make_timm_fixtures.py --full /tmp/parity
"""

import argparse
import importlib.abc
import importlib.machinery
import json
import math
import os
import re
import sys
import types

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
VARIANTS = ("s12", "s24", "s36", "m36", "m48")
TINY_DIMS = (16, 24, 32, 40)
TINY_CLASSES = 10
TINY_IMAGE_SHAPE = (2, 67, 93, 3)  # odd, non-square: exercises the padding
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


def _import_timm():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.append(_TorchvisionStub())
    import timm
    import torch
    from timm.models import metaformer

    return timm, torch, metaformer


def timm_to_authors_key(key):
    """The authors' name of a timm PoolFormer v1 key (inverse of timm's filter)."""
    rules = (
        (r"^stem\.conv\.", "patch_embed.proj."),
        (r"^stages\.(\d+)\.downsample\.conv\.", lambda m: f"network.{2 * int(m[1]) - 1}.proj."),
        (r"\.layer_scale(\d)\.scale$", r".layer_scale_\1"),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"network.{2 * int(m[1])}.{m[2]}."),
        (r"^head\.norm\.", "norm."),
        (r"^head\.fc\.", "head."),
    )
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _tiny_model(metaformer, torch, variant, full):
    """timm's MetaFormer with the variant's arguments and reduced widths."""
    layer_scale = {"s12": 1e-5, "s24": 1e-5}.get(variant, 1e-6)
    depths = [len(stage.blocks) for stage in full.stages]
    return metaformer.MetaFormer(
        depths=depths,
        dims=TINY_DIMS,
        num_classes=TINY_CLASSES,
        downsample_norm=None,
        mlp_act=torch.nn.GELU,
        mlp_bias=True,
        norm_layers=metaformer.GroupNorm1,
        layer_scale_init_values=layer_scale,
        res_scale_init_values=None,
        use_mlp_head=False,
    )


def randomize(model, torch, seed):
    """Replaces every tensor with seeded random values of a sensible scale."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.ndim > 1:  # conv and linear weights: unit-variance outputs
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in)
        elif name.endswith(".bias"):
            value = 0.1 * torch.randn(tensor.shape, generator=generator)
        else:  # norm scales and layer scales
            value = 0.5 + torch.rand(tensor.shape, generator=generator)
        state[name] = value.float()
    model.load_state_dict(state)
    return {k: v.numpy() for k, v in state.items()}


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


def _check_authors_keys(metaformer, model):
    """Maps authors' keys to timm's, checked against timm's own converter."""
    state = model.state_dict()
    authors = {timm_to_authors_key(k): v for k, v in state.items()}
    assert "network.0.0.mlp.fc1.weight" in authors, sorted(authors)[:5]
    # The filter renames key by key, in order: the i-th authors' key must
    # come back as the i-th timm key.
    back = metaformer.checkpoint_filter_fn(authors, model)
    assert list(back) == list(state), "timm does not invert the authors' keys"
    return dict(zip(authors, back))


def write_fixtures():
    from safetensors.numpy import save_file

    timm, torch, metaformer = _import_timm()
    keys = {}
    for seed, variant in enumerate(VARIANTS):
        full = timm.create_model(f"poolformer_{variant}", pretrained=False)
        full_state = full.state_dict()
        tiny = _tiny_model(metaformer, torch, variant, full)
        assert list(tiny.state_dict()) == list(full_state), "key lists differ"
        state = randomize(tiny, torch, seed)
        keys[variant] = {
            "params": int(sum(t.numel() for t in full.parameters())),
            "timm": [[k, list(t.shape)] for k, t in full_state.items()],
            "authors_to_timm": _check_authors_keys(metaformer, tiny),
        }
        save_file(state, os.path.join(FIXTURES, f"poolformer_{variant}_tiny.safetensors"))
        outputs = reference_outputs(tiny, torch, _images(TINY_IMAGE_SHAPE, seed))
        outputs["dims"] = np.array(TINY_DIMS)
        outputs["depths"] = np.array([len(s.blocks) for s in full.stages])
        np.savez_compressed(os.path.join(FIXTURES, f"poolformer_{variant}_tiny_io.npz"), **outputs)
        print(f"{variant}: {len(state)} tensors, {keys[variant]['params']:,} params (full size)")
    with open(os.path.join(FIXTURES, "poolformer_keys.json"), "w") as f:
        json.dump(keys, f, indent=1)
    print(f"torch {torch.__version__}, timm {timm.__version__}")


def write_full(directory):
    from safetensors.numpy import save_file

    timm, torch, _ = _import_timm()
    os.makedirs(directory, exist_ok=True)
    for seed, variant in enumerate(VARIANTS):
        model = timm.create_model(f"poolformer_{variant}", pretrained=False)
        state = randomize(model, torch, 100 + seed)
        save_file(state, os.path.join(directory, f"poolformer_{variant}.safetensors"))
        outputs = reference_outputs(model, torch, _images(FULL_IMAGE_SHAPE, 100 + seed))
        np.savez(os.path.join(directory, f"poolformer_{variant}_io.npz"), **outputs)
        print(f"{variant}: wrote full-size reference to {directory}")
    print(f"torch {torch.__version__}, timm {timm.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", metavar="DIR", help="write full-size references to DIR")
    args = parser.parse_args()
    if args.full:
        write_full(args.full)
    else:
        write_fixtures()


if __name__ == "__main__":
    main()
