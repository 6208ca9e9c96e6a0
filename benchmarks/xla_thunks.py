r"""Where a compiled sinusoid meta-step's time goes, thunk by thunk (XLA on a CPU).

    python benchmarks/xla_thunks.py [--steps_per_call=10 --calls=20 --top=25]
    TF_NUM_INTRAOP_THREADS=1 python benchmarks/xla_thunks.py --steps_per_call=1 --calls=200

Issue 17 asks for the small models to be profiled: where does the time of one XLA cluster for
the whole meta-step go? TensorFlow's XLA runs a compiled module as a sequence of thunks: one
per fusion, dot, copy or loop of the optimized HLO. With `--xla_cpu_enable_xprof_traceme`
(added to `XLA_FLAGS` here, before TensorFlow starts) each thunk leaves one event in the TF
profiler. This script compiles `MAML.meta_train_steps` (or `meta_train_step` for one per
call) on the sinusoid MLP's meta-batch of 25 tasks, as `meta_step.py`'s sinusoid XLA rows,
profiles `--calls` calls and prints, per meta-iteration (`--inner_steps`: 1 by default, as
`meta_step.py`'s rows; the `sinusoid` preset trains with 5):

* the wall time, the thunk executor's time and the number of thunks;
* the time by HLO opcode (dot, fusion, copy, ...), from the optimized HLO
  (`experimental_get_compiler_ir`), whose instruction names the thunk events carry;
* the `--top` thunks with their opcode and output shape.

The profiler's events add a little to each thunk, so read shares, not absolute times; the
wall time printed is the profiled one. `benchmarks/README.md` has what the table showed.
"""

import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("steps_per_call", 10, "Meta-iterations per compiled call.", lower_bound=1)
flags.DEFINE_integer("calls", 20, "Profiled calls.", lower_bound=1)
flags.DEFINE_integer("warmup", 50, "Untimed calls after compiling.", lower_bound=0)
flags.DEFINE_integer("inner_steps", 1, "Inner steps (the sinusoid preset trains with 5).",
                     lower_bound=1)
flags.DEFINE_integer("top", 25, "Thunks to list, slowest first.", lower_bound=0)
flags.DEFINE_enum("task_batching", "batched", ["batched", "loop"],
                  "How the 25 tasks run (MAML's task_batching).")
flags.DEFINE_string("output", None, "Also write the figures here (JSON).")
FLAGS = flags.FLAGS

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
# One instruction of optimized HLO text: `%name = shape opcode(`; the shape may be a tuple.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|\S+) ([a-z][\w\-]*)\(")


def hlo_instructions(hlo_text):
    """`{instruction name: (opcode, shape)}` for every instruction of an HLO module's text."""
    found = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            name, shape, opcode = match.groups()
            found[name] = (opcode, re.sub(r"\{[^}]*\}", "", shape))
    return found


def thunk_times(xspace, instructions):
    """Summed duration (seconds) and count of the profiler events named after `instructions`."""
    seconds, counts = collections.Counter(), collections.Counter()
    executor = 0.0
    for plane in xspace.planes:
        names = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name = names[event.metadata_id].name
                if name in instructions:
                    seconds[name] += event.duration_ps * 1e-12
                    counts[name] += 1
                elif name == "ThunkExecutor::Execute":
                    executor += event.duration_ps * 1e-12
    return seconds, counts, executor


def _check_trace_flag():
    if "tensorflow" in sys.modules:
        raise app.UsageError("TensorFlow was imported before the profiler flag could be set.")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TRACE_FLAG).strip()


def main(argv):
    del argv
    _check_trace_flag()
    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    import keras_meta as km
    from keras_meta.backbones import mlp
    from keras_meta.data.sinusoid import sinusoid_episodes

    steps = FLAGS.steps_per_call
    print("command: python " + " ".join(sys.argv))
    print("environment: " + ", ".join(
        f"{k}={os.environ[k]}" for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                                         "XLA_FLAGS") if k in os.environ))
    keras.utils.set_random_seed(0)
    episode = next(iter(sinusoid_episodes(10, 10, 25, seed=0)))
    maml = km.MAML(mlp(), inner_lr=0.01, loss="mse", task_batching=FLAGS.task_batching,
                   inner_steps=FLAGS.inner_steps)
    maml.compile(keras.optimizers.Adam(1e-3))
    if steps > 1:
        # Distinct meta-batches stacked on a leading axis, as meta_step.py's 10-per-call rows.
        episode = km.Episode(*(tf.stack([tf.roll(x, k, axis=0) for k in range(steps)])
                               for x in episode))
        step = tf.function(lambda e: maml.meta_train_steps(e), jit_compile=True)
    else:
        step = tf.function(lambda e: maml.meta_train_step(e), jit_compile=True)
    instructions = hlo_instructions(
        step.experimental_get_compiler_ir(episode)(stage="optimized_hlo"))

    def call():
        tf.nest.map_structure(lambda x: x.numpy(), step(episode))

    for _ in range(FLAGS.warmup + 1):
        call()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(FLAGS.calls):
            call()
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0],
                  "rb") as f:
            space.ParseFromString(f.read())
    seconds, counts, executor = thunk_times(space, instructions)
    iterations = FLAGS.calls * steps
    if not seconds:
        raise SystemExit("The profile has no thunk events: this TensorFlow's XLA did not honour "
                         f"{TRACE_FLAG}.")
    per = {name: s / iterations * 1e6 for name, s in seconds.items()}  # us per iteration
    total = sum(per.values())
    by_opcode = collections.Counter()
    thunks_by_opcode = collections.Counter()
    for name, us in per.items():
        by_opcode[instructions[name][0]] += us
        thunks_by_opcode[instructions[name][0]] += counts[name] / iterations
    figures = {
        "steps_per_call": steps, "calls": FLAGS.calls, "inner_steps": FLAGS.inner_steps,
        "wall_us": wall / iterations * 1e6, "executor_us": executor / iterations * 1e6,
        "thunks_us": total, "thunks": sum(counts.values()) / iterations,
        "by_opcode": {k: {"us": v, "thunks": thunks_by_opcode[k]}
                      for k, v in by_opcode.most_common()},
        "top": [{"thunk": n, "opcode": instructions[n][0], "shape": instructions[n][1],
                 "us": us} for n, us in sorted(per.items(), key=lambda kv: -kv[1])[:FLAGS.top]],
    }
    print(f"per meta-iteration ({FLAGS.inner_steps} inner steps, {steps} per call, "
          f"{FLAGS.calls} profiled calls): wall "
          f"{figures['wall_us']:.1f} us, thunk executor {figures['executor_us']:.1f} us, "
          f"{figures['thunks']:.0f} thunks taking {total:.1f} us")
    print("\n| opcode | thunks per iteration | us per iteration | share of thunk time |")
    print("|---|---|---|---|")
    for opcode, us in by_opcode.most_common():
        print(f"| {opcode} | {thunks_by_opcode[opcode]:.0f} | {us:.1f} | {100 * us / total:.0f}% |")
    if FLAGS.top:
        print("\n| thunk | opcode | shape | us per iteration |")
        print("|---|---|---|---|")
        for row in figures["top"]:
            print(f"| {row['thunk']} | {row['opcode']} | {row['shape']} | {row['us']:.1f} |")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(dict(figures, command="python " + " ".join(sys.argv)), f, indent=1)


if __name__ == "__main__":
    app.run(main)
