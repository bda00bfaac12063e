"""Measure parity with timm on the full-size PoolFormer variants.

The committed tests check parity on reduced-width models; this recipe checks
the real sizes, on random weights that timm wrote out with its outputs
(`tests/reference/make_timm_fixtures.py --full DIR`, which needs torch).

Commands:
    python tests/reference/make_timm_fixtures.py --full /tmp/parity   # with torch + timm
    KERAS_BACKEND=tensorflow python recipes/check_parity.py /tmp/parity
    KERAS_BACKEND=jax python recipes/check_parity.py /tmp/parity
Hardware:  any CPU; about a minute for all five variants on 2 cores.
Result:    a table of the largest absolute differences from timm for
           logits (model with in-graph preprocessing, [0, 255] input) and
           final feature maps (include_top=False, normalised input); every
           entry should be below 1e-4 (float32). Exits 1 otherwise.
"""

import argparse
import os
import sys

import keras
import numpy as np

import keras_metaformer
from keras_metaformer.models import POOLFORMER_BUILDERS

TOLERANCE = 1e-4
BUILDERS = POOLFORMER_BUILDERS


def measure(directory, variant):
    builder = BUILDERS[variant]
    weights = os.path.join(directory, f"poolformer_{variant}.safetensors")
    with np.load(os.path.join(directory, f"poolformer_{variant}_io.npz")) as data:
        io = dict(data)
    images = io["images"].astype("float32")
    config = keras_metaformer.get_pretrained_config(f"poolformer_{variant}")
    normalized = (images / 255.0 - np.array(config.mean)) / np.array(config.std)

    classifier = builder(weights=weights, classifier_activation=None)
    logits = classifier.predict(images, verbose=0)
    backbone = builder(weights=weights, include_top=False, include_preprocessing=False)
    features = backbone.predict(normalized.astype("float32"), verbose=0)
    return (
        float(np.abs(logits - io["logits"]).max()),
        float(np.abs(features - io["features"]).max()),
        float(np.abs(io["logits"]).max()),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="output directory of make_timm_fixtures.py --full")
    parser.add_argument("--variants", nargs="+", choices=sorted(BUILDERS), default=list(BUILDERS))
    args = parser.parse_args(argv)

    print(f"backend: {keras.backend.backend()}, float32, 2 images at 224x224, tolerance {TOLERANCE:g}")
    print("| variant | max abs diff logits | max abs diff features | max abs logit |")
    print("|---|---|---|---|")
    worst = 0.0
    for variant in args.variants:
        logits_diff, features_diff, scale = measure(args.directory, variant)
        worst = max(worst, logits_diff, features_diff)
        print(f"| {variant} | {logits_diff:.2e} | {features_diff:.2e} | {scale:.2f} |")
    verdict = "PASS" if worst < TOLERANCE else "FAIL"
    print(f"{verdict}: largest difference {worst:.2e}")
    return 0 if worst < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
