r"""Batch norm's second derivative: TensorFlow's (taped) forms against keras-meta's closed forms.

    python benchmarks/batch_norm_second_order.py [--rounds=6 --calls=3]
    python benchmarks/batch_norm_second_order.py --rounds=1 --calls=1 --steps=none   # layers only
    python benchmarks/batch_norm_second_order.py --before=plain_second --steps=omniglot_20w1s,omniglot_5w1s

Task-batched MAML runs batch norm two ways: through TensorFlow's fused kernels in the grouped
layout (`keras_meta/layers/fused_batch_norm.py`), and in plain ops with per-task statistics
in the task-major layout (the shared first inner step, float64, `fused_batch_norm=False`).
Second-order MAML differentiates the backward pass of either on every support set of every
inner step. TensorFlow differentiates the fused kernel's backward through a registered
rebuild of it in plain ops, differentiated by a tape, and plain ops by a tape through their
own backward; keras-meta gives both derivatives in closed form
(`keras_meta/layers/closed_form_batch_norm.py`). Each pair is timed in one process, taking
turns, on:

* layers: the gradient, for the activations, scale and offset, of a function of the batch
  norm's first derivative (a non-linear loss, so that the output gradient depends on the
  activations, as in MAML), on support activations of an Omniglot conv4's first two blocks:
  grouped `[N, H, W, tasks x 64]` for the fused form, task-major `[tasks, N, H, W, 64]` for
  the plain one;
* whole meta-steps (`--steps`): Omniglot 20-way 1-shot with 5 inner steps (meta-batch 16,
  chunks of 4 tasks) and 5-way 1-shot with 15 queries (meta-batch 32, chunks of 8), second
  order, the forms `task_batching="auto"` chose for them in `meta_step.py`'s full table;
  and the 5-way step under `mixed_bfloat16` (`omniglot_5w1s_bf16`), whose "before" casts the
  bfloat16 activations to float32 around the fused kernels, as keras-meta did until the
  kernels took them as they are.

For the step rows the benchmark swaps the functions the task-batched kernel calls
(`keras_meta.layers.batched_batch_norm.fused_batch_norm` and `.closed_form_batch_norm`) for
TensorFlow's fused batch norm and taped plain ops while it traces the "TensorFlow's" step:
what keras-meta ran before the closed forms. Every figure is the median over rounds of the
ratio within a round, with a 90% bootstrap interval (`benchmarks/interleaved.py`).

`--before=plain_second` sets the fused form against keras-meta's previous one instead: the
same fused kernels forward and backward, with the closed-form second derivative in plain ops
(`closed_form_batch_norm.second_derivative`) where it now runs on the fused kernels
(`fused_batch_norm._fused_second_derivative`). Only the fused rows change, so the plain-op
layer rows are left out.
"""

import os
import sys
import time

from absl import app, flags

flags.DEFINE_integer("rounds", 6, "Rounds; the two forms take turns within each.", lower_bound=1)
flags.DEFINE_integer("calls", 3, "Timed calls per form per round.", lower_bound=1)
flags.DEFINE_integer("layer_calls", 20, "Timed calls per form per round, layer rows.",
                     lower_bound=1)
flags.DEFINE_list("steps", ["omniglot_20w1s", "omniglot_5w1s", "omniglot_5w1s_bf16"],
                  "Meta-step rows to time ('none': the layer rows only).")
flags.DEFINE_enum("before", "tensorflow", ["tensorflow", "plain_second"],
                  "What keras-meta's forms are set against: TensorFlow's registered and taped "
                  "forms, or keras-meta's fused kernels with the plain-op second derivative.")
FLAGS = flags.FLAGS

EPSILON = 1e-3
# (label, form, activation shape): the first two blocks' support activations, grouped for
# the fused form, task-major for the plain one.
LAYER_SHAPES = [
    ("fused, 20w1s support, block 1, 4 tasks", "fused", (20, 14, 14, 256)),
    ("fused, 20w1s support, block 2, 4 tasks", "fused", (20, 7, 7, 256)),
    ("fused, 5w1s support, block 1, 8 tasks", "fused", (5, 14, 14, 512)),
    ("plain, 20w1s support, block 1, 4 tasks", "plain", (4, 20, 14, 14, 64)),
    ("plain, 5w1s support, block 1, 8 tasks", "plain", (8, 5, 14, 14, 64)),
]
# meta_step.py configurations: (ways, inner steps, queries per class, chunk, dtype policy).
STEPS = {"omniglot_20w1s": (20, 5, 1, 4, None), "omniglot_5w1s": (5, 1, 15, 8, None),
         "omniglot_5w1s_bf16": (5, 1, 15, 8, "mixed_bfloat16")}


def _registered(x, scale, offset, epsilon):
    import tensorflow as tf

    return tf.compat.v1.nn.fused_batch_norm(x, scale, offset, epsilon=epsilon,
                                            is_training=True)[0]


def _taped(x, scale, offset, epsilon, axes):
    import tensorflow as tf

    centred = x - tf.reduce_mean(x, axes, keepdims=True)
    inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axes, keepdims=True) + epsilon)
    return centred * (inv * scale) + offset


def _plain_second(x, scale, offset, epsilon):
    """The fused kernels forward and backward, with the plain-op closed-form second
    derivative (keras-meta's fused batch norm before its second derivative ran on them)."""
    from keras_meta.layers.fused_batch_norm import _fused

    return _fused(x, scale, offset, epsilon, second_on_kernels=False)


def _layer_function(norm, axes=None):
    import tensorflow as tf

    def normalize(x, scale, offset):
        if axes is None:
            return norm(x, scale, offset, EPSILON)
        return norm(x, scale, offset, EPSILON, axes)

    @tf.function
    def second_order(x, scale, offset, r, a):
        with tf.GradientTape() as outer:
            outer.watch([x, scale, offset])
            with tf.GradientTape() as inner:
                inner.watch([x, scale, offset])
                loss = tf.reduce_sum(tf.sin(normalize(x, scale, offset)) * r)
            dx, dscale, doffset = inner.gradient(loss, [x, scale, offset])
            value = tf.reduce_sum(dx * a) + tf.reduce_sum(dscale) + tf.reduce_sum(doffset)
        return outer.gradient(value, [x, scale, offset])

    return second_order


def _cast_around(fused_batch_norm):
    """The fused batch norm on float32 copies of low-precision activations, cast back."""
    import tensorflow as tf

    def normalize(x, scale, offset, epsilon):
        return tf.cast(fused_batch_norm(tf.cast(x, tf.float32), scale, offset, epsilon), x.dtype)

    return normalize


def _step(name, tensorflows):
    """The meta-step of `name`; with `tensorflows`, traced with the forms before ours."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_meta as km
    from keras_meta.backbones import conv4
    from keras_meta.layers import batched_batch_norm
    from keras_meta.training.concrete_step import ConcreteStep

    ways, inner, queries, chunk, policy = STEPS[name]
    meta_batch = 32 if ways == 5 else 16
    keras.utils.set_random_seed(0)
    # As meta_step.py's rows: random pixels (they do not change the cost), the MAML paper's
    # settings, Adam as the outer optimizer.
    rng = np.random.default_rng(0)
    episode = km.Episode(
        tf.constant(rng.random((meta_batch, ways, 28, 28, 1)), tf.float32),
        tf.constant(np.tile(np.arange(ways), (meta_batch, 1)), tf.int32),
        tf.constant(rng.random((meta_batch, ways * queries, 28, 28, 1)), tf.float32),
        tf.constant(np.tile(np.repeat(np.arange(ways), queries), (meta_batch, 1)), tf.int32))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy or previous)
    try:
        base = conv4(ways)
    finally:
        keras.config.set_dtype_policy(previous)
    maml = km.MAML(base, inner_lr=0.4 if ways == 5 else 0.1, inner_steps=inner,
                   task_batching="batched", task_chunk_size=chunk,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    maml.compile(keras.optimizers.Adam(1e-3))
    step = ConcreteStep(tf.function(maml.meta_train_step))
    kept = batched_batch_norm.fused_batch_norm, batched_batch_norm.closed_form_batch_norm
    if tensorflows and FLAGS.before == "plain_second":
        batched_batch_norm.fused_batch_norm = _plain_second
    elif tensorflows and policy:
        batched_batch_norm.fused_batch_norm = _cast_around(kept[0])
    elif tensorflows:
        batched_batch_norm.fused_batch_norm = _registered
        batched_batch_norm.closed_form_batch_norm = _taped
    try:
        float(step(episode)[0])  # traces with the functions swapped in
    finally:
        batched_batch_norm.fused_batch_norm, batched_batch_norm.closed_form_batch_norm = kept
    return lambda: float(step(episode)[0])


def _interleaved(calls_a, calls_b, rounds, calls):
    """Seconds per call of each, per round; the two take turns and alternate who goes first."""
    rows = []
    for index in range(rounds):
        row = {}
        for name, run in (("a", calls_a), ("b", calls_b))[::1 if index % 2 == 0 else -1]:
            run()
            start = time.perf_counter()
            for _ in range(calls):
                run()
            row[name] = (time.perf_counter() - start) / calls
        rows.append(row)
    return rows


def _report(label, rows, unit, scale):
    import numpy as np
    from interleaved import median_interval

    registered = [r["a"] * scale for r in rows]
    closed = [r["b"] * scale for r in rows]
    ratios = [c / r for c, r in zip(closed, registered)]
    low, high = median_interval(ratios) if len(ratios) > 1 else (ratios[0], ratios[0])
    print(f"| {label} | {np.median(registered):.2f} {unit} | {np.median(closed):.2f} {unit} | "
          f"**{np.median(ratios):.2f}** ({low:.2f}-{high:.2f}) | {min(ratios):.2f}-"
          f"{max(ratios):.2f} |", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    steps = [] if FLAGS.steps == ["none"] else FLAGS.steps
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise app.UsageError(f"Unknown --steps {unknown}; known: {sorted(STEPS)} or 'none'.")
    os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
    # Beside this script (run as `python benchmarks/...`, its folder is on the path).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numpy as np
    import tensorflow as tf

    from keras_meta.layers.closed_form_batch_norm import closed_form_batch_norm
    from keras_meta.layers.fused_batch_norm import fused_batch_norm

    # Every layer row traces new functions; TensorFlow's retracing warning would say so.
    tf.get_logger().setLevel("ERROR")
    print(f"command: python {' '.join(sys.argv)}\n")
    before = ("TensorFlow's (bf16: casts)" if FLAGS.before == "tensorflow"
              else "plain-op second derivative")
    print(f"| workload | before: {before} | keras-meta | keras-meta / before, "
          "median (90% interval) | range over rounds |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for label, form, shape in LAYER_SHAPES:
        if FLAGS.before == "plain_second" and form != "fused":
            continue
        # Fused: [C] parameters; plain: per-task [T, 1, 1, 1, C], statistics over N, H, W.
        vector = [shape[-1]] if form == "fused" else [shape[0], 1, 1, 1, shape[-1]]
        args = [tf.constant(v, tf.float32) for v in (
            rng.normal(size=shape) * 2 + 0.5, rng.normal(size=vector) + 1,
            rng.normal(size=vector), rng.normal(size=shape), rng.normal(size=shape))]
        if form == "fused":
            old = _registered if FLAGS.before == "tensorflow" else _plain_second
            forms = [_layer_function(norm) for norm in (old, fused_batch_norm)]
        else:
            forms = [_layer_function(norm, [1, 2, 3])
                     for norm in (_taped, closed_form_batch_norm)]

        def runner(form, args=args):
            return lambda: [g.numpy() for g in form(*args)]

        rows = _interleaved(runner(forms[0]), runner(forms[1]), FLAGS.rounds, FLAGS.layer_calls)
        _report(f"layer: {label} {list(shape)}", rows, "ms", 1e3)
    for name in steps:
        tensorflows = _step(name, tensorflows=True)
        closed = _step(name, tensorflows=False)
        rows = _interleaved(tensorflows, closed, FLAGS.rounds, FLAGS.calls)
        ways, inner, queries, chunk, policy = STEPS[name]
        _report(f"meta-step: {name}, {inner} inner step(s), chunks of {chunk}", rows, "s", 1.0)


if __name__ == "__main__":
    app.run(main)
