"""TensorFlow's thread pools, sized by a program's flags before TensorFlow starts.

TensorFlow runs each op on a pool of intra-op threads and several ops at once on inter-op
threads, and sizes both pools once, when its runtime starts. On small CPUs the defaults (one
thread per core in each) are not always the fastest: on a 2-core machine one thread per op
took the Omniglot 5w1s trainer to 0.77-0.88 of its time and the one-step XLA sinusoid step
from about 1.0 ms to 0.6-0.8 ms (`benchmarks/README.md`). So the trainers take the sizes as
flags, applied before the first op, instead of only through `TF_NUM_INTRAOP_THREADS` and
`TF_NUM_INTEROP_THREADS`.

A flag that cannot take effect is refused, not ignored: the runtime already started with other
sizes (a program called twice in one process), or a variable on the command line that says
otherwise.
"""

import os

from absl import app, flags

# One definition, beside the autotuner that keys its cache on them; re-exported here for the
# command-line programs.
from keras_meta.maml.task_batching_autotune import INTER_OP_ENV, INTRA_OP_ENV  # noqa: F401

# flag -> (environment variable, tf.config.threading's name for it, the pool in words)
_POOLS = {
    "intra_op_threads": (INTRA_OP_ENV, "intra_op_parallelism_threads", "intra-op threads"),
    "inter_op_threads": (INTER_OP_ENV, "inter_op_parallelism_threads", "inter-op threads"),
}


def define_flags(flag_values=flags.FLAGS):
    """Defines `--intra_op_threads` and `--inter_op_threads` (0: TensorFlow's choice)."""
    if "intra_op_threads" in flag_values:
        return
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow's threads per op (0: "
                         f"${INTRA_OP_ENV}, else one per core). Small models often run faster "
                         "with 1.", lower_bound=0, **fv)
    flags.DEFINE_integer("inter_op_threads", 0, "How many ops TensorFlow runs at a time (0: "
                         f"${INTER_OP_ENV}, else one per core).", lower_bound=0, **fv)


def apply_thread_flags(flag_values=flags.FLAGS):
    """Sizes TensorFlow's pools from the flags, and prints and returns a line saying so.

    Returns None (and prints nothing) where neither a flag nor a variable sizes them.

    Must run before TensorFlow's first op. Raises `app.UsageError` where a flag cannot take
    effect: its environment variable gives another number, or the runtime already runs with
    another size.
    """
    import tensorflow as tf

    sizes = {}
    for flag, (env, name, _) in _POOLS.items():
        wanted = flag_values[flag].value
        from_env = os.environ.get(env, "").strip()
        if not wanted:
            if from_env:
                sizes[flag] = (from_env, f"${env}")
            continue
        if from_env and from_env != str(wanted):
            raise app.UsageError(
                f"--{flag}={wanted} and {env}={from_env} ask for different sizes of "
                f"TensorFlow's pool; give one of them.")
        running = getattr(tf.config.threading, "get_" + name)()
        if running != wanted:
            try:
                getattr(tf.config.threading, "set_" + name)(wanted)
            except RuntimeError:
                raise app.UsageError(
                    f"--{flag}={wanted}: TensorFlow's runtime already started in this process "
                    f"with {running or 'its default number of'} {_POOLS[flag][2]}, and it "
                    "sizes its pools once, when it starts; run the program in a new "
                    "process.") from None
        sizes[flag] = (str(wanted), f"--{flag}")
    if not sizes:
        return None
    line = "[threads] TensorFlow runs " + ", ".join(
        f"{_POOLS[flag][2]}: {value} ({source})" for flag, (value, source) in sizes.items())
    print(line, flush=True)
    return line
