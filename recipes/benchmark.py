"""Speed and memory of our models against timm's PyTorch reference, in one run.

Command:   python recipes/benchmark.py --torch-python /work/refvenv/bin/python
           python recipes/benchmark.py --models poolformer_s12      (the targets' row only)
           python recipes/benchmark.py --models poolformer_s12 --engines onnxruntime --precisions float32
Hardware:  this 2-core CPU: about 4 minutes per model and precision for all
           engines; PoolFormer-M48 several times that.
Result:    a line naming the CPU and its vector units (AVX2, AVX-512, AVX-512
           BF16, AMX), then a markdown table (both on stdout and in
           <output>/benchmark.md) and a bar chart (<output>/benchmark.png):
           per model, engine and precision, batch-1 latency (ms), batch-32
           throughput (img/s), batch-32 training throughput (img/s), peak
           resident memory (MiB), and each number as a ratio to timm's
           torch.compile (inference) or eager (training) in the same run.

Engines: `tf` (TensorFlow graph), `tf-frozen` (the TensorFlow graph with
constant weights, `keras_metaformer.export.frozen_function`; inference
only), `tf-saved-model` (the `serving_default` signature of the SavedModel
`export_saved_model` writes, loaded back: what TF Serving runs, softmax
included; inference only), `tf-xla` (jit_compile), `jax` (jax.jit),
`tflite` (LiteRT, float32 only), `onnxruntime` (ONNX Runtime's CPU
provider on the file `export_onnx` writes, float32 only: the thread count
within each operator, one operator at a time), `timm` (PyTorch eager) and
`timm-compile` (torch.compile), PyTorch with channels-last tensors and
bfloat16 through autocast, Keras through the `mixed_bfloat16` policy.
Every engine runs in its own process with the same thread count (2),
224x224 inputs, random weights, a warm-up, and the median of repeated
timings. Our biases, norm parameters and layer scales are
random too, as trained ones are: initialised to 0 and 1, they would let
TensorFlow's graph optimiser drop their adds from a frozen graph, which
then no longer fuses the GELU into the matrix product before it. timm runs
when the interpreter given by --torch-python (default: this one) has torch
and timm; timm's torchvision import is stubbed as in tests/reference.

With `--rounds N`, every engine is measured N times, every other round in
reverse order, and the table keeps each engine's best numbers (lowest
latency, highest throughputs). The host's speed can drift for tens of
seconds at a time: on a 2-core AVX-512 host, 16 back-to-back processes
timing one PoolFormer-S12 TFLite file at batch 1 took 23.7-24.3 ms for a
spell of eight, then 22.2 ms once and 19.4-19.7 ms seven times, so one
round can catch an engine in a slow spell and its baseline in a fast one.

With `--device gpu`, JAX, TensorFlow and PyTorch run on the first GPU, and
the peak-memory column holds the device's peak allocation instead of the
process's resident memory:

           python recipes/benchmark.py --device gpu --engines jax,timm,timm-compile

With `--malloc retain`, every worker, PyTorch's included, runs with glibc's
malloc told to keep freed memory (`RETAINING_MALLOC` below). By default each
engine allocates as it does for a user: TensorFlow's allocator and, since
`import keras_metaformer` turns it on under JAX, JAX keep freed memory
(`KERAS_METAFORMER_MALLOC=system` turns that off); PyTorch uses glibc's
malloc, which gives every buffer above 32 MiB a fresh `mmap`, so each
training step first-touches its whole working set again: XLA's 2.4 GB
temporary buffer for a PoolFormer-S12 step took 640k page faults and 1.5 s
of kernel time per step on a 2-core CPU, and eager PyTorch's tensors about
as many.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import matmul_peak  # noqa: E402

MODELS = (
    "poolformer_s12",
    "poolformer_s24",
    "poolformer_s36",
    "poolformer_m36",
    "poolformer_m48",
    "convformer_s18",
    "caformer_s18",
)
ENGINES = ("tf", "tf-frozen", "tf-saved-model", "tf-xla", "jax", "tflite", "onnxruntime", "timm", "timm-compile")
# Engines measured for inference only.
INFERENCE_ONLY = ("tf-frozen", "tf-saved-model", "tflite", "onnxruntime")
# Engines that run float32 files on the CPU only.
CPU_FLOAT32_ONLY = ("tflite", "onnxruntime")
PRECISIONS = ("float32", "bfloat16")
# glibc malloc settings that keep freed memory for reuse: one arena (other
# arenas fall back to mmap for large blocks), no mmap, no trimming.
RETAINING_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**62)}
# The vector units that decide these numbers, as /proc/cpuinfo names them.
# Two 2-core AMD EPYC machines used here gave timm's torch.compile 23 img/s
# (AVX2 only) and 44 img/s (AVX-512) for PoolFormer-S12 at batch 32, and
# bfloat16 has hardware support only with AVX-512 BF16 or AMX: compare
# numbers only between runs on the same kind of CPU.
CPU_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX"))
# Inference is compared with torch.compile, training with eager PyTorch.
BASELINE = {"inference": "timm-compile", "training": "timm"}


def describe_cpu(cpuinfo="/proc/cpuinfo"):
    """One line naming the CPU, its family and model numbers (and AMD's core
    generation), its logical CPUs, and which of `CPU_FEATURES` it has; from
    `platform` where `cpuinfo` cannot be read.

    Virtual machines often give a generic model name ("AMD EPYC", "Intel
    Xeon Processor"), under which a Zen 4 and a Zen 5, with half and full
    AVX-512 width, read alike: the family and model numbers tell them apart.
    """
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    count = sum(line.split(":")[0].strip() == "processor" for line in lines)
    flags = set(fields.get("flags", "").split())
    have = [name for flag, name in CPU_FEATURES if flag in flags]
    lack = [name for flag, name in CPU_FEATURES if flag not in flags]
    numbers = ""
    if "cpu family" in fields and "model" in fields:
        family, model = int(fields["cpu family"]), int(fields["model"])
        generation = amd_generation(family, model) if fields.get("vendor_id") == "AuthenticAMD" else None
        numbers = f" (family {family}, model {model}{': ' + generation if generation else ''})"
    return (
        f"CPU: {fields.get('model name', platform.machine())}{numbers}, {count} logical CPUs; "
        f"with {', '.join(have) or 'none of ' + ', '.join(lack)}"
        + (f"; without {', '.join(lack)}" if have and lack else "")
    )


def inference_timings(step_for, options):
    """Batch-1 latency (ms) and batch-`options.batch` throughput (img/s);
    `step_for(batch)` returns a callable that runs one batch of that size."""
    latency = timed(step_for(1), options.warmup, options.repeats * 4)
    seconds = timed(step_for(options.batch), options.warmup, options.repeats)
    return {"latency_ms": 1e3 * latency, "throughput": options.batch / seconds}


def amd_generation(family, model):
    """AMD's core generation from the CPU family and model numbers, or None."""
    if family == 26:
        return "Zen 5"
    if family == 25:  # Zen 4: Genoa 0x10-0x1f, Phoenix and Raphael 0x60-0x7f, Bergamo and Siena 0xa0-0xaf
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF else "Zen 3"
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen"
    return None


def timed(step, warmup, repeats):
    """Median seconds of `step()` after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def keras_worker(engine, arch, precision, options):
    os.environ["KERAS_BACKEND"] = "jax" if engine == "jax" else "tensorflow"
    if engine == "jax" and options.device == "cpu":
        # XLA has no thread-count flag: it sizes its CPU pool from the cores
        # this process may run on.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: options.threads])
    import keras
    import numpy as np

    import keras_metaformer

    if engine != "jax":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(options.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    size = options.image_size
    model = (
        keras_metaformer.BUILDERS[arch](weights=None, input_shape=(size, size, 3))
        if arch in keras_metaformer.BUILDERS
        else keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), weights=None, input_shape=(size, size, 3))
    )
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if len(weight.shape) == 1 and "float" in weight.dtype:
            value = keras.ops.convert_to_numpy(weight)
            weight.assign(value + rng.normal(0, 0.02, weight.shape).astype(value.dtype))
    images = {b: rng.uniform(0, 255, (b, size, size, 3)).astype("float32") for b in (1, options.batch)}
    # The forward pass's floating-point operations per image, two per MAC,
    # for the table's fractions of the host's peak.
    flops = {"gflop": 2 * keras_metaformer.count_macs(model) / 1e9}
    if engine == "tflite":
        return {**flops, **tflite_worker(model, images, options)}
    if engine == "onnxruntime":
        return {**flops, **onnxruntime_worker(model, images, options)}
    if engine == "jax":
        import jax

        variables = (model.trainable_variables, model.non_trainable_variables)
        state = tuple([v.value for v in group] for group in variables)
        forward = jax.jit(lambda state, x: model.stateless_call(*state, x, training=False)[0])
        # Inputs start on the device, as timm's do.
        images = {b: jax.device_put(x) for b, x in images.items()}

        def infer(x):
            return lambda: forward(state, x).block_until_ready()
    else:
        if engine == "tf-frozen":
            from keras_metaformer.export import frozen_function

            forward = frozen_function(model)
        elif engine == "tf-saved-model":
            forward = saved_model_signature(model)
        else:
            forward = tf.function(lambda x: model(x, training=False), jit_compile=engine == "tf-xla")

        def infer(x):
            x = tf.constant(x)
            return lambda: forward(x).numpy()

    result = {
        **flops,
        **inference_timings(lambda batch: infer(images[batch]), options),
    }
    if engine in INFERENCE_ONLY:
        return result
    labels = np.eye(model.output_shape[-1], dtype="float32")[rng.integers(0, model.output_shape[-1], options.batch)]
    model.compile(keras.optimizers.AdamW(1e-3), keras.losses.CategoricalCrossentropy(), jit_compile=engine != "tf")
    x = images[options.batch]
    step = lambda: model.train_on_batch(x, labels)  # noqa: E731
    result["train_throughput"] = options.batch / timed(step, options.warmup, options.repeats)
    if options.device == "gpu":
        if engine == "jax":
            import jax

            result["device_peak_mib"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
        else:
            result["device_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return result


def saved_model_signature(model):
    """`model` exported for TF Serving and loaded back: its `serving_default` signature."""
    import tempfile

    import tensorflow as tf

    from keras_metaformer.export import export_saved_model

    with tempfile.TemporaryDirectory() as scratch:
        loaded = tf.saved_model.load(export_saved_model(model, scratch, warmup=False))
    return lambda x: loaded.signatures["serving_default"](images=x)["probabilities"]


def tflite_worker(model, images, options):
    import tempfile

    from keras_metaformer.export import export_tflite
    from keras_metaformer.export.tflite import loaded_interpreter

    with tempfile.TemporaryDirectory() as scratch:
        path = export_tflite(model, os.path.join(scratch, "model.tflite"))
        return inference_timings(lambda batch: loaded_interpreter(path, images[batch], options.threads).invoke, options)


def onnxruntime_worker(model, images, options):
    import functools
    import tempfile

    from keras_metaformer.export import export_onnx
    from keras_metaformer.export import onnx_session

    with tempfile.TemporaryDirectory() as scratch:
        # The session holds the graph in memory: the file may go.
        session = onnx_session(export_onnx(model, os.path.join(scratch, "model.onnx")), options.threads)
    name = session.get_inputs()[0].name
    return inference_timings(lambda batch: functools.partial(session.run, None, {name: images[batch]}), options)


def timm_worker(engine, arch, precision, options):
    sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
    from make_timm_fixtures import import_timm

    timm, torch, _ = import_timm()
    torch.set_num_threads(options.threads)
    device = "cuda" if options.device == "gpu" else "cpu"
    # GPU work is asynchronous: a step ends when the device has finished.
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
    size = options.image_size
    model = timm.create_model(arch if arch in MODELS else "poolformer_s12", pretrained=False)
    model = model.to(device, memory_format=torch.channels_last)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    images = {
        b: torch.rand(b, 3, size, size).mul(255).to(device, memory_format=torch.channels_last)
        for b in (1, options.batch)
    }
    runner = torch.compile(model) if engine == "timm-compile" else model

    def infer(x):
        def step():
            with torch.inference_mode(), autocast:
                runner(x)
            synchronize()

        return step

    model.eval()
    result = {
        **inference_timings(lambda batch: infer(images[batch]), options),
    }
    if engine == "timm":  # training is compared with eager PyTorch only
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        labels = torch.randint(0, 1000, (options.batch,), device=device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(images[options.batch]), labels)
            loss.backward()
            optimizer.step()
            synchronize()

        result["train_throughput"] = options.batch / timed(step, options.warmup, options.repeats)
    if device == "cuda":
        result["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def worker(options):
    engine, arch, precision = options.worker
    run = timm_worker if engine.startswith("timm") else keras_worker
    result = run(engine, arch, precision, options)
    # On a GPU the device's peak allocation, else the peak resident memory
    # of this process (Linux reports KiB).
    result["peak_mib"] = result.pop("device_peak_mib", None)
    if result["peak_mib"] is None:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(engine, arch, precision, options):
    python = options.torch_python if engine.startswith("timm") else sys.executable
    command = [
        python,
        os.path.abspath(__file__),
        "--worker",
        engine,
        arch,
        precision,
        *[
            f"--{name.replace('_', '-')}={getattr(options, name)}"
            for name in ("batch", "warmup", "repeats", "threads", "image_size", "device")
        ],
    ]
    environment = dict(os.environ, OMP_NUM_THREADS=str(options.threads), TF_CPP_MIN_LOG_LEVEL="2")
    if options.device == "cpu":  # keep every engine off a GPU the machine may have
        environment.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    if options.malloc == "retain":
        environment.update(RETAINING_MALLOC)
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"  {engine} {arch} {precision}: failed ({reason[:200]})", file=sys.stderr)
    return None


def has_timm(python):
    code = (
        f"import sys; sys.path.insert(0, {os.path.join(REPO, 'tests', 'reference')!r}); "
        "from make_timm_fixtures import import_timm; import_timm()"
    )
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def best_of(previous, result):
    """One engine's numbers over several rounds: the lowest latency, the
    highest throughputs, and the highest peak memory. A round that failed
    counts only when every round did."""
    if previous is None or result is None:
        return previous or result
    merged = {}
    for key in previous.keys() | result.keys():
        values = [row[key] for row in (previous, result) if row.get(key) is not None]
        merged[key] = min(values) if key == "latency_ms" else max(values)
    return merged


def ratio(value, baseline, lower_is_better=False):
    if value is None or not baseline:
        return ""
    return f" ({(baseline / value if lower_is_better else value / baseline):.2f}x)"


def table(results, batch, peaks=None):
    """The markdown table; with `peaks` (GFLOP/s per precision), each
    throughput's share of the host's matrix-product peak as well."""
    lines = [
        f"| model | precision | engine | batch-1 latency (ms) | batch-{batch} img/s | batch-{batch} training img/s "
        "| peak MiB | batch-{batch} % of peak | training % of peak |".format(batch=batch),
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (arch, precision), rows in results.items():
        infer_base = rows.get(BASELINE["inference"]) or {}
        train_base = rows.get(BASELINE["training"]) or {}
        # timm's workers do not count: every engine runs the same maths.
        gflop = next((row["gflop"] for row in rows.values() if row and "gflop" in row), None)
        peak = (peaks or {}).get(precision)
        for engine, row in rows.items():
            if row is None:
                lines.append(f"| {arch} | {precision} | {engine} | failed | | | | | |")
                continue
            latency = row.get("latency_ms")
            # Latency ratios read as speed-ups too: timm's time over ours.
            cells = [
                f"{latency:.1f}{ratio(latency, infer_base.get('latency_ms'), lower_is_better=True)}",
                f"{row['throughput']:.1f}{ratio(row['throughput'], infer_base.get('throughput'))}",
                f"{row['train_throughput']:.1f}{ratio(row['train_throughput'], train_base.get('train_throughput'))}"
                if "train_throughput" in row
                else "",
                f"{row['peak_mib']:.0f}",
                # A training step is about three forward passes: the forward
                # one, and the gradients of the inputs and of the weights.
                share_of_peak(row.get("throughput"), gflop, peak),
                share_of_peak(row.get("train_throughput"), gflop and 3 * gflop, peak),
            ]
            lines.append(f"| {arch} | {precision} | {engine} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def share_of_peak(images_per_second, gflop_per_image, peak):
    """`"23%"`: the GFLOP/s that a throughput means, over the host's peak; "" if unknown."""
    if not (images_per_second and gflop_per_image and peak):
        return ""
    return f"{100 * images_per_second * gflop_per_image / peak:.0f}%"


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    groups = list(results)
    engines = sorted({engine for rows in results.values() for engine in rows}, key=ENGINES.index)
    figure, axis = pyplot.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(engines)
    for index, engine in enumerate(engines):
        values = [(results[group].get(engine) or {}).get("throughput", 0) for group in groups]
        axis.bar([g + index * width for g in range(len(groups))], values, width, label=engine)
    axis.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    axis.set_xticklabels([f"{arch}\n{precision}" for arch, precision in groups], fontsize=8)
    axis.set_ylabel("inference images / s (higher is better)")
    # Beside the axes, not inside them: inside, it hides the tallest bars.
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=100, bbox_inches="tight")
    pyplot.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch and timm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches (x4 at batch 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every engine this many times, alternating the order; report the best",
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--malloc",
        choices=("system", "retain"),
        default="system",
        help="each engine's own allocation (JAX keeps freed memory, see keras_metaformer.malloc), "
        "or keeping freed memory for every engine",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--output", default="benchmark_output")
    parser.add_argument("--smoke", action="store_true", help="a tiny model at 32x32, one repeat (CI)")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "MODEL", "PRECISION"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {options.rounds}")
    if options.worker:
        return worker(options)
    if options.smoke:
        options.models, options.batch, options.image_size = "tiny", 4, 32
        options.warmup, options.repeats = 1, 1
    engines = options.engines.split(",")
    if any(e.startswith("timm") for e in engines) and not has_timm(options.torch_python):
        print(f"timm: not run ({options.torch_python} cannot import torch and timm; see --torch-python)")
        engines = [e for e in engines if not e.startswith("timm")]
    # LiteRT and ONNX Runtime's CPU provider have no bfloat16 kernels for most of the graph.
    jobs = [
        (arch, precision, engine)
        for arch in options.models.split(",")
        for precision in options.precisions.split(",")
        for engine in engines
        if engine not in CPU_FLOAT32_ONLY or (precision == "float32" and options.device == "cpu")
    ]
    results = {}
    for arch, precision, engine in jobs:
        results.setdefault((arch, precision), {})[engine] = None
    for round_index in range(options.rounds):
        # Every other round runs in reverse order, so that a slow spell of the
        # host does not fall on the same engines each time.
        for arch, precision, engine in jobs[::-1] if round_index % 2 else jobs:
            print(
                f"  round {round_index + 1}/{options.rounds}: {arch} {precision} {engine} ...",
                file=sys.stderr,
                flush=True,
            )
            result = measure(engine, arch, precision, options)
            print(f"    {result}", file=sys.stderr, flush=True)
            rows = results[(arch, precision)]
            rows[engine] = best_of(rows[engine], result)
    rounds = f", best of {options.rounds} rounds" if options.rounds > 1 else ""
    host = f"{describe_cpu()}; {options.threads} threads per engine{rounds}."
    peaks = None
    if options.device == "cpu":
        # After the engines, so that its few seconds of full load precede none of them.
        peaks = matmul_peak.measure(options.threads, quick=options.smoke)
        host += f"\nHost {matmul_peak.describe(peaks, options.threads)}."
    markdown = f"{host}\n\n{table(results, options.batch, peaks)}"
    print(markdown)
    os.makedirs(options.output, exist_ok=True)
    with open(os.path.join(options.output, "benchmark.md"), "w") as f:
        f.write(markdown + "\n")
    chart(results, os.path.join(options.output, "benchmark.png"))
    print(f"Wrote {options.output}/benchmark.md and benchmark.png")


if __name__ == "__main__":
    main()
