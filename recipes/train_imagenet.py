"""Train PoolFormer on ImageNet-1k from scratch with the authors' recipe.

Command:   python recipes/train_imagenet.py --variant s12 --manual-dir /data/imagenet \
               --batch-size 1024 --distribution mirrored --precision mixed_bfloat16
           (TFDS builds imagenet2012 once from ILSVRC2012_img_train.tar and
           ILSVRC2012_img_val.tar in --manual-dir; or --data-dir with
           train/<synset>/ and val/<synset>/ folders.)
           python recipes/train_imagenet.py --smoke   (CI: TFDS' mock imagenet2012)
           KERAS_BACKEND=jax KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:1234 KERAS_DISTRIBUTION_NUM_PROCESSES=2 \
               KERAS_DISTRIBUTION_PROCESS_ID=N python recipes/train_imagenet.py --distribution data-parallel
           (JAX, one process per host or device, N = 0, 1; --batch-size stays the global batch
           and each process reads its share of every batch)
Hardware:  the authors trained on 8 GPUs; 300 epochs of S12 take a few GPU-days.
           Not run here: on a 2-core CPU one epoch would take about a week.
Result:    the paper's ImageNet top-1 after 300 epochs: S12 77.2, S24 80.3,
           S36 81.4, M36 82.1, M48 82.5. Not reproduced by us.
Writes:    into --output (default imagenet_output/):
             model.keras          the trained classifier (logits out); keras.saving.load_model reads it
             log.csv              loss, top-1 and top-5 accuracy per epoch, training and validation
             learning_curves.png  loss and top-1 curves, titled with the model and the data set
             checkpoints/         while training: state.json and epoch-NNNN.weights.h5, the last
                                  finished epoch's weights and optimizer state (the last two in a job
                                  of several workers), from which a killed run resumes; deleted after
                                  a successful run unless --keep-checkpoints
           Under --distribution multi-worker, each non-chief worker writes the same
           into <output>/worker-N/; with several JAX processes (--distribution
           data-parallel, KERAS_DISTRIBUTION_* set), process N > 0 into
           <output>/process-N/. TFDS builds imagenet2012 in --tfds-data-dir
           (default ~/tensorflow_datasets/) once.

Recipe (the authors'): AdamW, peak learning rate 1e-3 x effective batch /
1024, weight decay 0.05 except on norms, biases and layer scales, 5 linear
warm-up epochs from 1e-6 then cosine to 1e-5, drop-path per variant,
RandAugment m9 mstd0.5, MixUp 0.8 / CutMix 1.0, random erasing 0.25, label
smoothing 0.1. --accumulate N sums N batches' gradients per update (the
effective batch is N x --batch-size); --ema keeps an exponential moving
average of the weights. A killed run resumes from its last finished epoch.
"""

import argparse
import contextlib
import os
import sys
import tempfile

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import training_setup

import keras_metaformer
from keras_metaformer import data
from keras_metaformer.models import POOLFORMER_VARIANTS
from keras_metaformer.training import adamw
from keras_metaformer.training import scaled_learning_rate
from keras_metaformer.training import warmup_cosine


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=training_setup.docstring_section(__doc__, "Writes:"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    training_setup.add_arguments(parser, batch_size=1024, epochs=300)
    parser.add_argument("--data-dir", help="folder with train/<class>/ and val/<class>/ images")
    parser.add_argument("--manual-dir", help="folder with the ILSVRC2012 tar files (TFDS imagenet2012)")
    parser.add_argument("--tfds-data-dir", help="TFDS data_dir")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--ema", type=float, help="EMA momentum, e.g. 0.9998 (default: no EMA)")
    parser.add_argument("--output", default="imagenet_output", help="the folder to write into (see below)")
    args = parser.parse_args(argv)
    args.weights = "none"  # from scratch
    if args.smoke:
        args.epochs, args.warmup_epochs, args.batch_size, args.image_size = 2, 1, 4, 32
    return args


@contextlib.contextmanager
def mock_imagenet():
    """TFDS' mock imagenet2012 (random images, real class list) for --smoke."""
    import tensorflow_datasets as tfds

    with tempfile.TemporaryDirectory() as manual_dir, tfds.testing.mock_data(num_examples=8):
        for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
            open(os.path.join(manual_dir, name), "wb").close()
        yield manual_dir


def load_datasets(args, manual_dir):
    options = dict(
        image_size=args.image_size, batch_size=args.batch_size, seed=args.seed, config=f"poolformer_{args.variant}"
    )
    if args.data_dir:
        train = data.from_directory(os.path.join(args.data_dir, "train"), training=True, **options)
        val = data.from_directory(os.path.join(args.data_dir, "val"), training=False, **options)
        return train, val
    common = dict(data_dir=args.tfds_data_dir, manual_dir=manual_dir, **options)
    train = data.from_tfds("imagenet2012", split="train", training=True, **common)
    val = data.from_tfds("imagenet2012", split="validation", training=False, **common)
    return train, val


def build_model(args, num_classes):
    if args.smoke:
        return keras_metaformer.MetaFormer(
            depths=(1, 1, 1, 1),
            dims=(8, 16, 24, 32),
            weights=None,
            drop_path_rate=0.1,
            input_shape=(args.image_size, args.image_size, 3),
            classes=num_classes,
        )
    builder = keras_metaformer.models.POOLFORMER_BUILDERS[args.variant]
    return builder(
        weights=None,
        classes=num_classes,
        input_shape=(args.image_size, args.image_size, 3),
        drop_path_rate=POOLFORMER_VARIANTS[args.variant].train_drop_path_rate,
    )


def train(args, manual_dir):
    scope = training_setup.configure(args)
    paths = training_setup.output_paths(args.output, args.process_id)
    train_data, val_data = load_datasets(args, manual_dir)
    train_data = training_setup.process_share(train_data, args)
    steps = int(train_data.cardinality()) // args.accumulate
    effective_batch = args.batch_size * args.accumulate
    peak = scaled_learning_rate(effective_batch)
    print(f"Effective batch {effective_batch}: peak learning rate {peak:g}, {steps} updates per epoch")
    with scope:
        model = build_model(args, train_data.num_classes)
        schedule = warmup_cosine(peak, total_steps=args.epochs * steps, warmup_steps=args.warmup_epochs * steps)
        optimizer = adamw(
            model,
            schedule,
            weight_decay=0.05,
            use_ema=args.ema is not None,
            ema_momentum=args.ema or 0.99,
            gradient_accumulation_steps=args.accumulate if args.accumulate > 1 else None,
        )
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.CategoricalAccuracy(name="accuracy"),
                keras.metrics.TopKCategoricalAccuracy(5, name="top5"),
            ],
            jit_compile=args.jit_compile or "auto",
        )
        checkpoint = training_setup.open_checkpoint(paths, args)  # in the scope: workers agree on the epoch
        initial_epoch = checkpoint.restore(model)
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=args.epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would warn that it cannot
        callbacks=[keras.callbacks.CSVLogger(paths["log"], append=True), checkpoint],  # see open_checkpoint
        verbose=1 if sys.stdout.isatty() else 2,
    )
    if args.ema is not None:
        # Evaluate and save the averaged weights, as the authors report them.
        optimizer.finalize_variable_values(model.trainable_variables)
    model.save(paths["model"])
    if args.data_dir:
        data_name = os.path.basename(os.path.normpath(args.data_dir))
    else:
        data_name = "mock imagenet2012" if args.smoke else "imagenet2012"
    model_name = training_setup.model_label(args.variant, args.smoke)
    title = f"{model_name} on {data_name}, {args.image_size}x{args.image_size}, from scratch"
    training_setup.plot_learning_curves(paths["log"], paths["plot"], title)
    checkpoints = training_setup.finish_checkpoints(paths, args.keep_checkpoints)
    print(f"Wrote {paths['model']}, {paths['log']}, {paths['plot']}; {checkpoints}")


def main(argv=None):
    args = parse_arguments(argv)
    if args.smoke:
        with mock_imagenet() as manual_dir:
            train(args, manual_dir)
    else:
        train(args, args.manual_dir)


if __name__ == "__main__":
    main()
