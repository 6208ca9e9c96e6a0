r"""Where a task-batched MAML step spends its convolution time: each conv4 layer, each form.

    python benchmarks/grouped_conv.py                 # Omniglot 5w1s shapes, meta-batch 32
    python benchmarks/grouped_conv.py --tasks=16 --images=20

For every layer of the Omniglot conv4 (3x3, stride 2, 64 filters; 28 -> 14 -> 7 -> 4 -> 2)
and every way keras-meta can run T tasks' convolutions at once, it times, in one process:

* `fwd`: the forward pass;
* `fwd+bwd`: forward and the gradients for the input and the per-task kernels (an inner
  step, or first-order MAML's outer pass);
* `2nd`: the gradient, with respect to the kernels, of the squared norm of the input and
  kernel gradients: the double backward that second-order MAML's outer pass runs.

Forms: `grouped` (one grouped convolution, tasks folded into channels: keras-meta's default),
`patches` (strided slices and a batched matmul: the form XLA and float64 use) and, for the
first layer (one input channel per task), `depthwise` (a depthwise convolution with 64
outputs per channel, the same arithmetic). GFLOP/s counts the forward's multiply-adds once.
"""

import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("tasks", 32, "Tasks per meta-batch (T).")
flags.DEFINE_integer("images", 75, "Images per task (75: 5-way, 15 queries per class).")
flags.DEFINE_integer("repeats", 7, "Timed calls per cell (median).")


def main(argv):
    import keras
    import tensorflow as tf

    from keras_meta.core.batching import kernels
    from keras_meta.core.batching.layouts import GROUPED, TASK_MAJOR, to_grouped

    t, n = FLAGS.tasks, FLAGS.images

    def timed(fn, *args):
        fn(*args)
        times = []
        for _ in range(FLAGS.repeats):
            start = time.perf_counter()
            for out in tf.nest.flatten(fn(*args)):
                out.numpy()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    print(f"command: python benchmarks/grouped_conv.py --tasks={t} --images={n}\n")
    print("| layer (input) | form | fwd ms | fwd+bwd ms | 2nd ms | fwd GFLOP/s | "
          "fwd+bwd / fwd |")
    print("|---|---|---|---|---|---|---|")
    for size, channels in [(28, 1), (14, 64), (7, 64), (4, 64)]:
        layer = keras.layers.Conv2D(64, 3, 2, "same", use_bias=False)
        layer.build((None, size, size, channels))
        x = tf.random.normal([t, n, size, size, channels])
        k = tf.random.normal([t, 3, 3, channels, 64]) * 0.1
        out_size = -(-size // 2)
        gflop = 2 * t * n * out_size * out_size * 9 * channels * 64 / 1e9
        forms = ["grouped", "patches"] + (["depthwise"] if channels == 1 else [])
        for form in forms:
            inputs = to_grouped(x, TASK_MAJOR, t) if form != "patches" else x

            def conv(x, k, form=form):
                if form == "grouped":
                    return kernels._grouped_conv2d(layer, k, x, GROUPED, t)[0]
                if form == "depthwise":
                    # [3, 3, T, 64]: task t's single input channel meets its own 64 filters.
                    filters = tf.transpose(k[:, :, :, 0, :], [1, 2, 0, 3])
                    return tf.nn.depthwise_conv2d(x, filters, [1, 2, 2, 1], "SAME")
                return kernels._patches_conv2d(layer, k, x, TASK_MAJOR, t)[0]

            @tf.function
            def forward(x, k):
                return conv(x, k)

            @tf.function
            def backward(x, k):
                with tf.GradientTape() as tape:
                    tape.watch([x, k])
                    y = conv(x, k)
                    loss = tf.reduce_sum(y * y)
                return tape.gradient(loss, [x, k])

            @tf.function
            def second(x, k):
                with tf.GradientTape() as outer:
                    outer.watch(k)
                    with tf.GradientTape() as inner:
                        inner.watch([x, k])
                        y = conv(x, k)
                        loss = tf.reduce_sum(y * y)
                    gx, gk = inner.gradient(loss, [x, k])
                    total = tf.reduce_sum(gx * gx) + tf.reduce_sum(gk * gk)
                return outer.gradient(total, k)

            f, b, s = (timed(fn, inputs, k) for fn in (forward, backward, second))
            print(f"| {size}x{size}x{channels} | {form} | {f * 1e3:.1f} | {b * 1e3:.1f} | "
                  f"{s * 1e3:.1f} | {gflop / f:.1f} | {b / f:.1f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
