r"""Why a sinusoid MAML model diverges with more inner steps: curvature against 2/alpha.

    python benchmarks/sinusoid_curvature.py --model_dir=../runs/sin_seed0 [--num_tasks=600]

For each test task of the run (the same 600 as its final test), at the meta-learned
initialisation theta (best validation checkpoint): the largest eigenvalue of the Hessian of the
5-shot support loss (power iteration on exact Hessian-vector products, nested tapes), and the
query MSE after 1, 5 and 10 inner SGD steps of the run's alpha. Plain gradient descent is stable
along a direction of curvature lambda only while alpha * lambda < 2: each step multiplies the
component along it by |1 - alpha * lambda|. Writes `curvature.npy` into the run directory.
"""

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A sinusoid run's model_dir.")
flags.DEFINE_integer("num_tasks", 600, "Test tasks.")
flags.DEFINE_integer("power_iterations", 30, "Power-iteration steps per task.")


def main(argv):
    import tensorflow as tf

    from keras_meta.core.functional import functional_call, get_params
    from keras_meta.data.sinusoid import sinusoid_episodes
    from keras_meta.export.from_run import restore_maml

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    maml, config, path = restore_maml(FLAGS.model_dir, which="best")
    if config.task_family != "sinusoid":
        raise app.UsageError(f"{FLAGS.model_dir} is a {config.task_family!r} run; expected "
                             "sinusoid.")
    model = maml.model
    theta = [tf.identity(p) for p in get_params(model)]
    alpha = config.inner_lr

    def loss(params, x, y):
        return tf.reduce_mean(tf.square(y - functional_call(model, params, x)))

    @tf.function
    def query_losses(x, y, qx, qy):
        params, out = list(theta), [loss(theta, qx, qy)]
        for _ in range(10):
            with tf.GradientTape() as tape:
                tape.watch(params)
                value = loss(params, x, y)
            params = [p - alpha * g for p, g in zip(params, tape.gradient(value, params))]
            out.append(loss(params, qx, qy))
        return tf.stack(out)

    @tf.function
    def hvp(x, y, vector):
        with tf.GradientTape() as outer:
            outer.watch(theta)
            with tf.GradientTape() as inner:
                inner.watch(theta)
                value = loss(theta, x, y)
            dot = tf.add_n([tf.reduce_sum(g * v)
                            for g, v in zip(inner.gradient(value, theta), vector)])
        return outer.gradient(dot, theta)

    def top_eigenvalue(x, y):
        rng = np.random.default_rng(0)
        v = [tf.constant(rng.normal(size=p.shape), tf.float32) for p in theta]
        value = 0.0
        for _ in range(FLAGS.power_iterations):
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(u * u) for u in v]))
            v = [u / norm for u in v]
            hv = hvp(x, y, v)
            value = float(tf.add_n([tf.reduce_sum(a * b) for a, b in zip(hv, v)]))
            v = hv
        return value

    tasks = sinusoid_episodes(config.shots_at_eval, config.queries_at_eval, None,
                              seed=config.seed + 2_000_003, num_episodes=FLAGS.num_tasks,
                              stream=config.sinusoid_stream)
    rows = []
    for task in tasks:
        q = query_losses(task.support_x, task.support_y, task.query_x, task.query_y).numpy()
        rows.append([top_eigenvalue(task.support_x, task.support_y), q[1], q[5], q[10]])
    rows = np.array(rows)
    lam = rows[:, 0]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"checkpoint {path}; inner_steps {config.inner_steps} in training"
          f"{' (multi-step loss)' if config.multi_step_loss else ''}; alpha {alpha}; "
          f"2/alpha = {2 / alpha:.0f}; {len(rows)} test tasks")
    print(f"top Hessian eigenvalue of the 5-shot support loss at theta: median "
          f"{np.median(lam):.1f}, p90 {np.percentile(lam, 90):.1f}, max {lam.max():.1f}; "
          f"tasks above 2/alpha: {(lam > 2 / alpha).sum()}")
    for column, steps in ((1, 1), (2, 5), (3, 10)):
        values = rows[:, column]
        finite = np.isfinite(values)
        print(f"{steps} steps: query MSE mean {np.mean(values[finite]):.3f} over "
              f"{finite.sum()} finite tasks, median {np.median(values):.3f}, diverged "
              f"{(~finite).sum()}")
    np.save(os.path.join(FLAGS.model_dir, "curvature.npy"), rows)


if __name__ == "__main__":
    app.run(main)
