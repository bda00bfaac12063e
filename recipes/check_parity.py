"""Measure parity with timm on full-size models.

The committed tests check parity on reduced-width models; this recipe checks
the real sizes, on pseudo-random weights that timm wrote out with its
outputs (`tests/reference/make_timm_fixtures.py --full DIR`, which needs
torch).

Commands:
    python tests/reference/make_timm_fixtures.py --full /tmp/parity   # with torch + timm
    KERAS_BACKEND=tensorflow python recipes/check_parity.py /tmp/parity
    KERAS_BACKEND=jax python recipes/check_parity.py /tmp/parity
Hardware:  any CPU; a few minutes for all 18 references on 2 cores.
Result:    a table of the largest absolute differences from timm for
           logits (model with in-graph preprocessing, [0, 255] input) and
           final feature maps (include_top=False, normalised input), for
           every reference in DIR; logits should differ by less than 1e-4
           (float32). Exits 1 otherwise.

On GPUs since Ampere, JAX and TensorFlow compute float32 matrix products and
convolutions in TensorFloat-32 by default, with inputs rounded to 10
mantissa bits. This check turns that off, as it measures the port, not the
GPU's rounding; `--tf32` keeps the backend's default. On an H100, JAX's
logits differed from timm's by at most 6.7e-6 in float32 and 4.4e-3 with
TensorFloat-32 (PoolFormer-S12/M48, PoolFormerV2-S12, ConvFormer/CAFormer-S18).
"""

import argparse
import os
import sys

import keras
import numpy as np

import keras_metaformer

TOLERANCE = 1e-4


def measure(directory, reference):
    """Largest differences for one `<arch>[_<size>]_io.npz` reference."""
    with np.load(os.path.join(directory, reference)) as data:
        io = dict(data)
    name = reference[: -len("_io.npz")]
    arch = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
    builder = keras_metaformer.BUILDERS[arch]
    weights = os.path.join(directory, f"{arch}.safetensors")
    images = io["images"].astype("float32")
    shape = images.shape[1:]
    config = keras_metaformer.get_pretrained_config(arch)
    normalized = (images / 255.0 - np.array(config.mean)) / np.array(config.std)

    classifier = builder(weights=weights, classifier_activation=None, input_shape=shape)
    logits = classifier.predict(images, verbose=0)
    backbone = builder(weights=weights, include_top=False, include_preprocessing=False, input_shape=shape)
    features = backbone.predict(normalized.astype("float32"), verbose=0)
    return (
        f"{arch} @{shape[0]}",
        float(np.abs(logits - io["logits"]).max()),
        float(np.abs(features - io["features"]).max()),
        float(np.abs(io["logits"]).max()),
        float(np.abs(io["features"]).max()),
    )


def use_full_float32():
    """Float32 matrix products and convolutions without TensorFloat-32."""
    if keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="output directory of make_timm_fixtures.py --full")
    parser.add_argument(
        "--tf32", action="store_true", help="keep the backend's default, TensorFloat-32 on recent NVIDIA GPUs"
    )
    args = parser.parse_args(argv)
    references = sorted(f for f in os.listdir(args.directory) if f.endswith("_io.npz"))
    if not references:
        sys.exit(f"error: no *_io.npz references in {args.directory}")

    if not args.tf32:
        use_full_float32()
    products = "backend default (TensorFloat-32 on recent GPUs)" if args.tf32 else "full float32"
    print(f"backend: {keras.backend.backend()}, float32, products: {products}, tolerance {TOLERANCE:g} on logits")
    print("| model | max abs diff logits | max abs diff features | max abs logit | max abs feature |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for reference in references:
        name, logits_diff, features_diff, logit_scale, feature_scale = measure(args.directory, reference)
        worst = max(worst, logits_diff)
        print(f"| {name} | {logits_diff:.2e} | {features_diff:.2e} | {logit_scale:.2f} | {feature_scale:.1f} |")
        keras.backend.clear_session()
    verdict = "PASS" if worst < TOLERANCE else "FAIL"
    print(f"{verdict}: largest logit difference {worst:.2e}")
    return 0 if worst < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
