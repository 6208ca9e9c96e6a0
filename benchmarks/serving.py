"""Serving latency and throughput of the exported SavedModels, loaded from disk as TF Serving does.

Model: conv4 (stride 2, 64 filters, transductive batch norm) on 28x28x1, random weights, 5-way.
Client images: uint8 [n, 105, 105, 3] (Omniglot's native format); the graph resizes to 28x28,
converts to grey and inverts (`ImagePreprocessing`), and the eager baselines do the same work.

1. Few-shot signature, 5-way 1-shot, 3 inner steps, --queries query images per request:
   `serving_default` and `serving_xla` of the loaded SavedModel vs `MAML.adapt_and_predict`
   run eagerly in Python.
2. Adapted model, batches of 1 / 32 / 256 query images: the loaded `serving_default` and
   `serving_xla` vs the adapted Keras model called eagerly (`model(x)`).
3. The cost of batch-independence: top-1 accuracy of transductive `adapt_and_predict` (query
   batch statistics) vs the frozen adapted model (support statistics), on synthetic 5-way
   1-shot tasks (similar random blob characters + 25% pixel noise), after 3 inner steps from
   the random initialisation (no meta-training: indicative only).

Run:
    KERAS_BACKEND=tensorflow python benchmarks/serving.py [--repeats 30] [--tasks 20]
"""

import argparse
import os
import shlex
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_meta as km  # noqa: E402
from keras_meta.data.image_preprocessing import ImagePreprocessing  # noqa: E402
from keras_meta.export import export_adapted, export_few_shot, freeze_batch_norm  # noqa: E402

WAYS, SHOTS, STEPS, INNER_LR = 5, 1, 3, 0.4
CLIENT = (105, 105, 3)
PREP = ImagePreprocessing(image_size=(28, 28), channels=1, invert=True)


def synthetic_task(rng, shots, queries_per_class):
    """Blob 'characters' that share most strokes, drawn with 25% of pixels flipped.

    Each class is a common 15x15 random mask with 15% of its cells changed, upsampled to
    105x105: similar classes and heavy noise keep the task from being trivially solved.
    """
    common = rng.random((15, 15)) < 0.3
    prototypes = common[None] ^ (rng.random((WAYS, 15, 15)) < 0.15)
    prototypes = np.kron(prototypes, np.ones((7, 7), bool))

    def draw(labels):
        flips = rng.random((len(labels), 105, 105)) < 0.25
        ink = prototypes[labels] ^ flips
        grey = np.where(ink, 0, 255).astype(np.uint8)  # black strokes on white, like Omniglot
        return np.repeat(grey[..., None], 3, axis=-1)

    support_labels = np.tile(np.arange(WAYS, dtype=np.int32), shots)
    query_labels = np.tile(np.arange(WAYS, dtype=np.int32), queries_per_class)
    return draw(support_labels), support_labels, draw(query_labels), query_labels


def timed(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times = np.array(times) * 1e3
    return np.median(times), np.percentile(times, 99), np.mean(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--queries", type=int, default=5, help="query images per few-shot request")
    parser.add_argument("--tasks", type=int, default=20, help="synthetic tasks for accuracy")
    parser.add_argument("--batches", default="1,32,256")
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable] + sys.argv))
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
          f"{[d.device_type for d in tf.config.list_physical_devices()]}, "
          f"intra-op threads: {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}"
          f", CPUs visible: {os.cpu_count()}")

    keras.utils.set_random_seed(0)
    model = km.backbones.conv4(WAYS, (28, 28, 1), filters=64, batch_norm="transductive")
    maml = km.MAML(model, inner_lr=INNER_LR, inner_steps=1, eval_inner_steps=STEPS,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    support, labels, _, _ = synthetic_task(rng, SHOTS, 1)
    query = synthetic_task(rng, SHOTS, 1)[2][: args.queries]
    base = tempfile.mkdtemp(prefix="serving_bench_")
    few_shot_dir = export_few_shot(maml, PREP, base, "few_shot", client_image_shape=CLIENT,
                                   jit_compile=True, warmup=False)
    adapted_dir = export_adapted(maml, PREP, support, labels, base, "adapted", jit_compile=True,
                                 warmup=False)
    few_shot = tf.saved_model.load(few_shot_dir)
    adapted = tf.saved_model.load(adapted_dir)

    rows = []
    s, y, q = tf.constant(support), tf.constant(labels), tf.constant(query)
    for name in ("serving_default", "serving_xla"):
        fn = few_shot.signatures[name]
        rows.append((f"few-shot {WAYS}w{SHOTS}s {STEPS} steps, {args.queries} queries",
                     f"SavedModel {name}", args.queries,
                     timed(lambda: fn(support_images=s, support_labels=y, query_images=q),
                           args.repeats)))
    rows.append((f"few-shot {WAYS}w{SHOTS}s {STEPS} steps, {args.queries} queries",
                 "eager MAML.adapt_and_predict", args.queries,
                 timed(lambda: maml.adapt_and_predict(PREP(s), y, PREP(q)), args.repeats)))

    adapted_keras = maml.adapt(PREP(support), labels)
    for batch in (int(b) for b in args.batches.split(",")):
        images = tf.constant(np.resize(query, (batch,) + CLIENT))
        for name in ("serving_default", "serving_xla"):
            fn = adapted.signatures[name]
            rows.append((f"adapted, batch {batch}", f"SavedModel {name}", batch,
                         timed(lambda: fn(images=images), args.repeats)))
        rows.append((f"adapted, batch {batch}", "eager model(x)", batch,
                     timed(lambda: adapted_keras(PREP(images), training=False), args.repeats)))

    print(f"\n{'workload':<36} {'path':<30} {'median ms':>10} {'p99 ms':>9} {'req/s':>8} "
          f"{'images/s':>9}")
    for workload, path, images, (median, p99, mean) in rows:
        print(f"{workload:<36} {path:<30} {median:>10.2f} {p99:>9.2f} {1e3 / mean:>8.1f} "
              f"{images * 1e3 / mean:>9.0f}")

    # Accuracy: transductive (query-batch statistics) vs frozen support statistics.
    transductive, frozen, agree = [], [], []
    for _ in range(args.tasks):
        s_img, s_lab, q_img, q_lab = synthetic_task(rng, SHOTS, 5)
        sx, qx = PREP(s_img), PREP(q_img)
        a = maml.adapt_and_predict(sx, s_lab, qx).numpy().argmax(-1)
        frozen_model = freeze_batch_norm(maml.adapt(sx, s_lab), sx)
        b = frozen_model(qx, training=False).numpy().argmax(-1)
        transductive.append(np.mean(a == q_lab))
        frozen.append(np.mean(b == q_lab))
        agree.append(np.mean(a == b))
    ci = lambda v: 1.96 * np.std(v) / np.sqrt(len(v))  # noqa: E731
    print(f"\nBatch norm at serving, {args.tasks} synthetic {WAYS}-way {SHOTS}-shot tasks, "
          f"25 queries each, {STEPS} inner steps, random initialisation:")
    print(f"  transductive (query-batch statistics, adapt_and_predict): "
          f"{np.mean(transductive):.3f} +/- {ci(transductive):.3f}")
    print(f"  frozen support statistics (adapted export):               "
          f"{np.mean(frozen):.3f} +/- {ci(frozen):.3f}")
    print(f"  same top-1 class in both: {np.mean(agree):.3f}")


if __name__ == "__main__":
    main()
