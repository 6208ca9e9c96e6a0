"""Cost of exact second-order batch norm: MetaBatchNormalization vs keras BatchNormalization.

Two measurements, each a plain `tf.function` (no XLA), float32, after warm-up:

1. MAML meta-step: 5-way 1-shot 15-query tasks, meta-batch 4, 1 inner SGD step (alpha 0.4),
   conv4 (stride 2, 64 filters) on 28x28x1; forward plus the second-order meta-gradient.
   Reported as milliseconds per task.
2. The layer alone: forward, gradient, and gradient of the gradient (a Hessian-vector product)
   on one activation tensor of the first block's shape for a task (80 x 14 x 14 x 64).

Run:
    KERAS_BACKEND=tensorflow python benchmarks/batch_norm.py [--repeats 20] [--meta-batch 4]
"""

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_meta.layers import MetaBatchNormalization  # noqa: E402
from keras_meta.maml_loss import maml_loss  # noqa: E402
from keras_meta.models import conv4  # noqa: E402

WAYS, SHOTS, QUERIES, INNER_LR, INNER_STEPS = 5, 1, 15, 0.4, 1


def with_keras_batch_norm(model):
    """The same network with every MetaBatchNormalization swapped for keras BatchNormalization."""

    def swap(layer):
        if isinstance(layer, MetaBatchNormalization):
            return keras.layers.BatchNormalization(epsilon=layer.epsilon, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=swap)


def episodes(meta_batch, seed=0):
    rng = np.random.default_rng(seed)
    support_x = rng.standard_normal((meta_batch, WAYS * SHOTS, 28, 28, 1)).astype("float32")
    query_x = rng.standard_normal((meta_batch, WAYS * QUERIES, 28, 28, 1)).astype("float32")
    support_y = np.tile(np.repeat(np.arange(WAYS), SHOTS), (meta_batch, 1)).astype("int32")
    query_y = np.tile(np.repeat(np.arange(WAYS), QUERIES), (meta_batch, 1)).astype("int32")
    return tuple(tf.constant(a) for a in (support_x, support_y, query_x, query_y))


def meta_step_fn(model):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(support_x, support_y, query_x, query_y):
        with tf.GradientTape() as tape:
            losses = [
                maml_loss(model, support_x[t], support_y[t], query_x[t], query_y[t],
                          loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=INNER_STEPS)
                for t in range(support_x.shape[0])
            ]
            loss = tf.add_n(losses) / len(losses)
        return loss, tape.gradient(loss, model.trainable_variables)

    return step


def layer_hvp_fn(layer):
    @tf.function
    def hvp(x, v):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.square(y) * v)
            g = inner.gradient(loss, x)
            projected = tf.reduce_sum(g * v)
        return outer.gradient(projected, x)

    return hvp


def time_ms(fn, args, repeats):
    for _ in range(2):  # trace, then one warm run
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples)), float(np.min(samples))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--meta-batch", type=int, default=4)
    args = parser.parse_args()
    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, devices {devices}")

    keras.utils.set_random_seed(0)
    ours = conv4(WAYS, batch_norm="transductive")
    theirs = with_keras_batch_norm(ours)
    data = episodes(args.meta_batch)
    print(f"\nMAML meta-step: conv4 stride/64, {WAYS}-way {SHOTS}-shot {QUERIES}-query, "
          f"meta-batch {args.meta_batch}, {INNER_STEPS} inner step, alpha {INNER_LR}, "
          "second order, float32")
    results = {}
    for label, model in (("MetaBatchNormalization", ours), ("keras BatchNormalization", theirs)):
        median, best = time_ms(meta_step_fn(model), data, args.repeats)
        results[label] = median
        print(f"  {label:26s} {median / args.meta_batch:8.2f} ms/task (median; "
              f"best {best / args.meta_batch:.2f})")
    ratio = results["MetaBatchNormalization"] / results["keras BatchNormalization"]
    print(f"  ratio ours/keras: {ratio:.2f}")

    shape = (WAYS * QUERIES + WAYS * SHOTS, 14, 14, 64)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    v = tf.constant(rng.standard_normal(shape).astype("float32"))
    print(f"\nLayer alone, forward + gradient + Hessian-vector product on {shape}:")
    for label, layer in (("MetaBatchNormalization", MetaBatchNormalization()),
                         ("keras BatchNormalization", keras.layers.BatchNormalization())):
        layer.build(shape)
        median, best = time_ms(layer_hvp_fn(layer), (x, v), args.repeats)
        print(f"  {label:26s} {median:8.2f} ms (median; best {best:.2f})")


if __name__ == "__main__":
    main()
