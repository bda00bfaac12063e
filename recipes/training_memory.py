"""Training-step memory with and without gradient checkpointing (JAX).

Command:   KERAS_BACKEND=jax python recipes/training_memory.py [--models poolformer_m48 caformer_b36]
                                                           [--batch 16] [--budget-gib 16]
Hardware:  any; it compiles each step without running it (a few minutes per model on 2 cores).
Result:    a table, without and with `gradient_checkpointing=True`: the activations JAX saves
           for the backward pass per image (what checkpointing cuts); the memory of one training
           step as XLA's buffer assignment plans it (arguments + temporaries + outputs) at batch 1
           and `--batch`; and the largest batch whose step fits in `--budget-gib`, from the
           per-image growth between the two.
Note:      on CPU, XLA's scheduler may run the recomputation early, where it saves nothing: the
           saved activations fall while the planned step memory does not (see BENCHMARKS.md).
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import numpy as np

import keras_metaformer

GIB = 2**30


def step_bytes(arch, batch, gradient_checkpointing, size=224):
    """Bytes XLA assigns to one loss-and-gradient step of `arch` at `batch`."""
    model = keras_metaformer.BUILDERS[arch](
        weights=None, classifier_activation=None, gradient_checkpointing=gradient_checkpointing
    )
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable, images, labels):
        logits, _ = model.stateless_call(trainable, non_trainable, images, training=True)
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).mean()

    images = jax.ShapeDtypeStruct((batch, size, size, 3), "float32")
    labels = jax.ShapeDtypeStruct((batch,), "int32")
    compiled = jax.jit(jax.value_and_grad(loss)).lower(trainable, images, labels).compile()
    memory = compiled.memory_analysis()
    return memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes


def saved_activation_bytes(arch, gradient_checkpointing, size=224):
    """Bytes of the activations one image's backward pass keeps (weights excluded)."""
    from jax._src.ad_checkpoint import saved_residuals  # JAX's own tool; not exported

    model = keras_metaformer.BUILDERS[arch](
        weights=None, classifier_activation=None, gradient_checkpointing=gradient_checkpointing
    )
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    images, labels = np.zeros((1, size, size, 3), "float32"), np.zeros((1,), "int32")

    def loss(trainable):
        logits, _ = model.stateless_call(trainable, non_trainable, images, training=True)
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).mean()

    saved = saved_residuals(loss, trainable)
    return sum(int(np.prod(value.shape)) * value.dtype.itemsize for value, why in saved if "argument" not in why)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["poolformer_m48", "caformer_b36"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--budget-gib", type=float, default=16.0)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        sys.exit("This script reads XLA's memory analysis: run it with KERAS_BACKEND=jax.")
    print(
        f"| model | checkpointing | saved activations per image, MiB | step at batch 1, GiB "
        f"| step at batch {args.batch}, GiB | step per image, MiB | largest batch in {args.budget_gib:g} GiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for arch in args.models:
        for checkpointing in (False, True):
            saved = saved_activation_bytes(arch, checkpointing)
            one, many = (step_bytes(arch, b, checkpointing) for b in (1, args.batch))
            per_image = (many - one) / (args.batch - 1)
            fits = int(np.floor((args.budget_gib * GIB - (one - per_image)) / per_image))
            print(
                f"| {arch} | {'yes' if checkpointing else 'no'} | {saved / 2**20:.1f} | {one / GIB:.2f} "
                f"| {many / GIB:.2f} | {per_image / 2**20:.0f} | {fits} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
