r"""`ConcreteStep`'s calls against the concrete function's ordinary call, in one process.

    python benchmarks/concrete_call.py                 # the sinusoid meta-step, graph mode
    python benchmarks/concrete_call.py --jit_compile   # the same step compiled with XLA

Three `ConcreteStep`s of one `tf.function` (the sinusoid MAML meta-train step, batched,
meta-batch 25): the default, which executes the function's op directly where nothing watches
the call; one with `direct=False`, which calls the concrete function flat; and one forced to
the ordinary call, which binds the `Episode` argument again. Rounds alternate between them, so
that drifts of the machine hit all; every call's loss is read.
"""

import os
import sys

from absl import app, flags

flags.DEFINE_integer("rounds", 9, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("calls", 300, "Calls of each per round.", lower_bound=1)
flags.DEFINE_boolean("jit_compile", False, "Compile the meta-step with XLA.")
FLAGS = flags.FLAGS


def main(argv):
    os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
    # Beside this script (run as `python benchmarks/...`, its folder is on the path).
    from interleaved import time_interleaved
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_meta as km
    from keras_meta.backbones import mlp
    from keras_meta.data.sinusoid import sinusoid_episodes
    from keras_meta.training.concrete_step import ConcreteStep

    keras.utils.set_random_seed(0)
    maml = km.MAML(mlp(), inner_lr=0.01, loss="mse", task_batching="batched")
    maml.compile(keras.optimizers.Adam(1e-3))
    episodes = next(iter(sinusoid_episodes(10, 10, 25, seed=0)))
    step = tf.function(lambda e: maml.meta_train_step(e)[0], jit_compile=FLAGS.jit_compile)
    direct, flat, ordinary = ConcreteStep(step), ConcreteStep(step, direct=False), \
        ConcreteStep(step)
    for call in (direct, flat, ordinary):
        call(episodes)
    if not all(flat._flat.values()) or None in direct._direct.values():
        raise SystemExit("The flat or direct call does not apply to this step; nothing to "
                         "compare.")
    ordinary._flat = {key: False for key in ordinary._flat}
    functions = {"ordinary call": lambda: ordinary(episodes),
                 "flat call": lambda: flat(episodes),
                 "direct call": lambda: direct(episodes)}
    times = time_interleaved(functions, FLAGS.rounds, FLAGS.calls, warmup=50)
    print(f"command: python {' '.join(sys.argv)}")
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.3f} ms per call "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
    for faster, slower in [("flat call", "ordinary call"), ("direct call", "flat call")]:
        ratios = np.array(times[faster]) / np.array(times[slower])
        wins = int(np.sum(ratios < 1))
        print(f"{faster} / {slower}: {np.median(ratios):.3f} (median of the rounds' ratios, "
              f"{ratios.min():.3f}-{ratios.max():.3f}); faster in {wins} of {FLAGS.rounds} "
              "rounds")

if __name__ == "__main__":
    app.run(main)
