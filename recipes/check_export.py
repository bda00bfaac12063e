"""Export a fine-tuned model every way and measure what each export changes.

Command:   python recipes/finetune.py --output finetune_output   (once)
           python recipes/check_export.py finetune_output/model.keras
Hardware:  2-core CPU, about 2 minutes for PoolFormer-S12 at 32x32.
Result:    a markdown table: SavedModel, ONNX (run by ONNX Runtime) and
           TFLite float32 / float16 / dynamic int8 / full int8, each with its
           file size, the largest probability difference from Keras and the
           top-1 agreement with the float Keras model on the 360 validation
           digits (the finetune recipe's split). Targets: float32 within
           1e-4; top-1 agreement float16 >= 99%, int8 >= 95%. int8 is
           calibrated on 200 training digits, never on the images it is
           scored on.
"""

import argparse
import os
import sys
import tempfile

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from finetune import digits

import keras_metaformer  # noqa: F401  (registers the layers the file refers to)
from keras_metaformer import data
from keras_metaformer import export


def evaluation_images(images, labels, image_size, crop_pct):
    dataset = data.from_arrays(
        images, labels, training=False, image_size=image_size, crop_pct=crop_pct, batch_size=64, num_classes=10
    )
    return np.concatenate([batch for batch, _ in dataset.as_numpy_iterator()])


def directory_size(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a .keras classifier from recipes/finetune.py (digits)")
    parser.add_argument("--crop-pct", type=float, default=1.0, help="as in the finetune run")
    parser.add_argument("--seed", type=int, default=0, help="the finetune run's split seed")
    args = parser.parse_args(argv)

    model = keras.saving.load_model(args.model, compile=False)
    size = model.input_shape[1]
    (train_x, train_y), (val_x, val_y), names = digits(args.seed, smoke=False)
    images = evaluation_images(val_x, val_y, size, args.crop_pct)
    calibration = evaluation_images(train_x[:200], train_y[:200], size, args.crop_pct)
    reference = np.asarray(keras.ops.softmax(model.predict(images, verbose=0)))
    top1 = reference.argmax(-1)
    print(
        f"{model.name}: {model.count_params():,} parameters, {len(images)} validation digits "
        f"at {size}x{size}; Keras top-1 accuracy {np.mean(top1 == val_y):.2%}\n"
    )
    print("| export | size | max abs. difference | top-1 agreement |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        import tensorflow as tf

        version = export.export_saved_model(model, os.path.join(scratch, "serving"), class_names=names)
        serve = tf.saved_model.load(version).signatures["serving_default"]
        outputs = serve(images=tf.constant(images))["probabilities"].numpy()
        rows = [("SavedModel", directory_size(version), outputs)]
        path = export.export_onnx(model, os.path.join(scratch, "model.onnx"))
        rows.append((f"ONNX opset {export.OPSET}", os.path.getsize(path), export.run_onnx(path, images)))
        for quantize in export.QUANTIZATIONS:
            path = export.export_tflite(
                model, os.path.join(scratch, f"{quantize}.tflite"), quantize=quantize, representative_images=calibration
            )
            rows.append((f"TFLite {quantize}", os.path.getsize(path), export.run_tflite(path, images)))
        for name, size_bytes, outputs in rows:
            agreement = np.mean(outputs.argmax(-1) == top1)
            print(
                f"| {name} | {size_bytes / 2**20:.1f} MiB | {np.abs(outputs - reference).max():.2e} | {agreement:.2%} |"
            )


if __name__ == "__main__":
    main()
