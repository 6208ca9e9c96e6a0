"""Cost of exact second-order batch norm: MetaBatchNormalization vs keras BatchNormalization.

Two measurements, each a plain `tf.function` (no XLA), float32, after warm-up:

1. MAML meta-step: 5-way 1-shot 15-query tasks, meta-batch 4, 1 inner SGD step (alpha 0.4),
   conv4 (stride 2, 64 filters) on 28x28x1; forward plus the second-order meta-gradient.
   Reported as milliseconds per task.
2. The layer alone: forward, gradient, and gradient of the gradient (a Hessian-vector product)
   on one activation tensor of the first block's shape for a task (80 x 14 x 14 x 64), for our
   layer, Keras' layer, and a candidate custom-gradient formulation.

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
from keras_meta.maml import maml_loss  # noqa: E402
from keras_meta.backbones import conv4  # noqa: E402

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


def analytic_backward_norm(x, gamma, beta, epsilon=1e-3):
    """A candidate "fused" formulation: batch norm with a hand-written (differentiable) backward.

    The backward is the closed form gamma/sigma * (dy - mean(dy) - xhat * mean(dy * xhat)),
    built from differentiable ops so the Hessian stays exact (checked against the plain
    formulation to 1e-14 in float64). It is benchmarked here, not used by the layer, because
    on CPU it was no faster than autodiff of the plain formulation.
    """
    axes = list(range(len(x.shape) - 1))

    @keras.ops.custom_gradient
    def norm(x, gamma, beta):
        mean = keras.ops.mean(x, axis=axes, keepdims=True)
        centred = x - mean
        inv = keras.ops.rsqrt(
            keras.ops.mean(keras.ops.square(centred), axis=axes, keepdims=True) + epsilon)
        xhat = centred * inv

        def grad(*args, upstream=None):
            dy = args[0] if upstream is None else upstream
            dbeta = keras.ops.sum(dy, axis=axes, keepdims=True)
            dgamma = keras.ops.sum(dy * xhat, axis=axes, keepdims=True)
            count = keras.ops.cast(keras.ops.size(x) // keras.ops.size(mean), x.dtype)
            dx = (gamma * inv / count) * (count * dy - dbeta - xhat * dgamma)
            return (dx, keras.ops.reshape(dgamma, keras.ops.shape(gamma)),
                    keras.ops.reshape(dbeta, keras.ops.shape(beta)))

        return xhat * gamma + beta, grad

    return norm(x, gamma, beta)


class _AnalyticBackward:
    """Adapter so the layer benchmark can call `analytic_backward_norm` like a layer."""

    def build(self, shape):
        self.gamma = tf.ones(shape[-1:])
        self.beta = tf.zeros(shape[-1:])

    def __call__(self, x, training=True):
        return analytic_backward_norm(x, self.gamma, self.beta)


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


def time_interleaved(fns, args, repeats):
    """Median and best milliseconds per call of each function.

    The functions take turns, one call each per round, so that load from other processes on
    the machine falls on all of them alike rather than on whichever ran during a busy spell.
    """
    run = lambda fn: tf.nest.map_structure(lambda t: t.numpy(), fn(*args))  # noqa: E731
    for fn in fns:
        run(fn)  # trace
        run(fn)  # warm
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, samples):
            start = time.perf_counter()
            run(fn)
            bucket.append((time.perf_counter() - start) * 1e3)
    return [(float(np.median(b)), float(np.min(b))) for b in samples]


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
    labels = ("MetaBatchNormalization", "keras BatchNormalization")
    timings = time_interleaved([meta_step_fn(ours), meta_step_fn(theirs)], data, args.repeats)
    for label, (median, best) in zip(labels, timings):
        print(f"  {label:26s} {median / args.meta_batch:8.2f} ms/task (median; "
              f"best {best / args.meta_batch:.2f})")
    print(f"  ratio ours/keras (median): {timings[0][0] / timings[1][0]:.2f}")

    shape = (WAYS * QUERIES + WAYS * SHOTS, 14, 14, 64)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    v = tf.constant(rng.standard_normal(shape).astype("float32"))
    print(f"\nLayer alone, forward + gradient + Hessian-vector product on {shape}:")
    layers = {"MetaBatchNormalization": MetaBatchNormalization(),
              "keras BatchNormalization": keras.layers.BatchNormalization(),
              "analytic backward (opt.)": _AnalyticBackward()}
    for layer in layers.values():
        layer.build(shape)
    timings = time_interleaved([layer_hvp_fn(layer) for layer in layers.values()], (x, v),
                               args.repeats)
    for label, (median, best) in zip(layers, timings):
        print(f"  {label:26s} {median:8.2f} ms (median; best {best:.2f})")


if __name__ == "__main__":
    main()
